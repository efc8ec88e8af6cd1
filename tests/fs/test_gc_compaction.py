"""Compaction end to end (compaction.py, docs/gc.md): blobs shared by many small files, most of them
deleted, are repacked while readers keep reading; then the old blobs leave every node's disk, and
kill -9 at random instants of gc and compaction never loses a reachable file.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

from fs_harness import WALRUSFS, Filesystem, is_mounted, mounted, run, status, wait_gone
from network import LocalNetwork
from test_crash_safety import fsck_json, kill_daemon
from test_gc import configure, gc, stored_on

KiB = 1 << 10


def remount_after_crash(fs: Filesystem, mountpoint: Path) -> None:
    """As test_crash_safety's, but a daemon killed while it served a request (the gc control xattr)
    leaves its mount point answering ECONNABORTED rather than ENOTCONN: walrusfs mount detaches either."""
    try:
        os.statvfs(mountpoint)
        raise AssertionError("the killed daemon's mount point still answers")
    except OSError as error:
        assert error.errno in (errno.ENOTCONN, errno.ECONNABORTED), error
    result = run([WALRUSFS, "mount", fs.name, str(mountpoint)], fs.env, timeout=120, check=False)
    if is_mounted(mountpoint):
        fs.mounts[mountpoint] = int(status(mountpoint)["pid"])
    assert result.returncode == 0, f"{result.stderr}\n{fs.log_tail()}"
    assert "detached" in result.stderr, result.stderr


def blob_ids(fs: Filesystem) -> set[str]:
    with fs.db() as db:
        return {blob_id for (blob_id,) in db.execute("SELECT blob_id FROM blobs WHERE refcount > 0")}


def make_files(mnt: Path, count: int, seed: int, prefix: str = "small") -> dict[str, bytes]:
    """Small files, then everything certified at once (walrusfs.flush): they share blobs, as files
    written together do (an fsync each would upload each alone)."""
    rng = random.Random(seed)
    files = {f"{prefix}-{i:03d}": rng.randbytes(rng.randrange(20 * KiB, 90 * KiB)) for i in range(count)}
    for name, data in files.items():
        (mnt / name).write_bytes(data)
    os.setxattr(mnt, "walrusfs.flush", b"1")
    return files


class Readers:
    """Threads reading ``files`` through the mount over and over, checking every byte."""

    def __init__(self, mnt: Path, files: dict[str, bytes], threads: int = 3) -> None:
        self.mnt, self.files = mnt, files
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.reads = 0
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(threads)]

    def _loop(self, seed: int) -> None:
        rng = random.Random(seed)
        names = sorted(self.files)
        while not self.stop.is_set():
            name = rng.choice(names)
            try:
                with open(self.mnt / name, "rb", buffering=0) as handle:
                    os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                    data = handle.read()
            except OSError as error:
                self.errors.append(f"{name}: {error}")
                continue
            if data != self.files[name]:
                self.errors.append(f"{name}: wrong bytes ({len(data)} read)")
            self.reads += 1

    def __enter__(self) -> Readers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def test_sparse_blobs_are_repacked_under_concurrent_reads_and_their_old_blobs_leave_the_nodes(
        shared_network: LocalNetwork, make_fs, tmp_path: Path) -> None:
    fs = make_fs(shared_network, blob_size_mib=1)  # encrypted: sealed blocks move as they are
    configure(fs, gc_interval=0.0, snapshot_interval=0.0, compact_below=0.5)
    with mounted(fs, tmp_path / "mnt") as mnt:
        files = make_files(mnt, 60, seed=1)
        old_blobs = blob_ids(fs)
        assert len(old_blobs) >= 3
        survivors = {name: data for i, (name, data) in enumerate(sorted(files.items())) if i % 4 == 0}
        for name in files:
            if name not in survivors:
                (mnt / name).unlink()
        with Readers(mnt, survivors) as readers:
            report = gc(fs)
            time.sleep(0.5)
        assert not readers.errors, readers.errors[:5]
        assert readers.reads > 0
        assert report["compacted_blobs"] >= 3 and report["rewritten_bytes"] > 0, report
        assert report["pending_blobs"] == 0, report
        new_blobs = blob_ids(fs)
        assert not new_blobs & old_blobs
        assert len(new_blobs) < len(old_blobs)
        for blob in old_blobs:
            assert stored_on(shared_network, blob) == [], f"old blob {blob} still on a node's disk"
    fs.clear_cache()
    code, fsck = fsck_json(fs)
    assert code == 0 and fsck["clean"], fsck
    with mounted(fs, tmp_path / "mnt") as mnt:
        for name, data in survivors.items():
            assert (mnt / name).read_bytes() == data, name


def test_kill_9_during_gc_and_compaction_leaves_every_reachable_file_intact(
        shared_network: LocalNetwork, make_fs, tmp_path: Path) -> None:
    fs = make_fs(shared_network, blob_size_mib=1, mkfs_args=("--no-encryption",))
    configure(fs, gc_interval=0.0, snapshot_interval=0.0, compact_below=0.6)
    mountpoint = (tmp_path / "mnt").resolve()
    rng = random.Random(16)
    kept: dict[str, bytes] = {}
    fs.mount(mountpoint)
    try:
        for round_no in range(3):
            files = make_files(mountpoint, 24, seed=100 + round_no, prefix=f"round{round_no}")
            doomed = [name for name in files if rng.random() < 0.7]
            for name in doomed:
                (mountpoint / name).unlink()
            kept.update({name: data for name, data in files.items() if name not in doomed})
            command = subprocess.Popen([WALRUSFS, "gc", fs.name, "--json"], env=fs.env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
            time.sleep(rng.uniform(0.05, 1.5))  # somewhere in collecting, compacting or releasing
            kill_daemon(fs, mountpoint)
            command.send_signal(signal.SIGKILL)
            command.wait(30)
            assert wait_gone(command.pid, 10)
            remount_after_crash(fs, mountpoint)
            for name, data in kept.items():
                assert (mountpoint / name).read_bytes() == data, f"round {round_no}: {name}"
        # Unmounted: the gc command does the work itself; kill -9 it mid-pass, twice.
        for round_no in range(3, 5):
            files = make_files(mountpoint, 24, seed=100 + round_no, prefix=f"round{round_no}")
            doomed = [name for name in files if rng.random() < 0.7]
            for name in doomed:
                (mountpoint / name).unlink()
            kept.update({name: data for name, data in files.items() if name not in doomed})
            fs.umount(mountpoint)
            command = subprocess.Popen([WALRUSFS, "gc", fs.name, "--json"], env=fs.env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
            time.sleep(rng.uniform(0.5, 3.0))  # past its start-up: taking the lease, collecting, compacting
            command.send_signal(signal.SIGKILL)
            command.wait(30)
            fs.mount(mountpoint)
            for name, data in kept.items():
                assert (mountpoint / name).read_bytes() == data, f"round {round_no}: {name}"
        report = gc(fs)  # finishes what the crashes cut short
        assert report["pending_blobs"] == 0, report
        assert status(mountpoint)["gc"]["last"]["pending_blobs"] == 0
        live = blob_ids(fs)
        for blob in live:
            assert len(stored_on(shared_network, blob)) == len(shared_network.node_ids), blob
        fs.umount(mountpoint)
    finally:
        fs.cleanup()
    code, fsck = fsck_json(fs)
    assert code == 0 and fsck["clean"], fsck
    fs.clear_cache()
    with mounted(fs, tmp_path / "mnt") as mnt:
        assert sorted(p.name for p in mnt.iterdir()) == sorted(kept)
        for name, data in kept.items():
            assert (mnt / name).read_bytes() == data, name
    with fs.db() as db:
        assert db.execute("SELECT COUNT(*) FROM gc_release").fetchone() == (0,)
