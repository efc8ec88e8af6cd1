"""The table engine computes exactly what the bit-sliced engine does, and the engine choice is sound.

Oracles: reedsolo's products (via redstuff_oracles) and the bit-sliced XOR programs, which are
themselves checked against reedsolo in test_xorcode.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redstuff_oracles import MUL, from_virtual, gf_combine, to_virtual

from walrusfs.redstuff import gf256, mds, product, tablecode, xorcode


def random_matrix(rng: np.random.Generator, rows: int, cols: int, zero_rate: float) -> np.ndarray:
    matrix = rng.integers(1, 256, size=(rows, cols)).astype(np.int32)
    matrix[rng.random((rows, cols)) < zero_rate] = 0
    return matrix


def strided_symbols(rng: np.random.Generator, count: int, batch: tuple[int, ...], words: int,
                    layout: str) -> list[np.ndarray]:
    """``count`` symbols of shape (*batch, 8, words): separate arrays, or views into one plane-major
    line (8, count, words) as the codec passes them, or every other word of a wider array."""
    if layout == "separate":
        return [rng.integers(0, 2**64, size=(*batch, 8, words), dtype=np.uint64) for _ in range(count)]
    if layout == "line":
        line = rng.integers(0, 2**64, size=(*batch, 8, count, words), dtype=np.uint64)
        return [line[..., i, :] for i in range(count)]
    wide = rng.integers(0, 2**64, size=(count, *batch, 8, 2 * words), dtype=np.uint64)
    return [wide[i, ..., ::2] for i in range(count)]


def run_engine(matrix: np.ndarray, inputs: list[np.ndarray], engine: str, out_layout: str,
               rng: np.random.Generator) -> list[np.ndarray]:
    shape = inputs[0].shape
    outputs = strided_symbols(rng, matrix.shape[0], shape[:-2], shape[-1], out_layout)
    for out in outputs:
        out.fill(0xDEADBEEF)  # garbage: outputs are overwritten, never accumulated into
    before = [s.copy() for s in inputs]
    product.MatrixProduct(matrix).run(inputs, outputs, engine=engine)
    assert all(np.array_equal(a, b) for a, b in zip(before, inputs, strict=True)), "inputs modified"
    return [np.array(o) for o in outputs]


def test_multiplication_table_matches_reedsolo_for_all_65536_pairs():
    mismatches = np.argwhere(gf256.MUL_TABLE != MUL)
    assert mismatches.size == 0, f"first wrong products (a, b): {mismatches[:5].tolist()}"


@settings(max_examples=40, deadline=None)
@given(count=st.integers(1, 4), batch=st.sampled_from([(), (1,), (3,), (2, 2)]), words=st.integers(1, 5),
       layout=st.sampled_from(["separate", "line", "strided"]), seed=st.integers(0, 2**32 - 1))
def test_virtual_elements_match_the_oracle_and_round_trip(count, batch, words, layout, seed):
    symbols = strided_symbols(np.random.default_rng(seed), count, batch, words, layout)
    elements = tablecode.to_virtual(np.stack(symbols))
    assert elements.shape == (count, 64 * words * int(np.prod(batch, dtype=np.int64)))
    for i, symbol in enumerate(symbols):
        expected = np.concatenate([to_virtual(symbol[pos]) for pos in np.ndindex(*batch)])
        assert np.array_equal(elements[i], expected), i
    back = tablecode.from_virtual(elements, (count, *batch, 8, words))
    for i, symbol in enumerate(symbols):
        assert np.array_equal(back[i], symbol), i


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 7), cols=st.integers(1, 7), words=st.integers(1, 3),
       zero_rate=st.sampled_from([0.0, 0.3, 0.9]), seed=st.integers(0, 2**32 - 1))
def test_table_engine_equals_reedsolo_products_on_virtual_elements(rows, cols, words, zero_rate, seed):
    rng = np.random.default_rng(seed)
    matrix = random_matrix(rng, rows, cols, zero_rate)
    inputs = strided_symbols(rng, cols, (), words, "separate")
    outputs = run_engine(matrix, inputs, product.TABLE, "separate", rng)
    expected = gf_combine(matrix, [to_virtual(s) for s in inputs])
    for r in range(rows):
        assert np.array_equal(outputs[r], from_virtual(expected[r])), (r, matrix.tolist())


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 12), cols=st.integers(1, 12), words=st.integers(1, 70),
       batch=st.sampled_from([(), (1,), (3,), (2, 3)]), zero_rate=st.sampled_from([0.0, 0.2, 0.8]),
       in_layout=st.sampled_from(["separate", "line", "strided"]),
       out_layout=st.sampled_from(["separate", "line", "strided"]), seed=st.integers(0, 2**32 - 1))
def test_table_and_bitsliced_engines_agree(rows, cols, words, batch, zero_rate, in_layout, out_layout, seed):
    rng = np.random.default_rng(seed)
    matrix = random_matrix(rng, rows, cols, zero_rate)
    inputs = strided_symbols(rng, cols, batch, words, in_layout)
    table = run_engine(matrix, inputs, product.TABLE, out_layout, rng)
    bitsliced = run_engine(matrix, inputs, product.BITSLICED, out_layout, rng)
    for r in range(rows):
        assert np.array_equal(table[r], bitsliced[r]), (r, matrix.tolist())


@settings(max_examples=15, deadline=None)
@given(rows=st.integers(1, 5), cols=st.integers(1, 5), words=st.integers(1, 40),
       batch=st.sampled_from([(), (3,)]), chunk=st.sampled_from([1, 64, 100, 640]),
       seed=st.integers(0, 2**32 - 1))
def test_table_engine_is_exact_when_chunks_split_packets_unevenly(rows, cols, words, batch, chunk, seed):
    """run() converts the packets in chunks of words; partial last chunks and batches must be exact."""
    rng = np.random.default_rng(seed)
    matrix = random_matrix(rng, rows, cols, 0.1)
    inputs = strided_symbols(rng, cols, batch, words, "line")
    expected = run_engine(matrix, inputs, product.BITSLICED, "separate", rng)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tablecode, "MIN_CHUNK_ELEMENTS", chunk)
        mp.setattr(tablecode, "MAX_CHUNK_ELEMENTS", chunk)
        outputs = run_engine(matrix, inputs, product.TABLE, "line", rng)
    for r in range(rows):
        assert np.array_equal(outputs[r], expected[r]), r


def test_large_code_matrices_agree_on_both_engines():
    """The n=256 parity matrix, where the engines differ most in cost, on a batch of small symbols."""
    rng = np.random.default_rng(256)
    matrix = gf256.cauchy_parity_matrix(86, 170)
    inputs = strided_symbols(rng, 86, (2,), 1, "line")
    assert all(np.array_equal(a, b) for a, b in zip(
        run_engine(matrix, inputs, product.TABLE, "separate", rng),
        run_engine(matrix, inputs, product.BITSLICED, "separate", rng), strict=True))


@pytest.mark.parametrize("engine", [product.TABLE, product.BITSLICED])
@pytest.mark.parametrize(("k", "n"), [(1, 4), (4, 10), (11, 31), (21, 31)])
def test_systematic_code_round_trips_on_either_engine(engine, k, n, monkeypatch):
    monkeypatch.setattr(product.MatrixProduct, "engine_for", lambda self, shape: engine)
    code = mds.SystematicCode(k, n)  # not the cached one: its engines are built afresh here
    rng = np.random.default_rng(k * n)
    source = strided_symbols(rng, k, (), 3, "line")
    parity = [np.empty((8, 3), dtype=np.uint64) for _ in range(n - k)]
    code.encode(source, parity)
    expected = gf_combine(code.generator[k:], [to_virtual(s) for s in source])
    for i, p in enumerate(parity):
        assert np.array_equal(p, from_virtual(expected[i])), i
    symbols = source + parity
    known = [int(i) for i in rng.choice(n, size=k, replace=False)]
    out = [np.empty_like(parity[0] if parity else source[0]) for _ in range(n)]
    code.reconstruct({i: symbols[i] for i in known}, list(range(n)), out)
    for i in range(n):
        assert np.array_equal(out[i], symbols[i]), (known, i)


def test_engine_choice_keeps_small_committees_with_large_symbols_bit_sliced():
    """n=10 and n=31 with MiB-sized blobs: few XORs over long packets, the bit-sliced engine's case."""
    for k, n, words in [(2, 4, 20_000), (4, 10, 18_725), (7, 10, 2_340), (11, 31, 47_670), (21, 31, 2_270)]:
        assert mds.code(k, n).parity.engine_for((8, words)) == product.BITSLICED, (k, n)


def test_engine_choice_takes_tables_for_large_committees_with_small_symbols():
    for k, n, words in [(86, 256, 1), (86, 256, 171), (171, 256, 1), (171, 256, 86)]:
        assert mds.code(k, n).parity.engine_for((8, words)) == product.TABLE, (k, n)


def test_bitsliced_program_is_compiled_only_when_chosen(monkeypatch):
    compiled = []
    real_compile = xorcode.compile_matrix
    monkeypatch.setattr(xorcode, "compile_matrix", lambda *a, **kw: compiled.append(a) or real_compile(*a, **kw))
    matrix = product.MatrixProduct(gf256.cauchy_parity_matrix(86, 170))
    inputs = strided_symbols(np.random.default_rng(0), 86, (), 1, "line")
    outputs = [np.empty((8, 1), dtype=np.uint64) for _ in range(170)]
    matrix.run(inputs, outputs)
    assert not compiled, "the table engine was cheaper; no XOR program should have been built"
    matrix.run(inputs, outputs, engine=product.BITSLICED)
    assert len(compiled) == 1


def test_run_rejects_wrong_symbol_counts_and_unknown_engines():
    matrix = product.MatrixProduct(np.array([[1, 2, 3]]))
    symbols = strided_symbols(np.random.default_rng(0), 4, (), 1, "separate")
    for engine in (product.TABLE, product.BITSLICED, None):
        with pytest.raises(ValueError):
            matrix.run(symbols[:2], symbols[3:], engine=engine)
    with pytest.raises(ValueError):
        matrix.run(symbols[:3], symbols[3:], engine="abacus")
