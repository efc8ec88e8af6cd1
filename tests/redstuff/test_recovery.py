"""Rebuilding one lost sliver from proven recovery symbols of other nodes' slivers."""

from __future__ import annotations

import dataclasses
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walrusfs.redstuff import (
    EncodingGeometry,
    FormatError,
    NotEnoughSliversError,
    RecoverySymbol,
    SliverExpansion,
    SliverKind,
    encode,
    recover_sliver,
    verify_sliver,
)

pytestmark = pytest.mark.usefixtures("each_encoding")

_EXPANSIONS: dict[tuple[int, int], tuple[object, dict]] = {}


def blob_and_expansions(n: int, length: int):
    """An encoded blob and every sliver's expansion (cached: expanding is the costly part)."""
    key = (n, length)
    if key not in _EXPANSIONS:
        encoded = encode(random.Random(n * 7 + length).randbytes(length), n)
        expansions = {(kind, i): SliverExpansion(encoded.sliver(kind, i)) for kind in SliverKind for i in range(n)}
        _EXPANSIONS[key] = (encoded, expansions)
    return _EXPANSIONS[key]


def symbols_for(expansions, n, target_kind, target, sources):
    """Recovery symbols for ``target`` from the holders of the other kind's slivers ``sources``."""
    return [expansions[(target_kind.other, j)].symbol_for(target) for j in sources]


def needed(n: int, target_kind: SliverKind) -> int:
    g = EncodingGeometry(n)
    return g.n_secondary if target_kind is SliverKind.PRIMARY else g.n_primary


@pytest.mark.parametrize(("n", "length"), [(4, 0), (4, 700), (7, 3000), (10, 64 * 28 * 2 + 1), (16, 10_000)])
def test_every_sliver_is_recovered_from_any_minimal_set_of_symbols(n, length):
    encoded, expansions = blob_and_expansions(n, length)
    rnd = random.Random(n + length)
    for kind in SliverKind:
        k = needed(n, kind)
        for target in range(n):
            sources = rnd.sample(range(n), k)
            symbols = [RecoverySymbol.from_bytes(s.to_bytes())
                       for s in symbols_for(expansions, n, kind, target, sources)]
            rnd.shuffle(symbols)
            recovered = recover_sliver(encoded.metadata, kind, target, symbols)
            assert bytes(recovered.data) == bytes(encoded.sliver(kind, target).data), (kind, target, sources)
            assert (recovered.kind, recovered.index, recovered.blob_id) == (kind, target, encoded.blob_id)
            verify_sliver(encoded.metadata, recovered)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(4, 22), length=st.integers(0, 5000), data=st.data())
def test_recovery_from_random_sources_matches_the_lost_sliver(n, length, data):
    encoded = encode(os.urandom(length), n)
    kind = data.draw(st.sampled_from(SliverKind))
    target = data.draw(st.integers(0, n - 1))
    sources = data.draw(st.permutations(range(n)))[: needed(n, kind)]
    symbols = [SliverExpansion(encoded.sliver(kind.other, j)).symbol_for(target) for j in sources]
    recovered = recover_sliver(encoded.metadata, kind, target, symbols)
    assert bytes(recovered.data) == bytes(encoded.sliver(kind, target).data)


def test_each_recovery_symbol_is_the_cell_it_claims_to_be():
    """Primary target t from secondary sliver j carries cell (t, j); the symbol is proven."""
    encoded, expansions = blob_and_expansions(7, 3000)
    layout = encoded.layout
    for j in range(7):
        symbol = expansions[(SliverKind.SECONDARY, j)].symbol_for(1)
        assert (symbol.target_kind, symbol.source_index, symbol.target_index) == (SliverKind.PRIMARY, j, 1)
        assert symbol.is_valid_for(encoded.metadata)
        if j < layout.geometry.n_secondary:  # cell (1, j) is symbol j of primary sliver 1
            row = encoded.primary_sliver(1).line()
            assert symbol.data == row[:, j, :].tobytes()


def corrupted_variants(symbol: RecoverySymbol, other_blob_id):
    flipped = bytearray(symbol.data)
    flipped[len(flipped) // 2] ^= 0x04
    proof = list(symbol.proof)
    proof[-1] = bytes([proof[-1][0] ^ 1]) + proof[-1][1:]
    yield "flipped data bit", dataclasses.replace(symbol, data=bytes(flipped))
    yield "corrupted proof", dataclasses.replace(symbol, proof=tuple(proof))
    yield "short proof", dataclasses.replace(symbol, proof=symbol.proof[:-1])
    yield "wrong source claimed", dataclasses.replace(symbol, source_index=(symbol.source_index + 1) % symbol.n_shards)
    yield "other blob", dataclasses.replace(symbol, blob_id=other_blob_id)
    yield "short data", dataclasses.replace(symbol, data=symbol.data[:-64])


@pytest.mark.parametrize("kind", list(SliverKind))
def test_bad_symbols_are_invalid_and_skipped_when_enough_good_ones_remain(kind):
    n = 10
    encoded, expansions = blob_and_expansions(n, 64 * 28 * 2 + 1)
    other = encode(os.urandom(100), n)
    meta, k, target = encoded.metadata, needed(n, kind), 4
    good = symbols_for(expansions, n, kind, target, range(n))
    bad = []
    for symbol in good[:3]:
        for what, variant in corrupted_variants(symbol, other.blob_id):
            assert not variant.is_valid_for(meta), what
            bad.append(variant)
    # A genuine symbol, but for another target (same kind and for the other kind).
    wrong_target = expansions[(kind.other, 5)].symbol_for(target + 1)
    wrong_kind = expansions[(kind, 5)].symbol_for(target)
    assert wrong_target.is_valid_for(meta) and wrong_kind.is_valid_for(meta)
    bad += [wrong_target, wrong_kind]
    # A genuine symbol of another blob with the same geometry.
    twin = encode(os.urandom(meta.blob_length), n)
    foreign = SliverExpansion(twin.sliver(kind.other, 6)).symbol_for(target)
    assert not foreign.is_valid_for(meta)
    bad.append(foreign)

    # Bad symbols first, then exactly k good ones the bad ones do not cover.
    recovered = recover_sliver(meta, kind, target, bad + good[n - k:])
    assert bytes(recovered.data) == bytes(encoded.sliver(kind, target).data)
    with pytest.raises(NotEnoughSliversError):
        recover_sliver(meta, kind, target, bad + good[n - k + 1:])


def test_duplicate_symbols_from_one_source_count_once():
    encoded, expansions = blob_and_expansions(7, 3000)
    k = needed(7, SliverKind.SECONDARY)
    symbols = symbols_for(expansions, 7, SliverKind.SECONDARY, 2, range(k - 1))
    with pytest.raises(NotEnoughSliversError):
        recover_sliver(encoded.metadata, SliverKind.SECONDARY, 2, symbols * 3)


def test_recovery_symbol_round_trips_and_rejects_malformed_bytes():
    encoded, expansions = blob_and_expansions(10, 64 * 28 * 2 + 1)
    symbol = expansions[(SliverKind.PRIMARY, 3)].symbol_for(8)
    wire = symbol.to_bytes()
    again = RecoverySymbol.from_bytes(wire)
    assert (again.blob_id, again.target_kind, again.source_index, again.target_index, again.n_shards,
            again.data, again.proof) == (symbol.blob_id, symbol.target_kind, symbol.source_index,
                                         symbol.target_index, symbol.n_shards, symbol.data, symbol.proof)
    assert again.is_valid_for(encoded.metadata)
    for cut in (0, 4, 10, len(wire) - 32, len(wire) - 1):
        with pytest.raises(FormatError):
            RecoverySymbol.from_bytes(wire[:cut])
    with pytest.raises(FormatError):
        RecoverySymbol.from_bytes(wire + b"\0")
    for offset, value in ((0, b"WRSX"), (4, b"\x09"), (5, b"\x02"), (8, b"\x0a\x00"), (10, b"\x0b\x00")):
        with pytest.raises(FormatError):
            RecoverySymbol.from_bytes(wire[:offset] + value + wire[offset + len(value):])


def test_recover_refuses_a_target_outside_the_committee():
    encoded, expansions = blob_and_expansions(4, 700)
    with pytest.raises(ValueError):
        recover_sliver(encoded.metadata, SliverKind.PRIMARY, 4, [])
    with pytest.raises(ValueError):
        expansions[(SliverKind.PRIMARY, 0)].symbol_for(4)


def forged(symbol: RecoverySymbol, **changes) -> RecoverySymbol:
    """A copy of ``symbol`` with ``changes`` applied past the constructor's checks, as a caller
    could (object.__setattr__ on a frozen dataclass)."""
    copy = dataclasses.replace(symbol)
    for field, value in changes.items():
        object.__setattr__(copy, field, value)
    return copy


@pytest.mark.parametrize("changes", [
    {"source_index": -1}, {"source_index": 7}, {"source_index": 1 << 16}, {"source_index": True},
    {"target_index": -1}, {"target_index": 7}, {"source_index": 2.0}, {"n_shards": 3},
])
def test_a_recovery_symbol_claiming_an_index_outside_the_committee_cannot_be_built(changes):
    _, expansions = blob_and_expansions(7, 3000)
    genuine = symbols_for(expansions, 7, SliverKind.PRIMARY, 2, range(7))
    with pytest.raises(FormatError):
        dataclasses.replace(genuine[6], **changes)


def test_a_sliver_with_an_index_outside_the_committee_cannot_be_built():
    encoded, _ = blob_and_expansions(7, 3000)
    sliver = encoded.primary_sliver(6)
    for index in (-1, 7, True, 6.0):
        with pytest.raises(FormatError):
            dataclasses.replace(sliver, index=index)


@pytest.mark.parametrize("changes", [{"source_index": -1}, {"source_index": 7}, {"target_index": -5},
                                     {"source_index": True}])
def test_a_symbol_claiming_a_source_index_outside_the_committee_is_invalid(changes):
    """is_valid_for is the gate for symbols however they were built; source -1 must not alias source
    n-1 through Python's negative indexing (and then count as a second, duplicate source)."""
    encoded, expansions = blob_and_expansions(7, 3000)
    genuine = symbols_for(expansions, 7, SliverKind.PRIMARY, 2, range(7))
    aliased = forged(genuine[6], **changes)
    assert not aliased.is_valid_for(encoded.metadata)
    # Enough genuine symbols follow it, so recovery must skip it and succeed.
    recovered = recover_sliver(encoded.metadata, SliverKind.PRIMARY, 2, [aliased, genuine[6], *genuine[:4]])
    assert bytes(recovered.data) == bytes(encoded.primary_sliver(2).data)
    # And it never counts as one of the sources: one genuine symbol short is not enough.
    with pytest.raises(NotEnoughSliversError):
        recover_sliver(encoded.metadata, SliverKind.PRIMARY, 2, [aliased, genuine[6], *genuine[:3]])
