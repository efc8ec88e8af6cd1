"""A filesystem's root record: the small signed pointer to its latest metadata snapshot.

Every node keeps the highest record it has seen for each filesystem, ordered by (lease generation,
sequence number); a reader asks a quorum and takes the highest one whose signature verifies. The
record is self-certifying: the filesystem ID is the hash of the filesystem's public key, so only the
holder of its private key can write a record that any node or reader accepts, and anyone holding the
key (or just the ID) can find it.

Wire form (JSON), version 2:

    {"version": 2, "fs_id": "<32 hex>", "seq": 7, "public_key": "<b64>",
     "snapshot": "<manifest blob id>", "created_ns": 1700000000000000000,
     "generation": 3, "holder": "<32 hex>", "signature": "<b64>"}

``generation`` and ``holder`` name the writer lease (walrusfs.lease) under which the record was
published: a node stores a version-2 record only from the holder of the current lease generation
(fencing), and records order by (generation, seq), so a deposed writer's record never wins over its
successor's. The signature is ed25519 over ``"walrusfs-root\\0" | u8 version | 16-byte fs id |
u64 seq | 32-byte snapshot blob id | u64 created_ns | u64 generation | 16-byte holder``
(little-endian).

Version 1 (walrusfs before writer leases) has no generation or holder, and its signature ends after
created_ns. It is still read, as generation 0; nodes accept it only for a filesystem that has never
had a writer lease.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass, replace
from typing import Any

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .keys import decode_public_key, public_bytes
from .redstuff import BlobId

ROOT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MAX_RECORD_BYTES = 4096
_DOMAIN = b"walrusfs-root\0"
_FS_ID_DOMAIN = b"walrusfs-fs-id\0"


class RootRecordError(ValueError):
    """Not a valid root record: malformed, or its signature does not verify."""


def fs_id_of(public_key: bytes) -> str:
    """The filesystem ID that a public key owns: 16 bytes of its domain-separated hash, as hex."""
    return blake3.blake3(_FS_ID_DOMAIN + public_key).digest(16).hex()


def fs_id_of_key(key: Ed25519PrivateKey) -> str:
    return fs_id_of(public_bytes(key))


def is_fs_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True)
class RootRecord:
    fs_id: str
    seq: int
    public_key: bytes
    snapshot: BlobId
    created_ns: int
    signature: bytes = b""
    generation: int = 0  # the writer lease it was published under (0: a version-1 record)
    holder: str = ""  # that lease's holder ("" in a version-1 record)
    version: int = ROOT_VERSION

    @property
    def order(self) -> tuple[int, int]:
        """Records compare by this: a later lease generation wins, then a higher number."""
        return (self.generation, self.seq)

    def signed_bytes(self) -> bytes:
        head = (_DOMAIN + struct.pack("<B", self.version) + bytes.fromhex(self.fs_id)
                + struct.pack("<Q", self.seq) + self.snapshot.raw + struct.pack("<Q", self.created_ns))
        if self.version == 1:
            return head
        return head + struct.pack("<Q", self.generation) + bytes.fromhex(self.holder)

    @classmethod
    def create(cls, key: Ed25519PrivateKey, seq: int, snapshot: BlobId, created_ns: int,
               fence: tuple[str, int] | None = None) -> RootRecord:
        """A version-2 record published under the lease ``fence`` = (holder, generation); without
        one, a version-1 record (what walrusfs wrote before writer leases)."""
        public = public_bytes(key)
        if fence is None:
            unsigned = cls(fs_id_of(public), seq, public, snapshot, created_ns, version=1)
        else:
            holder, generation = fence
            unsigned = cls(fs_id_of(public), seq, public, snapshot, created_ns, b"", generation, holder)
        return replace(unsigned, signature=key.sign(unsigned.signed_bytes()))

    def verify(self, fs_id: str | None = None) -> None:
        """Raise RootRecordError unless the record is signed by the key that owns its fs_id (and,
        if given, is for ``fs_id``)."""
        if fs_id is not None and self.fs_id != fs_id:
            raise RootRecordError(f"record is for filesystem {self.fs_id}, not {fs_id}")
        if fs_id_of(self.public_key) != self.fs_id:
            raise RootRecordError(f"public key does not own filesystem {self.fs_id}")
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(self.signature, self.signed_bytes())
        except InvalidSignature:
            raise RootRecordError(f"bad signature on root record {self.seq} of {self.fs_id}") from None

    def to_dict(self) -> dict[str, Any]:
        data = {"version": self.version, "fs_id": self.fs_id, "seq": self.seq,
                "public_key": base64.b64encode(self.public_key).decode(), "snapshot": str(self.snapshot),
                "created_ns": self.created_ns, "signature": base64.b64encode(self.signature).decode()}
        if self.version >= 2:
            data.update(generation=self.generation, holder=self.holder)
        return data

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode()

    @classmethod
    def from_json(cls, text: bytes | str) -> RootRecord:
        if len(text) > MAX_RECORD_BYTES:
            raise RootRecordError(f"root record of {len(text)} bytes; at most {MAX_RECORD_BYTES}")
        try:
            data = json.loads(text)
            version = data["version"]
            if version not in READABLE_VERSIONS:
                raise RootRecordError(f"root record version {version!r}; this walrusfs reads versions "
                                      f"{', '.join(map(str, READABLE_VERSIONS))} (upgrade walrusfs)")
            fs_id, seq, created = data["fs_id"], data["seq"], data["created_ns"]
            generation, holder = (data["generation"], data["holder"]) if version >= 2 else (0, "")
            if not (isinstance(fs_id, str) and is_fs_id(fs_id)):
                raise RootRecordError("fs_id is not 32 lowercase hex digits")
            if not all(isinstance(v, int) and 0 <= v < 2**64 for v in (seq, created, generation)):
                raise RootRecordError("seq, created_ns and generation must be unsigned 64-bit integers")
            if version >= 2 and not (isinstance(holder, str) and is_fs_id(holder) and generation >= 1):
                raise RootRecordError("a version-2 record names a lease: holder of 32 hex digits, generation >= 1")
            return cls(fs_id, seq, decode_public_key(data["public_key"]), BlobId.parse(data["snapshot"]),
                       created, base64.b64decode(data["signature"], validate=True), generation, holder, version)
        except RootRecordError:
            raise
        except (KeyError, TypeError, ValueError, binascii.Error) as error:
            raise RootRecordError(f"malformed root record: {error}") from None
