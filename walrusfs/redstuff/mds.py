"""A systematic MDS code over GF(2^8): k source symbols extend to n, any k of the n rebuild all.

Generator G = [I; C] with C a Cauchy matrix (every square submatrix invertible), so the first k
symbols are the source itself and every k-subset of rows of G is invertible. Symbols are uint64
arrays of shape (..., 8, P); ``product.MatrixProduct`` picks the engine (bit-sliced XORs or table
lookups) for each call and builds it on first use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

from . import gf256
from .product import MatrixProduct


class SystematicCode:
    def __init__(self, source_count: int, total_count: int) -> None:
        if not 1 <= source_count <= total_count <= gf256.FIELD_SIZE:
            raise ValueError(f"no MDS code with k={source_count}, n={total_count}")
        self.k = source_count
        self.n = total_count
        parity = gf256.cauchy_parity_matrix(source_count, total_count - source_count)
        self.generator = np.concatenate([np.eye(source_count, dtype=np.int32), parity])
        self.generator.setflags(write=False)
        self.parity = MatrixProduct(parity)

    def encode(self, source: Sequence[np.ndarray], parity_out: Sequence[np.ndarray]) -> None:
        """Write the n-k parity symbols of ``source`` (k symbols) into ``parity_out``."""
        self.parity.run(source, parity_out)

    def reconstruct(
        self,
        known: Mapping[int, np.ndarray],
        targets: Sequence[int],
        out: Sequence[np.ndarray],
    ) -> None:
        """Write symbols ``targets`` (any positions in [0, n)) computed from k ``known`` symbols.

        ``known`` maps positions to symbols; exactly k are used, systematic ones first (they make
        the cheapest matrix). Raises ValueError with fewer than k.
        """
        if len(known) < self.k:
            raise ValueError(f"need {self.k} symbols to decode, have {len(known)}")
        chosen = tuple(sorted(known, key=lambda i: (i >= self.k, i))[: self.k])
        product = self._reconstruct_product(chosen, tuple(targets))
        product.run([known[i] for i in chosen], out)

    @lru_cache(maxsize=256)  # noqa: B019 - codes are few and live for the process
    def _reconstruct_product(self, chosen: tuple[int, ...], targets: tuple[int, ...]) -> MatrixProduct:
        inverse = gf256.mat_inv(self.generator[list(chosen)])
        matrix = gf256.mat_mul(self.generator[list(targets)], inverse)
        # Decoding matrices vary with the loss pattern; only small ones repay pair elimination.
        return MatrixProduct(matrix, eliminate_common_pairs=self.k <= 32)


@lru_cache(maxsize=64)
def code(source_count: int, total_count: int) -> SystematicCode:
    return SystematicCode(source_count, total_count)
