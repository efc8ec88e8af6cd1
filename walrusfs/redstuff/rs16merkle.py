"""Merkle trees of the RS16 encoding (type 2): keyed BLAKE3, whole levels hashed per call.

Same shape as ``merkle`` (padded with EMPTY to a power of two, proofs of ceil(log2 m) sibling
digests bottom-up), so recovery symbols keep their wire format. The hashes differ:

- leaf = BLAKE3 keyed with LEAF_KEY over the cell's bytes,
- node = BLAKE3 keyed with NODE_KEY over left | right (64 bytes: one compression),
- EMPTY = BLAKE3 of a fixed label.

The two keys separate leaves from nodes (what merkle.py's one-byte prefixes do) without the prefix
byte that would cost a whole extra compression per 64-byte node. Building a tree hashes each level
of many trees in one ``batchhash`` call: at n=1000, 2n trees of ~n leaves.
"""

from __future__ import annotations

from collections.abc import Sequence

import blake3
import numpy as np

from . import merkle
from .batchhash import hash_rows

DIGEST_SIZE = 32
LEAF_KEY = blake3.blake3(b"walrusfs redstuff rs16 v2 merkle leaf key").digest()
NODE_KEY = blake3.blake3(b"walrusfs redstuff rs16 v2 merkle node key").digest()
EMPTY = blake3.blake3(b"walrusfs redstuff rs16 v2 empty merkle node").digest()
_EMPTY = np.frombuffer(EMPTY, dtype=np.uint8)


def leaf_digests(cells: np.ndarray) -> np.ndarray:
    """(..., s) uint8 cells -> (..., 32) leaf digests."""
    flat = cells.reshape(-1, cells.shape[-1])
    return hash_rows(flat, LEAF_KEY).reshape(*cells.shape[:-1], DIGEST_SIZE)


def levels(leaves: np.ndarray) -> list[np.ndarray]:
    """Every level of T trees at once: ``leaves`` (T, m, 32) -> [(T, w, 32), (T, w/2, 32), ..., (T, 1, 32)]
    with w the power of two >= m (EMPTY-padded)."""
    trees, count, _ = leaves.shape
    if count == 0:
        raise ValueError("a Merkle tree needs at least one leaf")
    width = 1 << max(count - 1, 0).bit_length()
    level = np.empty((trees, width, DIGEST_SIZE), dtype=np.uint8)
    level[:, :count] = leaves
    level[:, count:] = _EMPTY
    out = [level]
    while level.shape[1] > 1:
        pairs = level.reshape(-1, 2 * DIGEST_SIZE)
        level = hash_rows(pairs, NODE_KEY).reshape(trees, -1, DIGEST_SIZE)
        out.append(level)
    return out


def roots(leaves: np.ndarray) -> list[bytes]:
    """The roots of T trees, ``leaves`` (T, m, 32)."""
    return [bytes(r) for r in levels(leaves)[-1][:, 0]]


def proof(tree_levels: Sequence[np.ndarray], index: int, tree: int = 0) -> tuple[bytes, ...]:
    """Sibling digests of leaf ``index`` of tree ``tree`` in ``levels``'s output, bottom-up."""
    path = []
    for level in tree_levels[:-1]:
        path.append(bytes(level[tree, index ^ 1]))
        index //= 2
    return tuple(path)


def leaf_hash(data: bytes) -> bytes:
    return blake3.blake3(data, key=LEAF_KEY).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return blake3.blake3(left + right, key=NODE_KEY).digest()


def verify(root_digest: bytes, leaf_count: int, index: int, leaf: bytes, path: Sequence[bytes]) -> bool:
    """Whether ``leaf`` (a leaf digest) sits at ``index`` of the tree with ``root_digest``."""
    return merkle.verify(root_digest, leaf_count, index, leaf, path, combine=node_hash)
