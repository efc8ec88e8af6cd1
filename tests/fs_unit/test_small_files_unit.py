"""What keeps small fsyncs fast, through WalrusOperations without FUSE (unit_fs.py): fsync's lease
round overlaps the certification (failures reported as when they ran in turn), an fsync returns
before the read-cache copy (which a read then waits for rather than refetching), and Database.sync
is one fsync of the WAL, no checkpoint."""

from __future__ import annotations

import errno
import os
import threading

import pytest
import trio
import trio.testing
from pyfuse3 import FUSEError
from unit_fs import BLOCK, UnitFs

from walrusfs.fs.db import Database


async def _fsync_in_background(fs: UnitFs, nursery: trio.Nursery, inode: int) -> dict[str, object]:
    outcome: dict[str, object] = {}

    async def run() -> None:
        try:
            await fs.ops.fsync(inode, False)
            outcome["returned"] = True
        except FUSEError as error:
            outcome["errno"] = error.errno

    nursery.start_soon(run)
    await trio.testing.wait_all_tasks_blocked()
    return outcome


def test_fsync_asks_for_the_lease_round_while_its_blocks_are_being_certified(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        asked = trio.Event()

        async def lease_round() -> None:
            asked.set()

        fs.ops.durability_guard = lease_round
        f = await fs.create(b"f")
        await fs.write(f, 0, b"x" * 100)
        fs.store.close()  # the store does not answer yet
        try:
            async with trio.open_nursery() as nursery:
                outcome = await _fsync_in_background(fs, nursery, f)
                assert asked.is_set(), "the lease round waited for the certification"
                assert not outcome, "fsync returned before its blocks were certified"
                fs.store.open()
        finally:
            fs.store.open()
        assert outcome == {"returned": True}
        assert fs.ops.writeback.map.uncertified(f) == []

    fs_run(body)


def test_when_both_fail_fsync_reports_the_upload_failure_as_before(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        async def lease_lost() -> None:
            raise OSError(errno.EIO, "another writer took over")

        fs.ops.durability_guard = lease_lost
        fs.store.fail = True
        f = await fs.create(b"f")
        await fs.write(f, 0, b"y" * 100)
        with pytest.raises(FUSEError) as caught:
            await fs.ops.fsync(f, False)
        assert caught.value.errno == errno.EIO
        assert fs.uploader.stats.failures == 1  # the upload was tried and its failure awaited
        assert fs.blocks.staged_bytes  # nothing lost: still staged

    fs_run(body)


def test_fsync_returns_before_the_cache_copy_and_a_read_meanwhile_waits_for_it(fs_run, monkeypatch) -> None:
    copying = threading.Event()
    copied = threading.Event()
    real_put = None

    async def body(fs: UnitFs) -> None:
        nonlocal real_put
        real_put = fs.cache.put_file

        def slow_put(blob_id, data) -> None:
            copying.set()
            copied.wait(10)  # the test lets the copy finish once fsync has returned
            real_put(blob_id, data)

        monkeypatch.setattr(fs.cache, "put_file", slow_put)
        f = await fs.create(b"f")
        data = b"z" * (BLOCK // 2)
        await fs.write(f, 0, data)
        try:
            with trio.fail_after(10):
                await fs.ops.fsync(f, False)
            assert not copied.is_set()  # fsync did not wait for the copy
            assert await trio.to_thread.run_sync(copying.wait, 10)  # which goes on in the background
            fs.blocks._memory.clear()  # the read goes to the blob cache, not the verified LRU
            reads = fs.store.reads
            async with trio.open_nursery() as nursery:
                got: list[bytes] = []

                async def read() -> None:
                    got.append(await fs.read(f))

                nursery.start_soon(read)
                await trio.testing.wait_all_tasks_blocked()
                copied.set()
            assert got == [data]
            assert fs.store.reads == reads  # waited for the copy: nothing fetched from the network
        finally:
            copied.set()

    fs_run(body)


def test_database_sync_fsyncs_the_wal_and_leaves_checkpoints_to_sqlite(tmp_path, monkeypatch) -> None:
    db = Database(tmp_path / "meta.db")
    try:
        db.execute("CREATE TABLE t (x BLOB)")
        db.sync()
        before = (tmp_path / "meta.db").stat().st_size
        with db.transaction():
            db.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,))
        synced = []
        real_fsync = os.fsync

        def recording(fd: int) -> None:
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", recording)
        db.sync()
        assert synced == [f"{tmp_path / 'meta.db'}-wal"]
        # No checkpoint: the commit is still in the WAL only (a checkpoint would have copied its
        # pages into the database file, and synced both).
        assert (tmp_path / "meta.db").stat().st_size == before
    finally:
        db.close()
