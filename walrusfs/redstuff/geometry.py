"""RedStuff geometry: every size and index rule of the code lives here and nowhere else.

For n shards, f = (n-1)//3 may be faulty. The blob, zero-padded, fills an n_p x n_s matrix of
symbols row-major (n_p = n-2f primary source symbols, n_s = n-f secondary). Extending every column
to n symbols gives the n primary slivers (rows, n_s symbols each); extending every row to n symbols
gives the n secondary slivers (columns, n_p symbols each).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import NewType

from .wire import FormatError

MIN_SHARDS = 4
# The most any encoding takes (encodings.MAX_SHARDS has each one's own bound: 256 for GF(2^8)). A
# blob commits to all n^2 cells of its expanded matrix, so n bounds the smallest blob's cost: n^2
# symbols of at least 64 bytes, 64 MiB at n=1024.
MAX_SHARDS = 1024
# Symbols are 8 packets of 64-bit words, so every symbol is a multiple of 64 bytes.
SYMBOL_ALIGNMENT = 64
# The formats store the symbol size in 32 bits; aligned, the largest is 2^32 - 64.
MAX_SYMBOL_SIZE = (1 << 32) - SYMBOL_ALIGNMENT
# The real bound is memory: encoding holds the blob plus ~2x it in parity (see encode.py), and a
# blob is one unit of upload and verification. 16 GiB is the most a 24 GiB machine can encode;
# the filesystem uses blobs of tens of MiB.
MAX_BLOB_LENGTH = 16 << 30

SliverPairIndex = NewType("SliverPairIndex", int)
ShardIndex = NewType("ShardIndex", int)


class GeometryError(ValueError):
    """A size or index outside what the code allows."""


class SliverKind(IntEnum):
    PRIMARY = 0  # a row of the n x n_s matrix: n_s symbols
    SECONDARY = 1  # a column of the n_p x n matrix: n_p symbols

    @property
    def other(self) -> SliverKind:
        return SliverKind(1 - self)

    @classmethod
    def parse(cls, text: str) -> SliverKind:
        try:
            return cls[text.upper()]
        except KeyError:
            raise FormatError(f"sliver kind is 'primary' or 'secondary', not {text!r}") from None


@dataclass(frozen=True)
class EncodingGeometry:
    n_shards: int

    def __post_init__(self) -> None:
        if not MIN_SHARDS <= self.n_shards <= MAX_SHARDS:
            raise GeometryError(
                f"n_shards must be in [{MIN_SHARDS}, {MAX_SHARDS}], got {self.n_shards}"
            )

    @property
    def max_faulty(self) -> int:
        return (self.n_shards - 1) // 3

    @property
    def n_primary(self) -> int:
        """Source symbols per column: rows of the blob matrix, slivers needed to decode primary."""
        return self.n_shards - 2 * self.max_faulty

    @property
    def n_secondary(self) -> int:
        """Source symbols per row: columns of the blob matrix, slivers needed to decode secondary."""
        return self.n_shards - self.max_faulty

    @property
    def quorum(self) -> int:
        """Confirmations that make an availability certificate (n - f)."""
        return self.n_shards - self.max_faulty

    @property
    def source_symbols(self) -> int:
        return self.n_primary * self.n_secondary

    def symbol_size(self, blob_length: int) -> int:
        if not 0 <= blob_length <= self.max_blob_length:
            raise GeometryError(
                f"blob length {blob_length} outside [0, {self.max_blob_length}] for n={self.n_shards}"
            )
        per_symbol = -(-blob_length // self.source_symbols)
        aligned = -(-per_symbol // SYMBOL_ALIGNMENT) * SYMBOL_ALIGNMENT
        return max(aligned, SYMBOL_ALIGNMENT)

    @property
    def max_blob_length(self) -> int:
        return min(MAX_BLOB_LENGTH, MAX_SYMBOL_SIZE * self.source_symbols)

    def layout(self, blob_length: int) -> BlobLayout:
        return BlobLayout(self, blob_length, self.symbol_size(blob_length))

    def secondary_of_pair(self, pair: int) -> int:
        """Sliver pair p holds primary sliver p and secondary sliver n-1-p."""
        self.check_index(pair)
        return self.n_shards - 1 - pair

    def pair_of_secondary(self, secondary: int) -> SliverPairIndex:
        self.check_index(secondary)
        return SliverPairIndex(self.n_shards - 1 - secondary)

    def sliver_of_pair(self, pair: int, kind: SliverKind) -> int:
        """The index of pair ``pair``'s sliver of ``kind``: primary p, secondary n-1-p. Every place
        that goes from pair to sliver index asks this (or ``secondary_of_pair``)."""
        self.check_index(pair)
        return pair if kind is SliverKind.PRIMARY else self.secondary_of_pair(pair)

    def pair_of_sliver(self, index: int, kind: SliverKind) -> SliverPairIndex:
        """The pair that holds sliver ``index`` of ``kind`` (the inverse of ``sliver_of_pair``)."""
        self.check_index(index)
        return SliverPairIndex(index) if kind is SliverKind.PRIMARY else self.pair_of_secondary(index)

    def shard_of_pair(self, pair: int, blob_id: bytes) -> ShardIndex:
        """Pairs are rotated by blob ID so that systematic slivers spread over the nodes."""
        self.check_index(pair)
        return ShardIndex((pair + _rotation(blob_id, self.n_shards)) % self.n_shards)

    def pair_of_shard(self, shard: int, blob_id: bytes) -> SliverPairIndex:
        self.check_index(shard)
        return SliverPairIndex((shard - _rotation(blob_id, self.n_shards)) % self.n_shards)

    def check_index(self, index: int) -> None:
        if not 0 <= index < self.n_shards:
            raise GeometryError(f"index {index} outside [0, {self.n_shards})")


def _rotation(blob_id: bytes, n_shards: int) -> int:
    return int.from_bytes(blob_id, "little") % n_shards


@dataclass(frozen=True)
class BlobLayout:
    """The geometry applied to one blob length."""

    geometry: EncodingGeometry
    blob_length: int
    symbol_size: int

    @property
    def primary_sliver_size(self) -> int:
        return self.geometry.n_secondary * self.symbol_size

    @property
    def secondary_sliver_size(self) -> int:
        return self.geometry.n_primary * self.symbol_size

    @property
    def padded_length(self) -> int:
        return self.geometry.source_symbols * self.symbol_size

    @property
    def row_length(self) -> int:
        """Bytes of blob in one systematic row (= one primary sliver's size)."""
        return self.primary_sliver_size

    def sliver_size(self, primary: bool) -> int:
        return self.primary_sliver_size if primary else self.secondary_sliver_size

    @property
    def encoded_length(self) -> int:
        """Bytes stored over all shards: n sliver pairs."""
        return self.geometry.n_shards * (self.primary_sliver_size + self.secondary_sliver_size)
