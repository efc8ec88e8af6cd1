"""``walrusfs cluster add``, ``walrusfs cluster retire`` and ``walrusfs committee status`` on a real
bundled network (node processes started by ``cluster up``, stopped by their recorded pids).

One network for the module, changed step by step as an operator would: blobs stored at epoch 1, a
node added (epoch 2), a node retired (epoch 3); after each change every shard's holder in the new
committee serves its slivers of every blob, the chain beside committee.toml verifies from epoch 1,
and the status command reports the handover complete."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tomli_w
import trio

from walrusfs.client import BlobClient
from walrusfs.cluster_epochs import load_chain
from walrusfs.committee_cli import committee_status
from walrusfs.keys import load_key, public_key_text
from walrusfs.ports import free_port_range
from walrusfs.protocol.committee import Committee
from walrusfs.redstuff import BlobId

TIMEOUT = 120  # seconds each change may take here (a loaded machine); a change of a few blobs takes seconds


def walrusfs(*args: object, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "walrusfs.cli", *map(str, args)],
                            capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"walrusfs {args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def kill_recorded(root: Path) -> None:
    """No node outlives the module: SIGKILL each recorded pid that is still a node of this directory."""
    for pid_file in root.glob("node-*/node.pid"):
        try:
            pid = int(pid_file.read_text())
            if str(root).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


@contextlib.contextmanager
def running_cluster(root: Path) -> Iterator[Path]:
    """A bundled network of 4 nodes over 8 shards (2 each), ports for 4 more after them, up until the
    block ends; every node it started is stopped, also when the test fails."""
    walrusfs("cluster", "init", root, "--nodes", 4, "--shards", 8, "--base-port", free_port_range(8))
    try:
        walrusfs("cluster", "up", root)
        yield root
    finally:
        walrusfs("cluster", "down", root, check=False)
        kill_recorded(root)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with running_cluster(tmp_path_factory.mktemp("epochs") / "cluster") as root:
        yield root


@pytest.fixture(scope="module")
def blobs(cluster: Path) -> dict[str, bytes]:
    """Blobs stored and certified at epoch 1 (in this process: a command per blob costs seconds here)."""
    async def store() -> dict[str, bytes]:
        stored = {}
        async with BlobClient(Committee.load(cluster / "committee.toml"),
                              writer_key=load_key(cluster / "writer.key")) as client:
            for size in (1, 70_000, 300_000):
                data = os.urandom(size)
                stored[str((await client.store(data)).blob_id)] = data
        return stored

    return trio.run(store)


def every_holder_serves_its_slivers(committee: Committee, blobs: dict[str, bytes]) -> None:
    geometry = committee.geometry
    for text in blobs:
        blob_id = BlobId.parse(text)
        for node in committee.nodes:
            for shard in node.shards:
                pair = geometry.pair_of_shard(shard, blob_id.raw)
                for kind in ("primary", "secondary"):
                    response = httpx.get(f"{node.url}/v1/blobs/{text}/slivers/{pair}/{kind}", timeout=10)
                    assert response.status_code == 200, (node.id, shard, kind, response.text)


def read_back(cluster: Path, blobs: dict[str, bytes]) -> None:
    """Every blob read with the current committee file alone, verified against its ID."""
    async def read() -> None:
        async with BlobClient(Committee.load(cluster / "committee.toml")) as client:
            for text, data in blobs.items():
                assert bytes(await client.read(BlobId.parse(text))) == data

    trio.run(read)


def status(cluster: Path) -> dict:
    return committee_status(cluster)  # what `walrusfs committee status --json` prints


def test_a_fresh_network_is_at_epoch_one_with_no_handover(cluster: Path, blobs: dict[str, bytes]) -> None:
    report = status(cluster)
    assert report["epoch"] == 1 and report["handover"] is None
    assert [node["shards"] for node in report["nodes"]] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert {node["state"] for node in report["nodes"]} == {"up"}


def test_adding_a_node_moves_shards_onto_it_and_returns_when_they_are_synced(
        cluster: Path, blobs: dict[str, bytes]) -> None:
    before = Committee.load(cluster / "committee.toml")
    added = walrusfs("cluster", "add", cluster, "--timeout", TIMEOUT)
    assert "added node-4" in added.stdout
    assert "handover into epoch 2" in added.stderr  # the progress display
    after = Committee.load(cluster / "committee.toml")
    assert after.epoch == 2 and [node.id for node in after.nodes] == [*(n.id for n in before.nodes), "node-4"]
    assert sorted(len(node.shards) for node in after.nodes) == [1, 1, 2, 2, 2]
    assert not (cluster / "proposal.json").exists()
    chain = load_chain(cluster)  # re-verified from epoch 1
    assert chain.anchor == before and chain.current == after
    every_holder_serves_its_slivers(after, blobs)
    read_back(cluster, blobs)

    report = json.loads(walrusfs("committee", "status", cluster, "--json").stdout)
    assert report == status(cluster)
    assert report["epoch"] == 2 and report["handover"]["complete"]
    assert report["handover"]["from_epoch"] == 1 and report["handover"]["bytes_left"] == 0
    moved = report["handover"]["shards"]
    assert [(shard["shard"], shard["from"], shard["to"]) for shard in moved] == [(7, "node-3", "node-4")]
    assert all(shard["state"] == "synced" for shard in moved)
    assert report["handover"]["bytes_moved"] > 0
    listed = walrusfs("committee", "status", cluster).stdout
    assert "epoch 2" in listed and "handover from epoch 1: complete" in listed


def test_retiring_an_unknown_node_is_refused_and_changes_nothing(cluster: Path, blobs: dict[str, bytes]) -> None:
    before = (cluster / "committee.toml").read_text()
    refused = walrusfs("cluster", "retire", cluster, "node-9", check=False)
    assert refused.returncode != 0
    assert "cannot retire node-9: not in the committee of epoch" in refused.stderr
    assert (cluster / "committee.toml").read_text() == before
    assert not (cluster / "proposal.json").exists()


def test_retiring_a_node_moves_its_shards_off_and_stops_it(cluster: Path, blobs: dict[str, bytes]) -> None:
    before = Committee.load(cluster / "committee.toml")
    pid = int((cluster / "node-1" / "node.pid").read_text())
    retired = walrusfs("cluster", "retire", cluster, "node-1", "--timeout", TIMEOUT)
    assert "their directories can be deleted" in retired.stdout and str(cluster / "node-1") in retired.stdout
    after = Committee.load(cluster / "committee.toml")
    assert after.epoch == before.epoch + 1 and not after.has_node("node-1")
    assert sorted(len(node.shards) for node in after.nodes) == [2, 2, 2, 2]
    assert not Path(f"/proc/{pid}").exists() or b"node-1" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    every_holder_serves_its_slivers(after, blobs)
    # what the retired node held is elsewhere now: its directory can go
    subprocess.run(["rm", "-r", str(cluster / "node-1")], check=True)
    read_back(cluster, blobs)

    report = status(cluster)
    assert report["epoch"] == after.epoch and report["handover"]["complete"]
    assert {shard["from"] for shard in report["handover"]["shards"]} == {"node-1"}
    assert [node["id"] for node in report["nodes"]] == [node.id for node in after.nodes]
    assert load_chain(cluster).current == after


@pytest.fixture
def half_configured(tmp_path: Path) -> Iterator[Path]:
    """4 nodes over 8 shards, of which node-2 and node-3 list no proposer: 4 shards can sign, 6 must."""
    root = tmp_path / "cluster"
    walrusfs("cluster", "init", root, "--nodes", 4, "--shards", 8, "--base-port", free_port_range(4))
    for node_id in ("node-2", "node-3"):
        config = tomllib.loads((root / node_id / "config.toml").read_text())
        del config["epochs"]
        (root / node_id / "config.toml").write_text(tomli_w.dumps(config))
    try:
        walrusfs("cluster", "up", root)
        yield root
    finally:
        walrusfs("cluster", "down", root, check=False)
        kill_recorded(root)


def test_a_change_too_few_nodes_sign_changes_nothing_and_the_same_command_finishes_it_later(
        half_configured: Path) -> None:
    root = half_configured
    failed = walrusfs("cluster", "retire", root, "node-3", "--timeout", TIMEOUT, check=False)
    assert failed.returncode != 0
    assert "signed by nodes holding 4 shards of epoch 1; it needs 6 of 8" in failed.stderr
    assert "node-2: no_proposers" in failed.stderr and "run the same command again" in failed.stderr
    assert Committee.load(root / "committee.toml").epoch == 1
    assert (root / "proposal.json").exists()  # node-0 and node-1 signed it: they sign no other epoch 2

    # the operator fixes the two configs and restarts the nodes
    operator = public_key_text(load_key(root / "operator.key"))
    for node_id in ("node-2", "node-3"):
        config = tomllib.loads((root / node_id / "config.toml").read_text())
        (root / node_id / "config.toml").write_text(tomli_w.dumps({**config, "epochs": {"proposers": [operator]}}))
    walrusfs("cluster", "down", root)
    walrusfs("cluster", "up", root)
    finished = walrusfs("cluster", "retire", root, "node-3", "--timeout", TIMEOUT)
    assert "finishing the committee change an earlier run started (retiring node-3, epoch 2)" in finished.stderr
    after = Committee.load(root / "committee.toml")
    assert after.epoch == 2 and not after.has_node("node-3") and not (root / "proposal.json").exists()
