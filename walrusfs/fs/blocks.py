"""Blocks: content-addressed, deduplicated pieces of files, staged on local disk until their blob
is certified, then read back through the blob cache. Every block handed out is checked against its
blake3 hash (schema invariants I3-I5)."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import blake3

from .. import directio
from .cache import BlobCache
from .db import Database


class BlockCorruptError(OSError):
    """A block's bytes do not match its hash (local disk rot, or a bug): never returned as data."""


class BlockStore:
    def __init__(self, db: Database, staging: Path, cache: BlobCache, memory_bytes: int = 16 << 20,
                 staged_memory_bytes: int = 32 << 20) -> None:
        self.db = db
        self.staging = staging
        self.cache = cache
        staging.mkdir(parents=True, exist_ok=True)
        self.staged_bytes = int(db.get_val("SELECT COALESCE(SUM(size), 0) FROM blocks WHERE blob IS NULL"))
        self.pinned: set[int] = set()  # staged blocks an upload is reading
        self.doomed: set[int] = set()  # pinned blocks released meanwhile: uploader removes files
        self._memory: OrderedDict[int, bytes] = OrderedDict()  # verified contents, LRU
        self._memory_bytes = 0
        self._memory_limit = memory_bytes
        # Blocks staged but not yet uploaded, kept so that the uploader, seconds later, packs them
        # without reading the staging files back (bounded: beyond it, it reads the files).
        self._staged: dict[int, bytes] = {}
        self._staged_memory = 0
        self._staged_limit = staged_memory_bytes

    def staging_path(self, block_id: int) -> Path:
        return self.staging / str(block_id)

    def stage(self, data: bytes) -> int:
        """The id of a block holding ``data``: an existing one with one more reference, or a new
        staged block. Call inside a transaction."""
        digest = blake3.blake3(data).digest()
        row = self.db.get_row("SELECT id FROM blocks WHERE hash=?", (digest,))
        if row is not None:
            self.db.execute("UPDATE blocks SET refcount=refcount+1 WHERE id=?", (row[0],))
            return int(row[0])
        block_id = self.db.rowid(
            "INSERT INTO blocks (hash, size, refcount, blob, offset) VALUES (?, ?, 1, NULL, NULL)",
            (digest, len(data)))
        # Written before the row commits: a crash in between leaves an orphan file (fsck removes
        # it), never a row without its file.
        directio.write_file(self.staging_path(block_id), data)  # past the page cache
        self.staged_bytes += len(data)
        self._remember(block_id, data)
        if self._staged_memory + len(data) <= self._staged_limit:
            self._staged[block_id] = data
            self._staged_memory += len(data)
        return block_id

    def staged_in_memory(self, block_id: int) -> bytes | None:
        """A staged block's content if it is still held in memory (safe from a worker thread)."""
        return self._staged.get(block_id)

    def unstage(self, block_id: int) -> None:
        """The block's staging file is gone (uploaded, or the block deleted): remove it."""
        self.staging_path(block_id).unlink(missing_ok=True)
        data = self._staged.pop(block_id, None)
        if data is not None:
            self._staged_memory -= len(data)

    def release(self, block_id: int) -> None:
        """Drop one reference; the last one deletes the block. Call inside a transaction."""
        row = self.db.get_row("SELECT refcount, blob, size FROM blocks WHERE id=?", (block_id,))
        if row is None:
            raise RuntimeError(f"block {block_id} is referenced but does not exist (run fsck)")
        refcount, blob, size = row
        if refcount > 1:
            self.db.execute("UPDATE blocks SET refcount=refcount-1 WHERE id=?", (block_id,))
            return
        self.db.execute("DELETE FROM blocks WHERE id=?", (block_id,))
        self._forget(block_id)
        if blob is None:
            def drop_file() -> None:
                self.staged_bytes -= size
                if block_id in self.pinned:
                    self.doomed.add(block_id)
                else:
                    self.unstage(block_id)
            self.db.after_commit(drop_file)
        else:
            self.db.execute("UPDATE blobs SET refcount=refcount-1 WHERE id=?", (blob,))

    async def content(self, block_id: int) -> bytes:
        """The block's bytes, verified against its hash."""
        cached = self._memory.get(block_id)
        if cached is not None:
            self._memory.move_to_end(block_id)
            return cached
        row = self.db.get_row(
            "SELECT blocks.hash, blocks.size, blocks.offset, blobs.blob_id FROM blocks "
            "LEFT JOIN blobs ON blobs.id = blocks.blob WHERE blocks.id=?", (block_id,))
        if row is None:
            raise RuntimeError(f"block {block_id} does not exist (run fsck)")
        digest, size, offset, blob_id = row
        if blob_id is None:
            data = self.read_staged(block_id)
        else:
            data = await self.cache.read(blob_id, offset, size)
        if len(data) != size or blake3.blake3(data).digest() != digest:
            where = "staging file" if blob_id is None else f"cached blob {blob_id}"
            if blob_id is not None:
                self.cache.drop(blob_id)  # refetched, verified, on the next read
            raise BlockCorruptError(f"block {block_id} from {where} does not match its hash")
        self._remember(block_id, data)
        return data

    def read_staged(self, block_id: int) -> bytes:
        data = directio.read_file(self.staging_path(block_id))
        if data is None:
            raise FileNotFoundError(f"staged block {block_id} is missing: {self.staging_path(block_id)}")
        return data

    def _remember(self, block_id: int, data: bytes) -> None:
        if len(data) > self._memory_limit // 4:
            return
        self._memory[block_id] = data
        self._memory_bytes += len(data)
        while self._memory_bytes > self._memory_limit:
            _, old = self._memory.popitem(last=False)
            self._memory_bytes -= len(old)

    def _forget(self, block_id: int) -> None:
        old = self._memory.pop(block_id, None)
        if old is not None:
            self._memory_bytes -= len(old)

