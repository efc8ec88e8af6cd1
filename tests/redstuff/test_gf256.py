"""GF(2^8) arithmetic, checked against reedsolo's field (0x11D, generator 2)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redstuff_oracles import INV, MUL, gf_matmul, gf_rank

from walrusfs.redstuff import gf256

ELEMENTS = np.arange(256)


def test_mul_matches_reedsolo_for_all_65536_pairs():
    """Every code built on the field is only as right as its products."""
    ours = np.array([[gf256.mul(a, b) for b in range(256)] for a in range(256)], dtype=np.uint8)
    mismatches = np.argwhere(ours != MUL)
    assert mismatches.size == 0, f"first wrong products (a, b): {mismatches[:5].tolist()}"


def test_mul_vec_matches_reedsolo_for_every_scalar():
    for scalar in range(256):
        assert np.array_equal(gf256.mul_vec(scalar, ELEMENTS).astype(np.uint8), MUL[scalar]), scalar


def test_inverse_matches_reedsolo_for_every_nonzero_element():
    ours = np.array([gf256.inv(a) for a in range(1, 256)])
    assert np.array_equal(ours, INV[1:])
    assert all(MUL[a, gf256.inv(a)] == 1 for a in range(1, 256))


def test_zero_has_no_inverse():
    with pytest.raises(ZeroDivisionError):
        gf256.inv(0)


def test_bit_matrix_of_every_element_acts_like_multiplication():
    """bits(e * v) = bit_matrix(e) @ bits(v) over GF(2): the identity the XOR coder relies on."""
    bits_of = ((ELEMENTS[:, None] >> np.arange(8)) & 1).astype(np.int64)  # (256 values, 8 bits)
    for element in range(256):
        matrix = gf256.bit_matrix(element).astype(np.int64)
        products = (bits_of @ matrix.T) % 2  # row v: bits of element * v
        expected = (MUL[element][:, None] >> np.arange(8)) & 1
        assert np.array_equal(products, expected), element


def test_expand_to_bits_places_each_coefficient_block():
    matrix = np.array([[0, 1, 2], [3, 0x8E, 255]])
    bits = gf256.expand_to_bits(matrix)
    assert bits.shape == (16, 24)
    for r in range(2):
        for c in range(3):
            assert np.array_equal(bits[8 * r : 8 * r + 8, 8 * c : 8 * c + 8],
                                  gf256.bit_matrix(int(matrix[r, c])))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), st.randoms(use_true_random=False))
def test_mat_mul_matches_reedsolo_products(rows, inner, cols, rnd):
    a = np.array([[rnd.randrange(256) for _ in range(inner)] for _ in range(rows)])
    b = np.array([[rnd.randrange(256) for _ in range(cols)] for _ in range(inner)])
    assert np.array_equal(gf256.mat_mul(a, b), gf_matmul(a, b))


def test_mat_mul_rejects_shapes_that_do_not_chain():
    with pytest.raises(ValueError):
        gf256.mat_mul(np.ones((2, 3), dtype=np.int32), np.ones((2, 3), dtype=np.int32))


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 10), st.randoms(use_true_random=False), st.floats(0.0, 0.9))
def test_mat_inv_inverts_every_invertible_matrix_and_refuses_singular_ones(size, rnd, zero_rate):
    """Decoding matrices are inverted on the fly; a wrong inverse is silent data corruption."""
    matrix = np.array([[0 if rnd.random() < zero_rate else rnd.randrange(1, 256) for _ in range(size)]
                       for _ in range(size)])
    if gf_rank(matrix) < size:
        with pytest.raises(np.linalg.LinAlgError):
            gf256.mat_inv(matrix)
        return
    inverse = gf256.mat_inv(matrix)
    identity = np.eye(size, dtype=np.uint8)
    assert np.array_equal(gf_matmul(inverse, matrix), identity)
    assert np.array_equal(gf_matmul(matrix, inverse), identity)


@pytest.mark.parametrize(
    "matrix",
    [
        [[0]],
        [[1, 2], [1, 2]],  # equal rows
        [[3, 7], [MUL[5, 3], MUL[5, 7]]],  # second row = 5 * first
        [[1, 0, 4], [2, 0, 9], [3, 0, 1]],  # zero column
        [[1, 2, 3], [4, 5, 6], [1 ^ 4, 2 ^ 5, 3 ^ 6]],  # third row = sum of the others
    ],
)
def test_singular_matrix_raises(matrix):
    matrix = np.array(matrix)
    assert gf_rank(matrix) < len(matrix)
    with pytest.raises(np.linalg.LinAlgError):
        gf256.mat_inv(matrix)


def test_mat_inv_rejects_non_square():
    with pytest.raises(ValueError):
        gf256.mat_inv(np.ones((2, 3), dtype=np.int32))
