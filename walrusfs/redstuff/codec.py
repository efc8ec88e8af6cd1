"""The one place that maps an encoding type to its implementation.

Everything that depends on the encoding (the line code, the symbol layout inside a sliver, the
commitment hashes) sits behind ``Codec``; encode, decode, verify_sliver, SliverExpansion and
recover_sliver ask ``codec_for(encoding)`` and stay the same for every type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache

import numpy as np

from . import merkle, rs16, rs16merkle
from .blob import BlobMetadata
from .encodings import ENCODING_REDSTUFF_GF256_V1, ENCODING_REDSTUFF_RS16_V2, NAMES
from .geometry import EncodingGeometry, SliverKind
from .wire import FormatError


class Expansion:
    """A sliver extended to its full row or column, with the Merkle tree over its n cells."""

    root: bytes
    cells: np.ndarray  # the n cells, in the encoding's layout (what a cache of expansions holds)

    def cell(self, index: int) -> bytes:
        raise NotImplementedError

    def proof(self, index: int) -> tuple[bytes, ...]:
        raise NotImplementedError


class Codec:
    encoding: int
    name: str

    def encode(self, source: np.ndarray, n_shards: int):  # type: ignore[no-untyped-def]
        """The EncodedBlob of ``source`` (uint8)."""
        raise NotImplementedError

    def sliver_root(self, geometry: EncodingGeometry, kind: SliverKind, data: object, symbol_size: int) -> bytes:
        raise NotImplementedError

    def decode(self, metadata: BlobMetadata, kind: SliverKind, slivers: Mapping[int, object]) -> np.ndarray:
        """The padded blob from enough slivers of ``kind`` (index -> sliver bytes)."""
        raise NotImplementedError

    def expand(self, geometry: EncodingGeometry, kind: SliverKind, data: object, symbol_size: int) -> Expansion:
        raise NotImplementedError

    def reconstruct_line(self, geometry: EncodingGeometry, kind: SliverKind, known: Mapping[int, bytes],
                         symbol_size: int) -> np.ndarray:
        """The bytes of sliver (``kind``) from any k cells of its full line (position -> cell)."""
        raise NotImplementedError

    def verify_cell(self, root: bytes, n_shards: int, index: int, data: bytes, proof: Sequence[bytes]) -> bool:
        raise NotImplementedError


class _Gf256Expansion(Expansion):
    def __init__(self, cells: np.ndarray) -> None:
        from .sliver import symbol_bytes

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
        from .encode import encode_gf256

        return encode_gf256(source, n_shards)

    def sliver_root(self, geometry, kind, data, symbol_size):  # type: ignore[no-untyped-def]
        from .encode import sliver_root
        from .sliver import as_line

        return sliver_root(geometry, kind, as_line(data, symbol_size))

    def decode(self, metadata, kind, slivers):  # type: ignore[no-untyped-def]
        from .decode import decode_gf256

        return decode_gf256(metadata, kind, slivers)

    def expand(self, geometry, kind, data, symbol_size):  # type: ignore[no-untyped-def]
        from .encode import expand
        from .sliver import as_line

        return _Gf256Expansion(expand(geometry, kind, as_line(data, symbol_size)))

    def reconstruct_line(self, geometry, kind, known, symbol_size):  # type: ignore[no-untyped-def]
        from .encode import line_code
        from .sliver import as_line

        code_ = line_code(geometry, kind)
        cells = {j: as_line(data, symbol_size)[:, 0] for j, data in known.items()}
        data = np.empty(code_.k * symbol_size, dtype=np.uint8)
        line = as_line(data, symbol_size)
        code_.reconstruct(cells, list(range(code_.k)), [line[:, i] for i in range(code_.k)])
        return data

    def verify_cell(self, root, n_shards, index, data, proof):  # type: ignore[no-untyped-def]
        return merkle.verify(root, n_shards, index, merkle.leaf_hash(data), proof)


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
        from .encode import EncodedBlob

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


_CODECS: dict[int, Codec] = {c.encoding: c for c in (Gf256Codec(), Rs16Codec())}


@cache
def codec_for(encoding: int) -> Codec:
    try:
        return _CODECS[encoding]
    except KeyError:
        raise FormatError(f"unknown encoding type {encoding!r} (this walrusfs knows "
                          f"{sorted(_CODECS)}; a newer one may)") from None
