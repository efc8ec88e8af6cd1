"""Encoding type 2 (RS16) against a slow reference of its spec, a known answer, and n = 1000."""

from __future__ import annotations

import random
import struct

import blake3
import pytest
import reed_solomon_leopard as leopard

from walrusfs.redstuff import (
    SliverExpansion,
    decode,
    decode_and_verify,
    encode,
    merkle,
    rs16merkle,
    verify_sliver,
)
from walrusfs.redstuff.encodings import ENCODING_REDSTUFF_RS16_V2
from walrusfs.redstuff.geometry import EncodingGeometry

RS16 = ENCODING_REDSTUFF_RS16_V2


def extend_symbols(symbols: list[bytes], n: int) -> list[bytes]:
    """One line, one symbol per shard: the code as reed-solomon-simd defines it, no wide shards."""
    return symbols + leopard.encode(symbols, n - len(symbols))


def reference_cells(blob: bytes, n: int) -> list[list[bytes]]:
    """The n x n matrix: blob bytes fill n_p x n_s symbols row-major, every column extended symbol
    by symbol, then every row."""
    g = EncodingGeometry(n)
    n_p, n_s = g.n_primary, g.n_secondary
    s = g.symbol_size(len(blob))
    padded = blob.ljust(n_p * n_s * s, b"\0")
    source = [[padded[(a * n_s + b) * s : (a * n_s + b + 1) * s] for b in range(n_s)] for a in range(n_p)]
    columns = [extend_symbols([source[a][b] for a in range(n_p)], n) for b in range(n_s)]
    return [extend_symbols([columns[b][i] for b in range(n_s)], n) for i in range(n)]


def reference_root(cells: list[bytes]) -> bytes:
    level = [blake3.blake3(c, key=rs16merkle.LEAF_KEY).digest() for c in cells]
    while len(level) & (len(level) - 1):
        level.append(rs16merkle.EMPTY)
    while len(level) > 1:
        level = [blake3.blake3(level[i] + level[i + 1], key=rs16merkle.NODE_KEY).digest()
                 for i in range(0, len(level), 2)]
    return level[0]


@pytest.mark.parametrize(("n", "length"), [(4, 0), (4, 385), (7, 1000), (10, 5000), (13, 64 * 45 + 1)])
def test_rs16_encoding_matches_a_slow_reference_of_the_spec(n, length):
    """Slivers are symbol-major rows and columns of the matrix extended one symbol at a time (so
    the wide shards and the lower-right quadrant's order do not matter); roots are keyed-BLAKE3
    trees over full rows and columns; the ID is blake3 over the documented header."""
    blob = random.Random(n * 1000 + length).randbytes(length)
    encoded = encode(blob, n, RS16)
    cells = reference_cells(blob, n)
    g = encoded.layout.geometry
    meta = encoded.metadata
    assert meta.encoding == RS16
    for i in range(n):
        assert bytes(encoded.primary_sliver(i).data) == b"".join(cells[i][: g.n_secondary]), f"primary {i}"
        assert bytes(encoded.secondary_sliver(i).data) == b"".join(cells[a][i] for a in range(g.n_primary))
        assert meta.primary_roots[i] == reference_root(cells[i])
        assert meta.secondary_roots[i] == reference_root([cells[a][i] for a in range(n)])
    pairs = [blake3.blake3(b"\0" + meta.primary_roots[p] + meta.secondary_roots[n - 1 - p]).digest() for p in range(n)]
    # The pair digests and their tree are merkle.py's for every encoding (blob.py).
    head = b"WRSID" + struct.pack("<BBHQ", 1, RS16, n, length)
    assert meta.blob_id.raw == blake3.blake3(head + merkle.root(pairs)).digest()


def test_rs16_known_answer_pins_the_engine():
    """The code's generator is part of the stored format: a reed-solomon-leopard (or
    reed-solomon-simd) version that computes other parity would change this ID. Do not update
    the constant: pin the engine instead (pyproject.toml) or add a new encoding type."""
    blob = random.Random("rs16 known answer").randbytes(5000)
    assert str(encode(blob, 10, RS16).metadata.blob_id) == KNOWN_RS16_ID


KNOWN_RS16_ID = "SBtsLQwfTR-v8zoFuETr2vpKkMFHPPSUtlVU5DfzKLI"


@pytest.mark.slow  # ~2 s idle; tens of seconds on a loaded machine
def test_a_thousand_shards_encode_verify_and_decode():
    """Recovery is covered for both encodings at small n (test_recovery.py): 667 helper expansions
    would make this test take tens of seconds on a loaded machine."""
    n = 1000
    blob = random.Random(n).randbytes(300_000)
    encoded = encode(blob, n, RS16)
    meta, g = encoded.metadata, encoded.layout.geometry
    parity_rows = [encoded.primary_sliver(i) for i in range(n - g.n_primary, n)]
    for sliver in parity_rows[:3] + [encoded.secondary_sliver(j) for j in (0, n - 1)]:
        verify_sliver(meta, sliver)
    assert bytes(decode_and_verify(meta, parity_rows, verify=False)) == blob
    columns = [encoded.secondary_sliver(j) for j in range(n - g.n_secondary, n)]
    assert bytes(decode(meta, columns, verify=False)) == blob
    lost = n - 1
    symbols = [SliverExpansion(encoded.secondary_sliver(j)).symbol_for(lost) for j in range(3)]
    assert all(symbol.is_valid_for(meta) for symbol in symbols)
