"""Blob identity: BlobId and BlobMetadata (the commitments every sliver is checked against)."""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass

import blake3

from . import merkle
from .geometry import BlobLayout, EncodingGeometry, GeometryError
from .wire import FormatError, check_header, unpack

__all__ = ["ENCODING_REDSTUFF_GF256_V1", "ENCODING_REDSTUFF_RS16_V2", "BlobId", "BlobMetadata"]

from . import encodings
from .encodings import ENCODING_REDSTUFF_GF256_V1, ENCODING_REDSTUFF_RS16_V2

BLOB_ID_VERSION = 1
BLOB_ID_SIZE = 32
# The text form's alphabet, spelled out: str.isalnum would also accept non-ASCII letters and digits.
_BASE64URL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True, order=True)
class BlobId:
    """32 bytes: blake3("WRSID" | id version | encoding | n | length | blob root)."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != BLOB_ID_SIZE:
            raise FormatError(f"a blob ID is {BLOB_ID_SIZE} bytes, got {len(self.raw)}")

    def __str__(self) -> str:
        return base64.urlsafe_b64encode(self.raw).rstrip(b"=").decode()

    def __repr__(self) -> str:
        return f"BlobId({self})"

    @classmethod
    def parse(cls, text: str) -> BlobId:
        """Inverse of str(): 43 characters of unpadded URL-safe base64."""
        if len(text) != 43 or not _BASE64URL_CHARS.issuperset(text):
            raise FormatError(f"not a blob ID: {text[:60]!r} (expected 43 base64url characters)")
        raw = base64.urlsafe_b64decode(text + "=")
        blob_id = cls(raw)
        if str(blob_id) != text:  # non-canonical trailing bits
            raise FormatError(f"not a canonical blob ID: {text!r}")
        return blob_id


_META_HEAD = struct.Struct("<4sBBHQ")  # magic, version, encoding, n_shards, blob_length
META_MAGIC = b"WRSM"


@dataclass(frozen=True)
class BlobMetadata:
    """What a blob commits to: its length and, per sliver, the Merkle root over that sliver's full
    row or column of the n x n expanded matrix.

    Wire format v1: ``"WRSM" | u8 version=1 | u8 encoding | u16 n | u64 length |
    n x 32 primary roots (by sliver index) | n x 32 secondary roots (by sliver index)``.
    """

    n_shards: int
    blob_length: int
    primary_roots: tuple[bytes, ...]
    secondary_roots: tuple[bytes, ...]
    encoding: int = ENCODING_REDSTUFF_GF256_V1

    def __post_init__(self) -> None:
        _ = self.layout  # validates n and length
        if len(self.primary_roots) != self.n_shards or len(self.secondary_roots) != self.n_shards:
            raise FormatError("metadata needs one primary and one secondary root per shard")
        if any(len(r) != merkle.DIGEST_SIZE for r in self.primary_roots + self.secondary_roots):
            raise FormatError("every root is 32 bytes")
        problem = encodings.check(self.encoding, self.n_shards)
        if problem is not None:
            raise FormatError(f"blob metadata: {problem}")

    @property
    def geometry(self) -> EncodingGeometry:
        return EncodingGeometry(self.n_shards)

    @property
    def layout(self) -> BlobLayout:
        try:
            return EncodingGeometry(self.n_shards).layout(self.blob_length)
        except GeometryError as error:
            raise FormatError(f"metadata: {error}") from error

    def pair_digest(self, pair: int) -> bytes:
        secondary = self.geometry.secondary_of_pair(pair)
        return merkle.leaf_hash(self.primary_roots[pair] + self.secondary_roots[secondary])

    @property
    def blob_root(self) -> bytes:
        return merkle.root([self.pair_digest(p) for p in range(self.n_shards)])

    @property
    def blob_id(self) -> BlobId:
        head = struct.pack(
            "<5sBBHQ", b"WRSID", BLOB_ID_VERSION, self.encoding, self.n_shards, self.blob_length
        )
        return BlobId(blake3.blake3(head + self.blob_root).digest())

    def verify(self, blob_id: BlobId) -> None:
        """Raise FormatError unless this metadata is the one ``blob_id`` names."""
        if self.blob_id != blob_id:
            raise FormatError(f"metadata does not match blob ID {blob_id}")

    def to_bytes(self) -> bytes:
        head = _META_HEAD.pack(META_MAGIC, 1, self.encoding, self.n_shards, self.blob_length)
        return head + b"".join(self.primary_roots) + b"".join(self.secondary_roots)

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> BlobMetadata:
        check_header(data, META_MAGIC, (1,), "blob metadata")
        _, _, encoding, n, length = unpack(_META_HEAD, data, 0, "blob metadata")
        size = merkle.DIGEST_SIZE
        expected = _META_HEAD.size + 2 * n * size
        if len(data) != expected:
            raise FormatError(f"blob metadata for n={n} is {expected} bytes, got {len(data)}")
        body = bytes(data[_META_HEAD.size :])
        roots = [body[i : i + size] for i in range(0, 2 * n * size, size)]
        return cls(n, length, tuple(roots[:n]), tuple(roots[n:]), encoding)

    @staticmethod
    def wire_size(n_shards: int) -> int:
        return _META_HEAD.size + 2 * n_shards * merkle.DIGEST_SIZE
