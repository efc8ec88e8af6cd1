"""Page-aligned, reused memory for the objects a node receives and stores.

A sliver arrives into an ``ObjectImage``: the bytes of the file it will be stored as (header, then
payload) in page-aligned memory, so the store can write it with O_DIRECT, without the kernel copying
it into the page cache. Images come from a pool and go back to it: fresh memory costs a page fault
and a zeroed page per 4 KiB, which on this project's VMs costs more than receiving the bytes.
"""

from __future__ import annotations

import contextlib
import mmap
import threading
from collections.abc import Iterator

PAGE = mmap.PAGESIZE
_GRANULE = 1 << 20  # buffers are sized in whole MiB so that slivers of similar blobs share them


class ObjectImage:
    """``header_size`` bytes for the file header, then ``payload_size`` bytes of payload."""

    def __init__(self, buffer: mmap.mmap, header_size: int, payload_size: int) -> None:
        self.buffer = buffer
        self.header_size = header_size
        self.payload_size = payload_size
        view = memoryview(buffer)
        self.file = view[: header_size + payload_size]
        self.header = view[:header_size]
        self.payload = view[header_size : header_size + payload_size]

    def release(self) -> bool:
        """Drop the image's views; False if something still holds one (then the memory must not be
        reused)."""
        try:
            for view in (self.file, self.header, self.payload):
                view.release()
        except BufferError:
            return False
        return True


class ImagePool:
    """Idle buffers kept for reuse, at most ``max_idle_bytes`` of them; thread-safe."""

    def __init__(self, max_idle_bytes: int = 128 << 20) -> None:
        self.max_idle_bytes = max_idle_bytes
        self._idle: dict[int, list[mmap.mmap]] = {}
        self._idle_bytes = 0
        self._lock = threading.Lock()

    @property
    def idle_bytes(self) -> int:
        return self._idle_bytes

    @contextlib.contextmanager
    def image(self, header_size: int, payload_size: int) -> Iterator[ObjectImage]:
        """An image for one object; its memory is reused after the block, so nothing may keep a
        view of it."""
        size = -(-(header_size + payload_size) // _GRANULE) * _GRANULE
        buffer = self._take(size)
        image = ObjectImage(buffer, header_size, payload_size)
        try:
            yield image
        finally:
            if image.release():
                self._give(size, buffer)

    def _take(self, size: int) -> mmap.mmap:
        with self._lock:
            free = self._idle.get(size)
            if free:
                self._idle_bytes -= size
                return free.pop()
        return mmap.mmap(-1, size)

    def _give(self, size: int, buffer: mmap.mmap) -> None:
        with self._lock:
            if self._idle_bytes + size <= self.max_idle_bytes:
                self._idle.setdefault(size, []).append(buffer)
                self._idle_bytes += size
                return
        with contextlib.suppress(BufferError):  # a view still alive: the memory goes with it
            buffer.close()
