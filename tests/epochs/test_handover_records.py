"""Tombstones and writer leases follow their shards at an epoch change (docs/epochs.md, Handover), on
real node processes.

One network for the module: 4 nodes holding 7 shards (node-0: 0, 4; node-1: 1, 5; node-2: 2, 6;
node-3: 3), f = 2. Before the change a writer deletes one blob on every node but node-0 (node-0
missed the DELETE: it still lists the blob as certified, in its repair feed and in its listing of
shard 4) and a filesystem's writer lease is granted by every node. Then node-4 joins and takes
shard 4 from node-0 in epoch 2.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from blobtools import store
from epoch_harness import EpochNetwork, fetch_verified, wait_stored_everywhere

from walrusfs.keys import generate_key
from walrusfs.protocol import sign_request
from walrusfs.protocol.lease import LeaseRecord
from walrusfs.protocol.roots import RootRecord
from walrusfs.redstuff import BlobId, BlobMetadata, SliverKind

HOLDER, OTHER = "a" * 32, "b" * 32
TERM_MS = 600_000  # the lease must not lapse while the test runs, whatever the load


@dataclass
class Moved:
    network: EpochNetwork
    deleted: BlobMetadata
    kept: BlobMetadata
    fs_key: object
    lease: LeaseRecord


def signed(network: EpochNetwork, method: str, node_id: str, path: str, body: bytes = b"") -> dict[str, str]:
    return {"Authorization": sign_request(network.writer_key, method, path, network.info(node_id), body)}


def wait_repair_idle(network: EpochNetwork, node_id: str, timeout: float = 180.0) -> dict:
    """Until the node's repair has read every peer's feed and has nothing left to do."""
    deadline = time.monotonic() + timeout
    while True:
        status = httpx.get(network.url(node_id) + "/v1/repair/status", timeout=10).json()
        if status["idle"]:
            return status
        assert time.monotonic() < deadline, f"repair of {node_id} not idle after {timeout} s: {status}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moved]:
    root: Path = tmp_path_factory.mktemp("records") / "network"
    with EpochNetwork(root) as network:
        deleted, kept = (store(network, os.urandom(150_000 + i)) for i in range(2))
        wait_stored_everywhere(network, [deleted.blob_id, kept.blob_id])
        path = f"/v1/blobs/{deleted.blob_id}"
        for node_id in ("node-1", "node-2", "node-3"):  # node-0 never hears of it
            response = httpx.delete(network.url(node_id) + path, headers=signed(network, "DELETE", node_id, path),
                                    timeout=10)
            assert response.status_code == 200, response.text
        fs_key = generate_key()
        lease = LeaseRecord.create(fs_key, HOLDER, 3, time.time_ns(), TERM_MS, label="machine-a:/state")
        lease_path = f"/v1/leases/{lease.fs_id}"
        for node in network.committee.nodes:
            body = lease.to_json()
            response = httpx.put(node.url + lease_path, content=body,
                                 headers=signed(network, "PUT", node.id, lease_path, body), timeout=10)
            assert response.status_code == 200, response.text

        network.add_node("node-4")
        network.start("node-4")
        network.change_epoch(network.successor({"node-0": (0,), "node-1": (1, 5), "node-2": (2, 6),
                                                "node-3": (3,), "node-4": (4,)}))
        network.wait_handover(["node-4"])
        yield Moved(network, deleted.metadata, kept.metadata, fs_key, lease)


def test_a_blob_deleted_before_the_change_stays_deleted_on_the_new_holder(moved: Moved) -> None:
    network, blob_id = moved.network, moved.deleted.blob_id
    # The old holder that missed the DELETE still has it certified (it listed it for shard 4 until it
    # released the shard, and its repair feed lists it still): the premise.
    assert httpx.get(f"{network.url('node-0')}/v1/blobs/{blob_id}/certificate", timeout=10).status_code == 200
    # The new holder took the tombstone (listed by nodes of 5 shards >= f + 1 = 3) before it copied
    # shard 4, so it neither moved the blob nor lets its repair, which has read node-0's feed, bring it back.
    status = wait_repair_idle(network, "node-4")
    assert status["synced_peers"] == status["peers"]
    for what in ("metadata", "certificate"):
        answer = httpx.get(f"{network.url('node-4')}/v1/blobs/{blob_id}/{what}", timeout=10)
        assert answer.status_code == 404, (what, answer.status_code)
    data_dir = network.root / "node-4" / "data" / "blobs" / str(blob_id)[:2] / str(blob_id)
    assert not data_dir.exists()
    assert str(blob_id) in httpx.get(f"{network.url('node-4')}/v1/handover/tombstones", timeout=10).json()["blob_ids"]
    # The blob that was not deleted moved as ever.
    kept = moved.kept
    pair = kept.geometry.pair_of_shard(4, kept.blob_id.raw)
    for kind in SliverKind:
        fetch_verified(network.url("node-4"), kept, pair, kind)


def test_one_nodes_word_is_not_enough_to_bury_a_blob(moved: Moved) -> None:
    """node-0 alone (2 shards, fewer than f + 1) listing a tombstone would not do; here it lists none,
    and the listing is what a node answers for its own deletions only."""
    network = moved.network
    listed = httpx.get(f"{network.url('node-0')}/v1/handover/tombstones", timeout=10).json()
    assert listed == {"version": 1, "blob_ids": [], "next": None}
    assert httpx.get(f"{network.url('node-0')}/v1/handover/tombstones", params={"after": "x"},
                     timeout=10).status_code == 400


def test_a_writer_lease_granted_before_the_change_stands_on_the_new_holder(moved: Moved) -> None:
    network, lease = moved.network, moved.lease
    url = network.url("node-4")
    state = httpx.get(f"{url}/v1/leases/{lease.fs_id}", timeout=10)
    assert state.status_code == 200, state.text
    assert LeaseRecord.from_dict(state.json()["lease"]) == lease and state.json()["held"]
    assert httpx.get(f"{url}/v1/handover/leases", timeout=10).json()["fs_ids"] == [lease.fs_id]
    # The holder publishes its root record on the new node; another writer is fenced, and cannot take
    # the lease without a takeover while it stands.
    path = f"/v1/roots/{lease.fs_id}"
    for holder, expected in ((OTHER, 409), (HOLDER, 201)):
        record = RootRecord.create(moved.fs_key, 1, BlobId(bytes(32)), time.time_ns(), (holder, 3))
        body = record.to_json()
        answer = httpx.put(url + path, content=body, headers=signed(network, "PUT", "node-4", path, body), timeout=10)
        assert answer.status_code == expected, answer.text
        if expected == 409:
            assert answer.json()["error"] == "fenced"
    rival = LeaseRecord.create(moved.fs_key, OTHER, 4, time.time_ns(), TERM_MS)
    body = rival.to_json()
    path = f"/v1/leases/{lease.fs_id}"
    answer = httpx.put(url + path, content=body, headers=signed(network, "PUT", "node-4", path, body), timeout=10)
    assert answer.status_code == 409 and answer.json()["error"] == "lease_held", answer.text
