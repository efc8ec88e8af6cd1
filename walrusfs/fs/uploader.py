"""The upload pipeline: packs staged blocks into blobs, stores them, records the certificates.

Blocks are packed in staging order into blobs of about ``blob_size`` bytes, so many small files
share one blob and a large file streams through a blob at a time. A partial blob waits
``upload_delay`` seconds for more blocks unless someone (fsync, unmount) asks for everything now.
At most ``parallel`` blobs are in flight. A failed store keeps its blocks staged and is retried
with backoff; callers waiting in wait_certified() hear about the failure.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import blake3
import trio

from ..client import BlobClient, StoreError
from .blocks import BlockStore
from .cache import BlobCache
from .db import Database

log = logging.getLogger(__name__)


class UploadError(OSError):
    """Staged data could not be certified (yet): the message says why; the data stays staged."""


@dataclass
class PackedBlock:
    id: int
    size: int
    digest: bytes


@dataclass
class UploadStats:
    blobs: int = 0
    bytes: int = 0
    failures: int = 0
    in_flight: int = 0
    in_flight_bytes: int = 0
    last_error: str | None = None
    last_error_at: float | None = None  # time.time()
    last_upload_at: float | None = None  # time.time() of the last certified blob


class Uploader:
    def __init__(self, db: Database, blocks: BlockStore, cache: BlobCache, client: BlobClient,
                 blob_size: int, upload_delay: float, parallel: int = 2) -> None:
        self.db = db
        self.blocks = blocks
        self.cache = cache
        self.client = client
        self.blob_size = blob_size
        self.upload_delay = upload_delay
        self.parallel = parallel
        self.stats = UploadStats()
        self._wake = trio.Event()
        self._changed = trio.Event()
        self._urgent = 0  # callers waiting for everything staged to be certified
        self._last_staged = time.monotonic()
        self._failure_seq = 0
        self._backoff = 0.0
        self._idle = False  # waiting with nothing staged: only notify_staged wakes it

    def notify_staged(self) -> None:
        self._last_staged = time.monotonic()
        # Wake a full blob's upload at once, and an idle uploader so it starts the upload_delay clock.
        if self._idle or self.blocks.staged_bytes - self.stats.in_flight_bytes >= self.blob_size:
            self._wake.set()

    async def run(self) -> None:
        slots = trio.Semaphore(self.parallel)
        async with trio.open_nursery() as nursery:
            while True:
                pack = self._next_pack()
                if pack is None:
                    idle = time.monotonic() - self._last_staged
                    self._idle = not self._has_unpinned()
                    with trio.move_on_after(3600 if self._idle else max(self.upload_delay - idle, 0.05)):
                        await self._wake.wait()
                    self._idle = False
                    self._wake = trio.Event()
                    continue
                await slots.acquire()
                for block in pack:
                    self.blocks.pinned.add(block.id)
                self.stats.in_flight += 1
                self.stats.in_flight_bytes += sum(b.size for b in pack)
                nursery.start_soon(self._upload, pack, slots)

    def _has_unpinned(self) -> bool:
        return self.blocks.staged_bytes > self.stats.in_flight_bytes

    def _next_pack(self) -> list[PackedBlock] | None:
        if self._backoff and not self._urgent:
            return None
        pack: list[PackedBlock] = []
        total = 0
        for block_id, size, digest in self.db.execute(
                "SELECT id, size, hash FROM blocks WHERE blob IS NULL ORDER BY id"):
            if block_id in self.blocks.pinned:
                continue
            if pack and total + size > self.blob_size:
                return pack
            pack.append(PackedBlock(block_id, size, digest))
            total += size
        if not pack:
            return None
        idle = time.monotonic() - self._last_staged
        if self._urgent or idle >= self.upload_delay or total >= self.blob_size:
            return pack
        return None

    async def _upload(self, pack: list[PackedBlock], slots: trio.Semaphore) -> None:
        size = sum(b.size for b in pack)
        try:
            data = await trio.to_thread.run_sync(self._read_pack, pack)
            stored = await self.client.store(data)
            blob_id = str(stored.blob_id)
            with self.db.transaction():
                # The same blocks packed the same way make the same blob: one recorded before (its
                # blocks since released) takes these blocks, with the fresh certificate.
                blob_row = self.db.get_val("SELECT id FROM blobs WHERE blob_id=?", (blob_id,))
                if blob_row is None:
                    blob_row = self.db.rowid(
                        "INSERT INTO blobs (blob_id, length, certificate, refcount, created_ns) "
                        "VALUES (?, ?, ?, 0, ?)",
                        (blob_id, len(data), stored.certificate.to_json(), time.time_ns()))
                else:
                    self.db.execute("UPDATE blobs SET certificate=?, created_ns=? WHERE id=?",
                                    (stored.certificate.to_json(), time.time_ns(), blob_row))
                offset = placed = placed_bytes = 0
                for block in pack:
                    cursor = self.db.execute(
                        "UPDATE blocks SET blob=?, offset=? WHERE id=? AND blob IS NULL",
                        (blob_row, offset, block.id))
                    if cursor.rowcount:
                        placed += 1
                        placed_bytes += block.size
                    offset += block.size
                self.db.execute("UPDATE blobs SET refcount=refcount+? WHERE id=?", (placed, blob_row))
            # The certificate must be on disk before the staged copies go (invariant I4).
            self.db.sync()
            await trio.to_thread.run_sync(self.cache.put_file, blob_id, data)
            self.cache.admit(blob_id, len(data))
            self.blocks.staged_bytes -= placed_bytes
            for block in pack:
                self.blocks.unstage(block.id)
            self.stats.blobs += 1
            self.stats.last_upload_at = time.time()
            self.stats.bytes += len(data)
            self._backoff = 0.0
            log.debug("blob %s certified: %d blocks, %d bytes", blob_id, placed, len(data))
        except Exception as error:
            if not isinstance(error, (StoreError, OSError)):
                log.exception("unexpected failure uploading staged blocks")
            self.stats.failures += 1
            self.stats.last_error = str(error)
            self.stats.last_error_at = time.time()
            self._failure_seq += 1
            self._backoff = min(max(self._backoff * 2, 1.0), 30.0)
            log.warning("upload of %d staged blocks (%d bytes) failed, will retry in %.0f s: %s",
                        len(pack), size, self._backoff, error)
        finally:
            for block in pack:
                self.blocks.pinned.discard(block.id)
                if block.id in self.blocks.doomed:
                    self.blocks.doomed.discard(block.id)
                    self.blocks.unstage(block.id)
            self.stats.in_flight -= 1
            self.stats.in_flight_bytes -= size
            slots.release()
            self._changed.set()
            self._changed = trio.Event()
            self._wake.set()
        if self._backoff:
            await trio.sleep(self._backoff)
            self._backoff = 0.0 if not self._urgent else self._backoff
            self._wake.set()

    def _read_pack(self, pack: list[PackedBlock]) -> bytes:
        parts = []
        for block in pack:
            held = self.blocks.staged_in_memory(block.id)  # hashed when it was staged
            if held is not None:
                parts.append(held)
                continue
            data = self.blocks.read_staged(block.id)
            if len(data) != block.size or blake3.blake3(data).digest() != block.digest:
                raise OSError(f"staged block {block.id} does not match its hash: the staging "
                              f"directory is damaged (run 'walrusfs fsck')")
            parts.append(data)
        return b"".join(parts)

    async def wait_progress(self) -> None:
        """Wait until some upload finishes (or fails): for writers held back by a full staging."""
        self._wake.set()
        await self._changed.wait()

    async def wait_certified(self, block_ids: list[int] | None = None) -> None:
        """Return once the given blocks (default: everything staged) are in certified blobs.

        Raises UploadError if an upload fails meanwhile; the blocks stay staged and retried.
        """
        failures_before = self._failure_seq
        self._urgent += 1
        self._wake.set()
        try:
            while True:
                if block_ids is None:
                    remaining = self.db.get_val("SELECT COUNT(*) FROM blocks WHERE blob IS NULL")
                else:
                    remaining = 0
                    for start in range(0, len(block_ids), 500):
                        chunk = block_ids[start : start + 500]
                        remaining += self.db.get_val(
                            f"SELECT COUNT(*) FROM blocks WHERE blob IS NULL AND id IN "
                            f"({','.join('?' * len(chunk))})", tuple(chunk))
                if not remaining:
                    return
                if self._failure_seq != failures_before:
                    raise UploadError(
                        f"{remaining} staged blocks are not certified: {self.stats.last_error}")
                changed = self._changed
                await changed.wait()
        finally:
            self._urgent -= 1
