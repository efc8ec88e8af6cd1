"""Arithmetic in GF(2^8) and the matrices the code is built from.

The field is GF(2)[x] / (x^8 + x^4 + x^3 + x^2 + 1) (0x11D, generator 2), the same field reedsolo
uses by default, so tests can cross-check every product against it.

Data mostly never passes through these tables: the coder works bit-sliced (see ``xorcode``). Each
field element is turned into an 8x8 matrix over GF(2) once, and multiplying a symbol by it becomes
XORs of whole packets. Only where those XOR programs would be dominated by per-call overhead (large n,
small symbols) does ``tablecode`` multiply data through ``MUL_TABLE``.
"""

from __future__ import annotations

from functools import cache

import numpy as np

PRIMITIVE_POLYNOMIAL = 0x11D
FIELD_SIZE = 256


def _build_tables() -> tuple[np.ndarray, np.ndarray]:
    exp = np.zeros(2 * FIELD_SIZE, dtype=np.int32)
    log = np.zeros(FIELD_SIZE, dtype=np.int32)
    value = 1
    for power in range(FIELD_SIZE - 1):
        exp[power] = value
        log[value] = power
        value <<= 1
        if value & 0x100:
            value ^= PRIMITIVE_POLYNOMIAL
    # Doubling the exp table lets mul index exp[log a + log b] without a modulo.
    exp[FIELD_SIZE - 1 : 2 * (FIELD_SIZE - 1)] = exp[: FIELD_SIZE - 1]
    return exp, log


EXP, LOG = _build_tables()


def _build_mul_table() -> np.ndarray:
    a = np.arange(FIELD_SIZE)
    table = EXP[LOG[a][:, None] + LOG[a][None, :]].astype(np.uint8)
    table[0, :] = 0
    table[:, 0] = 0
    table.setflags(write=False)
    return table


# MUL_TABLE[a, b] = a * b: the table engine (``tablecode``) multiplies data by gathering from it.
MUL_TABLE = _build_mul_table()


def mul(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return 0
    return int(EXP[LOG[a] + LOG[b]])


def inv(a: int) -> int:
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(2^8)")
    return int(EXP[(FIELD_SIZE - 1) - LOG[a]])


def mul_vec(scalar: int, vec: np.ndarray) -> np.ndarray:
    """scalar * vec, elementwise, for a vector of field elements."""
    out = np.zeros_like(vec)
    if scalar == 0:
        return out
    nz = vec != 0
    out[nz] = EXP[LOG[vec[nz]] + LOG[scalar]]
    return out


def mat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Matrix product over GF(2^8) (small matrices: used to build codes, not to move data)."""
    rows, inner = a.shape
    inner_b, cols = b.shape
    if inner != inner_b:
        raise ValueError(f"shapes {a.shape} and {b.shape} do not chain")
    out = np.zeros((rows, cols), dtype=np.int32)
    for t in range(inner):
        column = a[:, t]
        for r in np.flatnonzero(column):
            out[r] ^= mul_vec(int(column[r]), b[t])
    return out


def mat_inv(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a square matrix over GF(2^8) by Gauss-Jordan; raises if it is singular."""
    size = matrix.shape[0]
    if matrix.shape != (size, size):
        raise ValueError(f"not square: {matrix.shape}")
    work = np.concatenate([matrix.astype(np.int32), np.eye(size, dtype=np.int32)], axis=1)
    for col in range(size):
        pivots = np.flatnonzero(work[col:, col])
        if pivots.size == 0:
            raise np.linalg.LinAlgError("matrix is singular over GF(2^8)")
        pivot = col + int(pivots[0])
        if pivot != col:
            work[[col, pivot]] = work[[pivot, col]]
        work[col] = mul_vec(inv(int(work[col, col])), work[col])
        factors = work[:, col].copy()
        factors[col] = 0
        for r in np.flatnonzero(factors):
            work[r] ^= mul_vec(int(factors[r]), work[col])
    return work[:, size:]


def bit_matrix(element: int) -> np.ndarray:
    """The 8x8 GF(2) matrix M with bits(element * v) = M @ bits(v) for every v.

    Column c holds the bits of element * x^c; bit r of a byte is row r.
    """
    out = np.zeros((8, 8), dtype=np.uint8)
    for c in range(8):
        product = mul(element, 1 << c)
        for r in range(8):
            out[r, c] = (product >> r) & 1
    return out


def expand_to_bits(matrix: np.ndarray) -> np.ndarray:
    """Replace every field element of an (m, k) matrix by its 8x8 bit matrix: (8m, 8k) over GF(2)."""
    rows, cols = matrix.shape
    out = np.zeros((8 * rows, 8 * cols), dtype=np.uint8)
    for r in range(rows):
        for c in range(cols):
            out[8 * r : 8 * r + 8, 8 * c : 8 * c + 8] = _BIT_MATRICES[int(matrix[r, c])]
    return out


_BIT_MATRICES = np.stack([bit_matrix(e) for e in range(FIELD_SIZE)])
_ONES = _BIT_MATRICES.reshape(FIELD_SIZE, -1).sum(axis=1)


def bit_ones(matrix: np.ndarray) -> int:
    """Ones in ``expand_to_bits(matrix)``: about the XORs a bit-sliced program for it needs."""
    return int(_ONES[np.asarray(matrix, dtype=np.intp)].sum())


@cache
def cauchy_parity_matrix(data_count: int, parity_count: int) -> np.ndarray:
    """An (parity_count, data_count) matrix whose every square submatrix is invertible.

    [I; C] is then the generator of a systematic MDS code. Starting from the Cauchy matrix
    1 / (x_i + y_j), columns and rows are scaled (which keeps the MDS property) so that the first
    parity row is all ones (plain XOR) and every other row has as few ones as possible in its bit
    matrices: fewer ones, fewer XORs for every byte ever encoded.
    """
    if data_count < 1 or parity_count < 0 or data_count + parity_count > FIELD_SIZE:
        raise ValueError(f"no Cauchy code with {data_count} data and {parity_count} parity symbols")
    xs = np.arange(data_count, data_count + parity_count)
    ys = np.arange(data_count)
    matrix = np.zeros((parity_count, data_count), dtype=np.int32)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            matrix[i, j] = inv(int(x ^ y))
    if parity_count == 0:
        return matrix
    for j in range(data_count):
        scale = inv(int(matrix[0, j]))
        matrix[:, j] = mul_vec(scale, matrix[:, j])
    for i in range(1, parity_count):
        # Ones of s * row for every scalar s in [1, 256); the first (smallest) s with the fewest.
        ones = _ONES[MUL_TABLE[1:, matrix[i]]].sum(axis=1)
        best = 1 + int(np.argmin(ones))
        matrix[i] = mul_vec(best, matrix[i])
    matrix.setflags(write=False)
    return matrix
