"""Bit-sliced XOR programs compute the GF(2^8) matrix product on virtual field elements.

Oracle: bit c of virtual element t of a symbol (uint64 array (8, P)) is bit t of packet c; the
expected output is reedsolo's product applied element by element.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redstuff_oracles import from_virtual, gf_combine, to_virtual

from walrusfs.redstuff import xorcode


def random_matrix(rnd, rows: int, cols: int, zero_rate: float) -> np.ndarray:
    return np.array([[0 if rnd.random() < zero_rate else rnd.randrange(1, 256) for _ in range(cols)]
                     for _ in range(rows)], dtype=np.int32)


def random_symbols(rng: np.random.Generator, count: int, shape: tuple[int, ...]) -> list[np.ndarray]:
    return [rng.integers(0, 2**64, size=shape, dtype=np.uint64) for _ in range(count)]


def expected_outputs(matrix: np.ndarray, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The oracle, for symbols of shape (..., 8, P): batch positions are independent symbols."""
    batch_shape = inputs[0].shape[:-2]
    outs = [np.empty(inputs[0].shape, dtype=np.uint64) for _ in range(matrix.shape[0])]
    for pos in np.ndindex(*batch_shape):
        products = gf_combine(matrix, [to_virtual(sym[pos]) for sym in inputs])
        for out, product in zip(outs, products, strict=True):
            out[pos] = from_virtual(product)
    return outs


def run_program(matrix, inputs, eliminate):
    program = xorcode.compile_matrix(matrix, eliminate_common_pairs=eliminate)
    # Outputs start as garbage: the program must overwrite, never accumulate into, them.
    outputs = [np.full(inputs[0].shape, 0xDEADBEEF, dtype=np.uint64) for _ in range(matrix.shape[0])]
    program.run(inputs, outputs)
    return program, outputs


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 6), cols=st.integers(1, 6), words=st.integers(1, 3),
    zero_rate=st.sampled_from([0.0, 0.3, 0.8]), rnd=st.randoms(use_true_random=False),
    seed=st.integers(0, 2**32 - 1),
)
def test_program_equals_field_product_with_and_without_pair_elimination(
        rows, cols, words, zero_rate, rnd, seed):
    matrix = random_matrix(rnd, rows, cols, zero_rate)
    inputs = random_symbols(np.random.default_rng(seed), cols, (8, words))
    expected = expected_outputs(matrix, inputs)
    for eliminate in (True, False):
        _, outputs = run_program(matrix, inputs, eliminate)
        for r in range(rows):
            assert np.array_equal(outputs[r], expected[r]), (eliminate, r, matrix.tolist())


@settings(max_examples=15, deadline=None)
@given(
    rows=st.integers(1, 4), cols=st.integers(1, 4), words=st.integers(65, 200),
    batch=st.sampled_from([(), (1,), (3,)]), block_bytes=st.sampled_from([1, 600, 4096]),
    rnd=st.randoms(use_true_random=False), seed=st.integers(0, 2**32 - 1),
)
def test_program_is_correct_when_blocks_split_packets_unevenly(
        rows, cols, words, batch, block_bytes, rnd, seed):
    """run() walks packets in blocks; the last, partial block and batched shapes must still be exact."""
    matrix = random_matrix(rnd, rows, cols, 0.2)
    inputs = random_symbols(np.random.default_rng(seed), cols, (*batch, 8, words))
    expected = expected_outputs(matrix, inputs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(xorcode, "BLOCK_BYTES", block_bytes)
        for eliminate in (True, False):
            _, outputs = run_program(matrix, inputs, eliminate)
            for r in range(rows):
                assert np.array_equal(outputs[r], expected[r]), (eliminate, r)


def test_large_dense_matrix_with_many_shared_pairs():
    """A 12 x 10 dense matrix gives pair elimination plenty of temporaries to schedule and reuse."""
    rng = np.random.default_rng(7)
    matrix = rng.integers(1, 256, size=(12, 10)).astype(np.int32)
    inputs = random_symbols(rng, 10, (8, 2))
    expected = expected_outputs(matrix, inputs)
    optimised, outputs = run_program(matrix, inputs, True)
    plain, _ = run_program(matrix, inputs, False)
    assert optimised.temp_buffers > 0
    assert optimised.xor_count < plain.xor_count
    for r in range(12):
        assert np.array_equal(outputs[r], expected[r])


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 8), st.integers(1, 8), st.randoms(use_true_random=False))
def test_pair_elimination_never_adds_xors(rows, cols, rnd):
    matrix = random_matrix(rnd, rows, cols, 0.1)
    optimised = xorcode.compile_matrix(matrix, eliminate_common_pairs=True)
    plain = xorcode.compile_matrix(matrix, eliminate_common_pairs=False)
    assert optimised.xor_count <= plain.xor_count


def test_identity_copies_and_zero_rows_clear_outputs():
    rng = np.random.default_rng(1)
    inputs = random_symbols(rng, 2, (8, 3))
    _, outputs = run_program(np.array([[1, 0], [0, 0], [0, 1]]), inputs, True)
    assert np.array_equal(outputs[0], inputs[0])
    assert not outputs[1].any()
    assert np.array_equal(outputs[2], inputs[1])


def test_run_rejects_wrong_number_of_symbols():
    program = xorcode.compile_matrix(np.array([[1, 2, 3]]))
    symbols = random_symbols(np.random.default_rng(0), 4, (8, 1))
    with pytest.raises(ValueError):
        program.run(symbols[:2], symbols[3:])
    with pytest.raises(ValueError):
        program.run(symbols[:3], [])
