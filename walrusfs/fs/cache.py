"""The read cache: whole blobs on local disk, verified when fetched, bounded, least recently used
evicted first. Concurrent readers of one blob share one fetch."""

from __future__ import annotations

import contextlib
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from .. import directio

log = logging.getLogger(__name__)


class BlobCache:
    def __init__(self, directory: Path, capacity: int,
                 fetch: Callable[[str], Awaitable[bytes]], recent_blobs: int = 2) -> None:
        self.directory = directory
        self.capacity = capacity
        self.fetch = fetch  # blob id -> verified bytes
        self.entries: OrderedDict[str, int] = OrderedDict()
        self.used = 0
        self.hits = 0
        self.misses = 0
        self._inflight: dict[str, trio.Event] = {}
        self._errors: dict[str, BaseException] = {}
        # The blobs fetched last, served from memory while a reader works through them: their
        # files are written past the page cache, which costs far less than filling it.
        self._recent: OrderedDict[str, bytes | memoryview] = OrderedDict()
        self._recent_limit = recent_blobs
        directory.mkdir(parents=True, exist_ok=True)
        for path in sorted(directory.iterdir(), key=lambda p: p.stat().st_mtime):
            if path.name.endswith(".tmp"):
                path.unlink()
                continue
            self.entries[path.name] = path.stat().st_size
            self.used += path.stat().st_size

    def _path(self, blob_id: str) -> Path:
        return self.directory / blob_id

    def contains(self, blob_id: str) -> bool:
        return blob_id in self.entries

    def fetching(self, blob_id: str) -> bool:
        return blob_id in self._inflight

    async def read(self, blob_id: str, offset: int, length: int, view: bool = False) -> bytes | memoryview:
        """``length`` bytes of the blob at ``offset``; with ``view``, a view instead of a copy where the
        blob is held in memory (for a caller that makes its own copy, as opening a sealed block does)."""
        if blob_id not in self.entries:
            self.misses += 1
            await self.ensure(blob_id)
        else:
            self.hits += 1
        self.entries.move_to_end(blob_id)
        held = self._recent.get(blob_id)
        if held is not None:
            self._recent.move_to_end(blob_id)
            return memoryview(held)[offset : offset + length] if view else bytes(held[offset : offset + length])
        fd = directio.open_direct(self._path(blob_id), os.O_RDONLY)
        try:
            return directio.read_range(fd, offset, length)
        finally:
            os.close(fd)

    async def ensure(self, blob_id: str) -> None:
        """Fetch ``blob_id`` into the cache unless it is there (one fetch however many wait)."""
        while blob_id not in self.entries:
            event = self._inflight.get(blob_id)
            if event is None:
                event = self._inflight[blob_id] = trio.Event()
                try:
                    data = await self.fetch(blob_id)
                    await trio.to_thread.run_sync(self.put_file, blob_id, data)
                    self.admit(blob_id, len(data))
                    self._recent[blob_id] = data
                    while len(self._recent) > self._recent_limit:
                        self._recent.popitem(last=False)
                except BaseException as error:
                    self._errors[blob_id] = error
                    raise
                finally:
                    del self._inflight[blob_id]
                    event.set()
            else:
                await event.wait()
                if blob_id not in self.entries and blob_id in self._errors:
                    raise self._errors.pop(blob_id)

    async def fill(self, blob_id: str, data: bytes | memoryview) -> None:
        """Keep ``data``, just uploaded and so known to be the blob, as ``blob_id``. Readers of the blob
        meanwhile wait for it as for a fetch (they would otherwise fetch it and write the same file).
        Marked in flight before the first await: a caller that wakes readers just before calling
        this cannot have them miss it."""
        if blob_id in self.entries or blob_id in self._inflight:
            return
        event = self._inflight[blob_id] = trio.Event()
        try:
            await trio.to_thread.run_sync(self.put_file, blob_id, data)
            self.admit(blob_id, len(data))
        finally:
            del self._inflight[blob_id]
            event.set()

    def put_file(self, blob_id: str, data: bytes | memoryview) -> None:
        """Write the file only (safe in a worker thread); admit() it afterwards. It goes past the
        page cache (walrusfs.directio): filling that would cost more than the write."""
        tmp = self._path(blob_id + ".tmp")
        directio.write_file(tmp, data)
        tmp.replace(self._path(blob_id))

    def admit(self, blob_id: str, size: int) -> None:
        if blob_id in self.entries:
            return
        self._evict(size)
        self.entries[blob_id] = size
        self.used += size

    def _evict(self, incoming: int) -> None:
        while self.entries and self.used + incoming > self.capacity:
            victim, size = self.entries.popitem(last=False)
            self._recent.pop(victim, None)
            self.used -= size
            with contextlib.suppress(FileNotFoundError):
                self._path(victim).unlink()

    def drop(self, blob_id: str) -> None:
        self._recent.pop(blob_id, None)
        size = self.entries.pop(blob_id, None)
        if size is not None:
            self.used -= size
            self._path(blob_id).unlink(missing_ok=True)
