"""What client and storage nodes agree on beyond the codec: request authorisation, confirmations
and availability certificates.

Writes (PUT, DELETE) carry ``Authorization: WalrusFS-Ed25519 key=..., ts=..., nonce=..., sig=...``:
an ed25519 signature by a committee writer over ``method | path | timestamp | nonce``. Nodes accept
it within MAX_CLOCK_SKEW seconds of their clock and, with a ReplayGuard, only once. The body is not
signed: slivers and metadata are self-certifying (checked against the blob ID in the path).

A Confirmation is a node's signed statement that it stores every sliver of a blob for all its shards
in an epoch. Confirmations from nodes covering at least n - f shards form a certificate of
availability.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .committee import Committee
from .keys import KEY_SIZE, public_bytes
from .redstuff import BlobId, FormatError

AUTH_SCHEME = "WalrusFS-Ed25519"
MAX_CLOCK_SKEW = 300  # seconds either way
SIGNATURE_SIZE = 64
_REQUEST_DOMAIN = b"walrusfs-request-v1\n"


class AuthError(Exception):
    """A request whose authorisation is missing or wrong. ``forbidden`` when the signature is good
    but the key may not write (403 rather than 401)."""

    def __init__(self, message: str, forbidden: bool = False) -> None:
        super().__init__(message)
        self.forbidden = forbidden


def _request_message(method: str, path: str, timestamp: int, nonce: str) -> bytes:
    return _REQUEST_DOMAIN + f"{method.upper()}\n{path}\n{timestamp}\n{nonce}".encode()


def sign_request(key: Ed25519PrivateKey, method: str, path: str, *, now: float | None = None,
                 nonce: str | None = None) -> str:
    """The Authorization header value for a request (client side). ``path`` is the request target
    exactly as sent (percent-encoding and query string included)."""
    timestamp = int(time.time() if now is None else now)
    nonce = nonce or secrets.token_urlsafe(16)
    signature = key.sign(_request_message(method, path, timestamp, nonce))
    return (f'{AUTH_SCHEME} key="{base64.b64encode(public_bytes(key)).decode()}", ts="{timestamp}", '
            f'nonce="{nonce}", sig="{base64.b64encode(signature).decode()}"')


class ReplayGuard:
    """Remembers nonces seen within the clock-skew window so a captured request cannot be replayed."""

    def __init__(self, capacity: int = 200_000) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._capacity = capacity

    def check_and_remember(self, nonce: str, now: float) -> bool:
        """False if ``nonce`` was already used."""
        while self._seen and (next(iter(self._seen.values())) < now or len(self._seen) >= self._capacity):
            self._seen.popitem(last=False)
        if nonce in self._seen:
            return False
        self._seen[nonce] = now + 2 * MAX_CLOCK_SKEW
        return True


def _parse_header(header: str) -> dict[str, str]:
    scheme, _, rest = header.strip().partition(" ")
    if scheme != AUTH_SCHEME:
        raise AuthError(f"Authorization scheme must be {AUTH_SCHEME}")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise AuthError(f"malformed Authorization parameter {part.strip()[:40]!r}")
        fields[name.strip()] = value.strip().strip('"')
    missing = {"key", "ts", "nonce", "sig"} - fields.keys()
    if missing:
        raise AuthError(f"Authorization lacks {', '.join(sorted(missing))}")
    return fields


def verify_request(header: str | None, method: str, path: str, committee: Committee, *,
                   now: float | None = None, replay: ReplayGuard | None = None) -> bytes:
    """Check a write's Authorization header (node side); return the writer's public key.

    Raises AuthError saying what is wrong.
    """
    if not header:
        raise AuthError(f"writes need an Authorization: {AUTH_SCHEME} header signed by a writer key")
    fields = _parse_header(header)
    try:
        key = base64.b64decode(fields["key"], validate=True)
        signature = base64.b64decode(fields["sig"], validate=True)
        timestamp = int(fields["ts"])
    except (binascii.Error, ValueError):
        raise AuthError("Authorization key, sig or ts is not well formed") from None
    if len(key) != KEY_SIZE or len(signature) != SIGNATURE_SIZE or not 8 <= len(fields["nonce"]) <= 64:
        raise AuthError("Authorization key, sig or nonce has the wrong length")
    now = time.time() if now is None else now
    if abs(now - timestamp) > MAX_CLOCK_SKEW:
        raise AuthError(
            f"Authorization timestamp is {int(now - timestamp)} s away from the node's clock "
            f"(limit {MAX_CLOCK_SKEW} s): check the clocks"
        )
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(
            signature, _request_message(method, path, timestamp, fields["nonce"]))
    except InvalidSignature:
        raise AuthError("Authorization signature does not verify for this method and path") from None
    if not committee.is_writer(key):
        raise AuthError("this key is not one of the committee's writers", forbidden=True)
    if replay is not None and not replay.check_and_remember(fields["nonce"], now):
        raise AuthError("Authorization nonce was already used (replayed request)")
    return key


# --- confirmations and certificates ----------------------------------------------------------------

CONFIRMATION_VERSION = 1
_CONFIRMATION_DOMAIN = b"walrusfs-confirmation\0"


@dataclass(frozen=True)
class Confirmation:
    """Node ``node_id`` stores every sliver of ``blob_id`` for ``shards`` in ``epoch``.

    Signed bytes (v1): ``"walrusfs-confirmation\\0" | u8 version | u64 epoch | 32 blob id |
    u16 len | node id (utf-8) | u16 count | count x u16 shard``. Travels as JSON with the same
    fields plus ``signature`` (base64).
    """

    epoch: int
    blob_id: BlobId
    node_id: str
    shards: tuple[int, ...]
    signature: bytes = b""
    version: int = CONFIRMATION_VERSION

    def signed_bytes(self) -> bytes:
        node = self.node_id.encode()
        return b"".join([
            _CONFIRMATION_DOMAIN,
            struct.pack("<BQ", self.version, self.epoch),
            self.blob_id.raw,
            struct.pack("<H", len(node)), node,
            struct.pack(f"<H{len(self.shards)}H", len(self.shards), *self.shards),
        ])

    def signed_by(self, key: Ed25519PrivateKey) -> Confirmation:
        unsigned = Confirmation(self.epoch, self.blob_id, self.node_id, tuple(sorted(self.shards)))
        return Confirmation(unsigned.epoch, unsigned.blob_id, unsigned.node_id, unsigned.shards,
                            key.sign(unsigned.signed_bytes()))

    def verify(self, public_key: bytes) -> bool:
        if self.version != CONFIRMATION_VERSION:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(self.signature, self.signed_bytes())
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "epoch": self.epoch,
            "blob_id": str(self.blob_id),
            "node_id": self.node_id,
            "shards": list(self.shards),
            "signature": base64.b64encode(self.signature).decode(),
        }

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
            if data["version"] != CONFIRMATION_VERSION:
                raise FormatError(f"confirmation version {data['version']} is not one this walrusfs reads")
            shards = tuple(int(s) for s in data["shards"])
            if not all(0 <= s < 1 << 16 for s in shards):
                raise FormatError("confirmation shard out of range")
            return cls(int(data["epoch"]), BlobId.parse(data["blob_id"]), str(data["node_id"]), shards,
                       base64.b64decode(data["signature"], validate=True))
        except (KeyError, TypeError, ValueError, binascii.Error) as error:
            raise FormatError(f"not a confirmation: {error}") from error


def verify_certificate(committee: Committee, blob_id: BlobId,
                       confirmations: Iterable[Confirmation]) -> set[int]:
    """The shards covered by valid confirmations: signed by a committee node, for this epoch and
    blob, counting only shards that node holds. A certificate is complete when
    ``is_certified(committee, covered)``."""
    covered: set[int] = set()
    for confirmation in confirmations:
        if (confirmation.epoch != committee.epoch or confirmation.blob_id != blob_id
                or not committee.has_node(confirmation.node_id)):
            continue
        node = committee.node(confirmation.node_id)
        if confirmation.verify(node.public_key):
            covered |= set(confirmation.shards) & set(node.shards)
    return covered


def is_certified(committee: Committee, covered: set[int]) -> bool:
    return len(covered) >= committee.geometry.quorum
