"""Received objects in page-aligned, reused memory (walrusfs.directio's pool).

A sliver arrives into an ``ObjectImage``: the bytes of the file it will be stored as (header, then
payload) in page-aligned memory, so the store can write it with O_DIRECT, without the kernel copying
it into the page cache, and the memory is reused for the next one.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Iterator

from walrusfs.directio import POOL, BufferPool


class ObjectImage:
    """``header_size`` bytes for the file header, then ``payload_size`` bytes of payload."""

    def __init__(self, buffer: mmap.mmap, header_size: int, payload_size: int) -> None:
        self.header_size = header_size
        self.payload_size = payload_size
        view = memoryview(buffer)
        self.file = view[: header_size + payload_size]
        self.header = view[:header_size]
        self.payload = view[header_size : header_size + payload_size]
        self._views = (view, self.file, self.header, self.payload)

    def release(self) -> None:
        with contextlib.suppress(BufferError):  # a view still exported: the pool will not reuse it
            for view in self._views:
                view.release()


class ImagePool:
    def __init__(self, pool: BufferPool = POOL) -> None:
        self.pool = pool

    @contextlib.contextmanager
    def image(self, header_size: int, payload_size: int) -> Iterator[ObjectImage]:
        """An image for one object; its memory is reused after the block."""
        with self.pool.borrow(header_size + payload_size) as buffer:
            image = ObjectImage(buffer, header_size, payload_size)
            try:
                yield image
            finally:
                image.release()
