"""A filesystem's writer lease: the signed request by which one writer claims a filesystem.

A filesystem has one writer at a time, across machines. The writer asks every node for a lease
with a record signed by the filesystem's key (only holders of fs.key can ask); a node grants it
unless another holder's lease is unexpired there (docs/writer-lease.md has the rules and the
safety argument). The writer holds the filesystem while nodes covering n-f shards granted it.

Wire form (JSON, at most MAX_LEASE_BYTES):

    {"version": 1, "fs_id": "<32 hex>", "public_key": "<b64>", "holder": "<32 hex>",
     "generation": 3, "renewal": 1700000000000000000, "term_ms": 30000, "takeover": false,
     "label": "host:/var/lib/walrusfs/fs/x", "signature": "<b64>"}

- ``holder``: the writer's identity, a random ID kept in its state directory (<state>/writer-id).
- ``generation``: the fencing token. It stays the same while one holder keeps the filesystem and
  grows by at least one whenever the holder changes; root records name it (walrusfs.roots).
- ``renewal``: grows with every request of one holder and generation (nanoseconds since the epoch
  are used), so a captured request cannot be replayed to keep a dead writer's lease alive.
- ``term_ms``: how long the node keeps the lease from when it grants it, on its own clock; 0 asks
  the node to release it.
- ``takeover``: grant even over another holder's unexpired lease (the operator says it is dead).
- ``label``: where the writer runs, for messages only.

The signature is ed25519 over ``"walrusfs-lease\\0" | u8 version | 16-byte fs id | 16-byte holder
| u64 generation | u64 renewal | u32 term_ms | u8 takeover | u16 label length | label (UTF-8)``
(little-endian).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass, replace
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .keys import decode_public_key, public_bytes
from .roots import fs_id_of, is_fs_id

LEASE_VERSION = 1
MAX_LEASE_BYTES = 4096
MAX_LABEL = 200
MIN_TERM_MS = 1_000  # shorter terms could not be renewed in time over a loaded network
MAX_TERM_MS = 3_600_000  # nor may a writer lock others out for longer than an hour at a time
_DOMAIN = b"walrusfs-lease\0"


class LeaseRecordError(ValueError):
    """Not a valid lease request: malformed, or its signature does not verify."""


def is_holder_id(text: str) -> bool:
    return is_fs_id(text)  # the same shape: 32 lowercase hex digits


@dataclass(frozen=True)
class LeaseRecord:
    fs_id: str
    public_key: bytes
    holder: str
    generation: int
    renewal: int
    term_ms: int
    takeover: bool = False
    label: str = ""
    signature: bytes = b""

    @property
    def release(self) -> bool:
        return self.term_ms == 0

    def signed_bytes(self) -> bytes:
        label = self.label.encode()
        return (_DOMAIN + struct.pack("<B", LEASE_VERSION) + bytes.fromhex(self.fs_id) + bytes.fromhex(self.holder)
                + struct.pack("<QQIBH", self.generation, self.renewal, self.term_ms, int(self.takeover), len(label))
                + label)

    @classmethod
    def create(cls, key: Ed25519PrivateKey, holder: str, generation: int, renewal: int, term_ms: int, *,
               takeover: bool = False, label: str = "") -> LeaseRecord:
        public = public_bytes(key)
        unsigned = cls(fs_id_of(public), public, holder, generation, renewal, term_ms, takeover,
                       label.encode()[:MAX_LABEL].decode(errors="ignore"))
        unsigned.check()
        return replace(unsigned, signature=key.sign(unsigned.signed_bytes()))

    def check(self) -> None:
        """The field ranges (not the signature)."""
        if not is_fs_id(self.fs_id):
            raise LeaseRecordError("fs_id is not 32 lowercase hex digits")
        if not is_holder_id(self.holder):
            raise LeaseRecordError("holder is not 32 lowercase hex digits")
        if not 1 <= self.generation < 2**64 or not 0 <= self.renewal < 2**64:
            raise LeaseRecordError("generation must be in [1, 2^64) and renewal in [0, 2^64)")
        if self.term_ms != 0 and not MIN_TERM_MS <= self.term_ms <= MAX_TERM_MS:
            raise LeaseRecordError(f"term_ms {self.term_ms}: 0 (release) or in [{MIN_TERM_MS}, {MAX_TERM_MS}]")
        if len(self.label.encode()) > MAX_LABEL:
            raise LeaseRecordError(f"label longer than {MAX_LABEL} bytes")

    def verify(self, fs_id: str | None = None) -> None:
        """Raise LeaseRecordError unless the record is well-formed and signed by the key that owns
        its fs_id (and, if given, is for ``fs_id``)."""
        self.check()
        if fs_id is not None and self.fs_id != fs_id:
            raise LeaseRecordError(f"lease is for filesystem {self.fs_id}, not {fs_id}")
        if fs_id_of(self.public_key) != self.fs_id:
            raise LeaseRecordError(f"public key does not own filesystem {self.fs_id}")
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(self.signature, self.signed_bytes())
        except InvalidSignature:
            raise LeaseRecordError(f"bad signature on the lease request of {self.fs_id}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"version": LEASE_VERSION, "fs_id": self.fs_id, "public_key": base64.b64encode(self.public_key).decode(),
                "holder": self.holder, "generation": self.generation, "renewal": self.renewal,
                "term_ms": self.term_ms, "takeover": self.takeover, "label": self.label,
                "signature": base64.b64encode(self.signature).decode()}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode()

    @classmethod
    def from_dict(cls, data: Any) -> LeaseRecord:
        try:
            if data["version"] != LEASE_VERSION:
                raise LeaseRecordError(f"lease version {data['version']!r}; this walrusfs reads version "
                                       f"{LEASE_VERSION} (upgrade walrusfs)")
            ints = [data["generation"], data["renewal"], data["term_ms"]]
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
                raise LeaseRecordError("generation, renewal and term_ms must be integers")
            if not isinstance(data["takeover"], bool) or not isinstance(data["label"], str):
                raise LeaseRecordError("takeover must be a boolean and label a string")
            if not isinstance(data["fs_id"], str) or not isinstance(data["holder"], str):
                raise LeaseRecordError("fs_id and holder must be strings")
            record = cls(data["fs_id"], decode_public_key(data["public_key"]), data["holder"], *ints,
                         data["takeover"], data["label"], base64.b64decode(data["signature"], validate=True))
        except LeaseRecordError:
            raise
        except (KeyError, TypeError, ValueError, binascii.Error) as error:
            raise LeaseRecordError(f"malformed lease: {error}") from None
        record.check()
        return record

    @classmethod
    def from_json(cls, text: bytes | str) -> LeaseRecord:
        if len(text) > MAX_LEASE_BYTES:
            raise LeaseRecordError(f"lease of {len(text)} bytes; at most {MAX_LEASE_BYTES}")
        try:
            data = json.loads(text)
        except ValueError as error:
            raise LeaseRecordError(f"malformed lease: {error}") from None
        return cls.from_dict(data)


@dataclass(frozen=True)
class LeaseState:
    """A node's answer about a filesystem's lease: the last granted request and how long it lasts."""

    record: LeaseRecord
    expires_in_ms: int  # 0: expired or released

    @property
    def held(self) -> bool:
        return self.expires_in_ms > 0

    def to_dict(self) -> dict[str, Any]:
        return {"lease": self.record.to_dict(), "expires_in_ms": self.expires_in_ms, "held": self.held}

    @classmethod
    def from_dict(cls, data: Any, fs_id: str) -> LeaseState:
        """Parsed and verified (a node cannot make up a lease the filesystem's key did not sign)."""
        if not isinstance(data, dict) or not isinstance(data.get("expires_in_ms"), int):
            raise LeaseRecordError("a lease answer needs 'lease' and an integer 'expires_in_ms'")
        record = LeaseRecord.from_dict(data.get("lease"))
        record.verify(fs_id)
        return cls(record, max(0, data["expires_in_ms"]))
