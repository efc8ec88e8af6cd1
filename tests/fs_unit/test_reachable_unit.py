"""Reachability and the to-release list (reachable.py, gc.py) on the unit tier: a real database, block
store and uploader over the in-process blob store; no FUSE, no nodes. What a filesystem can reach
is never listed for release; what it cannot is listed, and leaves the list only when every node
released it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
from unit_fs import UnitFs

from walrusfs.fs import gc as gc_module
from walrusfs.fs.config import FsState
from walrusfs.fs.gc import GarbageCollector, find_garbage, list_for_release
from walrusfs.fs.namespace import ROOT
from walrusfs.fs.reachable import (
    PIN_FILE,
    blobs_of_database_file,
    compute,
    pin_snapshot,
    record_snapshot,
    retire_snapshots,
)
from walrusfs.fs.snapshot import copy_database


async def write_file(fs: UnitFs, name: bytes, data: bytes) -> int:
    fh = await fs.create(name)
    await fs.write(fh, 0, data)
    await fs.ops.release(fh)
    await fs.ops.flush_all()  # certified: its blocks lie in a blob
    return fh


async def delete_file(fs: UnitFs, name: bytes, inode: int) -> None:
    await fs.ops.unlink(ROOT, name, fs.ctx)
    await fs.ops.forget([(inode, 1)])


def blob_of(fs: UnitFs, inode: int) -> str:
    return fs.db.get_val("SELECT DISTINCT o.blob_id FROM inode_blocks i JOIN blocks b ON b.id = i.block "
                         "JOIN blobs o ON o.id = b.blob WHERE i.inode=?", (inode,))


def take_snapshot(fs: UnitFs, seq: int, extra_blobs: dict[str, int] | None = None) -> Path:
    """What the publisher records: the data blobs of a copy of the database, and (standing in for its
    segments and manifest) ``extra_blobs``."""
    copy = fs.root / f"snapshot-{seq}.db"
    copy_database(fs.db.path, copy)
    needed = {**blobs_of_database_file(copy), **(extra_blobs or {})}
    record_snapshot(fs.db, seq, seq, f"manifest-{seq}", needed)
    return copy


def test_a_blob_the_live_tree_uses_is_reachable_and_one_it_no_longer_uses_is_garbage(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        kept = await write_file(fs, b"kept", b"k" * 10000)
        gone = await write_file(fs, b"gone", b"g" * 10000)
        kept_blob, gone_blob = blob_of(fs, kept), blob_of(fs, gone)
        assert {kept_blob, gone_blob} <= compute(fs.db).live
        await delete_file(fs, b"gone", gone)
        reach = compute(fs.db)
        if kept_blob != gone_blob:  # one pack each here (written and flushed one after the other)
            assert gone_blob not in reach
            assert [c.blob_id for c in find_garbage(fs.db, reach)] == [gone_blob]
        assert kept_blob in reach

    fs_run(body)


def test_a_file_deleted_but_in_a_retained_snapshot_stays_reachable_until_the_snapshot_ages_out(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        inode = await write_file(fs, b"f", b"x" * 20000)
        data_blob = blob_of(fs, inode)
        take_snapshot(fs, 1, {"segments-1": 500})
        await delete_file(fs, b"f", inode)
        reach = compute(fs.db)
        assert data_blob not in reach.live and data_blob in reach.snapshots and "segments-1" in reach
        assert find_garbage(fs.db, reach) == []
        take_snapshot(fs, 2, {"segments-2": 400})
        assert retire_snapshots(fs.db, 2, {2}) == 1  # the policy keeps only the newest
        garbage = {c.blob_id: c.length for c in find_garbage(fs.db, compute(fs.db))}
        assert garbage == {data_blob: fs.db.get_val("SELECT length FROM blobs WHERE blob_id=?", (data_blob,)),
                           "segments-1": 500}
        list_for_release(fs.db, list(find_garbage(fs.db, compute(fs.db))))
        # The aged-out record is gone with its blobs listed, in one step: nothing is forgotten.
        assert fs.db.get_val("SELECT COUNT(*) FROM snapshots WHERE seq = 1") == 0
        listed = {b for (b,) in fs.db.execute("SELECT blob_id FROM gc_release")}
        assert listed == {data_blob, "segments-1"}

    fs_run(body)


def test_a_snapshot_mounted_read_only_keeps_its_blobs_while_the_mount_holds_its_pin(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        inode = await write_file(fs, b"f", b"p" * 20000)
        data_blob = blob_of(fs, inode)
        state = FsState(fs.root / "state")
        snapshot_dir = state.snapshots / "7"
        snapshot_dir.mkdir(parents=True)
        copy_database(fs.db.path, snapshot_dir / "metadata.db")  # what a read-only mount of snapshot 7 shows
        await delete_file(fs, b"f", inode)
        assert data_blob not in compute(fs.db, state)  # no pin: the snapshot is not in use
        pin = pin_snapshot(snapshot_dir / "metadata.db")
        try:
            reach = compute(fs.db, state)
            assert reach.mounted_seqs == [7] and data_blob in reach
            second = pin_snapshot(snapshot_dir / "metadata.db")  # a second mount of the same snapshot
            os.close(second)
            assert data_blob in compute(fs.db, state)
        finally:
            os.close(pin)
        assert data_blob not in compute(fs.db, state)
        assert (snapshot_dir / PIN_FILE).exists()
        fd = os.open(snapshot_dir / PIN_FILE, os.O_RDONLY)  # nobody holds it: an exclusive lock is free
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)

    fs_run(body)


def test_a_pinned_blob_is_reachable(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        inode = await write_file(fs, b"f", b"q" * 5000)
        blob = blob_of(fs, inode)
        fs.db.execute("INSERT INTO pins (blob_id, reason) VALUES (?, 'published dataset')", (blob,))
        await delete_file(fs, b"f", inode)
        assert blob in compute(fs.db).pinned and find_garbage(fs.db, compute(fs.db)) == []

    fs_run(body)


def test_retained_snapshots_published_before_gc_kept_records_are_reported_unrecorded(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        state = FsState(fs.root / "state")
        state.root.mkdir()
        from walrusfs.fs.snapshot import Manifest, SnapshotRef

        manifest = Manifest("f" * 32, 5, 5, {}, 0, "", [], [SnapshotRef(3, 3, "m3"), SnapshotRef(4, 4, "m4")])
        state.snapshot_manifest.write_bytes(manifest.to_bytes())
        take_snapshot(fs, 5)
        assert compute(fs.db, state).unrecorded == [3, 4]

    fs_run(body)


class FakeReleases:
    """release_blob over an imaginary committee of three nodes; ``down`` nodes do not answer."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.calls: list[str] = []
        self.gate: trio.Event | None = None

    async def __call__(self, client: object, blob_id: object, owner: str) -> SimpleNamespace:
        self.calls.append(str(blob_id))
        if self.gate is not None:
            await self.gate.wait()
        complete = not self.down
        return SimpleNamespace(complete=complete, describe=lambda: f"{sorted(self.down)} did not answer")


@pytest.fixture
def releases(monkeypatch: pytest.MonkeyPatch) -> FakeReleases:
    """gc's releases of blobs on the nodes, answered in-process (blob IDs stay plain text)."""
    fake = FakeReleases()
    monkeypatch.setattr(gc_module, "release_blob", fake)
    monkeypatch.setattr(gc_module.BlobId, "parse", staticmethod(lambda text: text))
    return fake


def collector(fs: UnitFs) -> GarbageCollector:
    return GarbageCollector(fs.db, FsState(fs.root / "state"), fs.store, "a" * 32,  # type: ignore[arg-type]
                            catalog=fs.blocks.catalog, cache=fs.cache)


def test_an_incomplete_release_keeps_the_blob_listed_and_its_row_until_every_node_released_it(
        fs_run, releases) -> None:

    async def body(fs: UnitFs) -> None:
        inode = await write_file(fs, b"f", b"r" * 8000)
        blob = blob_of(fs, inode)
        await delete_file(fs, b"f", inode)
        releases.down = {"node-2"}
        report = await collector(fs).run()
        assert (report.garbage_blobs, report.released_blobs, report.pending_blobs) == (1, 0, 1)
        assert fs.db.get_val("SELECT attempts FROM gc_release WHERE blob_id=?", (blob,)) == 1
        assert fs.db.get_val("SELECT COUNT(*) FROM blobs WHERE blob_id=?", (blob,)) == 1
        releases.down = set()
        report = await collector(fs).run()  # the next pass retries what is listed
        assert (report.garbage_blobs, report.released_blobs, report.pending_blobs) == (0, 1, 0)
        assert fs.db.get_val("SELECT COUNT(*) FROM gc_release") == 0
        assert fs.db.get_val("SELECT COUNT(*) FROM blobs WHERE blob_id=?", (blob,)) == 0
        assert releases.calls == [blob, blob]

    fs_run(body)


def test_a_dry_run_lists_and_releases_nothing(fs_run, releases) -> None:

    async def body(fs: UnitFs) -> None:
        inode = await write_file(fs, b"f", b"d" * 8000)
        await delete_file(fs, b"f", inode)
        report = await collector(fs).run(dry_run=True)
        assert report.garbage_blobs == 1 and report.garbage_bytes > 0
        assert fs.db.get_val("SELECT COUNT(*) FROM gc_release") == 0 and releases.calls == []

    fs_run(body)


def test_the_same_blob_stored_again_while_gc_releases_it_is_stored_once_more_after_the_release(
        fs_run, releases) -> None:
    """Identical data packed identically makes the identical blob: rewriting a deleted file while gc
    deletes its old blob must not leave the new file in a blob the nodes just deleted."""

    async def body(fs: UnitFs) -> None:
        data = b"s" * 8000
        inode = await write_file(fs, b"f", data)
        blob = blob_of(fs, inode)
        await delete_file(fs, b"f", inode)
        releases.gate = trio.Event()  # the release hangs on the network
        stores_before = len(fs.store.blobs)
        gc = collector(fs)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gc.run)
            while not releases.calls:
                await trio.sleep(0.01)
            stored: list[str] = []
            real_store = fs.store.store

            async def counting_store(payload: bytes) -> SimpleNamespace:
                result = await real_store(payload)
                stored.append(result.blob_id)
                if len(stored) == 1:
                    fs.store.blobs.pop(result.blob_id)  # the nodes delete it: the release arrives after
                    releases.gate.set()
                return result

            fs.store.store = counting_store  # type: ignore[method-assign]
            again = await fs.create(b"again")
            await fs.write(again, 0, data)
            await fs.ops.release(again)
            await fs.ops.flush_all()
        assert stored == [blob, blob]  # stored, released meanwhile, stored once more
        assert blob in fs.store.blobs and len(fs.store.blobs) >= stores_before
        assert blob_of(fs, again) == blob
        assert fs.db.get_val("SELECT COUNT(*) FROM gc_release") == 0  # made again: not garbage
        fs.blocks._memory.clear()  # read back from the store, not from memory
        fs.cache.drop(blob)
        assert await fs.read(again) == data

    fs_run(body)


def test_a_schema_2_database_is_migrated_and_its_garbage_found(tmp_path: Path) -> None:
    """Data written before gc existed stays readable: schema 2 gains the gc tables, empty."""
    import sqlite3

    from walrusfs.fs.db import Database
    from walrusfs.fs.schema import DDL, GC_DDL

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(DDL.replace(GC_DDL, ""))
    conn.execute("INSERT INTO settings (key, value) VALUES ('schema_version', '2')")
    conn.execute("INSERT INTO blobs (blob_id, length, certificate, refcount, created_ns) VALUES ('live', 10, '', 1, 0)")
    conn.execute("INSERT INTO blobs (blob_id, length, certificate, refcount, created_ns) VALUES ('dead', 20, '', 0, 0)")
    conn.execute("INSERT INTO blocks (hash, size, refcount, blob, offset) VALUES (x'01', 10, 1, 1, 0)")
    conn.commit()
    conn.close()
    db = Database(path)
    try:
        assert db.get_val("SELECT value FROM settings WHERE key='schema_version'") == "3"
        reach = compute(db)
        assert reach.live == {"live"}
        assert [(c.blob_id, c.length) for c in find_garbage(db, reach)] == [("dead", 20)]
    finally:
        db.close()


def test_the_mount_s_background_pass_releases_garbage_every_interval(tmp_path: Path, releases) -> None:
    from trio.testing import MockClock
    from unit_fs import FakeBlobStore


    async def main() -> None:
        fs = UnitFs(tmp_path, FakeBlobStore(), 64 << 20, 32 << 20)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fs.uploader.run)
                fs.ops.nursery = nursery
                inode = await write_file(fs, b"f", b"b" * 8000)
                blob = blob_of(fs, inode)
                await delete_file(fs, b"f", inode)
                gc = collector(fs)
                nursery.start_soon(gc.run_periodically, 600.0)
                await trio.sleep(599)
                assert releases.calls == []  # not before the interval
                await trio.sleep(2)
                assert releases.calls == [blob] and gc.last is not None and gc.last.released_blobs == 1
                nursery.cancel_scope.cancel()
        finally:
            fs.close()

    trio.run(main, clock=MockClock(autojump_threshold=0.01))


def test_a_read_that_looked_its_block_up_before_compaction_moved_it_reads_it_where_it_lies_now(
        fs_run, monkeypatch, releases) -> None:

    async def body(fs: UnitFs) -> None:
        data = os.urandom(4 * 4096)
        inode, other = await fs.create(b"f"), await fs.create(b"g")
        await fs.write(inode, 0, data)
        await fs.write(other, 0, os.urandom(12 * 4096))
        for fh in (inode, other):
            await fs.ops.release(fh)
        await fs.ops.flush_all()  # both in one blob
        await delete_file(fs, b"g", other)  # the blob is mostly dead now
        block = fs.db.get_val("SELECT block FROM inode_blocks WHERE inode=? AND blockno=1", (inode,))
        stale = fs.blocks.catalog.location(block)
        gc = collector(fs)
        gc.compact_below = 0.9
        report = await gc.run()
        assert report.compacted_blobs >= 1 and stale.blob_id in releases.calls
        fs.store.blobs.pop(stale.blob_id)  # released: gone from the nodes
        fs.cache.drop(stale.blob_id)
        fs.blocks._memory.clear()
        assert fs.blocks.catalog.location(block).blob_id != stale.blob_id
        looked_up = iter([stale])  # what a read in flight during the move had looked up
        real = fs.blocks.catalog.location
        monkeypatch.setattr(fs.blocks.catalog, "location", lambda block_id: next(looked_up, None) or real(block_id))
        assert await fs.blocks.content(block) == data[4096:8192]

    fs_run(body)
