"""The handover of shards at an epoch change (docs/epochs.md, Handover), on real node processes.

Each test starts 4 nodes holding 7 shards (node-0: 0, 4; node-1: 1, 5; node-2: 2, 6; node-3: 3),
stores a few blobs through the blob client, starts a new node in standby, and moves shards to it
(and between members) with a committee e + 1 signed by the epoch-1 nodes' keys.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from epoch_harness import (
    EpochNetwork,
    fetch_verified,
    put_root_everywhere,
    sliver_file,
    stored_everywhere,
)
from network import LyingProxy

from walrusfs.keys import generate_key
from walrusfs.protocol.handover import ShardSynced
from walrusfs.protocol.roots import RootRecord
from walrusfs.redstuff import BlobMetadata, SliverKind
from walrusfs.redstuff.sliver import HEADER_SIZE as SLIVER_HEADER_SIZE

BLOBS = 5
BLOB_SIZE = 200_000
# node-4's [handover] request_timeout where a test freezes the node it gains from (the default, 20 s,
# is for real networks): the wait for the frozen node's records, before any sliver moves.
FROZEN_NODE_TIMEOUT = 5.0


@pytest.fixture
def network(tmp_path: Path) -> Iterator[EpochNetwork]:
    with EpochNetwork(tmp_path / "network") as network:
        yield network


@pytest.fixture
def blobs(network: EpochNetwork) -> list[BlobMetadata]:
    return stored_everywhere(network, BLOBS, BLOB_SIZE)


def pair(metadata: BlobMetadata, shard: int) -> int:
    return metadata.geometry.pair_of_shard(shard, metadata.blob_id.raw)


def assert_holds(network: EpochNetwork, node_id: str, shards: list[int], blobs: list[BlobMetadata]) -> None:
    """``node_id`` serves every sliver of ``shards`` of every blob, each verified against the metadata."""
    for metadata in blobs:
        for shard in shards:
            for kind in SliverKind:
                fetch_verified(network.url(node_id), metadata, pair(metadata, shard), kind)


def pair_bytes(metadata: BlobMetadata) -> int:
    return sum(SLIVER_HEADER_SIZE + metadata.layout.sliver_size(kind is SliverKind.PRIMARY) for kind in SliverKind)


def listed(url: str, shard: int, limit: int) -> list[str]:
    """Every blob a node lists for a shard, page by page."""
    blobs: list[str] = []
    after: str | None = None
    while True:
        query = {"limit": limit, **({"after": after} if after else {})}
        page = httpx.get(f"{url}/v1/shards/{shard}/blobs", params=query, timeout=10).json()
        assert len(page["blobs"]) <= limit
        blobs += page["blobs"]
        after = page["next"]
        if after is None:
            return blobs


def gained(status: dict) -> dict[int, dict]:
    return {entry["shard"]: entry for entry in status["gaining"]}


def test_every_moved_shard_lands_on_its_new_holder_verified_and_moves_about_once(
        network: EpochNetwork, blobs: list[BlobMetadata]) -> None:
    record = RootRecord.create(generate_key(), 7, blobs[0].blob_id, time.time_ns())  # a filesystem's root record
    put_root_everywhere(network, record)
    network.add_node("node-4")
    network.start("node-4")
    network.change_epoch(network.successor({"node-0": (0,), "node-1": (1,), "node-2": (2,), "node-3": (3, 5),
                                            "node-4": (4, 6)}))
    statuses = network.wait_handover(["node-3", "node-4"])

    assert_holds(network, "node-4", [4, 6], blobs)
    assert_holds(network, "node-3", [3, 5], blobs)
    moves = {**gained(statuses["node-4"]), **gained(statuses["node-3"])}
    assert {shard: entry["from"] for shard, entry in moves.items()} == {4: "node-0", 6: "node-2", 5: "node-1"}
    assert all(entry["state"] == "synced" and entry["blobs"] == BLOBS and entry["rebuilt"] == 0
               for entry in moves.values())
    to_move = sum(entry["bytes_to_move"] for entry in moves.values())
    moved = sum(entry["bytes_moved"] for entry in moves.values())
    assert to_move == 3 * sum(pair_bytes(metadata) for metadata in blobs)
    assert to_move <= moved <= 1.1 * to_move, (moved, to_move)
    # Each old holder let go of the shard it handed off, and of nothing else.
    for old, kept, gone in (("node-0", 0, 4), ("node-1", 1, 5), ("node-2", 2, 6)):
        for metadata in blobs:
            for kind in SliverKind:
                assert not sliver_file(network, old, metadata.blob_id, pair(metadata, gone), kind).exists()
                assert sliver_file(network, old, metadata.blob_id, pair(metadata, kept), kind).exists()
        assert_holds(network, old, [kept], blobs)
        assert [entry["released"] for entry in network.handover(old)["handing_off"]] == [True]
    # The new node holds the filesystem's root record too (every node keeps them).
    deadline = time.monotonic() + 30
    while (copied := httpx.get(f"{network.url('node-4')}/v1/roots/{record.fs_id}", timeout=10)).status_code != 200:
        assert time.monotonic() < deadline, copied.text
        time.sleep(0.1)
    assert RootRecord.from_json(copied.content) == record
    assert httpx.get(f"{network.url('node-4')}/v1/handover/roots", timeout=10).json()["fs_ids"] == [record.fs_id]


def test_a_shard_whose_old_holder_is_gone_is_rebuilt_from_recovery_symbols(
        network: EpochNetwork, blobs: list[BlobMetadata]) -> None:
    network.stop("node-2")  # gone before the change, for good: its shards 2 and 6 go to node-4
    network.add_node("node-4")
    network.start("node-4")
    network.change_epoch(network.successor({"node-0": (0, 4), "node-1": (1, 5), "node-3": (3,), "node-4": (2, 6)}))
    status = network.wait_handover(["node-4"], released=False)["node-4"]

    assert_holds(network, "node-4", [2, 6], blobs)
    for entry in status["gaining"]:
        assert entry["from"] == "node-2" and entry["state"] == "synced" and not entry["released"]
        assert entry["rebuilt"] == 2 * BLOBS and entry["blobs"] == BLOBS


def test_a_new_node_killed_mid_handover_resumes_where_it_was(
        network: EpochNetwork, blobs: list[BlobMetadata]) -> None:
    network.add_node("node-4", request_timeout=FROZEN_NODE_TIMEOUT)
    network.start("node-4")
    frozen = network.processes["node-2"].pid
    os.kill(frozen, signal.SIGSTOP)  # node-2 answers nothing: node-4 gets shard 4, not yet shard 6
    try:
        successor = network.successor({"node-0": (0,), "node-1": (1, 5), "node-2": (2,), "node-3": (3,),
                                       "node-4": (4, 6)})
        network.change_epoch(successor, skip=("node-2",))
        deadline = time.monotonic() + 60
        while gained(network.handover("node-4"))[4]["state"] != "synced":
            assert time.monotonic() < deadline, network.handover("node-4")
            time.sleep(0.05)
        assert network.handover("node-4")["complete"] is False  # shard 6 is not: node-4 signs no successor yet
        network.kill9("node-4")
    finally:
        os.kill(frozen, signal.SIGCONT)
    # node-2 missed the change: node-4 brings it the links along with its synced statement.
    before = gained(json.loads((network.root / "node-4" / "data" / "epochs" / "handover.json").read_text()))
    network.start("node-4")
    statuses = network.wait_handover(["node-4"])

    assert_holds(network, "node-4", [4, 6], blobs)
    after = gained(statuses["node-4"])
    assert after[4]["bytes_moved"] == before[4]["bytes_moved"]  # shard 4 was not fetched again
    assert after[6]["blobs"] == BLOBS and after[6]["state"] == "synced"


def test_an_old_holder_serving_wrong_slivers_is_caught_and_the_pairs_are_rebuilt(
        network: EpochNetwork, blobs: list[BlobMetadata]) -> None:
    network.add_node("node-4")
    network.start("node-4")
    with LyingProxy(network.url("node-0"), corrupt=("sliver",)) as proxy:
        # In epoch 2 the others reach node-0 through the proxy, which flips a byte of every sliver it serves.
        network.change_epoch(network.successor({"node-0": (0,), "node-1": (1, 5), "node-2": (2, 6), "node-3": (3,),
                                                "node-4": (4,)}, urls={"node-0": proxy.url}))
        status = network.wait_handover(["node-4"])["node-4"]
        lies = proxy.requests().get("GET sliver", 0)

    assert lies >= 2 * BLOBS
    assert_holds(network, "node-4", [4], blobs)
    assert gained(status)[4]["rebuilt"] == 2 * BLOBS


def test_the_old_holder_deletes_a_shard_only_on_its_new_holders_signed_statement(
        network: EpochNetwork, blobs: list[BlobMetadata]) -> None:
    network.add_node("node-4")  # not started: it never says it is synced; the test speaks for it
    network.change_epoch(network.successor({"node-0": (0,), "node-1": (1, 5), "node-2": (2, 6), "node-3": (3,),
                                            "node-4": (4,)}))
    url = network.url("node-0")
    handing_off = network.handover("node-0")["handing_off"]
    assert handing_off == [{"shard": 4, "to": "node-4", "epoch": 2, "released": False}]
    assert_holds(network, "node-0", [0, 4], blobs)  # shard 4 is still served until it is released
    assert listed(url, 4, limit=2) == sorted(str(metadata.blob_id) for metadata in blobs)

    forgeries = [ShardSynced("node-4", 2, 4).signed_by(network.key("node-1")),  # node-4's name, node-1's key
                 ShardSynced("node-1", 2, 4).signed_by(network.key("node-1")),  # not shard 4's holder
                 ShardSynced("node-4", 1, 4).signed_by(network.key("node-4"))]  # epoch 1: node-4 held nothing
    for forged in forgeries:
        response = httpx.post(f"{url}/v1/shards/4/synced", content=forged.to_json(), timeout=10)
        assert response.status_code == 403, response.text
    wrong_path = httpx.post(f"{url}/v1/shards/0/synced", timeout=10,
                            content=ShardSynced("node-4", 2, 4).signed_by(network.key("node-4")).to_json())
    assert wrong_path.status_code == 400
    assert_holds(network, "node-0", [0, 4], blobs)

    statement = ShardSynced("node-4", 2, 4).signed_by(network.key("node-4"))
    response = httpx.post(f"{url}/v1/shards/4/synced", content=statement.to_json(), timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["deleted_slivers"] == 2 * BLOBS
    for metadata in blobs:
        for kind in SliverKind:
            assert not sliver_file(network, "node-0", metadata.blob_id, pair(metadata, 4), kind).exists()
        for name in ("metadata", "certificate"):
            assert (sliver_file(network, "node-0", metadata.blob_id, 0, kind).parent / name).exists()
    assert_holds(network, "node-0", [0], blobs)
    refused = httpx.get(f"{url}/v1/blobs/{blobs[0].blob_id}/slivers/{pair(blobs[0], 4)}/primary", timeout=10)
    assert refused.status_code == 421
    assert network.handover("node-0")["handing_off"][0]["released"] is True
    assert listed(url, 4, limit=2) == []  # nothing of shard 4 left to hand over
    assert len(listed(url, 0, limit=3)) == BLOBS
