"""Fixtures: a running node-0 of a fresh 2-node, 7-shard committee, and a blob to store on it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from node_harness import Node, make_cluster, node_process

from walrusfs.committee import Committee
from walrusfs.keys import load_key
from walrusfs.redstuff import EncodedBlob, encode


@pytest.fixture
def cluster_root(tmp_path: Path) -> Path:
    root = tmp_path / "cluster"
    make_cluster(root)
    return root


@pytest.fixture
def node_config() -> str:
    """TOML tables appended to node-0's config.toml before it starts (a module overrides this)."""
    return ""


@pytest.fixture
def node(cluster_root: Path, node_config: str) -> Iterator[Node]:
    """node-0 of a 2-node, 7-shard committee (it holds shards 0, 2, 4, 6), running."""
    if node_config:
        config = cluster_root / "node-0" / "config.toml"
        config.write_text(config.read_text() + "\n" + node_config)
    process = node_process(cluster_root)
    process.start()
    try:
        committee = Committee.load(cluster_root / "committee.toml")
        with httpx.Client(base_url=process.url, timeout=10) as http:
            yield Node(process, committee, "node-0", load_key(cluster_root / "writer.key"), http)
    finally:
        process.stop()


@pytest.fixture(scope="session")
def blob() -> EncodedBlob:
    """A 7-shard blob of ~200 KB: slivers of a few tens of KB."""
    return encode(os.urandom(200_000), 7)


