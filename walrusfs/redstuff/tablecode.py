"""Multiplying symbols by a GF(2^8) matrix with table lookups, for when XOR programs are too long.

The bit-sliced programs of ``xorcode`` cost one numpy call per XOR of packets: with large matrices
(hundreds of thousands of XORs at n=256) and small symbols (a packet of one word) the call overhead
is everything. Here the symbols are turned into their virtual field elements instead (bit c of
virtual element t is bit t of packet c, exactly the representation the bit-sliced code works on, so
both engines compute the same bytes), and output i is the XOR over inputs j of MUL[C[i, j]][V[j]]:
k table gathers, each producing that input's contribution to all m outputs at once, then the
elements are turned back into packets. The cost is k * m * elements lookups plus the conversions,
whatever the number of ones in the bit matrices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import gf256

# Virtual elements per input handled at once: the m x chunk accumulator stays near 1 MiB (cache
# sized), within bounds that keep the per-chunk numpy calls amortised.
ACCUMULATOR_BYTES = 1 << 20
MIN_CHUNK_ELEMENTS = 1 << 12
MAX_CHUNK_ELEMENTS = 1 << 16


def chunk_elements(rows: int) -> int:
    return max(MIN_CHUNK_ELEMENTS, min(MAX_CHUNK_ELEMENTS, ACCUMULATOR_BYTES // max(rows, 1)))


class TableProduct:
    """outputs = matrix @ inputs over GF(2^8), on symbols given as uint64 arrays (..., 8, P)."""

    def __init__(self, matrix: np.ndarray) -> None:
        matrix = np.asarray(matrix)
        self.rows, self.cols = matrix.shape
        # tables[j] is (rows, 256): row i maps an element v of input j to matrix[i, j] * v.
        self.tables = np.ascontiguousarray(gf256.MUL_TABLE[matrix.T.astype(np.intp)])

    def run(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> None:
        """Same contract as ``XorProgram.run``: all symbols share one shape (..., 8, P); outputs are
        overwritten, never read, and must not alias inputs."""
        if len(inputs) != self.cols or len(outputs) != self.rows:
            raise ValueError(
                f"matrix takes {self.cols} inputs and {self.rows} outputs, got {len(inputs)} and {len(outputs)}"
            )
        if not outputs:
            return
        if not inputs:
            for out in outputs:
                out.fill(0)
            return
        shape = outputs[0].shape
        words = shape[-1]
        batch = int(np.prod(shape[:-2], dtype=np.int64))
        if words == 0 or batch == 0:
            return
        step = max(1, chunk_elements(self.rows) // (64 * batch))
        for start in range(0, words, step):
            stop = min(start + step, words)
            elements = to_virtual(np.stack([s[..., start:stop] for s in inputs]))  # (k, E)
            products = self.multiply(elements)  # (m, E)
            packets = from_virtual(products, (self.rows, *shape[:-1], stop - start))
            for i, out in enumerate(outputs):
                out[..., start:stop] = packets[i]

    def multiply(self, elements: np.ndarray) -> np.ndarray:
        """(cols, E) uint8 field elements -> (rows, E): one gather per input over all outputs."""
        acc = np.empty((self.rows, elements.shape[1]), dtype=np.uint8)
        np.take(self.tables[0], elements[0], axis=1, out=acc)
        scratch = np.empty_like(acc)
        for j in range(1, self.cols):
            np.take(self.tables[j], elements[j], axis=1, out=scratch)
            np.bitwise_xor(acc, scratch, out=acc)
        return acc


# _SPREAD[b] has byte i equal to bit i of b: the 8 bits of one packet byte, one per virtual element.
_SPREAD = (
    ((np.arange(256, dtype=np.uint64)[:, None] >> np.arange(8, dtype=np.uint64)) & np.uint64(1))
    << (np.uint64(8) * np.arange(8, dtype=np.uint64))
).sum(axis=1, dtype=np.uint64)
_LOW_BITS = np.uint64(0x0101010101010101)
# (y * _GATHER) >> 56 packs bytes i of y, each 0 or 1, into bit i of one byte (no carries collide).
_GATHER = np.uint64(0x0102040810204080)


def to_virtual(symbols: np.ndarray) -> np.ndarray:
    """(count, ..., 8, w) uint64 symbols -> (count, E) uint8 virtual elements, E = 64 w x batch.

    Element t of a symbol (t in [0, 64w)) has bit c equal to bit t of packet c, packets being
    little-endian bit strings (bit b of word i is bit 64 i + b).
    """
    count = symbols.shape[0]
    packets = np.ascontiguousarray(symbols, dtype="<u8").view(np.uint8)  # (count, ..., 8, 8w)
    # Word q of the result holds elements 8q .. 8q+7: from byte q of every packet.
    acc = _SPREAD[packets[..., 0, :]]
    for c in range(1, 8):
        spread = _SPREAD[packets[..., c, :]]
        spread <<= np.uint64(c)
        acc |= spread
    return acc.astype("<u8", copy=False).view(np.uint8).reshape(count, -1)


def from_virtual(elements: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of ``to_virtual``: (count, E) uint8 -> uint64 symbols of ``shape`` (count, ..., 8, w)."""
    words = np.ascontiguousarray(elements).view("<u8").reshape(*shape[:-2], 8 * shape[-1])
    out = np.empty((*shape[:-1], 8 * shape[-1]), dtype=np.uint8)  # (count, ..., 8, 8w) packet bytes
    bits = np.empty_like(words)
    for c in range(8):
        np.right_shift(words, np.uint64(c), out=bits)
        bits &= _LOW_BITS
        bits *= _GATHER
        bits >>= np.uint64(56)
        out[..., c, :] = bits
    return out.view("<u8")
