"""Confirmations and availability certificates.

A Confirmation is a node's signed statement that it stores every sliver of a blob for all its shards
in an epoch. Confirmations from nodes covering at least n - f shards form a certificate of
availability (Certificate), which nodes keep and serve and clients hand to nodes and to readers.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..redstuff import BlobId, FormatError
from .committee import Committee

CONFIRMATION_VERSION = 2  # v2 adds the expiry the node grants; v1 confirmations still verify
CONFIRMATION_VERSIONS = (1, 2)
_CONFIRMATION_DOMAIN = b"walrusfs-confirmation\0"


@dataclass(frozen=True)
class Confirmation:
    """Node ``node_id`` stores every sliver of ``blob_id`` for ``shards`` in ``epoch``.

    Signed bytes (v1): ``"walrusfs-confirmation\\0" | u8 version | u64 epoch | 32 blob id |
    u16 len | node id (utf-8) | u16 count | count x u16 shard``. Travels as JSON with the same
    fields plus ``signature`` (base64).

    v2 appends ``u64 expires``: the unix time (seconds) until which the node keeps the blob at the
    least, whatever happens to renewals (docs/node-api.md, "Claims"); 0 promises nothing. A v1
    confirmation (no expiry) still verifies: certificates written before v2 stay valid.
    """

    epoch: int
    blob_id: BlobId
    node_id: str
    shards: tuple[int, ...]
    signature: bytes = b""
    version: int = CONFIRMATION_VERSION
    expires: int = 0

    def signed_bytes(self) -> bytes:
        node = self.node_id.encode()
        return b"".join([
            _CONFIRMATION_DOMAIN,
            struct.pack("<BQ", self.version, self.epoch),
            self.blob_id.raw,
            struct.pack("<H", len(node)), node,
            struct.pack(f"<H{len(self.shards)}H", len(self.shards), *self.shards),
            struct.pack("<Q", self.expires) if self.version >= 2 else b"",
        ])

    def signed_by(self, key: Ed25519PrivateKey) -> Confirmation:
        unsigned = Confirmation(self.epoch, self.blob_id, self.node_id, tuple(sorted(self.shards)),
                                version=self.version, expires=self.expires)
        return Confirmation(unsigned.epoch, unsigned.blob_id, unsigned.node_id, unsigned.shards,
                            key.sign(unsigned.signed_bytes()), unsigned.version, unsigned.expires)

    def verify(self, public_key: bytes) -> bool:
        if self.version not in CONFIRMATION_VERSIONS or (self.version == 1 and self.expires):
            return False
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(self.signature, self.signed_bytes())
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_dict(self) -> dict:
        data = {
            "version": self.version,
            "epoch": self.epoch,
            "blob_id": str(self.blob_id),
            "node_id": self.node_id,
            "shards": list(self.shards),
            "signature": base64.b64encode(self.signature).decode(),
        }
        if self.version >= 2:
            data["expires"] = self.expires
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> Confirmation:
        try:
            data = json.loads(text)
        except ValueError as error:
            raise FormatError(f"not a confirmation: {error}") from error
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> Confirmation:
        try:
            version = data["version"]
            if version not in CONFIRMATION_VERSIONS:
                raise FormatError(f"confirmation version {version} is not one this walrusfs reads "
                                  f"({', '.join(map(str, CONFIRMATION_VERSIONS))}): upgrade walrusfs")
            shards = tuple(int(s) for s in data["shards"])
            if not all(0 <= s < 1 << 16 for s in shards):
                raise FormatError("confirmation shard out of range")
            expires = int(data["expires"]) if version >= 2 else 0
            if not 0 <= expires < 1 << 64:
                raise FormatError("confirmation expiry out of range")
            return cls(int(data["epoch"]), BlobId.parse(data["blob_id"]), str(data["node_id"]), shards,
                       base64.b64decode(data["signature"], validate=True), version, expires)
        except (KeyError, TypeError, ValueError, binascii.Error) as error:
            raise FormatError(f"not a confirmation: {error}") from error


def verify_certificate(committee: Committee, blob_id: BlobId,
                       confirmations: Iterable[Confirmation]) -> set[int]:
    """The shards covered by valid confirmations: signed by a committee node, for this epoch and
    blob, counting only shards that node holds. A certificate is complete when
    ``is_certified(committee, covered)``."""
    return confirmed_shards(committee, (
        confirmation for confirmation in confirmations
        if confirmation.epoch == committee.epoch and confirmation.blob_id == blob_id
        and committee.has_node(confirmation.node_id)
        and confirmation.verify(committee.node(confirmation.node_id).public_key)))


def confirmed_shards(committee: Committee, verified: Iterable[Confirmation]) -> set[int]:
    """The shards that confirmations already checked by verify_certificate's rules cover: each counts
    only the shards its node holds in ``committee``."""
    covered: set[int] = set()
    for confirmation in verified:
        if committee.has_node(confirmation.node_id):
            covered |= set(confirmation.shards) & set(committee.node(confirmation.node_id).shards)
    return covered


def is_certified(committee: Committee, covered: set[int]) -> bool:
    return len(covered) >= committee.geometry.quorum


CERTIFICATE_VERSION = 1


class CertificateError(ValueError):
    """A certificate that does not prove availability (forged, missing or foreign signatures)."""


@dataclass(frozen=True)
class Certificate:
    """Proof that a quorum of the committee stored a blob. JSON on disk and on the wire:
    ``{"version": 1, "blob_id": ..., "epoch": ..., "confirmations": [<Confirmation JSON>...]}``."""

    blob_id: BlobId
    epoch: int
    confirmations: tuple[Confirmation, ...]

    def covered_shards(self, committee: Committee) -> set[int]:
        return verify_certificate(committee, self.blob_id, self.confirmations)

    def verify(self, committee: Committee) -> None:
        """Raise CertificateError unless valid signatures of this epoch cover n - f shards."""
        if self.epoch != committee.epoch:
            raise CertificateError(
                f"certificate is for epoch {self.epoch}, committee is at {committee.epoch}")
        covered = self.covered_shards(committee)
        if not is_certified(committee, covered):
            raise CertificateError(
                f"certificate for {self.blob_id} covers {len(covered)} shards with valid signatures; "
                f"a quorum is {committee.geometry.quorum} of {committee.n_shards}"
            )

    def to_json(self) -> str:
        return json.dumps({
            "version": CERTIFICATE_VERSION,
            "blob_id": str(self.blob_id),
            "epoch": self.epoch,
            "confirmations": [c.to_dict() for c in self.confirmations],
        }, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> Certificate:
        try:
            data = json.loads(text)
            if data["version"] != CERTIFICATE_VERSION:
                raise FormatError(f"certificate version {data['version']} is not one this walrusfs reads")
            confirmations = tuple(Confirmation.from_dict(c) for c in data["confirmations"])
            return cls(BlobId.parse(data["blob_id"]), int(data["epoch"]), confirmations)
        except (KeyError, TypeError, ValueError) as error:
            raise FormatError(f"not a certificate: {error}") from error

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)
