"""Claims follow their shards at an epoch change (docs/node-api.md, "Claims"): a shard's new holder
copies each blob's claims from the node that gives it the metadata, so an owner's expiry and its
writer's quota charge are the same there as on the old holder. Real node processes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from blobtools import store
from epoch_harness import EpochNetwork, wait_stored_everywhere

from walrusfs.client.client import ClientSettings

OWNER = "c" * 32
TERM = 30 * 86400.0


@pytest.fixture
def network(tmp_path: Path) -> Iterator[EpochNetwork]:
    with EpochNetwork(tmp_path / "network") as network:
        yield network


def claims(network: EpochNetwork, node: str, blob_id: object) -> dict:
    answer = httpx.get(f"{network.url(node)}/v1/blobs/{blob_id}/claims", timeout=10)
    return answer.json()["claims"] if answer.status_code == 200 else {}


def test_a_new_holder_gets_the_claims_of_the_blobs_of_the_shards_it_gains(network: EpochNetwork) -> None:
    before = int(time.time() + TERM)
    stored = [store(network, os.urandom(100_000 + i), ClientSettings(owner=OWNER, blob_term=TERM)) for i in range(3)]
    wait_stored_everywhere(network, [blob.blob_id for blob in stored])
    expected = {blob.blob_id: claims(network, "node-0", blob.blob_id) for blob in stored}
    for blob_claims in expected.values():
        assert before <= blob_claims[OWNER]["expires"] <= int(time.time() + TERM)

    network.add_node("node-4")
    network.start("node-4")
    network.change_epoch(network.successor({"node-0": (0,), "node-1": (1,), "node-2": (2,), "node-3": (3, 5),
                                            "node-4": (4, 6)}))
    network.wait_handover(["node-3", "node-4"])
    for blob in stored:
        assert claims(network, "node-4", blob.blob_id) == expected[blob.blob_id]
