"""Self-healing through setbacks, on real node processes (n=7, f=2).

Slivers the writer delivers after the node noted them missing are no longer reported missing; a
node whose disk is full keeps the slivers it rebuilt instead of fetching them again on every retry,
counts each failed attempt, says "disk full", and stores them once there is room.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from blobtools import FAST_FAIL, blob_client, store
from healing import (
    expected_slivers,
    held_slivers,
    repair_network,
    repair_status,
    sliver_bytes,
    wait_certified_everywhere,
    wait_for,
    wait_whole,
    wipe,
)

from nodes.config import RepairConfig
from nodes.repair import MAX_RETRY_DELAY, retry_backoff
from walrusfs.errors import UserError
from walrusfs.redstuff import SliverKind, encode


def test_slivers_the_writer_delivers_after_they_were_noted_missing_are_not_missing(tmp_path):
    network = repair_network(tmp_path)
    with network:
        network.stop("node-3")
        data = os.urandom(1_500_000)
        store(network, data, FAST_FAIL)  # certified by the other six
        blob = encode(data, network.committee.n_shards)
        # With three more nodes down, node-3 rebuilds its secondary sliver (n_p = 3 primary symbols
        # from node-5..7) but not its primary one (n_s = 5 secondary symbols; there are only 4).
        network.stop("node-1", "node-2", "node-4")
        network.start("node-3")
        wait_for("node-3 rebuilt its secondary sliver and misses its primary one", lambda: (
            (status := repair_status(network, "node-3"))["recovered_slivers"] == 1
            and status["missing_slivers"] == 1 and status["failed_attempts"] >= 1))

        # The writer's late delivery brings the primary sliver.
        [(pair, _)] = [key for key in expected_slivers(network, "node-3", blob) if key[1] is SliverKind.PRIMARY]

        async def deliver() -> None:
            async with blob_client(network) as client:
                await client.connections["node-3"].put_sliver(pair, blob.primary_sliver(pair))

        trio.run(deliver)
        network.start("node-1", "node-2", "node-4")

        status = wait_whole(network, "node-3")
        assert status["missing_slivers"] == 0 and status["recovered_slivers"] == 1
        assert held_slivers(network, "node-3", blob) == expected_slivers(network, "node-3", blob)
        table = subprocess.run([sys.executable, "-m", "walrusfs.cli", "cluster", "repair-status",
                                str(network.root)], capture_output=True, text=True, timeout=60)
        assert "whole" in row_of(table.stdout, "node-3")


def row_of(table: str, node: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(node))


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``path`` (root only): a disk that really fills up."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


# The first retry's delay (the default, 1 s, would make the test sleep through 12 s of retries).
RETRY_DELAY = 0.2


def test_a_failed_blob_is_retried_after_retry_delay_doubled_per_attempt_jittered_and_capped():
    assert RepairConfig.from_dict({}).retry_delay == 1.0
    assert RepairConfig.from_dict({"retry_delay": 0.25}).retry_delay == 0.25
    for attempts, nominal in [(0, 0.25), (1, 0.5), (3, 2.0), (20, MAX_RETRY_DELAY)]:
        delays = [retry_backoff(0.25, attempts) for _ in range(200)]
        assert all(0.5 * nominal <= delay <= 1.5 * nominal for delay in delays), (attempts, min(delays), max(delays))
        assert max(delays) - min(delays) > 0.2 * nominal  # jittered: nodes that failed together spread out
    with pytest.raises(UserError, match=r"\[repair\] retry_delay must be at least 0.01"):
        RepairConfig.from_dict({"retry_delay": 0.0})


def test_repair_on_a_full_disk_keeps_what_it_rebuilt_and_backs_off(tmp_path):
    network = repair_network(tmp_path, retry_delay=RETRY_DELAY)
    with network:
        data = os.urandom(3_000_000)  # node-3's two slivers are ~1.6 MB, far more than its disk holds
        store(network, data)
        wait_certified_everywhere(network, 1)
        blob = encode(data, network.committee.n_shards)
        lost = sliver_bytes(network, "node-3", [blob])
        wipe(network, "node-3")
        with small_disk(network.root / "node-3" / "data", "192k") as disk:
            network.start("node-3")
            try:
                first = wait_for("node-3 fetched the symbols of its slivers once", lambda: (
                    (status := repair_status(network, "node-3"))["bytes_fetched"] >= 0.9 * lost and status))

                # Retries with jittered backoff: ~1, 2, 4 and 8 retry delays apart.
                time.sleep(12 * RETRY_DELAY)
                later = repair_status(network, "node-3")
                # The rebuilt slivers were kept: the retries fetched nothing more (metadata aside).
                assert later["bytes_fetched"] <= 1.05 * lost, (later["bytes_fetched"], lost)
                retries = later["failed_attempts"] - first["failed_attempts"]
                assert 2 <= retries <= 16, retries  # every attempt counted; backing off, not spinning
                assert "Traceback" not in network.log("node-3").read_text(errors="replace")
                assert later.get("disk_full") and later["missing_slivers"] == 2

                table = subprocess.run([sys.executable, "-m", "walrusfs.cli", "cluster", "repair-status",
                                        str(network.root)], capture_output=True, text=True, timeout=60)
                assert "disk full" in row_of(table.stdout, "node-3")
                metrics = httpx.get(network.url("node-3") + "/metrics", timeout=5).text
                assert "walrusfs_node_repair_disk_full 1" in metrics
                # prometheus_client writes every value as a float ("3.0").
                counted = re.search(r"^walrusfs_node_repair_disk_full_attempts_total (\d+)\.0$", metrics, re.M)
                assert counted and int(counted[1]) >= later["disk_full_attempts"] >= 2  # retries go on meanwhile

                # Room again: the kept slivers are stored, still without fetching them again.
                subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
                status = wait_whole(network, "node-3")
                assert not status["disk_full"] and status["recovered_slivers"] == 2
                assert status["bytes_fetched"] <= 1.05 * lost
                assert held_slivers(network, "node-3", blob) == expected_slivers(network, "node-3", blob)
            finally:
                network.stop("node-3")
