"""A mount whose writer key is over quota on the nodes (docs/deploy-nodes.md, "Lifecycle and
quotas"): fsync answers EDQUOT with a log line saying why, ``walrusfs status`` shows the refusal and
exits 2, and what was stored before stays on the nodes and readable.

Real nodes (4) and a real FUSE mount; the quota is set by restarting the nodes with a cap.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import MakeFs
from fs_harness import WALRUSFS, run, status
from network import LocalNetwork
from test_renewal import blob_ids, configure_nodes


@pytest.fixture
def network(tmp_path: Path) -> Iterator[LocalNetwork]:
    with LocalNetwork(tmp_path / "network", nodes=4) as network:
        yield network


def write_and_fsync(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_fsync_over_quota_is_edquot_and_what_was_stored_stays(network: LocalNetwork, make_fs: MakeFs,
                                                               tmp_path: Path) -> None:
    fs = make_fs(network)
    mountpoint = tmp_path / "mnt"
    fs.mount(mountpoint)
    try:
        before = os.urandom(200_000)
        write_and_fsync(mountpoint / "before", before)
        stored = blob_ids(fs.db_path)
        assert stored

        configure_nodes(network, "[quotas]\ndefault = 1\n")  # every key: one byte, already exceeded
        network.restart(*network.node_ids)

        with pytest.raises(OSError) as refused:
            write_and_fsync(mountpoint / "after", os.urandom(200_000))
        assert refused.value.errno == errno.EDQUOT
        assert "over_quota" in fs.log_tail(20_000) and "quota" in fs.log_tail(20_000)
        assert "over_quota" in status(mountpoint)["over_quota"]
        report = run([WALRUSFS, "status", str(mountpoint)], fs.env, check=False)
        assert report.returncode == 2 and "OVER QUOTA" in report.stdout

        assert (mountpoint / "before").read_bytes() == before
        for blob_id in stored:
            for node in network.node_ids:
                answer = httpx.get(f"{network.url(node)}/v1/blobs/{blob_id}/metadata", timeout=10)
                assert answer.status_code == 200, f"{node} lost blob {blob_id} after the quota refusal"
    finally:
        fs.cleanup()
