"""A mount keeps its blobs alive on the nodes (walrusfs/fs/renewal.py): with a blob term of seconds,
every blob the filesystem references outlives several terms while the mount runs, and once the
mount stops renewing, the nodes expire them all. ``walrusfs status`` shows the renewal.

Real nodes (4, with a sweep twice a second) and a real FUSE mount.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import MakeFs
from fs_harness import WALRUSFS, run, status
from network import LocalNetwork

TERM = 9.0  # seconds: the filesystem's blob term (mkfs --blob-term-days)
DAY = 86400


def configure_nodes(network: LocalNetwork, text: str) -> None:
    for node_id in network.node_ids:
        path = network.config(node_id)
        path.write_text(path.read_text().split("\n# test settings\n")[0] + "\n# test settings\n" + text)


@pytest.fixture
def network(tmp_path: Path) -> Iterator[LocalNetwork]:
    network = LocalNetwork(tmp_path / "network", nodes=4)
    configure_nodes(network, "[lifecycle]\ndefault_term_days = 0.5\nmax_term_days = 1\nsweep_interval = 0.5\n")
    with network:
        yield network


def blob_ids(db_path: Path) -> set[str]:
    import sqlite3

    with sqlite3.connect(db_path) as db:
        return {row[0] for row in db.execute("SELECT blob_id FROM blobs")}


def stored_on(network: LocalNetwork, blob_id: str) -> list[str]:
    """The nodes that still hold the blob's metadata."""
    return [node for node in network.node_ids
            if httpx.get(f"{network.url(node)}/v1/blobs/{blob_id}/metadata", timeout=10).status_code == 200]


def test_a_mount_renews_its_blobs_past_their_term_and_they_expire_once_it_stops(
        network: LocalNetwork, make_fs: MakeFs, tmp_path: Path) -> None:
    fs = make_fs(network, mkfs_args=("--blob-term-days", str(TERM / DAY)))
    mountpoint = tmp_path / "mnt"
    fs.mount(mountpoint)
    try:
        data = os.urandom(300_000)
        with open(mountpoint / "kept", "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        stored = blob_ids(fs.db_path)
        assert stored
        time.sleep(TERM * 2.5)  # well past the term each blob was stored for
        for blob_id in stored:
            assert stored_on(network, blob_id) == network.node_ids, f"blob {blob_id} expired while renewed"
        renewal = status(mountpoint)["renewal"]
        assert renewal["last_error"] is None and renewal["blobs"] >= len(stored)
        assert renewal["expires"] > time.time()
        report = run([WALRUSFS, "status", str(mountpoint)], fs.env).stdout
        assert "RENEWAL FAILING" not in report
        assert "renewing" in fs.log_tail(20_000)
    finally:
        fs.umount(mountpoint)
        fs.cleanup()

    stopped = time.monotonic()
    deadline = stopped + TERM * 2 + 60  # generous: the machine is loaded
    remaining = set(stored)
    while remaining:
        assert time.monotonic() < deadline, f"blobs not expired after the mount stopped renewing: {remaining}"
        remaining = {blob_id for blob_id in remaining if stored_on(network, blob_id)}
        time.sleep(0.5)
