"""Sizes and index rules of RedStuff: n = 3f+1 tolerance, matrix shape, symbol size, pair/shard maps."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walrusfs.redstuff import (
    MAX_BLOB_LENGTH,
    BlobMetadata,
    EncodingGeometry,
    FormatError,
    GeometryError,
    SliverKind,
    encode,
)
from walrusfs.redstuff.encodings import ENCODING_REDSTUFF_GF256_V1, ENCODING_REDSTUFF_RS16_V2

ALL_N = range(4, 257)


@pytest.mark.parametrize("n", ALL_N)
def test_fault_tolerance_and_quorums_follow_n_equals_3f_plus_1(n):
    g = EncodingGeometry(n)
    f = g.max_faulty
    assert 3 * f + 1 <= n < 3 * (f + 1) + 1, "f is the largest tolerance n allows"
    assert g.n_primary == n - 2 * f
    assert g.n_secondary == n - f
    assert g.quorum == n - f
    assert g.source_symbols == g.n_primary * g.n_secondary
    # Any two quorums share an honest node; n_p slivers exceed what f liars can hold.
    assert 2 * g.quorum - n >= f + 1
    assert g.n_primary >= f + 1


def check_symbol_size(g: EncodingGeometry, length: int) -> None:
    size = g.symbol_size(length)
    assert size % 64 == 0 and size >= 64
    assert g.source_symbols * size >= length, "the matrix holds the whole blob"
    if size > 64:
        assert g.source_symbols * (size - 64) < length, "padding is less than one alignment step"
    layout = g.layout(length)
    assert layout.symbol_size == size
    assert layout.padded_length == g.source_symbols * size
    assert layout.primary_sliver_size == g.n_secondary * size == layout.row_length
    assert layout.secondary_sliver_size == g.n_primary * size
    assert layout.encoded_length == n_times_pair(g, size)


def n_times_pair(g: EncodingGeometry, size: int) -> int:
    return g.n_shards * (g.n_primary + g.n_secondary) * size


@pytest.mark.parametrize("n", ALL_N)
def test_symbol_size_is_minimal_aligned_and_covers_boundary_lengths(n):
    g = EncodingGeometry(n)
    unit = g.source_symbols * 64
    for length in (0, 1, 63, 64, 65, unit - 1, unit, unit + 1, 7 * unit + 3, MAX_BLOB_LENGTH):
        check_symbol_size(g, length)
    assert g.symbol_size(0) == 64
    assert g.symbol_size(unit) == 64
    assert g.symbol_size(unit + 1) == 128


@settings(max_examples=300, deadline=None)
@given(st.integers(4, 256), st.integers(0, MAX_BLOB_LENGTH))
def test_symbol_size_is_minimal_aligned_for_any_length(n, length):
    check_symbol_size(EncodingGeometry(n), length)


@pytest.mark.parametrize("n", [-1, 0, 1, 3, 1025, 4096])
def test_shard_counts_outside_4_to_1024_are_refused(n):
    with pytest.raises(GeometryError, match="n_shards"):
        EncodingGeometry(n)


@pytest.mark.parametrize("n", [257, 1000])
def test_gf256_refuses_more_than_256_shards_and_rs16_takes_them(n):
    """GF(2^8) has 256 elements: a Cauchy code needs n distinct ones. GF(2^16) goes to 1024 here."""
    with pytest.raises(GeometryError, match="at most 256 shards"):
        encode(b"x", n, ENCODING_REDSTUFF_GF256_V1)
    with pytest.raises(FormatError, match="at most 256 shards"):
        BlobMetadata(n, 1, (bytes(32),) * n, (bytes(32),) * n, ENCODING_REDSTUFF_GF256_V1)
    assert BlobMetadata(n, 1, (bytes(32),) * n, (bytes(32),) * n, ENCODING_REDSTUFF_RS16_V2).n_shards == n


@pytest.mark.parametrize("n", [4, 10, 256])
def test_lengths_outside_zero_to_max_are_refused(n):
    g = EncodingGeometry(n)
    assert g.max_blob_length == MAX_BLOB_LENGTH
    for bad in (-1, -(1 << 40), g.max_blob_length + 1):
        with pytest.raises(GeometryError):
            g.symbol_size(bad)
        with pytest.raises(GeometryError):
            g.layout(bad)


@settings(max_examples=60, deadline=None)
@given(st.integers(4, 256), st.binary(min_size=32, max_size=32))
def test_pair_to_shard_rotation_is_a_bijection_and_its_own_inverse(n, blob_id):
    g = EncodingGeometry(n)
    shards = [g.shard_of_pair(p, blob_id) for p in range(n)]
    assert sorted(shards) == list(range(n))
    assert [g.pair_of_shard(s, blob_id) for s in shards] == list(range(n))
    # A rotation: every pair moves by the same offset.
    assert len({(s - p) % n for p, s in enumerate(shards)}) == 1


def test_rotation_depends_on_the_blob_id_so_load_spreads():
    """Systematic slivers (pairs 0..n_p-1) should not always land on the same nodes."""
    g = EncodingGeometry(10)
    offsets = {g.shard_of_pair(0, os.urandom(32)) for _ in range(400)}
    assert offsets == set(range(10))


@pytest.mark.parametrize("n", [4, 7, 13, 256])
def test_pair_p_holds_secondary_sliver_n_minus_1_minus_p(n):
    g = EncodingGeometry(n)
    for p in range(n):
        assert g.secondary_of_pair(p) == n - 1 - p
        assert g.pair_of_secondary(g.secondary_of_pair(p)) == p


@pytest.mark.parametrize("n", [4, 7, 13, 256])
def test_pair_p_holds_primary_sliver_p_and_secondary_sliver_n_minus_1_minus_p(n):
    g = EncodingGeometry(n)
    for p in range(n):
        assert g.sliver_of_pair(p, SliverKind.PRIMARY) == p
        assert g.sliver_of_pair(p, SliverKind.SECONDARY) == n - 1 - p
        for kind in SliverKind:
            assert g.pair_of_sliver(g.sliver_of_pair(p, kind), kind) == p


@pytest.mark.parametrize("n", [4, 40])
def test_indices_outside_0_to_n_are_refused(n):
    g = EncodingGeometry(n)
    for bad in (-1, n, n + 5):
        for call in (g.secondary_of_pair, g.pair_of_secondary, g.check_index):
            with pytest.raises(GeometryError):
                call(bad)
        for kind in SliverKind:
            with pytest.raises(GeometryError):
                g.sliver_of_pair(bad, kind)
            with pytest.raises(GeometryError):
                g.pair_of_sliver(bad, kind)
        with pytest.raises(GeometryError):
            g.shard_of_pair(bad, bytes(32))
        with pytest.raises(GeometryError):
            g.pair_of_shard(bad, bytes(32))
