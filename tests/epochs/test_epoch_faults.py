"""Faults at an epoch change, on real node processes (docs/epochs.md, "What can go wrong"):

- a second change proposed before the handover of the first has landed is queued behind it: the
  proposer waits for that handover (``walrusfs.cluster_epochs.wait_for_landing``, which ``cluster
  add|retire|change`` and ``committee propose`` call before proposing), and gives up with a clear
  error, proposing nothing, when it does not land within ``--timeout``;
- a handover interrupted by restarting every node (kill -9, then start) ends with every shard on its
  new holder, verified, the old holders released, and what had been copied not copied again.

Each test starts 4 nodes holding 7 shards (node-0: 0, 4; node-1: 1, 5; node-2: 2, 6; node-3: 3).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from epoch_harness import EpochNetwork, fetch_verified, stored_everywhere

from walrusfs.cluster_epochs import wait_for_landing
from walrusfs.epoch_change import EpochChangeError
from walrusfs.protocol.chain import CommitteeChain
from walrusfs.redstuff import BlobMetadata, SliverKind

BLOBS = 4
# How long a node waits for an answer of another during a handover (the default, 20 s, is for real
# networks): a frozen node costs each waiting node that long.
FROZEN_NODE_TIMEOUT = 5.0


@pytest.fixture
def network(tmp_path: Path) -> Iterator[EpochNetwork]:
    # The second test freezes node-2 (SIGSTOP): each node that gains a shard waits request_timeout for
    # node-2's records before it moves a sliver, 5 s here instead of the default 20.
    with EpochNetwork(tmp_path / "network", request_timeout=FROZEN_NODE_TIMEOUT) as network:
        yield network


@pytest.fixture
def blobs(network: EpochNetwork) -> list[BlobMetadata]:
    return stored_everywhere(network, BLOBS, 300_000)


def holds(network: EpochNetwork, node_id: str, shards: list[int], blobs: list[BlobMetadata]) -> None:
    for metadata in blobs:
        for shard in shards:
            for kind in SliverKind:
                pair = metadata.geometry.pair_of_shard(shard, metadata.blob_id.raw)
                fetch_verified(network.url(node_id), metadata, pair, kind)


def gained(status: dict) -> dict[int, dict]:
    return {entry["shard"]: entry for entry in status["gaining"]}


def chain_of(network: EpochNetwork, first) -> CommitteeChain:  # type: ignore[no-untyped-def]
    chain = CommitteeChain(first)
    for link in network.links:
        chain.extend(link)
    return chain


def test_a_second_change_waits_for_the_first_handover_to_land_and_is_not_proposed_before(
        network: EpochNetwork, blobs: list[BlobMetadata]) -> None:
    first = network.committee
    network.add_node("node-4")  # not started yet: the shard it gains cannot land
    network.change_epoch(network.successor({"node-0": (0,), "node-1": (1, 5), "node-2": (2, 6), "node-3": (3,),
                                            "node-4": (4,)}))
    chain = chain_of(network, first)
    messages: list[str] = []

    class Stream:
        def write(self, text: str) -> int:
            messages.append(text)
            return len(text)

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return False

    with pytest.raises(EpochChangeError) as refused:
        wait_for_landing(chain, timeout=2, stream=Stream())
    text = str(refused.value)
    assert "epoch 3 was not proposed" in text and "handover into epoch 2 is not complete after 2 s" in text
    assert "0 of 1 shards synced" in text and "walrusfs committee status" in text
    assert any("waiting for it before proposing epoch 3" in message for message in messages)

    network.start("node-4")  # it comes up, takes the link and its shard: the queued change may go on
    network.send_links("node-4")
    started = time.monotonic()
    wait_for_landing(chain, timeout=120, stream=Stream())
    assert time.monotonic() - started < 120
    holds(network, "node-4", [4], blobs)


def test_a_handover_interrupted_by_restarting_every_node_ends_with_every_shard_on_its_new_holder(
        network: EpochNetwork, blobs: list[BlobMetadata]) -> None:
    network.add_node("node-4")
    network.start("node-4")
    frozen = network.processes["node-2"].pid
    os.kill(frozen, signal.SIGSTOP)  # node-2 answers nothing: shard 6 cannot land before the restart
    try:
        network.change_epoch(network.successor({"node-0": (0,), "node-1": (1,), "node-2": (2,), "node-3": (3, 5),
                                                "node-4": (4, 6)}), skip=("node-2",))
        deadline = time.monotonic() + 60
        while gained(network.handover("node-4"))[4]["state"] != "synced" or \
                gained(network.handover("node-3"))[5]["state"] != "synced":
            assert time.monotonic() < deadline, (network.handover("node-4"), network.handover("node-3"))
            time.sleep(0.05)
        assert gained(network.handover("node-4"))[6]["state"] != "synced"  # interrupted mid-handover
    except BaseException:
        os.kill(frozen, signal.SIGCONT)  # so that the network's teardown can stop it
        raise
    network.kill9(*network.node_ids)  # every node, the frozen one too
    progress = json.loads((network.root / "node-4" / "data" / "epochs" / "handover.json").read_text())
    before = gained(progress)

    network.start(*network.node_ids)
    statuses = network.wait_handover(["node-3", "node-4"], timeout=120)

    holds(network, "node-4", [4, 6], blobs)
    holds(network, "node-3", [3, 5], blobs)
    after = {**gained(statuses["node-4"]), **gained(statuses["node-3"])}
    assert {shard: entry["from"] for shard, entry in after.items()} == {4: "node-0", 6: "node-2", 5: "node-1"}
    assert all(entry["state"] == "synced" and entry["released"] and entry["blobs"] == BLOBS
               for entry in after.values())
    assert after[4]["bytes_moved"] == before[4]["bytes_moved"]  # landed before the restart: not fetched again
    for old, gone in (("node-0", 4), ("node-1", 5), ("node-2", 6)):
        handing_off = {entry["shard"]: entry for entry in network.handover(old)["handing_off"]}
        assert handing_off[gone]["released"], (old, handing_off)
