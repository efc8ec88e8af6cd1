"""Claims come with a repaired blob (docs/node-api.md, "Claims"): a node that missed a store and
gets the blob from its peers' repair also gets the owners' claims, with their expiries, so that it
expires the blob when the others do. Real node processes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from blobtools import store
from healing import configure, wait_for
from network import LocalNetwork

from walrusfs.client.client import ClientSettings

OWNER = "e" * 32
TERM = 40 * 86400.0


@pytest.fixture
def network(tmp_path: Path) -> Iterator[LocalNetwork]:
    network = LocalNetwork(tmp_path / "network", nodes=4)
    for node in network.node_ids:
        configure(network, node)
    with network:
        yield network


def claims(network: LocalNetwork, node: str, blob_id: object) -> dict:
    answer = httpx.get(f"{network.url(node)}/v1/blobs/{blob_id}/claims", timeout=10)
    return answer.json()["claims"] if answer.status_code == 200 else {}


def test_a_node_that_missed_a_store_gets_the_claims_with_the_repaired_blob(network: LocalNetwork) -> None:
    network.stop("node-3")
    requested = int(time.time() + TERM)
    blob = store(network, os.urandom(150_000), ClientSettings(owner=OWNER, blob_term=TERM))
    expected = claims(network, "node-0", blob.blob_id)
    assert requested <= expected[OWNER]["expires"] <= int(time.time() + TERM)
    network.start("node-3")
    wait_for("node-3 repaired the blob with its claims",
             lambda: claims(network, "node-3", blob.blob_id).get(OWNER), timeout=120)
    assert claims(network, "node-3", blob.blob_id) == expected
