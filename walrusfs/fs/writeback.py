"""Write-back: file data between a write() and a staged block.

File data lives in blocks of ``block_size`` bytes (the last one shorter). Writes go into per-inode
dirty buffers; a buffer is staged (hashed, deduplicated, written to the staging directory, mapped
at its place in the file) as soon as it is full, when the file is flushed, and when the buffers
together outgrow ``dirty_limit``. One running counter, ``dirty_bytes``, follows every change of a
buffer's length. Staging waits while the staging directory holds more than ``staging_limit``
bytes not yet uploaded (backpressure: uploads catch up).

A size grown by writes still in buffers is *pending*: recorded only with the staged data, so a
crash never leaves a file claiming bytes it lost (they would read as zeros). ``visible`` gives
the size a reader sees.

Truncation and hole punching discard buffers and unmap blocks; a block they cut is staged in the
same commit as the new size, so its old tail never reappears if the file grows again.

``BlockMap`` at the end is the one place here with SQL on the block catalog (inode_blocks, blocks,
blobs).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import trio

from .blocks import BlockCorruptError, BlockStore, Prepared
from .db import Database
from .namespace import FsError, Inode, Namespace, now_ns
from .uploader import Uploader

log = logging.getLogger(__name__)


class WriteBack:
    def __init__(self, db: Database, namespace: Namespace, blocks: BlockStore, uploader: Uploader,
                 block_size: int, staging_limit: int, dirty_limit: int = 32 << 20) -> None:
        self.db = db
        self.namespace = namespace
        self.blocks = blocks
        self.uploader = uploader
        self.bs = block_size
        self.staging_limit = staging_limit
        self.dirty_limit = dirty_limit
        self.map = BlockMap(db, blocks)
        self.locks = InodeLocks()
        self.dirty: dict[int, dict[int, bytearray]] = {}  # inode -> block number -> buffer
        self.dirty_bytes = 0  # sum of the buffers' lengths, kept as they change
        self.pending_size: dict[int, int] = {}  # inode -> size including buffered writes
        # Told of every mapped block a read or a partial write loads (read-ahead, operations.py).
        self.on_load: Callable[[int, int], None] | None = None

    # --- sizes -------------------------------------------------------------------------------------

    def visible(self, node: Inode) -> Inode:
        """The inode as readers see it: its size includes bytes still buffered."""
        pending = self.pending_size.get(node.id)
        if pending is not None and pending > node.size:
            return replace(node, size=pending)
        return node

    def size(self, inode: int) -> int:
        return self.visible(self.namespace.get(inode)).size

    def _settle_size(self, inode: int) -> None:
        pending = self.pending_size.get(inode)
        if pending is not None and self.namespace.recorded_size(inode) >= pending:
            del self.pending_size[inode]

    # --- buffers -----------------------------------------------------------------------------------

    def _take(self, inode: int, blockno: int) -> bytearray | None:
        """Remove one buffer (counted out of dirty_bytes)."""
        buffers = self.dirty.get(inode)
        buffer = None if buffers is None else buffers.pop(blockno, None)
        if buffer is not None:
            self.dirty_bytes -= len(buffer)
        return buffer

    async def _buffer(self, inode: int, blockno: int) -> bytearray:
        """The block's buffer, made from its current content if it has none."""
        buffers = self.dirty.setdefault(inode, {})
        buffer = buffers.get(blockno)
        if buffer is None:
            buffer = bytearray(await self.read_block(inode, blockno))
            buffers[blockno] = buffer
            self.dirty_bytes += len(buffer)
        return buffer

    def drop(self, inode: int) -> None:
        """Forget the inode's buffers and pending size (it is being deleted)."""
        for buffer in self.dirty.pop(inode, {}).values():
            self.dirty_bytes -= len(buffer)
        self.pending_size.pop(inode, None)

    async def read_block(self, inode: int, blockno: int) -> bytes | bytearray:
        """The block's current content: its buffer, else its staged or stored block, else b"" (a
        hole; shorter than a block means zeros follow). A block that cannot be read is EIO."""
        buffers = self.dirty.get(inode)
        if buffers is not None and blockno in buffers:
            return buffers[blockno]
        block = self.map.block_at(inode, blockno)
        if block is None:
            return b""
        if self.on_load is not None:
            self.on_load(inode, blockno)
        try:
            return await self.blocks.content(block)
        except BlockCorruptError as error:
            log.error("inode %d block %d: %s", inode, blockno, error)
            raise FsError(errno.EIO, str(error)) from error
        except Exception as error:
            log.error("inode %d block %d could not be read: %s", inode, blockno, error)
            raise FsError(errno.EIO, f"inode {inode} block {blockno}: {error}") from error

    # --- writing -----------------------------------------------------------------------------------

    async def write(self, inode: int, offset: int, buf: bytes) -> None:
        """Take ``buf`` at ``offset``. Call holding the inode's lock."""
        view = memoryview(buf)
        end = offset + len(buf)
        # First: staging a full block trims it to the size. A pending size is always above the
        # recorded one, so appends need no database read here.
        pending = self.pending_size.get(inode)
        if end > (pending if pending is not None else self.size(inode)):
            self.pending_size[inode] = end
        position = offset
        while view:
            blockno, in_block = divmod(position, self.bs)
            take = min(self.bs - in_block, len(view))
            if in_block == 0 and take == self.bs:  # a whole block: staged as it came, no buffer
                self._take(inode, blockno)
                await self._stage(inode, blockno, buf if take == len(buf) else bytes(view[:take]))
                view = view[take:]
                position += take
                continue
            block = await self._buffer(inode, blockno)
            before = len(block)
            if before < in_block:
                block.extend(bytes(in_block - before))
            block[in_block : in_block + take] = view[:take]
            self.dirty_bytes += len(block) - before
            view = view[take:]
            position += take
            if in_block + take == self.bs:
                await self._stage(inode, blockno)
        if self.dirty_bytes > self.dirty_limit:
            await self.stage_inode(inode)

    async def wait_for_staging_room(self) -> None:
        """Backpressure: wait while the staging directory holds more than staging_limit bytes."""
        while self.blocks.staged_bytes > self.staging_limit:
            log.debug("staging full (%d bytes); write waits for uploads", self.blocks.staged_bytes)
            await self.uploader.wait_progress()

    async def _stage(self, inode: int, blockno: int, whole: bytes | None = None) -> None:
        """Turn one dirty buffer (or ``whole``, the block's complete new content) into a staged
        block mapped at (inode, blockno). Call holding the inode's lock: nothing else changes the
        buffer or the size meanwhile, and the buffer stays readable until its block is mapped."""
        if whole is None and blockno not in self.dirty.get(inode, {}):
            return
        await self.wait_for_staging_room()
        buffer = self.dirty.get(inode, {}).get(blockno) if whole is None else whole
        if buffer is None:
            return  # the file was deleted meanwhile
        size = self.size(inode)
        length = min(self.bs, size - blockno * self.bs)
        if length <= 0:
            self._take(inode, blockno)
            return  # truncated away meanwhile
        data = buffer if len(buffer) == length and isinstance(buffer, bytes) else bytes(memoryview(buffer)[:length])
        if len(data) < length:
            data += bytes(length - len(data))
        prepared = await self.blocks.prepare_large(data)  # hashed and sealed off the event loop
        if self.size(inode) != size:  # only a deletion can change it under the lock: then this raised
            prepared = None
        if whole is None:
            self._take(inode, blockno)
        with self.db.transaction():
            self.map.map(inode, blockno, data, prepared)
            # The file's recorded size covers this block's bytes from now on, in the same commit.
            self.namespace.record_size_at_least(inode, blockno * self.bs + length)
        self._settle_size(inode)
        self.uploader.notify_staged()

    async def stage_inode(self, inode: int) -> None:
        """Stage every buffer of the file and record its whole size (flush, fsync, memory bound)."""
        for blockno in sorted(self.dirty.get(inode, {})):
            await self._stage(inode, blockno)
        self.drop_buffers(inode)
        pending = self.pending_size.pop(inode, None)
        if pending is not None:  # every written byte is staged: the size may all be recorded
            self.namespace.record_size_at_least(inode, pending)

    def drop_buffers(self, inode: int) -> None:
        for buffer in self.dirty.pop(inode, {}).values():
            self.dirty_bytes -= len(buffer)

    def buffered_inodes(self) -> list[int]:
        return list(self.dirty)

    # --- truncation and holes ----------------------------------------------------------------------

    async def truncate(self, inode: int, size: int, times: bool = True) -> None:
        """Set the file's size: growing leaves a hole, shrinking discards what lies beyond. ``times``:
        set mtime and ctime (False where the kernel keeps them, as for fallocate: see its caller)."""
        old_size = self.size(inode)
        now = now_ns() if times else None
        if size >= old_size:
            self.pending_size.pop(inode, None)
            self.namespace.set_size(inode, size, now)
            return
        last = (size - 1) // self.bs if size else -1  # the last block that keeps any byte
        for blockno in [b for b in self.dirty.get(inode, {}) if b > last]:
            self._take(inode, blockno)
        cut = None
        if size % self.bs:
            # The kept block, cut at the new end, is staged in the same commit as the new size: a
            # crash never leaves its old tail to reappear if the file grows again.
            buffer = await self._buffer(inode, last)
            cut = bytes(buffer[: size % self.bs])
            cut += bytes(size % self.bs - len(cut))
            await self.wait_for_staging_room()
            self._take(inode, last)
        with self.db.transaction():
            if cut is not None:
                self.map.map(inode, last, cut)
            self.map.unmap(inode, last + 1)
            self.namespace.set_size(inode, size, now)
        self.pending_size.pop(inode, None)
        if cut is not None:
            self.uploader.notify_staged()

    async def zero_range(self, inode: int, start: int, end: int, times: bool = True) -> None:
        """Make [start, end) read as zeros (end is within the file): whole blocks become holes,
        the partial blocks at its ends are rewritten. ``times`` as for truncate."""
        if end <= start:
            return
        first_whole = -(-start // self.bs)
        end_whole = end // self.bs  # blocks first_whole .. end_whole-1 lie wholly inside
        for blockno in {start // self.bs, (end - 1) // self.bs}:
            if first_whole <= blockno < end_whole:
                continue
            if self.map.block_at(inode, blockno) is None and blockno not in self.dirty.get(inode, {}):
                continue  # a hole already
            buffer = await self._buffer(inode, blockno)
            lo = max(start - blockno * self.bs, 0)
            hi = min(end - blockno * self.bs, len(buffer))
            if hi > lo:
                buffer[lo:hi] = bytes(hi - lo)
            await self._stage(inode, blockno)
        if end_whole > first_whole:
            for blockno in [b for b in self.dirty.get(inode, {}) if first_whole <= b < end_whole]:
                self._take(inode, blockno)
            with self.db.transaction():
                self.map.unmap(inode, first_whole, end_whole)
        if times:
            self.namespace.touch(inode, now_ns())

    def delete(self, inode: int) -> None:
        """Release all the file's data (it is being deleted). In a transaction."""
        self.map.unmap(inode, 0)


@dataclass(slots=True)
class _LockEntry:
    lock: trio.Lock
    users: int = 0


class InodeLocks:
    """One trio lock per inode, held around whatever reads and changes its buffers; an entry lives
    only while someone holds or waits for it (the table does not grow with every inode ever used)."""

    def __init__(self) -> None:
        self._entries: dict[int, _LockEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __call__(self, inode: int) -> _Held:
        return _Held(self, inode)


class _Held:
    __slots__ = ("_entry", "_inode", "_table")

    def __init__(self, table: InodeLocks, inode: int) -> None:
        self._table = table
        self._inode = inode

    async def __aenter__(self) -> None:
        entries = self._table._entries
        entry = entries.get(self._inode)
        if entry is None:
            entry = entries[self._inode] = _LockEntry(trio.Lock())
        entry.users += 1
        self._entry = entry
        try:
            await entry.lock.acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._entry.lock.release()
        self._leave()

    def _leave(self) -> None:
        self._entry.users -= 1
        if not self._entry.users:
            del self._table._entries[self._inode]


# --- the block catalog --------------------------------------------------------------------------------
# The file map (inode_blocks); what it asks of blocks and blobs goes through the catalog (catalog.py).


class BlockMap:
    """Which block holds each block number of a file, and what the catalog says about them."""

    def __init__(self, db: Database, blocks: BlockStore) -> None:
        self.db = db
        self.blocks = blocks

    def block_at(self, inode: int, blockno: int) -> int | None:
        return self.db.get_val("SELECT block FROM inode_blocks WHERE inode=? AND blockno=?", (inode, blockno))

    def map(self, inode: int, blockno: int, data: bytes, prepared: Prepared | None = None) -> None:
        """Stage ``data`` (``prepared``: its BlockStore.prepare()) as block ``blockno`` of the file.
        In a transaction."""
        block = self.blocks.stage(data, prepared)
        old = self.block_at(inode, blockno)
        self.db.execute("INSERT OR REPLACE INTO inode_blocks (inode, blockno, block) VALUES (?, ?, ?)",
                        (inode, blockno, block))
        if old is not None:
            self.blocks.release(old)

    def unmap(self, inode: int, first: int, end: int | None = None) -> None:
        """Release the file's blocks numbered first .. end-1 (to the end without ``end``). In a transaction."""
        where, params = ("blockno>=?", (inode, first)) if end is None else \
            ("blockno>=? AND blockno<?", (inode, first, end))
        for (block,) in self.db.execute(
                f"SELECT block FROM inode_blocks WHERE inode=? AND {where}", params).fetchall():
            self.blocks.release(block)
        self.db.execute(f"DELETE FROM inode_blocks WHERE inode=? AND {where}", params)

    def uncertified(self, inode: int) -> list[int]:
        """The file's blocks still staged, not yet in a certified blob."""
        return self.blocks.catalog.staged_blocks_of(inode)

    def blobs_after(self, inode: int, blockno: int, count: int) -> list[str]:
        """The blobs holding the file's blocks blockno+1 .. blockno+count."""
        return self.blocks.catalog.blob_ids_of_blocks(inode, blockno, blockno + count)

    def used_bytes(self) -> int:
        return self.blocks.catalog.used_bytes()
