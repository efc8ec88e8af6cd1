"""RedStuff over GF(2^16) (encoding type 2): the O(n log n) Reed-Solomon code of reed-solomon-simd.

Same geometry as type 1 (geometry.py: n_p x n_s source symbols, rows extended to n primary
slivers, columns to n secondary slivers, roots over the full n x n matrix), with:

- the line code: reed-solomon-simd's systematic code for (k, n - k), via the reed-solomon-leopard
  wheel. It is linear over GF(2^16) position by position inside 64-byte units, so with symbols
  a multiple of 64 bytes a whole row (or column) can be one wide shard, and extending columns
  then rows gives the same lower-right quadrant as rows then columns (what every root relies on);
- symbol-major lines: a sliver is its symbols one after another, cell (a, b) of the blob matrix is
  blob bytes [a*R + b*s, a*R + (b+1)*s) with R = n_s*s;
- commitments from ``rs16merkle`` (keyed BLAKE3, hashed in batches).

The engine's generator is part of this format: the wheel's version is pinned in pyproject.toml,
and tests/redstuff/test_rs16_known_answer.py fails if another version would give other bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import reed_solomon_leopard as leopard

from . import rs16merkle
from .blob import ENCODING_REDSTUFF_RS16_V2, BlobMetadata
from .geometry import EncodingGeometry, SliverKind


def line_length(geometry: EncodingGeometry, kind: SliverKind) -> int:
    """Source symbols along a sliver: a primary sliver is a row (n_s), a secondary a column (n_p)."""
    return geometry.n_secondary if kind is SliverKind.PRIMARY else geometry.n_primary


def extend(shards: np.ndarray, total: int) -> np.ndarray:
    """(k, L) source shards -> (total, L): the shards, then the code's total - k parity shards."""
    k, length = shards.shape
    out = np.empty((total, length), dtype=np.uint8)
    out[:k] = shards
    parity = leopard.encode([shard.tobytes() for shard in shards], total - k)
    for i, shard in enumerate(parity):  # one copy each, no joined intermediate
        out[k + i] = np.frombuffer(shard, dtype=np.uint8)
    return out


def reconstruct(k: int, total: int, known: Mapping[int, bytes | np.ndarray], length: int) -> np.ndarray:
    """The k source shards (k, length) of a line, from any k of its ``total`` positions."""
    if len(known) < k:
        raise ValueError(f"need {k} shards to decode, have {len(known)}")
    chosen = sorted(known, key=lambda i: (i >= k, i))[:k]  # systematic ones first: least to decode
    out = np.empty((k, length), dtype=np.uint8)
    originals = {i: _as_bytes(known[i]) for i in chosen if i < k}
    for i, data in originals.items():
        out[i] = np.frombuffer(data, dtype=np.uint8)
    if len(originals) < k:
        recovery = {i - k: _as_bytes(known[i]) for i in chosen if i >= k}
        for i, data in leopard.decode(k, total - k, originals, recovery).items():
            out[i] = np.frombuffer(data, dtype=np.uint8)
    return out


def _as_bytes(data: bytes | np.ndarray | memoryview) -> bytes:
    return data if isinstance(data, bytes) else bytes(memoryview(data))  # type: ignore[arg-type]


def expand_line(geometry: EncodingGeometry, kind: SliverKind, data: object, symbol_size: int) -> np.ndarray:
    """A sliver's full row (primary) or column (secondary) of the n x n matrix: (n, s) cells."""
    symbols = np.frombuffer(data, dtype=np.uint8).reshape(-1, symbol_size)  # type: ignore[call-overload]
    return extend(symbols, geometry.n_shards)


def sliver_root(geometry: EncodingGeometry, kind: SliverKind, data: object, symbol_size: int) -> bytes:
    cells = expand_line(geometry, kind, data, symbol_size)
    return rs16merkle.roots(rs16merkle.leaf_digests(cells)[None])[0]


@dataclass
class Encoded:
    """What ``encode`` hands to EncodedBlob: every sliver's bytes and the metadata."""

    metadata: BlobMetadata
    rows: list[np.ndarray]  # n primary slivers, (n_s * s,) each
    columns: list[np.ndarray]  # n secondary slivers, (n_p * s,) each


def encode(source: np.ndarray, n_shards: int) -> Encoded:
    geometry = EncodingGeometry(n_shards)
    layout = geometry.layout(source.size)
    n, n_p, n_s, s = n_shards, geometry.n_primary, geometry.n_secondary, layout.symbol_size
    f = n - n_s
    blob = np.zeros((n_p, n_s, s), dtype=np.uint8)
    blob.reshape(-1)[: source.size] = source
    # Left block (n, n_s, s): the source rows, then every column extended at once (a whole row is
    # one wide shard of the column code). Its rows are the n primary slivers.
    left = extend(blob.reshape(n_p, n_s * s), n).reshape(n, n_s, s)
    # Secondary slivers: the source's columns, then the row code's f parity columns, each column one
    # wide shard.
    columns = extend(np.ascontiguousarray(blob.transpose(1, 0, 2)).reshape(n_s, n_p * s), n)
    # Right block (n, f, s): the parity columns' cells, extended down to n rows by the column code
    # (the lower-right quadrant, never stored but committed to).
    parity_columns = columns[n_s:].reshape(f, n_p, s)
    right = extend(np.ascontiguousarray(parity_columns.transpose(1, 0, 2)).reshape(n_p, f * s), n).reshape(n, f, s)

    leaves = np.empty((n, n, rs16merkle.DIGEST_SIZE), dtype=np.uint8)
    leaves[:, :n_s] = rs16merkle.leaf_digests(left)
    leaves[:, n_s:] = rs16merkle.leaf_digests(right)
    primary_roots = rs16merkle.roots(leaves)
    secondary_roots = rs16merkle.roots(np.ascontiguousarray(leaves.transpose(1, 0, 2)))
    metadata = BlobMetadata(n, source.size, tuple(primary_roots), tuple(secondary_roots), ENCODING_REDSTUFF_RS16_V2)
    return Encoded(metadata, list(left.reshape(n, n_s * s)), list(columns))


def decode_rows(metadata: BlobMetadata, primary: Mapping[int, object]) -> np.ndarray:
    """The padded blob (n_p * R bytes) from any n_p primary slivers (index -> bytes)."""
    geometry, layout = metadata.geometry, metadata.layout
    rows = reconstruct(geometry.n_primary, geometry.n_shards, primary, layout.row_length)  # type: ignore[arg-type]
    return rows.reshape(-1)


def decode_columns(metadata: BlobMetadata, secondary: Mapping[int, object]) -> np.ndarray:
    """The padded blob from any n_s secondary slivers: the source columns, transposed to rows."""
    geometry, layout = metadata.geometry, metadata.layout
    n_p, n_s, s = geometry.n_primary, geometry.n_secondary, layout.symbol_size
    columns = reconstruct(n_s, geometry.n_shards, secondary, layout.secondary_sliver_size)  # type: ignore[arg-type]
    return np.ascontiguousarray(columns.reshape(n_s, n_p, s).transpose(1, 0, 2)).reshape(-1)
