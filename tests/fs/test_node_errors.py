"""What the nodes answered reaches the mount's user: a real mount on a real network in which three
nodes' clocks are 600 s off, so that every store is refused (401) and no certificate can be had."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest
from fs_harness import WALRUSFS, mounted, run, status

# Request timestamps are whole seconds: a node 600 s ahead sees 600 s, or 601 when the signer's part of
# a second plus the transit crosses a second.
SAID = re.compile(r"Authorization timestamp is 60[01] s away from the node's clock \(limit 300 s\): check the clocks")


def test_fsync_eio_and_the_mount_status_carry_what_the_nodes_answered(shared_network, make_fs,
                                                                        tmp_path: Path) -> None:
    fs = make_fs(shared_network)
    skewed = ["node-1", "node-3", "node-5"]
    with mounted(fs, tmp_path / "mnt") as mp:
        data = os.urandom(1 << 20)
        shared_network.stop(*skewed)
        shared_network.start(*skewed, clock_offset=600)
        try:
            fd = os.open(mp / "f", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
                with pytest.raises(OSError) as error:
                    os.fsync(fd)
                assert error.value.errno == errno.EIO
            finally:
                os.close(fd)
            assert SAID.search(status(mp)["last_error"] or "")
            shown = run([WALRUSFS, "status", str(mp)], fs.env, check=False)
            assert shown.returncode == 2  # uploads failing
            shown_text = " ".join(shown.stdout.split())
            assert re.search("node-1, node-3, node-5: HTTP 401: unauthorized: " + SAID.pattern, shown_text), shown_text
            log = fs.log_tail(50_000)
            assert any("fsync of inode" in line and SAID.search(line) for line in log.splitlines()), log[-3000:]
        finally:
            shared_network.stop(*skewed)
            shared_network.start(*skewed)
        # The data stayed staged: with the clocks right it is certified, which `walrusfs umount`
        # (leaving the with block) waits for.
