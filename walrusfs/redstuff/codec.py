"""The one place that maps an encoding type to its implementation.

Everything that depends on the encoding (the line code, the symbol layout inside a sliver, the
commitment hashes) sits behind ``Codec``; encode, decode, verify_sliver, SliverExpansion and
recover_sliver ask ``codec_for(encoding)`` and stay the same for every type.

The implementations (gf256codec.py, rs16codec.py) build on encode, decode and sliver, which in
turn ask this registry: so this module imports none of them, and each implementation registers
itself when the package is imported (redstuff/__init__.py imports both).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .blob import BlobMetadata
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


_CODECS: dict[int, Codec] = {}


def register(codec: Codec) -> Codec:
    """Make ``codec`` the implementation of its encoding type (once per type)."""
    if _CODECS.setdefault(codec.encoding, codec) is not codec:
        raise ValueError(f"encoding type {codec.encoding} has an implementation already")
    return codec


def codec_for(encoding: int) -> Codec:
    try:
        return _CODECS[encoding]
    except KeyError:
        raise FormatError(f"unknown encoding type {encoding!r} (this walrusfs knows "
                          f"{sorted(_CODECS)}; a newer one may)") from None
