"""Merkle commitments: proofs for every leaf, nothing else verifies, domains kept apart."""

from __future__ import annotations

import os

import blake3
import numpy as np
import pytest

from walrusfs.redstuff import merkle
from walrusfs.redstuff.sliver import symbol_bytes


def spec_root(leaves: list[bytes]) -> bytes:
    """The documented tree, from blake3 directly: pad to a power of two with EMPTY, nodes are
    blake3(0x01 | left | right)."""
    level = list(leaves)
    while len(level) & (len(level) - 1):
        level.append(merkle.EMPTY)
    while len(level) > 1:
        level = [blake3.blake3(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
    return level[0]


def random_leaves(count: int) -> list[bytes]:
    return [merkle.leaf_hash(os.urandom(40)) for _ in range(count)]


def flip(digest: bytes) -> bytes:
    return bytes([digest[0] ^ 0x80]) + digest[1:]


def test_leaf_hash_is_prefixed_blake3():
    assert merkle.leaf_hash(b"abc") == blake3.blake3(b"\x00abc").digest()


@pytest.mark.parametrize("count", range(1, 41))
def test_root_matches_the_documented_construction(count):
    leaves = random_leaves(count)
    assert merkle.root(leaves) == spec_root(leaves)


@pytest.mark.parametrize("count", range(1, 41))
def test_every_index_has_a_verifying_proof_and_nothing_else_verifies(count):
    leaves = random_leaves(count)
    root = merkle.root(leaves)
    depth = (count - 1).bit_length()
    for index in range(count):
        path = merkle.proof(leaves, index)
        assert len(path) == depth == merkle.proof_length(count)
        assert merkle.verify(root, count, index, leaves[index], path)
        # Wrong position, wrong leaf, wrong root.
        for other in {index - 1, index + 1, index ^ 1} & set(range(count)) - {index}:
            assert not merkle.verify(root, count, other, leaves[index], path)
        assert not merkle.verify(root, count, index, flip(leaves[index]), path)
        assert not merkle.verify(flip(root), count, index, leaves[index], path)
        # Any corrupted sibling.
        for level in range(depth):
            bad = [*path[:level], flip(path[level]), *path[level + 1 :]]
            assert not merkle.verify(root, count, index, leaves[index], bad)
        # Proofs of the wrong length.
        assert not merkle.verify(root, count, index, leaves[index], [*path, merkle.EMPTY])
        if depth:
            assert not merkle.verify(root, count, index, leaves[index], path[:-1])
        # A leaf count implying another depth.
        assert not merkle.verify(root, 2 * count + 1, index, leaves[index], path)


@pytest.mark.parametrize("count", [3, 5, 6, 7, 9, 17])
def test_padding_positions_cannot_be_proven(count):
    """The padded slots hold EMPTY, whose path is a valid path of the padded tree; still no leaf."""
    leaves = random_leaves(count)
    width = 1 << (count - 1).bit_length()
    padded = leaves + [merkle.EMPTY] * (width - count)
    root = merkle.root(leaves)
    assert merkle.root(padded) == root
    for index in range(count, width):
        path = merkle.proof(padded, index)
        assert merkle.verify(root, width, index, merkle.EMPTY, path)
        assert not merkle.verify(root, count, index, merkle.EMPTY, path)
    for index in (-1, count, width):
        assert not merkle.verify(root, count, index, leaves[0], merkle.proof(leaves, 0))


def test_a_leaf_holding_an_inner_nodes_preimage_does_not_collide_with_it():
    left, right = random_leaves(2)
    assert merkle.leaf_hash(left + right) != merkle.node_hash(left, right)
    assert merkle.leaf_hash(merkle.NODE_PREFIX + left + right) != merkle.node_hash(left, right)
    # The one-leaf tree over that data is not the two-leaf tree over its halves.
    assert merkle.root([merkle.leaf_hash(left + right)]) != merkle.root([left, right])
    # Presenting the data under an inner node (its two children) as one leaf's data fails: the
    # leaf digest of that data is not the inner node.
    four = random_leaves(4)
    sibling = merkle.node_hash(four[2], four[3])
    root4 = merkle.root(four)
    assert merkle.verify(root4, 2, 0, merkle.node_hash(four[0], four[1]), [sibling])  # digest-level
    assert not merkle.verify(root4, 2, 0, merkle.leaf_hash(four[0] + four[1]), [sibling])
    assert not merkle.verify(root4, 2, 0, merkle.leaf_hash(merkle.NODE_PREFIX + four[0] + four[1]), [sibling])
    assert merkle.EMPTY not in (merkle.leaf_hash(b""), merkle.node_hash(merkle.EMPTY, merkle.EMPTY))


def test_proof_and_root_refuse_impossible_requests():
    with pytest.raises(ValueError):
        merkle.root([])
    leaves = random_leaves(5)
    for index in (-1, 5):
        with pytest.raises(IndexError):
            merkle.proof(leaves, index)


@pytest.mark.parametrize("words", [1, 3, 511, 512, 700])
def test_line_leaf_digests_hash_each_symbols_canonical_bytes(words):
    """Both hashing paths (gathered cells for short packets, per-plane updates for long ones) give
    leaf_hash of the symbol's 8 packets in order."""
    count = 5
    line = np.random.default_rng(words).integers(0, 2**64, size=(8, count, words), dtype=np.uint64)
    digests = merkle.line_leaf_digests(line)
    expected = [merkle.leaf_hash(b"".join(line[c, i].tobytes() for c in range(8))) for i in range(count)]
    assert digests == expected
    assert all(symbol_bytes(line, i) == b"".join(line[c, i].tobytes() for c in range(8)) for i in range(count))
