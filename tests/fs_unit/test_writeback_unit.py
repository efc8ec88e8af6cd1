"""The write-back rules, through WalrusOperations without FUSE: buffered sizes, truncate and
extend, sparse holes, hole punching, the dirty-bytes bound, staging backpressure, fsync and a cold
read back from the (fake) blob store (conftest.py builds the filesystem)."""

from __future__ import annotations

import errno
import os
import random

import pytest
import trio
import trio.testing
from conftest import BLOCK, FakeBlobStore, UnitFs
from pyfuse3 import FUSEError

from walrusfs.fs.blocks import BlockStore
from walrusfs.fs.cache import BlobCache
from walrusfs.fs.namespace import ROOT
from walrusfs.fs.operations import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE
from walrusfs.fs.writeback import InodeLocks


def _counted(fs: UnitFs) -> int:
    return sum(len(b) for buffers in fs.ops.writeback.dirty.values() for b in buffers.values())


def test_buffered_bytes_count_in_the_size_but_are_recorded_only_when_staged(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        f = await fs.create(b"f")
        await fs.write(f, 0, b"x" * 100)  # less than a block: buffered
        assert (await fs.attr(f)).st_size == 100
        assert fs.ops.namespace.recorded_size(f) == 0  # a crash now loses the bytes and the size
        assert fs.ops.dirty_bytes == 100
        await fs.ops.flush(f)
        assert fs.ops.namespace.recorded_size(f) == 100
        assert fs.ops.dirty_bytes == 0
        assert await fs.read(f) == b"x" * 100

    fs_run(body)


def test_dirty_bytes_follows_every_buffer_change(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        rng = random.Random(7)
        files = [await fs.create(b"f%d" % i) for i in range(3)]
        model = {f: bytearray() for f in files}
        for step in range(300):
            f = rng.choice(files)
            action = rng.random()
            if action < 0.7:
                offset = rng.randrange(0, 6 * BLOCK)
                data = os.urandom(rng.randrange(1, 2 * BLOCK))
                await fs.write(f, offset, data)
                target = model[f]
                if len(target) < offset:
                    target.extend(bytes(offset - len(target)))
                target[offset : offset + len(data)] = data
            elif action < 0.85:
                size = rng.randrange(0, 7 * BLOCK)
                await fs.truncate(f, size)
                del model[f][size:]
                model[f].extend(bytes(size - len(model[f])))
            else:
                await fs.ops.flush(f)
            assert fs.ops.dirty_bytes == _counted(fs), f"step {step}"
        for f in files:
            assert await fs.read(f) == bytes(model[f])

    fs_run(body)


def test_truncate_then_extend_reads_zeros_where_data_was(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        f = await fs.create(b"f")
        data = os.urandom(3 * BLOCK + 100)
        await fs.write(f, 0, data)
        await fs.ops.flush(f)
        await fs.truncate(f, BLOCK + 10)  # cuts block 1, drops 2 and 3
        assert (await fs.attr(f)).st_size == BLOCK + 10
        assert fs.db.get_val("SELECT MAX(blockno) FROM inode_blocks WHERE inode=?", (f,)) == 1
        await fs.truncate(f, 4 * BLOCK)
        assert await fs.read(f) == data[: BLOCK + 10] + bytes(3 * BLOCK - 10)
        await fs.truncate(f, 0)
        assert await fs.read(f) == b""
        assert fs.db.get_val("SELECT COUNT(*) FROM inode_blocks WHERE inode=?", (f,)) == 0

    fs_run(body)


def test_truncate_discards_buffered_bytes_beyond_the_end(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        f = await fs.create(b"f")
        await fs.write(f, 0, b"a" * 100)
        await fs.write(f, 2 * BLOCK, b"b" * 100)  # two buffers, nothing staged
        await fs.truncate(f, 50)
        assert fs.ops.dirty_bytes == 0 and fs.ops.namespace.recorded_size(f) == 50
        await fs.write(f, 3 * BLOCK, b"c")
        assert await fs.read(f) == b"a" * 50 + bytes(3 * BLOCK - 50) + b"c"

    fs_run(body)


def test_a_sparse_file_stores_only_its_data_and_reads_zeros_in_its_holes(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        f = await fs.create(b"sparse")
        await fs.write(f, 100 * BLOCK + 7, b"end")
        await fs.ops.release(f)
        assert (await fs.attr(f)).st_size == 100 * BLOCK + 10
        assert fs.db.get_val("SELECT COUNT(*) FROM inode_blocks WHERE inode=?", (f,)) == 1
        assert await fs.read(f, 0, 2 * BLOCK) == bytes(2 * BLOCK)
        assert await fs.read(f, 100 * BLOCK, BLOCK) == bytes(7) + b"end"
        assert await fs.read(f, 100 * BLOCK + 10, 10) == b""  # at EOF

    fs_run(body)


def test_punching_a_hole_releases_whole_blocks_and_zeros_partial_ones(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        f = await fs.create(b"f")
        data = os.urandom(4 * BLOCK)
        await fs.write(f, 0, data)
        await fs.ops.fallocate(f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, BLOCK - 10, 2 * BLOCK + 20)
        assert (await fs.attr(f)).st_size == 4 * BLOCK
        assert await fs.read(f) == data[: BLOCK - 10] + bytes(2 * BLOCK + 20) + data[3 * BLOCK + 10 :]
        assert fs.db.get_val("SELECT COUNT(*) FROM inode_blocks WHERE inode=? AND blockno=2", (f,)) == 0
        await fs.ops.fallocate(f, 0, 0, 8 * BLOCK)  # plain mode grows the file: a hole up to the end
        assert (await fs.attr(f)).st_size == 8 * BLOCK
        with pytest.raises(FUSEError) as caught:
            await fs.ops.fallocate(f, 0x08, 0, BLOCK)  # FALLOC_FL_COLLAPSE_RANGE
        assert caught.value.errno == errno.EOPNOTSUPP

    fs_run(body)


def test_buffers_beyond_the_dirty_limit_are_staged_at_once(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        f = await fs.create(b"f")
        for i in range(3):  # partial blocks stay buffered while under the limit
            await fs.write(f, i * BLOCK, b"p" * 1000)
        assert fs.ops.dirty_bytes == 3000 and fs.blocks.staged_bytes == 0
        await fs.write(f, 3 * BLOCK, b"q" * 1000)  # 4000 > 3500: the file's buffers are staged
        assert fs.ops.dirty_bytes == 0 and fs.blocks.staged_bytes > 0
        assert fs.ops.namespace.recorded_size(f) == 3 * BLOCK + 1000

    fs_run(body, dirty_limit=3500)


def test_a_writer_waits_while_staging_is_full_and_resumes_as_uploads_finish(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        fs.store.close()  # uploads hang until opened
        f = await fs.create(b"f")
        data = os.urandom(8 * BLOCK)
        done = trio.Event()

        async def writer() -> None:
            await fs.write(f, 0, data)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert not done.is_set()
            staged = fs.blocks.staged_bytes
            assert 2 * BLOCK <= staged <= 3 * BLOCK  # staged until over the limit, then held back
            await trio.sleep(0.2)
            assert not done.is_set() and fs.blocks.staged_bytes == staged
            fs.store.open()
            with trio.fail_after(10):
                await done.wait()
        await fs.ops.fsync(f, False)
        assert fs.blocks.staged_bytes == 0
        assert await fs.read(f) == data

    fs_run(body, staging_limit=2 * BLOCK)


def test_fsync_returns_once_certified_and_the_data_reads_back_cold(fs_run, tmp_path) -> None:
    async def body(fs: UnitFs) -> None:
        f = await fs.create(b"f")
        data = os.urandom(5 * BLOCK + 123)
        await fs.write(f, 0, data)
        await fs.ops.fsync(f, False)
        assert fs.ops.writeback.map.uncertified(f) == []
        assert fs.ops.namespace.recorded_size(f) == len(data)
        # Another cache and block store on the same database: every block comes from the store.
        cold = BlockStore(fs.db, tmp_path / "staging", BlobCache(tmp_path / "cold-cache", 1 << 20, fs.store.read))
        reads = fs.store.reads
        for blockno in range(6):
            block = fs.ops.writeback.map.block_at(f, blockno)
            assert await cold.content(block) == data[blockno * BLOCK : (blockno + 1) * BLOCK]
        assert fs.store.reads > reads

    fs_run(body)


def test_fsync_fails_with_eio_when_uploads_fail(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        fs.store.fail = True
        f = await fs.create(b"f")
        await fs.write(f, 0, b"z" * BLOCK)
        with pytest.raises(FUSEError) as caught:
            await fs.ops.fsync(f, False)
        assert caught.value.errno == errno.EIO
        assert fs.blocks.staged_bytes == BLOCK  # kept staged, to retry

    fs_run(body)


def test_fsync_fails_with_eio_when_the_durability_guard_refuses(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        async def lease_lost() -> None:
            raise OSError("the writer lease is held by another machine")

        f = await fs.create(b"f")
        await fs.write(f, 0, b"g" * 10)
        fs.ops.durability_guard = lease_lost
        with pytest.raises(FUSEError) as caught:
            await fs.ops.fsync(f, False)
        assert caught.value.errno == errno.EIO
        fs.ops.durability_guard = None
        await fs.ops.fsync(f, False)

    fs_run(body)


def test_an_unlinked_open_file_lives_until_released(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        f = await fs.create(b"f")
        await fs.write(f, 0, b"k" * (2 * BLOCK))
        await fs.ops.unlink(ROOT, b"f", fs.ctx)
        await fs.ops.forget([(f, 1)])
        assert await fs.read(f) == b"k" * (2 * BLOCK)  # still open
        await fs.ops.release(f)
        with pytest.raises(FUSEError):
            await fs.ops.getattr(f)
        assert fs.block_rows() == 0 and fs.ops.dirty_bytes == 0

    fs_run(body)


def test_the_lock_table_keeps_no_entry_for_idle_inodes(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        files = [await fs.create(b"f%d" % i) for i in range(20)]
        for f in files:
            await fs.write(f, 0, b"w")
            await fs.ops.flush(f)
        assert len(fs.ops.locks) == 0

    fs_run(body)


def test_a_new_store_serves_what_a_closed_one_wrote(tmp_path) -> None:
    """A second filesystem object on the same database and staging reads staged data back: nothing
    lives only in the first one's memory once flushed."""

    async def main() -> None:
        store = FakeBlobStore()
        first = UnitFs(tmp_path, store, 64 << 20, 32 << 20)
        f = await first.create(b"f")
        await first.write(f, 0, b"s" * (BLOCK + 5))
        await first.ops.release(f)
        first.close()
        second = UnitFs(tmp_path, store, 64 << 20, 32 << 20, create=False)
        try:
            assert await second.read(f) == b"s" * (BLOCK + 5)
        finally:
            second.close()

    trio.run(main)


def test_inode_locks_serialize_holders_and_forget_an_inode_nobody_holds() -> None:
    async def main() -> None:
        locks = InodeLocks()
        order: list[str] = []

        async def holder(name: str) -> None:
            async with locks(7):
                order.append(f"{name} in")
                await trio.sleep(0.01)
                order.append(f"{name} out")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder, "a")
            nursery.start_soon(holder, "b")
            await trio.testing.wait_all_tasks_blocked()
            assert len(locks) == 1  # one entry, held by one and waited for by the other
        assert order in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])
        assert len(locks) == 0
        async with locks(7), trio.open_nursery() as nursery:  # a waiter cancelled while waiting
            waiter = trio.CancelScope()

            async def wait() -> None:
                with waiter:
                    async with locks(7):
                        raise AssertionError("the lock is held")

            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            waiter.cancel()
        assert len(locks) == 0

    trio.run(main)
