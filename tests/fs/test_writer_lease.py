"""One writer per filesystem across machines: the writer lease, on real nodes and real mounts.

A "second machine" is a second state directory restored from the same fs.key (what `walrusfs
restore NAME --key fs.key` does on another machine). Terms are a few seconds so that expiry is
tested in seconds.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from fs_harness import WALRUSFS, Filesystem, force_unmount, is_mounted, run, status, wait_gone

TERM = "lease_term=3"


def second_machine(make_fs, network, first: Filesystem, tmp_path: Path, name: str = "other") -> Filesystem:
    """Another state directory of the same filesystem, restored from the network with its key."""
    key = tmp_path / f"{name}.key"
    shutil.copy(first.state / "fs.key", key)
    other = make_fs(network, name, mkfs=False)
    run([WALRUSFS, "restore", name, *restore_args(other, key)], other.env)
    return other


def restore_args(fs: Filesystem, key: Path) -> list[str]:
    return ["--key", str(key), "--committee", str(fs.network.committee_path),
            "--writer-key", str(fs.network.writer_key_path)]


def fsync_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_a_second_writer_is_refused_while_the_first_is_mounted(shared_network, make_fs, tmp_path):
    first = make_fs(shared_network, "first")
    one, two = tmp_path / "one", tmp_path / "two"
    first.mount(one)
    (one / "before").write_text("published")
    run([WALRUSFS, "snapshot", str(one)], first.env)
    other = second_machine(make_fs, shared_network, first, tmp_path)

    refused = other.mount(two, check=False)
    assert refused.returncode != 0
    assert not is_mounted(two.resolve())
    assert "mounted writable elsewhere" in refused.stderr and str(first.state) in refused.stderr
    assert "-o takeover" in refused.stderr and "expires in" in refused.stderr

    # The refused attempt changed nothing for the writer: it goes on, durably.
    fsync_file(one / "after", b"still the writer")
    assert status(one)["lease"]["held"]
    first.umount(one)  # publishes the snapshot with "after", releases the lease

    # The other state is now behind the network: mounting it writable would fork the filesystem.
    stale = other.mount(two, check=False)
    assert stale.returncode != 0 and not is_mounted(two.resolve())
    assert "written elsewhere" in stale.stderr and "restore other --force" in stale.stderr
    restored = run([WALRUSFS, "restore", "other", "--force", *restore_args(other, tmp_path / "other.key")],
                   other.env)
    assert "held nothing the network's snapshot lacks" in restored.stderr
    other.mount(two)  # released at the first's unmount: no wait, no takeover
    try:
        assert (two / "after").read_text() == "still the writer"
    finally:
        other.umount(two)


def test_a_takeover_deposes_the_old_writer_whose_fsync_and_umount_fail(shared_network, make_fs, tmp_path):
    first = make_fs(shared_network, "first")
    one, two = tmp_path / "one", tmp_path / "two"
    first.mount(one, "-o", TERM)
    (one / "shared").write_text("before the takeover")
    run([WALRUSFS, "snapshot", str(one)], first.env)
    other = second_machine(make_fs, shared_network, first, tmp_path)

    other.mount(two, "--takeover", "-o", TERM)
    try:
        with pytest.raises(OSError) as refused:
            fsync_file(one / "lost-writer", b"written after the takeover")
        assert refused.value.errno == errno.EIO
        lease = status(one)["lease"]
        assert not lease["held"] and lease["deposed_by"]["label"].endswith(str(other.state))
        assert "took over" in first.log_tail()
        report = run([WALRUSFS, "status", str(one)], first.env, check=False)
        assert report.returncode == 2 and "NOT DURABLE, WRITER LEASE NOT HELD" in report.stdout
        assert "DEPOSED by" in report.stdout

        # The deposed writer's unmount does not claim success; its data stays in its state.
        pid = status(one)["pid"]
        result = run([WALRUSFS, "umount", str(one)], first.env, check=False, timeout=180)
        assert result.returncode != 0
        assert "NOT durable" in result.stderr and "took over" in result.stderr
        assert "every byte is certified" not in result.stderr
        assert not is_mounted(one.resolve()) and wait_gone(pid, 60)
        first.mounts.pop(one.resolve(), None)

        # The new writer's tree is the filesystem; it writes durably.
        assert (two / "shared").read_text() == "before the takeover"
        assert not (two / "lost-writer").exists()
        fsync_file(two / "new-writer", b"durable")
    finally:
        other.umount(two)

    # Giving up the deposed state names what it had and keeps it aside, readable.
    key = tmp_path / "first.key"
    shutil.copy(first.state / "fs.key", key)
    replaced = run([WALRUSFS, "restore", "first", "--force", *restore_args(first, key)], first.env)
    assert "WARNING" in replaced.stderr and "/lost-writer  (only in the old state)" in replaced.stderr
    aside = [p for p in first.state.parent.iterdir() if p.name.startswith("first.replaced-")]
    assert len(aside) == 1 and (aside[0] / "metadata.db").exists()
    with_aside = Filesystem(str(aside[0]), first.home, shared_network)
    old = tmp_path / "old"
    with_aside.mount(old, "-o", "ro")
    try:
        assert (old / "lost-writer").read_bytes() == b"written after the takeover"
    finally:
        with_aside.umount(old)
        with_aside.cleanup()
    first.mount(one)
    try:
        assert (one / "new-writer").read_bytes() == b"durable"
    finally:
        first.umount(one)


def test_a_dead_writers_lease_expires_and_lets_another_writer_in_without_takeover(
        shared_network, make_fs, tmp_path):
    # Renewed every 3 s: on the nodes it lasts at least 9 s past the writer's death, time enough for
    # the refused mount below even on a loaded machine (20 s made this test wait twice as long).
    term = 12
    first = make_fs(shared_network, "first")
    one, two = tmp_path / "one", tmp_path / "two"
    first.mount(one, "-o", f"lease_term={term}")
    (one / "kept").write_text("from the dead writer")
    run([WALRUSFS, "snapshot", str(one)], first.env)
    other = second_machine(make_fs, shared_network, first, tmp_path)
    pid = status(one)["pid"]
    os.kill(pid, signal.SIGKILL)  # its machine dies: no release
    died = time.monotonic()
    assert wait_gone(pid, 30)
    force_unmount(one.resolve())
    first.mounts.pop(one.resolve(), None)

    refused = other.mount(two, check=False)
    assert refused.returncode != 0 and "mounted writable elsewhere" in refused.stderr, refused.stderr
    deadline = time.monotonic() + 90
    while not is_mounted(two.resolve()):
        assert time.monotonic() < deadline, f"no mount 90 s after the dead writer's {term} s term: {refused.stderr}"
        time.sleep(1)
        refused = other.mount(two, check=False)
    assert time.monotonic() - died > term - term / 4 - 1, "mounted before the dead writer's lease could expire"
    try:
        assert (two / "kept").read_text() == "from the dead writer"
        fsync_file(two / "new", b"x")
    finally:
        other.umount(two)


def test_the_lease_survives_a_restart_of_every_node(shared_network, make_fs, tmp_path):
    first = make_fs(shared_network, "first")
    one, two = tmp_path / "one", tmp_path / "two"
    first.mount(one, "-o", "lease_term=600")
    run([WALRUSFS, "snapshot", str(one)], first.env)
    pid = status(one)["pid"]
    os.kill(pid, signal.SIGKILL)  # nobody renews from now on: only the nodes' disks keep the lease
    assert wait_gone(pid, 30)
    force_unmount(one.resolve())
    first.mounts.pop(one.resolve(), None)
    other = second_machine(make_fs, shared_network, first, tmp_path)
    try:
        shared_network.kill9(*shared_network.node_ids)
        shared_network.start(*shared_network.node_ids)
    finally:
        shared_network.ensure_all_up()

    refused = other.mount(two, check=False)
    assert refused.returncode != 0 and "mounted writable elsewhere" in refused.stderr
    other.mount(two, "--takeover")
    other.umount(two)
