"""The durability contract: fsync returns only for certified data, fails loudly (EIO, in bounded
time) without a quorum, keeps the data staged and uploads it once the nodes are back; losing f nodes
changes nothing for the user."""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from pathlib import Path

import pytest
from fs_harness import Filesystem, mounted, status, tree_snapshot

from walrusfs.client.certificate import Certificate
from walrusfs.committee import Committee
from walrusfs.errors import UserError
from walrusfs.fs.mount_options import DEFAULT_STORE_DEADLINE, MountOptions

MiB = 1 << 20
# The mount's store deadline where a test waits for it to pass: the bound is what is tested, not its
# production length (30 s).
STORE_DEADLINE = 5


def distinct(size: int, seed: int) -> bytes:
    """Incompressible bytes, different for every seed (no block deduplicates with another)."""
    return random.Random(seed).randbytes(size)


def blocks_of(fs: Filesystem, inode: int) -> list[tuple[int, int | None, str | None]]:
    with fs.db() as db:
        return db.execute(
            "SELECT blocks.id, blocks.blob, blobs.certificate FROM inode_blocks "
            "JOIN blocks ON blocks.id = inode_blocks.block LEFT JOIN blobs ON blobs.id = blocks.blob "
            "WHERE inode_blocks.inode=? ORDER BY inode_blocks.blockno", (inode,)).fetchall()


def assert_certified(fs: Filesystem, inode: int, expected_blocks: int) -> None:
    committee = Committee.load(fs.network.committee_path)
    rows = blocks_of(fs, inode)
    assert len(rows) == expected_blocks
    for block, blob, certificate in rows:
        assert blob is not None, f"block {block} is still staged"
        Certificate.from_json(certificate).verify(committee)


def test_fsync_returns_only_when_the_file_is_certified(shared_network, make_fs, tmp_path: Path) -> None:
    fs = make_fs(shared_network)
    with mounted(fs, tmp_path / "mnt") as mp:
        data = distinct(6 * MiB + 5, 1)
        fd = os.open(mp / "f", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            assert status(mp)["uploaded_blobs"] == 0
            os.fsync(fd)
            inode = os.fstat(fd).st_ino
            assert_certified(fs, inode, 7)
            assert status(mp)["staged_bytes"] == 0
        finally:
            os.close(fd)


def test_the_store_deadline_is_a_mount_option_of_sane_seconds() -> None:
    assert MountOptions.parse(None).store_deadline == DEFAULT_STORE_DEADLINE == 30
    assert MountOptions.parse("ro,store_deadline=4.5").store_deadline == 4.5
    for bad in ("store_deadline=", "store_deadline=soon", "store_deadline=0.5", "store_deadline=nan",
                "store_deadline=inf", "store_deadline=7200"):
        with pytest.raises(UserError, match=r"store_deadline=.*(give seconds|between 1 and 3600)"):
            MountOptions.parse(bad)


def test_fsync_without_quorum_is_eio_then_succeeds_when_nodes_return(shared_network, make_fs,
                                                                       tmp_path: Path) -> None:
    """3 of 7 nodes down: no certificate is possible. fsync says EIO within the store deadline
    (configured to STORE_DEADLINE here; 30 s by default), the data stays staged (and readable); once
    the nodes are back it is uploaded in the background and fsync succeeds."""
    fs = make_fs(shared_network)
    down = [1, 3, 5]
    with mounted(fs, tmp_path / "mnt", "-o", f"store_deadline={STORE_DEADLINE}") as mp:
        data = distinct(4 * MiB + 77, 2)
        fd = os.open(mp / "f", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            shared_network.stop(*down)
            try:
                os.write(fd, data)
                inode = os.fstat(fd).st_ino
                started = time.monotonic()
                with pytest.raises(OSError) as error:
                    os.fsync(fd)
                elapsed = time.monotonic() - started
                assert error.value.errno == errno.EIO
                assert elapsed < STORE_DEADLINE + 15, f"fsync took {elapsed:.0f} s to fail"
                current = status(mp)
                assert current["staged_bytes"] >= len(data)
                assert current["upload_failures"] >= 1
                assert "NOT stored" in (current["last_error"] or "")
                rows = blocks_of(fs, inode)
                assert len(rows) == 5 and all(blob is None for _, blob, _ in rows)
                assert all((fs.staging_dir / str(block)).exists() for block, _, _ in rows)
                assert os.pread(fd, len(data) + 1, 0) == data  # still readable, from staging
                # a second attempt is just as bounded
                started = time.monotonic()
                with pytest.raises(OSError) as error:
                    os.fdatasync(fd)
                assert error.value.errno == errno.EIO
                assert time.monotonic() - started < STORE_DEADLINE + 15
            finally:
                shared_network.start(*down)
            deadline = time.monotonic() + 90
            while status(mp)["staged_bytes"] and time.monotonic() < deadline:
                time.sleep(0.5)
            assert status(mp)["staged_bytes"] == 0, "staged data not uploaded after the nodes came back"
            started = time.monotonic()
            os.fsync(fd)
            assert time.monotonic() - started < 5
            assert_certified(fs, inode, 5)
        finally:
            os.close(fd)
        fs.umount(mp)
        fs.clear_cache()
        fs.mount(mp)
        assert (mp / "f").read_bytes() == data


def test_two_nodes_down_during_a_copy_changes_nothing(local_network, make_fs, tmp_path: Path) -> None:
    """f = 2 nodes die in the middle of a copy: every write, close, fsync and unmount succeeds as
    before, and every byte reads back from the network with those nodes still down."""
    fs = make_fs(local_network, blob_size_mib=4)
    # A snapshot offers its root record to the dead nodes until the store deadline (30 s by default):
    # the bound is not what this test is about. 10 s still leaves each blob's store ample time.
    deadline = "store_deadline=10"
    source = tmp_path / "source"
    (source / "d").mkdir(parents=True)
    for i in range(24):
        (source / "d" / f"f{i}").write_bytes(distinct(i * 190_000 + 1, 100 + i))
    with mounted(fs, tmp_path / "mnt", "-o", deadline) as mp:
        failures: list[BaseException] = []
        copied = threading.Event()

        def copy() -> None:
            try:
                for path in sorted((source / "d").iterdir(), key=lambda p: int(p.name[1:])):
                    target = mp / "d" / path.name
                    target.parent.mkdir(exist_ok=True)
                    target.write_bytes(path.read_bytes())
                    if path.name == "f8":
                        copied.set()
                    time.sleep(0.1)
                with open(mp / "d" / "f23", "rb") as handle:
                    os.fsync(handle.fileno())
            except BaseException as error:
                failures.append(error)
            finally:
                copied.set()

        worker = threading.Thread(target=copy)
        worker.start()
        copied.wait(60)
        local_network.kill9(2, 6)
        worker.join(60)
        assert not worker.is_alive(), "the copy (and its final fsync) did not finish within 60 s"

        assert not failures, failures
        assert status(mp)["uploaded_blobs"] > 0
        fs.umount(mp)
        fs.clear_cache()
        fs.mount(mp, "-o", deadline)
        assert tree_snapshot(mp) == tree_snapshot(source)
        local_network.start(2, 6)
