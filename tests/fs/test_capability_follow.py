"""A read capability's mount of the latest snapshot follows the snapshots its writer publishes while
it stays mounted (walrusfs/fs/follow.py, docs/encryption.md); one of a pinned snapshot does not."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest
from fs_harness import WALRUSFS, Filesystem, mounted, run, status
from network import LocalNetwork

pytestmark = pytest.mark.usefixtures("shared_network")

FOLLOW = ("-o", "follow_interval=0.5")


def share(fs: Filesystem, *extra: str) -> str:
    return run([WALRUSFS, "share", fs.name, *extra], fs.env).stdout.strip()


def publish(writer_mount: Path) -> int:
    """Take a snapshot now (the root's control xattr) and return its number."""
    os.setxattr(writer_mount, "walrusfs.snapshot", b"1")
    return int(status(writer_mount)["snapshot"]["seq"])


def wait_for_snapshot(mount: Path, seq: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if status(mount)["snapshot"]["seq"] == seq:
            return
        time.sleep(0.2)
    raise AssertionError(f"{mount} still shows snapshot {status(mount)['snapshot']} after {timeout:.0f} s, "
                         f"not {seq}")


def test_a_capability_mount_follows_new_snapshots_and_a_pinned_one_stays(
        make_fs, shared_network: LocalNetwork, tmp_path: Path) -> None:
    owner = make_fs(shared_network, "followed")
    committee = ("--committee", str(shared_network.committee_path))
    with mounted(owner, tmp_path / "owner") as writer:
        (writer / "changing.txt").write_bytes(b"first version")
        (writer / "removed.txt").write_bytes(b"soon gone " * 1000)
        (writer / "dir").mkdir()
        first = publish(writer)
        latest = Filesystem(share(owner), tmp_path / "reader", shared_network)
        pinned = Filesystem(share(owner, "--snapshot", str(first)), tmp_path / "pinned", shared_network)
        with mounted(latest, tmp_path / "latest", *committee, *FOLLOW) as follows, \
                mounted(pinned, tmp_path / "old", *committee, *FOLLOW) as stays:
            assert status(follows)["snapshot"]["seq"] == first
            assert (follows / "changing.txt").read_bytes() == b"first version"
            assert sorted(os.listdir(follows / "dir")) == []
            held = os.open(follows / "removed.txt", os.O_RDONLY)
            try:
                assert os.pread(held, 9, 0) == b"soon gone"

                (writer / "changing.txt").write_bytes(b"the second, longer version")
                (writer / "dir" / "new.txt").write_bytes(b"appeared later")
                (writer / "removed.txt").unlink()
                second = publish(writer)
                wait_for_snapshot(follows, second)

                # New files appear, a changed one reads its new content and size, a removed one is gone.
                assert sorted(os.listdir(follows / "dir")) == ["new.txt"]
                assert (follows / "dir" / "new.txt").read_bytes() == b"appeared later"
                assert (follows / "changing.txt").read_bytes() == b"the second, longer version"
                assert os.stat(follows / "changing.txt").st_size == len(b"the second, longer version")
                assert not (follows / "removed.txt").exists()
                # An open file the new snapshot no longer has: a clear error, never stale or wrong bytes.
                with pytest.raises(OSError) as raised:
                    os.pread(held, 9, 0)
                assert raised.value.errno == errno.ESTALE
            finally:
                os.close(held)

            # The mount of snapshot `first` stayed on it, though it had as long to follow.
            assert not status(stays)["snapshot"].get("following")
            assert (stays / "changing.txt").read_bytes() == b"first version"
            assert (stays / "removed.txt").exists() and not (stays / "dir" / "new.txt").exists()
            for attempt in (lambda: (follows / "x").write_bytes(b"x"), lambda: (follows / "changing.txt").unlink()):
                with pytest.raises(OSError) as refused:
                    attempt()
                assert refused.value.errno == errno.EROFS
            shown = json.loads(run([WALRUSFS, "status", str(follows), "--json"], latest.env).stdout)
            assert shown["snapshot"]["following"] is True
