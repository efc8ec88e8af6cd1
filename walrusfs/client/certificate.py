"""Availability certificates: confirmations from nodes covering at least n - f shards."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..committee import Committee
from ..protocol import Confirmation, is_certified, verify_certificate
from ..redstuff import BlobId, FormatError

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
