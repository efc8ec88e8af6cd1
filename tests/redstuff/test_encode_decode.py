"""Encoding a blob and decoding it back from any quorum of slivers."""

from __future__ import annotations

import os
import random
import struct

import blake3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redstuff_oracles import plane_major, reference_cells, spec_geometry

from walrusfs.redstuff import (
    EncodingGeometry,
    NotEnoughSliversError,
    SliverKind,
    decode,
    decode_and_verify,
    encode,
    mds,
    merkle,
)
from walrusfs.redstuff.encodings import ENCODING_REDSTUFF_GF256_V1

pytestmark = pytest.mark.usefixtures("each_encoding")


def blob_of(length: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(length)


def primary_subset(encoded, indices):
    return [encoded.primary_sliver(i) for i in indices]


def secondary_subset(encoded, indices):
    return [encoded.secondary_sliver(i) for i in indices]


@pytest.mark.parametrize(("n", "length"), [(4, 0), (4, 385), (7, 1000), (10, 14 * 64 * 3 + 5)])
def test_encoding_matches_a_slow_reference_of_the_spec(n, length):
    """Every sliver, root and the blob ID equal a from-scratch computation: blob bytes fill an
    n_p x n_s matrix row-major (plane-major symbols), columns are extended with [I; C_p], rows with
    [I; C_s], Merkle roots over full rows/columns, ID = blake3 over the documented header."""
    blob = blob_of(length, n)
    encoded = encode(blob, n, ENCODING_REDSTUFF_GF256_V1)  # the spec of encoding type 1
    n_p, n_s, s = spec_geometry(n, length)
    assert encoded.layout.symbol_size == s
    cells = reference_cells(blob, n, mds.code(n_p, n).generator, mds.code(n_s, n).generator)
    meta = encoded.metadata
    for i in range(n):
        assert bytes(encoded.primary_sliver(i).data) == plane_major(cells[i][:n_s]), f"primary {i}"
        assert bytes(encoded.secondary_sliver(i).data) == plane_major(
            [cells[a][i] for a in range(n_p)]), f"secondary {i}"
        assert meta.primary_roots[i] == merkle.root([merkle.leaf_hash(c) for c in cells[i]])
        assert meta.secondary_roots[i] == merkle.root([merkle.leaf_hash(cells[a][i]) for a in range(n)])
    pairs = [merkle.leaf_hash(meta.primary_roots[p] + meta.secondary_roots[n - 1 - p]) for p in range(n)]
    head = b"WRSID" + struct.pack("<BBHQ", 1, 1, n, length)
    assert meta.blob_id.raw == blake3.blake3(head + merkle.root(pairs)).digest()


@pytest.mark.parametrize("n", [4, 5, 7, 10, 13, 31])
@pytest.mark.parametrize("length", [0, 1, 63, 64, 65, 4097])
def test_systematic_primary_slivers_are_the_blob_bytes_as_they_are(n, length):
    """Reads of intact systematic slivers need no decoding at all."""
    blob = blob_of(length, length + n)
    encoded = encode(blob, n)
    n_p = encoded.layout.geometry.n_primary
    joined = b"".join(bytes(encoded.primary_sliver(i).data) for i in range(n_p))
    assert joined[:length] == blob
    assert not any(joined[length:]), "padding is zeros"


def check_round_trips(blob: bytes, n: int, rnd: random.Random) -> None:
    encoded = encode(blob, n)
    meta = encoded.metadata
    g = EncodingGeometry(n)
    n_p, n_s = g.n_primary, g.n_secondary
    subsets = [
        (SliverKind.PRIMARY, rnd.sample(range(n), n_p)),
        # As many parity rows as exist (all n_p of them when n <= 4f: no systematic sliver at all).
        (SliverKind.PRIMARY, rnd.sample(range(n_p, n), min(n_p, n - n_p))
         + rnd.sample(range(n_p), max(0, 2 * n_p - n))),
        (SliverKind.SECONDARY, rnd.sample(range(n), n_s)),
        (SliverKind.SECONDARY, list(range(n_s, n)) + rnd.sample(range(n_s), n_s - (n - n_s))),
    ]
    for kind, indices in subsets:
        slivers = [encoded.sliver(kind, i) for i in indices]
        rnd.shuffle(slivers)
        assert bytes(decode(meta, slivers)) == blob, (kind, indices)
        assert bytes(decode_and_verify(meta, slivers)) == blob, (kind, indices)


@pytest.mark.parametrize("n", [4, 7, 10, 19])
def test_boundary_lengths_round_trip(n):
    g = EncodingGeometry(n)
    unit = g.source_symbols * 64
    rnd = random.Random(n)
    for length in (0, 1, 63, 64, 65, unit - 1, unit, unit + 1, 2 * unit - 1, 2 * unit + 1):
        check_round_trips(blob_of(length, length), n, rnd)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(4, 40), length=st.integers(0, 20_000), rnd=st.randoms(use_true_random=False))
def test_any_quorum_of_one_kind_decodes_the_blob(n, length, rnd):
    check_round_trips(rnd.randbytes(length), n, rnd)


@pytest.mark.parametrize(("n", "length"), [(4, 3 * 1024 * 1024 + 17), (10, 4 * 1024 * 1024), (25, 2_500_001)])
def test_multi_mebibyte_blobs_round_trip(n, length):
    """Large symbols take the per-plane hashing path and multi-block XOR runs."""
    blob = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8).tobytes()
    check_round_trips(blob, n, random.Random(length))


def test_input_buffer_types_are_all_accepted():
    blob = os.urandom(5000)
    ids = {encode(b, 7).blob_id for b in (blob, bytearray(blob), memoryview(blob),
                                          np.frombuffer(blob, dtype=np.uint8))}
    assert len(ids) == 1


def test_blob_id_is_deterministic_and_content_sensitive():
    blob = bytearray(os.urandom(3000))
    first = encode(bytes(blob), 10).blob_id
    assert encode(bytes(blob), 10).blob_id == first
    blob[1234] ^= 0x10
    assert encode(bytes(blob), 10).blob_id != first
    assert encode(bytes(blob[:-1]), 10).blob_id != encode(bytes(blob[:-1]) + b"\0", 10).blob_id, \
        "length is committed: trailing zeros are not padding"
    assert encode(bytes(blob), 7).blob_id != encode(bytes(blob), 10).blob_id


def test_too_few_slivers_raise_not_enough_slivers():
    encoded = encode(os.urandom(2000), 10)
    g = encoded.layout.geometry
    slivers = primary_subset(encoded, range(g.n_primary - 1)) + secondary_subset(encoded, range(g.n_secondary - 1))
    # Duplicates do not count twice.
    slivers += primary_subset(encoded, [0, 1])
    with pytest.raises(NotEnoughSliversError):
        decode(encoded.metadata, slivers)
    with pytest.raises(NotEnoughSliversError):
        decode_and_verify(encoded.metadata, [])


@pytest.mark.slow
def test_256_shards_round_trip_for_a_small_blob():
    """The largest committee GF(2^8) allows: decode from systematic, parity-only and secondary sets."""
    blob = os.urandom(1000)
    encoded = encode(blob, 256)
    g, meta = encoded.layout.geometry, encoded.metadata
    assert (g.n_primary, g.n_secondary) == (86, 171)
    rnd = random.Random(256)
    parity_only = primary_subset(encoded, rnd.sample(range(86, 256), 86))
    assert bytes(decode(meta, parity_only, verify=False)) == blob
    secondary = secondary_subset(encoded, rnd.sample(range(256), 171))
    assert bytes(decode(meta, secondary, verify=False)) == blob
    systematic = b"".join(bytes(encoded.primary_sliver(i).data) for i in range(86))
    assert systematic[:1000] == blob
