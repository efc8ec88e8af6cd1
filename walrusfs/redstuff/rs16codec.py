"""Encoding type 2: RedStuff over GF(2^16) (rs16.py), symbol-major symbols, batched keyed-BLAKE3
Merkle trees (rs16merkle.py). Registered with codec.py on import."""

from __future__ import annotations

import numpy as np

from . import rs16, rs16merkle
from .codec import Codec, Expansion, register
from .encode import EncodedBlob
from .encodings import ENCODING_REDSTUFF_RS16_V2, NAMES
from .geometry import SliverKind


class _Rs16Expansion(Expansion):
    def __init__(self, cells: np.ndarray) -> None:
        self.cells = cells
        self._levels = rs16merkle.levels(rs16merkle.leaf_digests(cells)[None])
        self.root = bytes(self._levels[-1][0, 0])

    def cell(self, index: int) -> bytes:
        return self.cells[index].tobytes()

    def proof(self, index: int) -> tuple[bytes, ...]:
        return rs16merkle.proof(self._levels, index)


class Rs16Codec(Codec):
    """Type 2: GF(2^16) Reed-Solomon (rs16.py), symbol-major symbols, batched keyed-BLAKE3 trees."""

    encoding, name = ENCODING_REDSTUFF_RS16_V2, NAMES[ENCODING_REDSTUFF_RS16_V2]

    def encode(self, source, n_shards):  # type: ignore[no-untyped-def]
        encoded = rs16.encode(source, n_shards)
        return EncodedBlob(encoded.metadata, encoded.metadata.layout, encoded.rows, None, encoded.columns)

    def sliver_root(self, geometry, kind, data, symbol_size):  # type: ignore[no-untyped-def]
        return rs16.sliver_root(geometry, kind, data, symbol_size)

    def decode(self, metadata, kind, slivers):  # type: ignore[no-untyped-def]
        if kind is SliverKind.PRIMARY:
            return rs16.decode_rows(metadata, slivers)
        return rs16.decode_columns(metadata, slivers)

    def expand(self, geometry, kind, data, symbol_size):  # type: ignore[no-untyped-def]
        return _Rs16Expansion(rs16.expand_line(geometry, kind, data, symbol_size))

    def reconstruct_line(self, geometry, kind, known, symbol_size):  # type: ignore[no-untyped-def]
        k = rs16.line_length(geometry, kind)
        return rs16.reconstruct(k, geometry.n_shards, known, symbol_size).reshape(-1)

    def verify_cell(self, root, n_shards, index, data, proof):  # type: ignore[no-untyped-def]
        return rs16merkle.verify(root, n_shards, index, rs16merkle.leaf_hash(data), proof)


register(Rs16Codec())
