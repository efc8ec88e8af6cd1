"""Independent oracles for the codec tests: GF(2^8) from reedsolo, and a slow reference of the
bit-sliced symbol layout and the 2D RedStuff expansion written straight from the spec.

Nothing here calls the codec's arithmetic: products come from tables built with reedsolo.gf_mul.
"""

from __future__ import annotations

import numpy as np
import reedsolo

reedsolo.init_tables(0x11D)

# MUL[a, b] = a * b in GF(2^8) per reedsolo; INV[a] = a^-1 (INV[0] unused).
MUL = np.array([[reedsolo.gf_mul(a, b) for b in range(256)] for a in range(256)], dtype=np.uint8)
INV = np.array([0] + [reedsolo.gf_inverse(a) for a in range(1, 256)], dtype=np.uint8)


def gf_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Matrix product over GF(2^8) with reedsolo's products."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    out = np.zeros((a.shape[0], b.shape[1]), dtype=np.uint8)
    for t in range(a.shape[1]):
        out ^= MUL[a[:, t][:, None], b[t][None, :]]
    return out


def gf_rank(matrix: np.ndarray) -> int:
    """Rank over GF(2^8) by Gaussian elimination on reedsolo's tables."""
    work = np.array(matrix, dtype=np.uint8)
    rows, cols = work.shape
    rank = 0
    for col in range(cols):
        pivots = [r for r in range(rank, rows) if work[r, col]]
        if not pivots:
            continue
        work[[rank, pivots[0]]] = work[[pivots[0], rank]]
        work[rank] = MUL[INV[work[rank, col]], work[rank]]
        for r in range(rows):
            if r != rank and work[r, col]:
                work[r] ^= MUL[work[r, col], work[rank]]
        rank += 1
    return rank


def to_virtual(symbol: np.ndarray) -> np.ndarray:
    """The 64P field elements of a symbol of shape (8, P) uint64: bit c of element t is bit t of
    packet c (packets are little-endian bit strings)."""
    packets = np.ascontiguousarray(symbol, dtype="<u8").view(np.uint8).reshape(8, -1)
    bits = np.unpackbits(packets, axis=1, bitorder="little")
    out = np.zeros(bits.shape[1], dtype=np.uint8)
    for c in range(8):
        out |= bits[c] << c
    return out


def from_virtual(elements: np.ndarray) -> np.ndarray:
    """Inverse of to_virtual: shape (8, P) uint64."""
    bits = np.stack([(elements >> c) & 1 for c in range(8)]).astype(np.uint8)
    return np.packbits(bits, axis=1, bitorder="little").view("<u8").astype(np.uint64)


def gf_combine(matrix: np.ndarray, vectors: list[np.ndarray]) -> list[np.ndarray]:
    """out_i = sum_j matrix[i, j] * vectors[j], elementwise over vectors of field elements."""
    out = []
    for row in np.asarray(matrix, dtype=np.int64):
        acc = np.zeros_like(vectors[0])
        for coef, vec in zip(row, vectors, strict=True):
            acc ^= MUL[coef][vec]
        out.append(acc)
    return out


def spec_geometry(n: int, length: int) -> tuple[int, int, int]:
    """(n_p, n_s, symbol size) computed from the design text, not from the codec."""
    f = (n - 1) // 3
    n_p, n_s = n - 2 * f, n - f
    per_symbol = -(-length // (n_p * n_s))
    return n_p, n_s, max(64, -(-per_symbol // 64) * 64)


def reference_cells(blob: bytes, n: int, column_generator: np.ndarray,
                    row_generator: np.ndarray) -> list[list[bytes]]:
    """Canonical bytes of every cell (i, j) of the full n x n matrix, computed the slow way.

    Row a of the blob matrix is blob bytes [a*row, (a+1)*row) stored plane-major: packet c of
    symbol b is words [(c * n_s + b) * P, (c * n_s + b + 1) * P) of the row.
    """
    n_p, n_s, s = spec_geometry(n, len(blob))
    words = s // 64
    padded = np.zeros(n_p * n_s * s, dtype=np.uint8)
    padded[: len(blob)] = np.frombuffer(blob, dtype=np.uint8)
    source = []
    for a in range(n_p):
        row = padded[a * n_s * s : (a + 1) * n_s * s].view("<u8").reshape(8, n_s, words)
        source.append([to_virtual(row[:, b, :]) for b in range(n_s)])
    extended_rows = [gf_combine(row_generator, source[a]) for a in range(n_p)]  # n_p x n
    cells = [[b""] * n for _ in range(n)]
    for j in range(n):
        column = gf_combine(column_generator, [extended_rows[a][j] for a in range(n_p)])
        for i in range(n):
            cells[i][j] = from_virtual(column[i]).tobytes()
    return cells


def plane_major(symbols: list[bytes]) -> bytes:
    """Pack canonical symbols (8 packets each) into a plane-major line."""
    arrays = [np.frombuffer(sym, dtype="<u8").reshape(8, -1) for sym in symbols]
    return np.stack(arrays, axis=1).tobytes()
