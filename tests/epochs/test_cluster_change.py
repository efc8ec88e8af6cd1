"""``walrusfs cluster change DIR --add K --retire ID...``: nodes join and leave in ONE epoch change on a
real bundled network, so that the leaving nodes' shards go straight to the joining ones (each shard
moves once, and no staying node gains or loses a shard)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from test_cluster_epochs import every_holder_serves_its_slivers, read_back, running_cluster, walrusfs

from walrusfs.client import BlobClient
from walrusfs.cluster_epochs import load_chain
from walrusfs.committee_cli import committee_status
from walrusfs.keys import load_key
from walrusfs.protocol.committee import Committee

TIMEOUT = 120


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Path]:
    with running_cluster(tmp_path / "cluster") as root:
        yield root


def test_adding_two_and_retiring_two_is_one_epoch_in_which_only_the_leavers_shards_move(cluster: Path) -> None:
    async def store() -> dict[str, bytes]:
        async with BlobClient(Committee.load(cluster / "committee.toml"),
                              writer_key=load_key(cluster / "writer.key")) as client:
            return {str((await client.store(data)).blob_id): data for data in (b"x" * 70_000, b"y" * 300_000)}

    blobs = trio.run(store)
    before = Committee.load(cluster / "committee.toml")

    refused = walrusfs("cluster", "change", cluster, check=False)
    assert refused.returncode != 0 and "needs --add K" in refused.stderr

    changed = walrusfs("cluster", "change", cluster, "--add", 2, "--retire", "node-1", "--retire", "node-2",
                       "--timeout", TIMEOUT)
    assert "added node-4, node-5" in changed.stdout and "retired and stopped node-1, node-2" in changed.stdout
    after = Committee.load(cluster / "committee.toml")
    assert after.epoch == 2 == load_chain(cluster).current.epoch
    assert sorted(node.id for node in after.nodes) == ["node-0", "node-3", "node-4", "node-5"]
    for staying in ("node-0", "node-3"):
        assert after.shards_of(staying) == before.shards_of(staying)
    assert sorted(after.shards_of("node-4") + after.shards_of("node-5")) == \
        sorted(before.shards_of("node-1") + before.shards_of("node-2"))
    report = committee_status(cluster)
    assert report["handover"]["complete"] and {s["from"] for s in report["handover"]["shards"]} == {"node-1",
                                                                                                    "node-2"}
    every_holder_serves_its_slivers(after, blobs)
    read_back(cluster, blobs)
