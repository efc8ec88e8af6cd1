"""Encoding a blob into sliver pairs and the metadata that commits to them.

Source row a of the blob matrix is blob bytes [a * row, (a+1) * row), read as a plane-major line
(see ``sliver.as_line``), so the systematic primary slivers are the blob's bytes as they are.

Memory: the source rows are views of the caller's buffer (only the padded tail is copied); the
primary parity rows ((n-n_p)/n_p of the blob), the secondary parity columns of the source rows
((n-n_s)/n_s) and one column of the never-stored lower-right quadrant at a time are allocated:
~1.9x the blob at n=10, ~2.5x for large n, on top of the input.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import encodings, merkle
from .blob import BlobId, BlobMetadata
from .geometry import BlobLayout, EncodingGeometry, GeometryError
from .mds import SystematicCode, code
from .sliver import Sliver, SliverKind, as_line

# One worker: encode itself runs in a worker thread of the caller (trio.to_thread), and a second
# core is all this machine class has to lend it.
_HASHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="redstuff-hash")


def column_code(geometry: EncodingGeometry) -> SystematicCode:
    """Extends a column of n_p symbols to n: makes primary slivers (rows) and checks secondary ones."""
    return code(geometry.n_primary, geometry.n_shards)


def row_code(geometry: EncodingGeometry) -> SystematicCode:
    """Extends a row of n_s symbols to n: makes secondary slivers (columns) and checks primary ones."""
    return code(geometry.n_secondary, geometry.n_shards)


def line_code(geometry: EncodingGeometry, kind: SliverKind) -> SystematicCode:
    """The code along a sliver: a primary sliver is a row, a secondary sliver a column."""
    return row_code(geometry) if kind is SliverKind.PRIMARY else column_code(geometry)


def symbols_of(line: np.ndarray) -> list[np.ndarray]:
    """The symbols of a plane-major line (8, count, P) as (8, P) views."""
    return [line[:, i, :] for i in range(line.shape[1])]


def expand(geometry: EncodingGeometry, kind: SliverKind, line: np.ndarray) -> np.ndarray:
    """The sliver's full row (primary) or column (secondary) of the n x n matrix: (8, n, P)."""
    code_ = line_code(geometry, kind)
    cells = np.empty((8, geometry.n_shards, line.shape[2]), dtype=np.uint64)
    cells[:, : code_.k] = line
    code_.encode(symbols_of(line), symbols_of(cells)[code_.k :])
    return cells


def sliver_root(geometry: EncodingGeometry, kind: SliverKind, line: np.ndarray) -> bytes:
    """The Merkle root over the sliver's expanded line: the same as hashing ``expand``'s cells, but
    the sliver's own symbols are hashed where they are instead of being copied first."""
    code_ = line_code(geometry, kind)
    parity = np.empty((8, geometry.n_shards - code_.k, line.shape[2]), dtype=np.uint64)
    code_.encode(symbols_of(line), symbols_of(parity))
    return merkle.root(merkle.line_leaf_digests(line) + merkle.line_leaf_digests(parity))


@dataclass(eq=False)
class EncodedBlob:
    """A blob's metadata and its 2n slivers (built on demand from the encoder's buffers)."""

    metadata: BlobMetadata
    layout: BlobLayout
    _rows: list[np.ndarray]  # the n primary slivers, uint8 (n_s * s,)
    _secondary_parity: np.ndarray | None  # GF(2^8): (n - n_s, n_p * s) uint8, secondary slivers n_s..n-1
    _columns: list[np.ndarray] | None = None  # when the encoder made every secondary sliver (RS16)

    @property
    def blob_id(self) -> BlobId:
        return self.metadata.blob_id

    def primary_sliver(self, index: int) -> Sliver:
        return self._sliver(SliverKind.PRIMARY, index, self._rows[index])

    def secondary_sliver(self, index: int) -> Sliver:
        geometry = self.layout.geometry
        geometry.check_index(index)
        if self._columns is not None:
            return self._sliver(SliverKind.SECONDARY, index, self._columns[index])
        assert self._secondary_parity is not None
        if index >= geometry.n_secondary:
            data = self._secondary_parity[index - geometry.n_secondary]
        else:
            s = self.layout.symbol_size
            column = np.empty(self.layout.secondary_sliver_size, dtype=np.uint8)
            planes = as_line(column, s)
            for a in range(geometry.n_primary):
                planes[:, a] = as_line(self._rows[a], s)[:, index]
            data = column
        return self._sliver(SliverKind.SECONDARY, index, data)

    def sliver(self, kind: SliverKind, index: int) -> Sliver:
        return self.primary_sliver(index) if kind is SliverKind.PRIMARY else self.secondary_sliver(index)

    def sliver_pair(self, pair: int) -> tuple[Sliver, Sliver]:
        secondary = self.layout.geometry.secondary_of_pair(pair)
        return self.primary_sliver(pair), self.secondary_sliver(secondary)

    def _sliver(self, kind: SliverKind, index: int, data: np.ndarray) -> Sliver:
        return Sliver(self.blob_id, kind, index, self.layout.geometry.n_shards,
                      self.layout.symbol_size, data, self.metadata.encoding)


def source_rows(source: np.ndarray, layout: BlobLayout) -> list[np.ndarray]:
    """The n_p source rows (uint8): views of ``source`` where whole, a zero-padded copy after."""
    n_p, row = layout.geometry.n_primary, layout.row_length
    whole = min(source.size // row, n_p)
    tail = np.zeros((n_p - whole) * row, dtype=np.uint8)
    tail[: source.size - whole * row] = source[whole * row :]
    return [source[a * row : (a + 1) * row] for a in range(whole)] + [
        tail[i * row : (i + 1) * row] for i in range(n_p - whole)
    ]


def encode(blob: bytes | bytearray | memoryview | np.ndarray, n_shards: int,
           encoding: int | None = None) -> EncodedBlob:
    """Erasure-code ``blob`` for ``n_shards`` shards and commit to every symbol of the n x n matrix,
    with ``encoding`` (by default the one ``encodings.choose_encoding`` picks for n)."""
    from .codec import codec_for

    encoding = encodings.choose_encoding(n_shards) if encoding is None else encoding
    problem = encodings.check(encoding, n_shards)
    if problem is not None:
        raise GeometryError(problem)
    EncodingGeometry(n_shards)  # the common bounds, with their own message
    source = np.frombuffer(blob, dtype=np.uint8)  # type: ignore[call-overload]
    return codec_for(encoding).encode(source, n_shards)


def encode_gf256(source: np.ndarray, n_shards: int) -> EncodedBlob:
    """Encoding type 1 (GF(2^8), plane-major symbols)."""
    geometry = EncodingGeometry(n_shards)
    layout = geometry.layout(source.size)
    n, n_p, n_s, s = n_shards, geometry.n_primary, geometry.n_secondary, layout.symbol_size
    rows = source_rows(source, layout)
    lines = [as_line(row, s) for row in rows]  # each (8, n_s, P)
    # Hashing (blake3) and XORs (numpy) both release the GIL: the rows are hashed on a second core
    # while the parity is computed.
    hashing = _HASHER.submit(lambda: [merkle.line_leaf_digests(line) for line in lines])

    # Primary parity rows: every column extended at once (a whole row is one wide symbol).
    primary_parity = np.empty((n - n_p, layout.row_length), dtype=np.uint8)
    column_code(geometry).encode(
        [line.reshape(8, -1) for line in lines],
        [as_line(r, s).reshape(8, -1) for r in primary_parity],
    )
    rows += list(primary_parity)
    hashing_parity = _HASHER.submit(lambda: [merkle.line_leaf_digests(as_line(r, s)) for r in primary_parity])

    # Secondary parity columns of the source rows; each column is one secondary sliver.
    secondary_parity = np.empty((n - n_s, layout.secondary_sliver_size), dtype=np.uint8)
    parity_columns = [as_line(c, s) for c in secondary_parity]  # each (8, n_p, P)
    rows_code = row_code(geometry)
    for a, line in enumerate(lines):
        rows_code.encode(symbols_of(line), [column[:, a] for column in parity_columns])

    # Leaves of the full n x n matrix: rows 0..n-1 over columns < n_s from the rows; columns >= n_s
    # from each secondary parity column extended to n (the lower-right quadrant, never stored).
    columns = [merkle.line_leaf_digests(expand(geometry, SliverKind.SECONDARY, c)) for c in parity_columns]
    leaves = hashing.result() + hashing_parity.result()
    for column in columns:
        for i, digest in enumerate(column):
            leaves[i].append(digest)

    primary_roots = tuple(merkle.root(leaves[i]) for i in range(n))
    secondary_roots = tuple(merkle.root([leaves[i][j] for i in range(n)]) for j in range(n))
    metadata = BlobMetadata(n, source.size, primary_roots, secondary_roots)
    return EncodedBlob(metadata, layout, rows, secondary_parity)
