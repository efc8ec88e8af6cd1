"""Rebuilding one lost sliver from recovery symbols of other nodes' slivers.

A lost primary sliver (row t) is rebuilt from n_s cells (t, j) that the holders of secondary slivers
j compute by extending their column; a lost secondary sliver (column t) from n_p cells (i, t) that
holders of primary slivers i compute by extending their row. Each cell travels with a Merkle proof
against the source sliver's root, so a wrong cell is rejected before use. The cost is about one
sliver, not the blob.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .blob import BlobMetadata
from .codec import codec_for
from .decode import InconsistentBlobError, NotEnoughSliversError
from .sliver import InconsistencyProof, RecoverySymbol, Sliver, SliverKind, symbol_count


class SliverExpansion:
    """A sliver extended to its full row or column, ready to hand out recovery symbols.

    Built once per sliver (extend + hash the n cells), then each symbol is a copy and a proof.
    """

    def __init__(self, sliver: Sliver) -> None:
        self.sliver = sliver
        self._expansion = codec_for(sliver.encoding).expand(sliver.geometry, sliver.kind, sliver.data,
                                                            sliver.symbol_size)

    @property
    def root(self) -> bytes:
        return self._expansion.root

    @property
    def cells(self) -> np.ndarray:
        """The n cells of the sliver's full line (nodes size their cache of expansions by it)."""
        return self._expansion.cells

    def symbol_for(self, target_index: int) -> RecoverySymbol:
        """The symbol that helps rebuild sliver ``target_index`` of the other kind."""
        sliver = self.sliver
        sliver.geometry.check_index(target_index)
        return RecoverySymbol(
            blob_id=sliver.blob_id,
            target_kind=sliver.kind.other,
            source_index=sliver.index,
            target_index=target_index,
            n_shards=sliver.n_shards,
            data=self._expansion.cell(target_index),
            proof=self._expansion.proof(target_index),
        )


def recover_sliver(
    metadata: BlobMetadata,
    target_kind: SliverKind,
    target_index: int,
    symbols: Iterable[RecoverySymbol],
) -> Sliver:
    """Rebuild sliver ``target_index`` of ``target_kind`` from recovery symbols.

    Symbols that are not for this target or fail their proof are skipped. Raises
    NotEnoughSliversError without enough valid ones (n_s for a primary target, n_p for a secondary),
    and InconsistentBlobError, carrying an InconsistencyProof, when the valid symbols decode to a
    sliver the metadata does not commit to.
    """
    geometry, layout = metadata.geometry, metadata.layout
    geometry.check_index(target_index)
    k = symbol_count(geometry, target_kind)
    valid: dict[int, RecoverySymbol] = {}
    for symbol in symbols:
        if (symbol.target_kind is target_kind and symbol.target_index == target_index
                and symbol.source_index not in valid and symbol.is_valid_for(metadata)):
            valid[symbol.source_index] = symbol
        if len(valid) == k:
            break
    if len(valid) < k:
        raise NotEnoughSliversError(
            f"{target_kind.name.lower()} sliver {target_index} of blob {metadata.blob_id}: "
            f"{len(valid)} valid recovery symbols, need {k}"
        )
    s = layout.symbol_size
    known = {j: symbol.data for j, symbol in valid.items()}
    data = codec_for(metadata.encoding).reconstruct_line(geometry, target_kind, known, s)
    sliver = Sliver(metadata.blob_id, target_kind, target_index, geometry.n_shards, s, data, metadata.encoding)
    roots = metadata.primary_roots if target_kind is SliverKind.PRIMARY else metadata.secondary_roots
    if SliverExpansion(sliver).root != roots[target_index]:
        proof = InconsistencyProof(metadata.blob_id, target_kind, target_index, tuple(valid.values()))
        raise InconsistentBlobError(
            f"blob {metadata.blob_id} is inconsistently encoded: {target_kind.name.lower()} sliver "
            f"{target_index} rebuilt from {len(valid)} proven symbols does not match its root",
            proof,
        )
    return sliver


def verify_inconsistency_proof(metadata: BlobMetadata, proof: InconsistencyProof) -> bool:
    """Whether ``proof`` shows that the blob ``metadata`` describes is inconsistently encoded."""
    if proof.blob_id != metadata.blob_id:
        return False
    k = symbol_count(metadata.geometry, proof.target_kind)
    sources = {sym.source_index for sym in proof.symbols}
    if len(sources) != len(proof.symbols) or len(sources) < k:
        return False
    if not all(sym.target_kind is proof.target_kind and sym.target_index == proof.target_index
               and sym.is_valid_for(metadata) for sym in proof.symbols):
        return False
    try:
        recover_sliver(metadata, proof.target_kind, proof.target_index, proof.symbols)
    except InconsistentBlobError:
        return True
    return False
