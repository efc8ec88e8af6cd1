"""The systematic MDS code: any k of its n symbols rebuild all n."""

from __future__ import annotations

import itertools
import random

import blake3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redstuff_oracles import from_virtual, gf_combine, gf_rank, to_virtual

from walrusfs.redstuff import gf256, mds


def encoded_symbols(code: mds.SystematicCode, rng: np.random.Generator, words: int) -> list[np.ndarray]:
    source = [rng.integers(0, 2**64, size=(8, words), dtype=np.uint64) for _ in range(code.k)]
    parity = [np.empty((8, words), dtype=np.uint64) for _ in range(code.n - code.k)]
    code.encode(source, parity)
    return source + parity


def reconstruct_all(code: mds.SystematicCode, symbols: list[np.ndarray], known: tuple[int, ...]):
    out = [np.full_like(symbols[0], 0x5A5A) for _ in range(code.n)]
    code.reconstruct({i: symbols[i] for i in known}, list(range(code.n)), out)
    return out


def test_generator_is_identity_over_the_cauchy_parity_matrix():
    code = mds.code(5, 9)
    assert np.array_equal(code.generator[:5], np.eye(5))
    assert np.array_equal(code.generator[5:], gf256.cauchy_parity_matrix(5, 4))


@pytest.mark.parametrize(("k", "n"), [(1, 1), (1, 4), (3, 7), (4, 10), (14, 20), (86, 256)])
def test_parity_equals_generator_times_source_on_virtual_elements(k, n):
    """The fast XOR encoder computes exactly C @ source, element by element (reedsolo products)."""
    code = mds.code(k, n)
    symbols = encoded_symbols(code, np.random.default_rng(k * n), 1)
    expected = gf_combine(code.generator[k:], [to_virtual(s) for s in symbols[:k]])
    for i, product in enumerate(expected):
        assert np.array_equal(symbols[k + i], from_virtual(product)), i


@pytest.mark.parametrize("n", range(1, 7))
def test_every_k_subset_reconstructs_every_symbol_exhaustively(n):
    rng = np.random.default_rng(n)
    for k in range(1, n + 1):
        code = mds.code(k, n)
        symbols = encoded_symbols(code, rng, 1)
        for known in itertools.combinations(range(n), k):
            out = reconstruct_all(code, symbols, known)
            for i in range(n):
                assert np.array_equal(out[i], symbols[i]), (k, n, known, i)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 16), st.integers(0, 20), st.integers(1, 3), st.randoms(use_true_random=False))
def test_random_k_subset_reconstructs_every_symbol(k, extra, words, rnd):
    n = k + extra
    code = mds.code(k, n)
    symbols = encoded_symbols(code, np.random.default_rng(rnd.getrandbits(32)), words)
    known = tuple(rnd.sample(range(n), k))
    out = reconstruct_all(code, symbols, known)
    for i in range(n):
        assert np.array_equal(out[i], symbols[i]), (k, n, known, i)


def test_more_than_k_symbols_are_fine():
    code = mds.code(4, 9)
    symbols = encoded_symbols(code, np.random.default_rng(3), 2)
    out = reconstruct_all(code, symbols, (8, 0, 6, 2, 7, 5))
    assert all(np.array_equal(a, b) for a, b in zip(out, symbols, strict=True))


@pytest.mark.parametrize(("k", "n"), [(1, 3), (4, 10), (13, 40)])
def test_fewer_than_k_symbols_raise_value_error(k, n):
    code = mds.code(k, n)
    symbols = encoded_symbols(code, np.random.default_rng(0), 1)
    for count in {0, k - 1}:
        known = {i: symbols[i] for i in range(n - count, n)}
        with pytest.raises(ValueError, match=str(k)):
            code.reconstruct(known, [0], [np.empty_like(symbols[0])])


@pytest.mark.parametrize(("k", "n"), [(0, 4), (5, 4), (1, 257), (-1, 3)])
def test_impossible_codes_are_refused(k, n):
    with pytest.raises(ValueError):
        mds.code(k, n)


@pytest.mark.parametrize(("data", "parity"), [(1, 3), (3, 3), (4, 4), (5, 3), (3, 6)])
def test_every_square_submatrix_of_small_cauchy_matrices_is_invertible(data, parity):
    """The MDS property: every square submatrix of C invertible, checked exhaustively."""
    matrix = gf256.cauchy_parity_matrix(data, parity)
    assert matrix.shape == (parity, data)
    for size in range(1, min(data, parity) + 1):
        for rows in itertools.combinations(range(parity), size):
            for cols in itertools.combinations(range(data), size):
                assert gf_rank(matrix[np.ix_(rows, cols)]) == size, (rows, cols)


@pytest.mark.parametrize(("data", "parity"), [(20, 20), (14, 26), (86, 170), (171, 85)])
def test_sampled_square_submatrices_of_large_cauchy_matrices_are_invertible(data, parity):
    matrix = gf256.cauchy_parity_matrix(data, parity)
    rnd = random.Random(data * 1000 + parity)
    for _ in range(40):
        size = rnd.randint(1, min(8, data, parity))
        rows = rnd.sample(range(parity), size)
        cols = rnd.sample(range(data), size)
        assert gf_rank(matrix[np.ix_(rows, cols)]) == size, (rows, cols)


def test_first_parity_row_is_plain_xor():
    """Documented optimisation: the first parity symbol is the XOR of the sources."""
    assert np.array_equal(gf256.cauchy_parity_matrix(7, 3)[0], np.ones(7))


@pytest.mark.parametrize(("data", "parity", "digest"), [
    (4, 6, "2cf63cbb78153aa8c80e09167690f421"),
    (7, 4, "e269ec3cc07d28aa79ceac63de0a5183"),
    (11, 20, "0966e17333b824d6f332a36361c329d5"),
    (21, 10, "1e4f1cddf857e76a2a18a557e3bcf9f9"),
    (86, 170, "08ebb4232d2f035f3f2dd5d9827fecad"),
    (171, 85, "90f97978524c8b38a1234995cfa9e365"),
])
def test_cauchy_parity_matrices_are_frozen(data, parity, digest):
    """The generators are part of encoding type 1 (every blob ID depends on them): any change to how
    they are built, even a faster search for the same scaling, must leave them byte for byte equal."""
    matrix = gf256.cauchy_parity_matrix(data, parity)
    assert blake3.blake3(matrix.astype(np.uint8).tobytes()).hexdigest()[:32] == digest
