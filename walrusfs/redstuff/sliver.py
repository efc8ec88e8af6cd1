"""Slivers, recovery symbols and inconsistency proofs, with their versioned wire formats."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from . import encodings, merkle
from .blob import ENCODING_REDSTUFF_GF256_V1, BlobId, BlobMetadata
from .geometry import SYMBOL_ALIGNMENT, EncodingGeometry, GeometryError, SliverKind
from .wire import FormatError, check_header, unpack


def symbol_count(geometry: EncodingGeometry, kind: SliverKind) -> int:
    return geometry.n_secondary if kind is SliverKind.PRIMARY else geometry.n_primary


def as_line(data: object, symbol_size: int) -> np.ndarray:
    """View a line of symbols (a sliver, a blob row) as uint64 of shape (8, count, P), no copy.

    Every line is stored plane-major: a symbol of s bytes is 8 packets of P = s/64 words, and the
    line holds packet 0 of every symbol in order, then packet 1 of every symbol, and so on. Packet
    c of all symbols of a line is then one contiguous run, which is what makes the bit-sliced XORs
    fast. The canonical bytes of one symbol (what is hashed and sent alone) are its packets 0..7.
    """
    array = np.frombuffer(data, dtype=np.uint8)  # type: ignore[call-overload]
    return array.view(np.uint64).reshape(8, -1, symbol_size // 64)


def symbol_bytes(line: np.ndarray, index: int) -> bytes:
    """The canonical bytes of symbol ``index`` of a line (its 8 packets in order)."""
    return line[:, index, :].tobytes()


def in_committee(n_shards: int, index: object) -> bool:
    """Whether ``index`` is a sliver index in [0, n_shards): an integer (not a bool), never negative,
    so it can never alias another sliver through Python's negative indexing."""
    return (isinstance(index, int | np.integer) and not isinstance(index, bool)
            and 0 <= index < n_shards)


def _check_index(n_shards: int, index: object, what: str) -> None:
    if not in_committee(n_shards, index):
        raise FormatError(f"{what}: index {index!r} outside [0, {n_shards})")


def _check_geometry(n_shards: object, what: str) -> EncodingGeometry:
    if not isinstance(n_shards, int | np.integer) or isinstance(n_shards, bool):
        raise FormatError(f"{what}: n_shards {n_shards!r} is not an integer")
    try:
        return EncodingGeometry(int(n_shards))
    except GeometryError as error:
        raise FormatError(f"{what}: {error}") from error


def _check_symbol_size(symbol_size: int, what: str) -> None:
    if symbol_size <= 0 or symbol_size % SYMBOL_ALIGNMENT:
        raise FormatError(f"{what}: symbol size {symbol_size} is not a positive multiple of 64")


_SLIVER_HEAD = struct.Struct("<4sBBHHI32s2x")
_SLIVER_HEAD_V2 = struct.Struct("<4sBBHHI32sBx")
SLIVER_MAGIC = b"WRSL"


@dataclass(frozen=True, eq=False)
class Sliver:
    """One primary or secondary sliver of a blob.

    How the symbols are laid out is the encoding's: plane-major for GF(2^8) (see ``as_line``),
    symbol-major for RS16. Wire format v1 (encoding 1 only), a 48-byte header (so the symbols after
    it stay 16-byte aligned), then the symbols: ``"WRSL" | u8 version=1 | u8 kind | u16 n |
    u16 index | u32 symbol size | 32 blob id | 2 zero | symbols``. Version 2 is the same with the
    first padding byte naming the encoding: ``... | 32 blob id | u8 encoding | 1 zero | symbols``;
    slivers of encoding 1 are still written as v1. The symbol count follows from kind and n (n_s
    primary, n_p secondary).
    """

    blob_id: BlobId
    kind: SliverKind
    index: int
    n_shards: int
    symbol_size: int
    data: object  # bytes-like, symbol_count * symbol_size bytes
    encoding: int = ENCODING_REDSTUFF_GF256_V1

    def __post_init__(self) -> None:
        if self.encoding not in encodings.MAX_SHARDS:
            raise FormatError(f"sliver: unknown encoding type {self.encoding!r}")
        if not isinstance(self.kind, SliverKind):
            raise FormatError(f"sliver: kind {self.kind!r} is not a SliverKind")
        what = f"{self.kind.name.lower()} sliver {self.index}"
        _check_geometry(self.n_shards, what)
        problem = encodings.check(self.encoding, self.n_shards)
        if problem is not None:
            raise FormatError(f"{what}: {problem}")
        _check_index(self.n_shards, self.index, what)
        _check_symbol_size(self.symbol_size, what)
        expected = symbol_count(self.geometry, self.kind) * self.symbol_size
        if self.nbytes != expected:
            raise FormatError(f"{what}: {self.nbytes} bytes of symbols, expected {expected}")

    @property
    def geometry(self) -> EncodingGeometry:
        return EncodingGeometry(self.n_shards)

    @property
    def nbytes(self) -> int:
        return memoryview(self.data).nbytes  # type: ignore[arg-type]

    def line(self) -> np.ndarray:
        """The symbols as (8, count, P) uint64 planes (see ``as_line``)."""
        return as_line(self.data, self.symbol_size)

    def header(self) -> bytes:
        if self.encoding == ENCODING_REDSTUFF_GF256_V1:  # v1: what readers before encoding 2 expect
            return _SLIVER_HEAD.pack(
                SLIVER_MAGIC, 1, self.kind, self.n_shards, self.index, self.symbol_size, self.blob_id.raw
            )
        return _SLIVER_HEAD_V2.pack(SLIVER_MAGIC, 2, self.kind, self.n_shards, self.index, self.symbol_size,
                                    self.blob_id.raw, self.encoding)

    def to_bytes(self) -> bytes:
        return self.header() + bytes(memoryview(self.data))  # type: ignore[arg-type]

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> Sliver:
        """Parse without copying the symbols (they stay a view of ``data``)."""
        version = check_header(data, SLIVER_MAGIC, (1, 2), "sliver")
        _, _, kind, n, index, symbol_size, blob_id = unpack(_SLIVER_HEAD, data, 0, "sliver")
        # Version 1 means encoding 1; version 2 names its encoding in the first padding byte.
        encoding = ENCODING_REDSTUFF_GF256_V1 if version == 1 else data[_SLIVER_HEAD.size - 2]
        padding = bytes(data[_SLIVER_HEAD.size - (2 if version == 1 else 1) : _SLIVER_HEAD.size])
        if padding.strip(b"\0"):  # one encoding per sliver: a sliver is stored and served as received
            raise FormatError(f"sliver: header padding is {padding.hex()}, must be zero")
        if version == 2 and encoding == ENCODING_REDSTUFF_GF256_V1:
            raise FormatError("sliver: a version 2 header for encoding 1 (encoding 1 slivers are version 1)")
        if kind not in (0, 1):
            raise FormatError(f"sliver: unknown kind {kind}")
        try:
            geometry = EncodingGeometry(n)
        except GeometryError as error:
            raise FormatError(f"sliver: {error}") from error
        return cls(BlobId(blob_id), SliverKind(kind), index, geometry.n_shards, symbol_size,
                   memoryview(data)[_SLIVER_HEAD.size :], encoding)

    @staticmethod
    def wire_size(layout_symbol_size: int, count: int) -> int:
        return _SLIVER_HEAD.size + layout_symbol_size * count

    def matches(self, metadata: BlobMetadata) -> None:
        """Raise FormatError if this sliver cannot belong to the blob ``metadata`` describes."""
        if self.encoding != metadata.encoding:
            raise FormatError(f"{self.kind.name.lower()} sliver {self.index} is of encoding {self.encoding}; "
                              f"the blob is of encoding {metadata.encoding}")
        if self.n_shards != metadata.n_shards or self.symbol_size != metadata.layout.symbol_size:
            raise FormatError(
                f"{self.kind.name.lower()} sliver {self.index} has n={self.n_shards}, symbol size "
                f"{self.symbol_size}; the blob has n={metadata.n_shards}, "
                f"symbol size {metadata.layout.symbol_size}"
            )


HEADER_SIZE = _SLIVER_HEAD.size

_SYMBOL_HEAD = struct.Struct("<4sBBHHHI32s")
SYMBOL_MAGIC = b"WRSY"


@dataclass(frozen=True, eq=False)
class RecoverySymbol:
    """One symbol of another node's sliver expansion, with its Merkle proof, used to rebuild a lost
    sliver (target) without the rest of the blob.

    For a PRIMARY target (row t) it is cell (t, source) of the full matrix, proven at leaf t against
    the secondary root of column ``source``. For a SECONDARY target (column t) it is cell
    (source, t), proven at leaf t against the primary root of row ``source``.

    Wire format v1: ``"WRSY" | u8 version=1 | u8 target kind | u16 n | u16 source index |
    u16 target index | u32 symbol size | 32 blob id | symbol | ceil(log2 n) x 32 proof``.
    """

    blob_id: BlobId
    target_kind: SliverKind
    source_index: int
    target_index: int
    n_shards: int
    data: bytes
    proof: tuple[bytes, ...]

    def __post_init__(self) -> None:
        # Only what could make the symbol claim another cell: the data and proof are checked
        # against the metadata by is_valid_for.
        if not isinstance(self.target_kind, SliverKind):
            raise FormatError(f"recovery symbol: target kind {self.target_kind!r} is not a SliverKind")
        _check_geometry(self.n_shards, "recovery symbol")
        _check_index(self.n_shards, self.source_index, "recovery symbol source")
        _check_index(self.n_shards, self.target_index, "recovery symbol target")

    def to_bytes(self) -> bytes:
        head = _SYMBOL_HEAD.pack(
            SYMBOL_MAGIC, 1, self.target_kind, self.n_shards, self.source_index,
            self.target_index, len(self.data), self.blob_id.raw,
        )
        return head + self.data + b"".join(self.proof)

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> RecoverySymbol:
        check_header(data, SYMBOL_MAGIC, (1,), "recovery symbol")
        _, _, kind, n, source, target, size, blob_id = unpack(_SYMBOL_HEAD, data, 0, "recovery symbol")
        if kind not in (0, 1):
            raise FormatError(f"recovery symbol: unknown target kind {kind}")
        try:
            geometry = EncodingGeometry(n)
            geometry.check_index(source)
            geometry.check_index(target)
        except GeometryError as error:
            raise FormatError(f"recovery symbol: {error}") from error
        _check_symbol_size(size, "recovery symbol")
        depth = merkle.proof_length(n)
        start = _SYMBOL_HEAD.size
        if len(data) != start + size + depth * merkle.DIGEST_SIZE:
            raise FormatError(f"recovery symbol: {len(data)} bytes, expected {start + size + depth * 32}")
        body = bytes(data[start:])
        proof = tuple(body[size + i * 32 : size + (i + 1) * 32] for i in range(depth))
        return cls(BlobId(blob_id), SliverKind(kind), source, target, n, body[:size], proof)

    def is_valid_for(self, metadata: BlobMetadata) -> bool:
        """Whether the symbol is the cell it claims to be of the blob ``metadata`` commits to."""
        # The indices are checked again: __post_init__ can be bypassed (object.__setattr__ on a
        # frozen instance), and a negative source would silently select another sliver's root.
        if (self.n_shards != metadata.n_shards or len(self.data) != metadata.layout.symbol_size
                or self.blob_id != metadata.blob_id or not isinstance(self.target_kind, SliverKind)
                or not in_committee(self.n_shards, self.source_index)
                or not in_committee(self.n_shards, self.target_index)):
            return False
        roots = metadata.secondary_roots if self.target_kind is SliverKind.PRIMARY else metadata.primary_roots
        from .codec import codec_for  # the codecs build on these formats

        return codec_for(metadata.encoding).verify_cell(roots[self.source_index], self.n_shards,
                                                        self.target_index, self.data, self.proof)


_PROOF_HEAD = struct.Struct("<4sBBHH32s")
PROOF_MAGIC = b"WRSI"


@dataclass(frozen=True, eq=False)
class InconsistencyProof:
    """Recovery symbols, each valid against the metadata, that decode to a sliver whose root is not
    the one the metadata commits to: evidence, checkable by anyone holding the metadata, that the
    writer encoded the blob inconsistently.

    Wire format v1: ``"WRSI" | u8 version=1 | u8 target kind | u16 target index | u16 count |
    32 blob id | count x (u32 length | recovery symbol)``.
    """

    blob_id: BlobId
    target_kind: SliverKind
    target_index: int
    symbols: tuple[RecoverySymbol, ...]

    def to_bytes(self) -> bytes:
        parts = [_PROOF_HEAD.pack(PROOF_MAGIC, 1, self.target_kind, self.target_index,
                                  len(self.symbols), self.blob_id.raw)]
        for symbol in self.symbols:
            encoded = symbol.to_bytes()
            parts += [struct.pack("<I", len(encoded)), encoded]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> InconsistencyProof:
        check_header(data, PROOF_MAGIC, (1,), "inconsistency proof")
        _, _, kind, index, count, blob_id = unpack(_PROOF_HEAD, data, 0, "inconsistency proof")
        if kind not in (0, 1):
            raise FormatError(f"inconsistency proof: unknown target kind {kind}")
        offset = _PROOF_HEAD.size
        symbols: list[RecoverySymbol] = []
        for _ in range(count):
            (length,) = unpack(struct.Struct("<I"), data, offset, "inconsistency proof")
            offset += 4
            if offset + length > len(data):
                raise FormatError("inconsistency proof: truncated symbol")
            symbols.append(RecoverySymbol.from_bytes(data[offset : offset + length]))
            offset += length
        if offset != len(data):
            raise FormatError("inconsistency proof: trailing bytes")
        return cls(BlobId(blob_id), SliverKind(kind), index, tuple(symbols))

