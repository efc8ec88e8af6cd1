"""The upload pipeline: packs staged blocks into blobs, stores them, records the certificates.

Blocks are packed in staging order into blobs of about ``blob_size`` bytes, so many small files
share one blob and a large file streams through a blob at a time. A partial blob waits
``upload_delay`` seconds for more blocks unless someone (fsync, unmount) asks for everything now.

One packer task hands packs over a zero-buffer channel to ``parallel`` upload workers: a pack is
handed over only when a worker takes it, so at most ``parallel`` blobs are in flight and packing
waits while they are (backpressure, no polling). What is staged, pinned and certified is the
catalog's (catalog.py).

A failed store keeps its blocks staged. A transient failure is retried after a backoff that grows
until an upload succeeds (walrusfs.retry: full jitter, capped); a permanent one (the nodes refuse
this writer) stops automatic retries and says so in the status, and each explicit request (fsync,
sync, unmount, a snapshot) tries once more. Callers waiting in wait_certified() hear about failures.
"""

from __future__ import annotations

import errno
import logging
import time
from collections import Counter
from dataclasses import dataclass

import trio

from ..client import BlobClient, StoreError
from ..retry import Backoff, Retrier
from .blocks import BlockCorruptError, BlockStore, open_block
from .cache import BlobCache
from .catalog import Catalog, StagedBlock

log = logging.getLogger(__name__)

# After a transient failure: waits drawn from [0, 1 s], [0, 2 s], ... up to [0, 60 s].
UPLOAD_BACKOFF = Backoff(first=1.0, cap=60.0)


class UploadError(OSError):
    """Staged data could not be certified (yet): the message says why; the data stays staged.
    ``errno`` is EDQUOT when the nodes refuse the writer's stores for its quota, else EIO."""

    def __init__(self, message: str, code: int = errno.EIO) -> None:
        super().__init__(code, message)


def quota_refusal(error: BaseException) -> str | None:
    """What the nodes said if they refused a store for the writer's quota (403 over_quota)."""
    failures = getattr(error, "failures", None) or {}
    reasons = [f"{node}: {reason}" for node, reason in sorted(failures.items()) if "over_quota" in reason]
    return "; ".join(reasons) or None


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
    # The last failure was permanent (the message says why): no automatic retries until it is fixed.
    permanent_error: str | None = None
    # The nodes refused the last store for the writer key's quota (what they said); None once a store succeeds.
    over_quota: str | None = None


class Uploader:
    def __init__(self, catalog: Catalog, blocks: BlockStore, cache: BlobCache, client: BlobClient,
                 blob_size: int, upload_delay: float, parallel: int = 2, fill_cache: bool = True,
                 backoff: Backoff = UPLOAD_BACKOFF) -> None:
        self.catalog = catalog
        self.blocks = blocks
        self.cache = cache
        self.client = client
        self.blob_size = blob_size
        self.upload_delay = upload_delay
        self.parallel = parallel
        self.fill_cache = fill_cache  # keep a copy of each uploaded blob in the read cache
        self.stats = UploadStats()
        self.retrier = Retrier(backoff)
        self._wake = trio.Event()  # for the packer: blocks staged, someone waiting, a retry due
        self._changed = trio.Event()  # an upload finished or failed
        self._urgent = 0  # callers waiting for everything staged to be certified
        # Callers waiting, by the failure count when they began. Only waits begun since the last
        # failure skip its backoff (or the stop after a permanent one): earlier waiters hear of the
        # failure and give up, and the packer, woken by it before they have run, must not take them
        # for a new request (that was a second attempt at once after every failure).
        self._waiting: Counter[int] = Counter()
        self._last_staged = trio.current_time()
        self._failure_seq = 0
        self._retry_at = 0.0  # trio time before which no upload starts after a failure, unless urgent
        self._idle = False  # waiting with nothing staged: only notify_staged wakes it

    def notify_staged(self) -> None:
        self._last_staged = trio.current_time()
        # Wake a full blob's upload at once, and an idle packer so it starts the upload_delay clock.
        if self._idle or self.catalog.unpinned_bytes >= self.blob_size:
            self._wake.set()

    async def run(self) -> None:
        send, receive = trio.open_memory_channel[list[StagedBlock]](0)
        async with trio.open_nursery() as nursery:
            for _ in range(self.parallel):
                nursery.start_soon(self._work, receive.clone())
            await self._pack(send)

    async def _pack(self, send: trio.MemorySendChannel[list[StagedBlock]]) -> None:
        """Hand each pack to a free worker as soon as it is due."""
        async with send:
            while True:
                pack, wait = self._next_pack()
                if pack is None:
                    self._idle = wait is None and not self.catalog.unpinned_bytes
                    with trio.move_on_after(3600 if wait is None else max(wait, 0.01)):
                        await self._wake.wait()
                    self._idle = False
                    self._wake = trio.Event()
                    continue
                self.catalog.pin(pack)  # the next pack takes other blocks
                try:
                    await send.send(pack)  # zero buffer: returns once a worker has taken it
                except BaseException:
                    self.blocks.unpin(pack)
                    raise

    def _next_pack(self) -> tuple[list[StagedBlock] | None, float | None]:
        """The pack to upload now, or (None, how long until one may be due; None: until woken)."""
        urgent = self._urgent > 0
        asked = self._waiting[self._failure_seq] > 0
        if self.retrier.stopped and not asked:
            return None, None  # a permanent failure: only an explicit request tries again
        now = trio.current_time()
        if now < self._retry_at and not asked:
            return None, self._retry_at - now
        pack = self.catalog.next_pack(self.blob_size, self.blocks.contents.overhead)
        if not pack:
            return None, None
        due = self._last_staged + self.upload_delay
        if urgent or now >= due or pack.full:
            return pack, None
        return None, due - now

    async def _work(self, packs: trio.MemoryReceiveChannel[list[StagedBlock]]) -> None:
        async with packs:
            async for pack in packs:
                await self._upload(pack)

    async def _upload(self, pack: list[StagedBlock]) -> None:
        size = sum(b.size for b in pack)
        self.stats.in_flight += 1
        self.stats.in_flight_bytes += size
        try:
            data = await trio.to_thread.run_sync(self._read_pack, pack)
            serial = self.catalog.release_serial
            stored = await self.client.store(data)
            blob_id = str(stored.blob_id)
            while self.catalog.released_since(blob_id, serial):
                # gc released this very blob (the same blocks, once garbage, packed the same way)
                # while it was being stored: the nodes may have deleted what they just took. Once that
                # release is over, storing it again makes it whole.
                await self.catalog.release_finished(blob_id)
                serial = self.catalog.release_serial
                stored = await self.client.store(data)
            placed = self.catalog.record_certified(blob_id, len(data), stored.certificate.to_json(), pack)
            # The certificate must be on disk before the staged copies go (invariant I4).
            self.catalog.db.sync()
            for block in pack:
                self.blocks.unstage(block.id)
            # An fsync waiting for these blocks returns now, not after the cache copy; a read of them
            # meanwhile waits for that copy (fill marks it in flight before it first yields).
            self._progressed()
            if self.fill_cache:
                try:
                    await self.cache.fill(blob_id, data)
                except OSError as error:  # the blob is certified and recorded: only the local copy is missing
                    log.warning("blob %s is certified, but keeping a copy of it in the read cache failed (%s): "
                                "its blocks are read from the nodes", blob_id, error)
            self.stats.blobs += 1
            self.stats.last_upload_at = time.time()
            self.stats.bytes += len(data)
            self.retrier.succeeded()
            self.stats.permanent_error = None
            self.stats.over_quota = None
            self._retry_at = 0.0
            log.debug("blob %s certified: %d blocks, %d bytes", blob_id, placed, len(data))
        except Exception as error:
            if not isinstance(error, (StoreError, OSError)):
                log.exception("unexpected failure uploading staged blocks")
            self.stats.failures += 1
            self.stats.last_error = str(error)
            self.stats.last_error_at = time.time()
            self.stats.over_quota = quota_refusal(error)
            if self.stats.over_quota:
                log.error("the nodes refuse to store more for this writer key (quota): %s", self.stats.over_quota)
            self._failure_seq += 1
            delay = self.retrier.failed(error)
            if delay is None:
                self.stats.permanent_error = str(error)
                log.error("upload of %d staged blocks (%d bytes) failed permanently; the data stays staged and "
                          "is retried only when asked (fsync, sync, unmount, a snapshot) or at the next mount: %s",
                          len(pack), size, error)
            else:
                self.stats.permanent_error = None
                self._retry_at = trio.current_time() + delay
                log.warning("upload of %d staged blocks (%d bytes) failed, will retry in %.1f s: %s",
                            len(pack), size, delay, error)
        finally:
            self.blocks.unpin(pack)
            self.stats.in_flight -= 1
            self.stats.in_flight_bytes -= size
            self._progressed()
            self._wake.set()

    def _progressed(self) -> None:
        """Wake whoever waits for an upload to finish or fail (wait_certified, wait_progress)."""
        self._changed.set()
        self._changed = trio.Event()

    def _read_pack(self, pack: list[StagedBlock]) -> bytes:
        parts = []
        for block in pack:
            held = self.blocks.staged_in_memory(block.id)  # hashed when it was staged
            if held is not None:
                parts.append(held)
                continue
            data = self.blocks.read_staged(block.id)
            try:
                open_block(self.blocks.contents, data, block.digest, block.size, f"staged block {block.id}")
            except BlockCorruptError as error:
                raise OSError(f"{error}: the staging directory is damaged (run 'walrusfs fsck')") from None
            parts.append(data)
        return b"".join(parts)

    async def wait_progress(self) -> None:
        """Wait until some upload finishes (or fails): for writers held back by a full staging."""
        self._wake.set()
        await self._changed.wait()

    async def wait_certified(self, block_ids: list[int] | None = None) -> None:
        """Return once the given blocks (default: everything staged) are in certified blobs.

        Raises UploadError if an upload fails meanwhile; the blocks stay staged and retried. After a
        permanent failure each call tries once more.
        """
        failures_before = self._failure_seq
        self._urgent += 1
        self._waiting[failures_before] += 1
        self._wake.set()
        try:
            while True:
                remaining = self.catalog.count_staged(block_ids)
                if not remaining:
                    return
                if self._failure_seq != failures_before:
                    if self.stats.over_quota:
                        raise UploadError(f"{remaining} staged blocks are not certified: over quota on the nodes "
                                          f"({self.stats.over_quota})", errno.EDQUOT)
                    raise UploadError(
                        f"{remaining} staged blocks are not certified: {self.stats.last_error}")
                await self._changed.wait()
        finally:
            self._urgent -= 1
            self._waiting[failures_before] -= 1
            if not self._waiting[failures_before]:
                del self._waiting[failures_before]
