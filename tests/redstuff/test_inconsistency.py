"""A lying writer: metadata that commits to a sliver inconsistent with the rest of the blob.

Every sliver still verifies on its own, so nodes accept them; the inconsistency must surface as a
checkable proof during recovery and as an error (never data) during reads.
"""

from __future__ import annotations

import random

import pytest

from walrusfs.redstuff import (
    BlobMetadata,
    FormatError,
    InconsistencyProof,
    InconsistentBlobError,
    NotEnoughSliversError,
    Sliver,
    SliverExpansion,
    SliverKind,
    decode,
    decode_and_verify,
    encode,
    recover_sliver,
    verify_inconsistency_proof,
    verify_sliver,
)
from walrusfs.redstuff.codec import codec_for

pytestmark = pytest.mark.usefixtures("each_encoding")

PRIMARY, SECONDARY = SliverKind.PRIMARY, SliverKind.SECONDARY


class LyingWriter:
    """An honest encoding whose primary sliver ``tampered`` is replaced by random bytes, with
    metadata recomputed to commit to the replacement (so the blob ID changes)."""

    def __init__(self, n: int, length: int, tampered: int, seed: int = 0) -> None:
        rnd = random.Random(seed)
        self.blob = rnd.randbytes(length)
        self.honest = encode(self.blob, n)
        self.n, self.tampered = n, tampered
        layout = self.honest.layout
        self.symbol_size = layout.symbol_size
        self.bad_row = rnd.randbytes(layout.primary_sliver_size)
        honest_meta = self.honest.metadata
        roots = list(honest_meta.primary_roots)
        self.encoding = honest_meta.encoding
        roots[tampered] = codec_for(self.encoding).sliver_root(layout.geometry, PRIMARY, self.bad_row, self.symbol_size)
        self.metadata = BlobMetadata(n, length, tuple(roots), honest_meta.secondary_roots, self.encoding)
        assert self.metadata.blob_id != honest_meta.blob_id

    def sliver(self, kind: SliverKind, index: int) -> Sliver:
        data = self.bad_row if (kind, index) == (PRIMARY, self.tampered) else \
            bytes(self.honest.sliver(kind, index).data)
        return Sliver(self.metadata.blob_id, kind, index, self.n, self.symbol_size, data, self.encoding)

    def symbols_for(self, target_kind: SliverKind, target: int, sources) -> list:
        return [SliverExpansion(self.sliver(target_kind.other, j)).symbol_for(target) for j in sources]


SCENARIOS = [(4, 900, 3), (7, 2000, 5), (10, 5000, 9), (10, 5000, 0), (7, 2000, 1), (13, 64 * 45 + 1, 4)]
SCENARIO_IDS = [f"n{n}-row{t}" for n, _, t in SCENARIOS]


@pytest.fixture(params=SCENARIOS, ids=SCENARIO_IDS)
def liar(request) -> LyingWriter:
    n, length, tampered = request.param
    return LyingWriter(n, length, tampered, seed=n + tampered)


def test_every_sliver_of_the_lying_blob_verifies_on_its_own(liar):
    for kind in SliverKind:
        for index in range(liar.n):
            verify_sliver(liar.metadata, liar.sliver(kind, index))


def test_recovering_the_tampered_sliver_yields_a_proof_anyone_can_check(liar):
    g = liar.metadata.geometry
    rnd = random.Random(liar.tampered)
    for _ in range(3):
        sources = rnd.sample(range(liar.n), g.n_secondary)
        with pytest.raises(InconsistentBlobError) as caught:
            recover_sliver(liar.metadata, PRIMARY, liar.tampered, liar.symbols_for(PRIMARY, liar.tampered, sources))
        proof = caught.value.proof
        assert isinstance(proof, InconsistencyProof)
        assert (proof.blob_id, proof.target_kind, proof.target_index) == (
            liar.metadata.blob_id, PRIMARY, liar.tampered)
        assert verify_inconsistency_proof(liar.metadata, proof)
        again = InconsistencyProof.from_bytes(proof.to_bytes())
        assert verify_inconsistency_proof(liar.metadata, again)
        # The proof is about this blob only.
        assert not verify_inconsistency_proof(liar.honest.metadata, proof)


def test_the_honest_holders_symbols_rebuild_the_honest_row_not_the_committed_one(liar):
    """Recovery decodes from other holders' cells: it must not produce the liar's row as data."""
    g = liar.metadata.geometry
    symbols = liar.symbols_for(PRIMARY, liar.tampered, range(g.n_secondary))
    with pytest.raises(InconsistentBlobError):
        recover_sliver(liar.metadata, PRIMARY, liar.tampered, symbols)
    # Against the honest metadata (same cells, honest ID) the same cells rebuild the honest row.
    honest_symbols = [SliverExpansion(liar.honest.sliver(SECONDARY, j)).symbol_for(liar.tampered)
                      for j in range(g.n_secondary)]
    rebuilt = recover_sliver(liar.honest.metadata, PRIMARY, liar.tampered, honest_symbols)
    assert bytes(rebuilt.data) == bytes(liar.honest.primary_sliver(liar.tampered).data)


def test_secondary_recovery_using_a_cell_of_the_tampered_row_detects_the_lie(liar):
    g = liar.metadata.geometry
    others = [i for i in range(liar.n) if i != liar.tampered]
    sources = [liar.tampered, *random.Random(1).sample(others, g.n_primary - 1)]
    for target in range(liar.n):
        with pytest.raises(InconsistentBlobError) as caught:
            recover_sliver(liar.metadata, SECONDARY, target, liar.symbols_for(SECONDARY, target, sources))
        assert verify_inconsistency_proof(liar.metadata, caught.value.proof)


def test_honest_slivers_recover_fine_when_the_tampered_row_is_not_used(liar):
    g = liar.metadata.geometry
    sources = [i for i in range(liar.n) if i != liar.tampered][: g.n_primary]
    for target in range(liar.n):
        recovered = recover_sliver(liar.metadata, SECONDARY, target, liar.symbols_for(SECONDARY, target, sources))
        assert bytes(recovered.data) == bytes(liar.honest.secondary_sliver(target).data)


def test_no_quorum_reads_the_lying_blob_as_data(liar):
    """decode_and_verify raises whichever quorum a reader gets, with or without the tampered row."""
    g = liar.metadata.geometry
    rnd = random.Random(liar.n)
    others = [i for i in range(liar.n) if i != liar.tampered]
    quorums = [
        [liar.tampered, *rnd.sample(others, g.n_primary - 1)],
        [liar.tampered, *rnd.sample(others, g.n_primary - 1)],
        rnd.sample(others, g.n_primary),
    ]
    for quorum in quorums:
        slivers = [liar.sliver(PRIMARY, i) for i in quorum]
        with pytest.raises(InconsistentBlobError):
            decode_and_verify(liar.metadata, slivers)
    with pytest.raises(InconsistentBlobError):
        decode_and_verify(liar.metadata, [liar.sliver(SECONDARY, j) for j in range(g.n_secondary)])


def test_plain_decode_with_the_tampered_row_differs_from_the_blob():
    """Why decode_and_verify exists: decode alone returns whatever the quorum implies."""
    liar = LyingWriter(7, 2000, 5, seed=3)
    quorum = [liar.sliver(PRIMARY, i) for i in (5, 0, 2)]
    assert bytes(decode(liar.metadata, quorum)) != liar.blob


def honest_proof(encoded, kind, target, sources) -> InconsistencyProof:
    symbols = tuple(SliverExpansion(encoded.sliver(kind.other, j)).symbol_for(target) for j in sources)
    return InconsistencyProof(encoded.blob_id, kind, target, symbols)


@pytest.mark.parametrize("kind", list(SliverKind))
def test_a_proof_against_an_honest_blob_is_rejected(kind):
    encoded = encode(random.Random(5).randbytes(4000), 10)
    g = encoded.layout.geometry
    k = g.n_secondary if kind is PRIMARY else g.n_primary
    for target in (0, 9):
        proof = honest_proof(encoded, kind, target, range(10 - k, 10))
        assert not verify_inconsistency_proof(encoded.metadata, proof)
        assert not verify_inconsistency_proof(encoded.metadata, InconsistencyProof.from_bytes(proof.to_bytes()))


def test_malformed_proofs_of_a_real_lie_are_rejected():
    liar = LyingWriter(10, 5000, 9, seed=11)
    g = liar.metadata.geometry
    with pytest.raises(InconsistentBlobError) as caught:
        recover_sliver(liar.metadata, PRIMARY, 9, liar.symbols_for(PRIMARY, 9, range(g.n_secondary)))
    proof = caught.value.proof
    assert verify_inconsistency_proof(liar.metadata, proof)
    too_few = InconsistencyProof(proof.blob_id, PRIMARY, 9, proof.symbols[:-1])
    duplicated = InconsistencyProof(proof.blob_id, PRIMARY, 9, (*proof.symbols[:-1], proof.symbols[0]))
    bad = proof.symbols[0]
    flipped = type(bad)(bad.blob_id, bad.target_kind, bad.source_index, bad.target_index, bad.n_shards,
                        bytes([bad.data[0] ^ 1]) + bad.data[1:], bad.proof)
    corrupted = InconsistencyProof(proof.blob_id, PRIMARY, 9, (flipped, *proof.symbols[1:]))
    retargeted = InconsistencyProof(proof.blob_id, PRIMARY, 8, proof.symbols)
    for forged in (too_few, duplicated, corrupted, retargeted):
        assert not verify_inconsistency_proof(liar.metadata, forged)
    with pytest.raises(NotEnoughSliversError):
        recover_sliver(liar.metadata, PRIMARY, 9, too_few.symbols)


def test_inconsistency_proof_bytes_reject_truncation_and_trailing_garbage():
    liar = LyingWriter(4, 900, 3, seed=2)
    with pytest.raises(InconsistentBlobError) as caught:
        recover_sliver(liar.metadata, PRIMARY, 3, liar.symbols_for(PRIMARY, 3, range(3)))
    wire = caught.value.proof.to_bytes()
    for cut in (0, 3, 20, 41, 45, len(wire) - 1):
        with pytest.raises(FormatError):
            InconsistencyProof.from_bytes(wire[:cut])
    with pytest.raises(FormatError):
        InconsistencyProof.from_bytes(wire + b"\0")
    with pytest.raises(FormatError, match="version"):
        InconsistencyProof.from_bytes(wire[:4] + b"\x05" + wire[5:])
