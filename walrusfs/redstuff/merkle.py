"""Merkle trees over blake3, with domain-separated leaves and inner nodes.

A tree over m leaves is padded with EMPTY digests to the next power of two, so every proof has the
same length (ceil(log2 m) sibling digests, bottom-up) and the leaf position alone fixes the path.
The prefixes keep a leaf, an inner node and a padding node from ever colliding with one another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import blake3
import numpy as np

DIGEST_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY = blake3.blake3(b"\x02walrusfs empty merkle node").digest()
# Packets shorter than this many words are gathered into whole cells before hashing.
_GATHER_BELOW_WORDS = 512


def leaf_hash(data: bytes) -> bytes:
    """Digest of one leaf holding ``data`` (a symbol's canonical bytes)."""
    hasher = blake3.blake3(LEAF_PREFIX)
    hasher.update(data)
    return hasher.digest()


def line_leaf_digests(line: object) -> list[bytes]:
    """Leaf digests of every symbol of a plane-major line (uint64 array of shape (8, count, P))."""
    planes, count, words = line.shape  # type: ignore[attr-defined]
    if words < _GATHER_BELOW_WORDS:  # short packets: one gather beats 8 tiny updates per symbol
        cells = np.ascontiguousarray(line.transpose(1, 0, 2))  # type: ignore[attr-defined]
        return [blake3.blake3(LEAF_PREFIX + cell.tobytes()).digest() for cell in cells]
    digests = []
    for index in range(count):
        hasher = blake3.blake3(LEAF_PREFIX)
        for plane in range(planes):
            hasher.update(line[plane, index].view(np.uint8))  # type: ignore[index]
        digests.append(hasher.digest())
    return digests


def node_hash(left: bytes, right: bytes) -> bytes:
    return blake3.blake3(NODE_PREFIX + left + right).digest()


def _levels(leaf_digests: Sequence[bytes]) -> list[list[bytes]]:
    if not leaf_digests:
        raise ValueError("a Merkle tree needs at least one leaf")
    level = list(leaf_digests)
    width = 1
    while width < len(level):
        width *= 2
    level += [EMPTY] * (width - len(level))
    levels = [level]
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
        levels.append(level)
    return levels


def root(leaf_digests: Sequence[bytes]) -> bytes:
    return _levels(leaf_digests)[-1][0]


def proof(leaf_digests: Sequence[bytes], index: int) -> list[bytes]:
    """Sibling digests from the leaf up to (not including) the root."""
    if not 0 <= index < len(leaf_digests):
        raise IndexError(f"leaf {index} outside [0, {len(leaf_digests)})")
    path = []
    for level in _levels(leaf_digests)[:-1]:
        path.append(level[index ^ 1])
        index //= 2
    return path


def proof_length(leaf_count: int) -> int:
    return max(leaf_count - 1, 0).bit_length()


def verify(root_digest: bytes, leaf_count: int, index: int, leaf: bytes, path: Sequence[bytes],
           combine: Callable[[bytes, bytes], bytes] = node_hash) -> bool:
    """Whether ``leaf`` (a leaf digest) sits at ``index`` of the tree with ``root_digest``, whose inner
    nodes are ``combine(left, right)`` (each encoding type hashes its nodes its own way)."""
    if not 0 <= index < leaf_count or len(path) != proof_length(leaf_count):
        return False
    digest = leaf
    for sibling in path:
        digest = combine(sibling, digest) if index & 1 else combine(digest, sibling)
        index //= 2
    return digest == root_digest
