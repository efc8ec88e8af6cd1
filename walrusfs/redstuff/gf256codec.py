"""Encoding type 1: RedStuff over GF(2^8), the original code (encode.py, decode.py, mds.py) with
plane-major symbols and one BLAKE3 call per Merkle leaf. Registered with codec.py on import."""

from __future__ import annotations

import numpy as np

from . import merkle
from .codec import Codec, Expansion, register
from .decode import decode_gf256
from .encode import encode_gf256, expand, line_code, sliver_root
from .encodings import ENCODING_REDSTUFF_GF256_V1, NAMES
from .sliver import as_line, symbol_bytes


class _Gf256Expansion(Expansion):
    def __init__(self, cells: np.ndarray) -> None:
        self.cells, self._symbol_bytes = cells, symbol_bytes
        self._leaves = merkle.line_leaf_digests(cells)
        self.root = merkle.root(self._leaves)

    def cell(self, index: int) -> bytes:
        return self._symbol_bytes(self.cells, index)

    def proof(self, index: int) -> tuple[bytes, ...]:
        return tuple(merkle.proof(self._leaves, index))


class Gf256Codec(Codec):
    """Type 1: the original code (encode.py, decode.py, mds.py), plane-major symbols."""

    encoding, name = ENCODING_REDSTUFF_GF256_V1, NAMES[ENCODING_REDSTUFF_GF256_V1]

    def encode(self, source, n_shards):  # type: ignore[no-untyped-def]
        return encode_gf256(source, n_shards)

    def sliver_root(self, geometry, kind, data, symbol_size):  # type: ignore[no-untyped-def]
        return sliver_root(geometry, kind, as_line(data, symbol_size))

    def decode(self, metadata, kind, slivers):  # type: ignore[no-untyped-def]
        return decode_gf256(metadata, kind, slivers)

    def expand(self, geometry, kind, data, symbol_size):  # type: ignore[no-untyped-def]
        return _Gf256Expansion(expand(geometry, kind, as_line(data, symbol_size)))

    def reconstruct_line(self, geometry, kind, known, symbol_size):  # type: ignore[no-untyped-def]
        code_ = line_code(geometry, kind)
        cells = {j: as_line(data, symbol_size)[:, 0] for j, data in known.items()}
        data = np.empty(code_.k * symbol_size, dtype=np.uint8)
        line = as_line(data, symbol_size)
        code_.reconstruct(cells, list(range(code_.k)), [line[:, i] for i in range(code_.k)])
        return data

    def verify_cell(self, root, n_shards, index, data, proof):  # type: ignore[no-untyped-def]
        return merkle.verify(root, n_shards, index, merkle.leaf_hash(data), proof)


register(Gf256Codec())
