"""File I/O that bypasses the page cache (O_DIRECT), through reused page-aligned buffers.

Blob data is written once and read back rarely (node slivers, staged blocks, cached blobs), so
caching it buys little, and on this project's VMs it costs a lot: a page-cache write measured
~1.8 ms of CPU per MiB (every new cache page is the hypervisor's first touch of that guest memory),
about ten times a memcpy. Here the kernel moves the bytes between disk and an aligned buffer by
DMA; the only CPU copy is into or out of that buffer. Where a filesystem refuses O_DIRECT (tmpfs,
some FUSE and network filesystems) the same calls fall back to ordinary buffered I/O.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

PAGE = mmap.PAGESIZE
_GRANULE = 1 << 20  # buffers are sized in whole MiB so that similar requests share them
_DIRECT = getattr(os, "O_DIRECT", 0)


def round_up(size: int, unit: int = PAGE) -> int:
    return -(-size // unit) * unit


class BufferPool:
    """Page-aligned anonymous buffers, kept for reuse up to ``max_idle_bytes``; thread-safe.

    Fresh memory costs a page fault and a zeroed page per 4 KiB, more than the I/O it serves."""

    def __init__(self, max_idle_bytes: int = 128 << 20) -> None:
        self.max_idle_bytes = max_idle_bytes
        self._idle: dict[int, list[mmap.mmap]] = {}
        self._idle_bytes = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def borrow(self, size: int) -> Iterator[mmap.mmap]:
        """A buffer of at least ``size`` bytes, reused after the block: no view of it may outlive
        the block (memory still viewed is not reused, at the cost of a new buffer next time)."""
        capacity = round_up(max(size, 1), _GRANULE)
        buffer = self._take(capacity)
        try:
            yield buffer
        finally:
            self._give(capacity, buffer)

    def _take(self, capacity: int) -> mmap.mmap:
        with self._lock:
            free = self._idle.get(capacity)
            if free:
                self._idle_bytes -= capacity
                return free.pop()
        return mmap.mmap(-1, capacity)

    def _give(self, capacity: int, buffer: mmap.mmap) -> None:
        try:
            buffer.resize(capacity)  # fails while a view of it is alive: then it must not be reused
        except (BufferError, OSError, SystemError):
            return
        with self._lock:
            if self._idle_bytes + capacity <= self.max_idle_bytes:
                self._idle.setdefault(capacity, []).append(buffer)
                self._idle_bytes += capacity
                return
        buffer.close()


POOL = BufferPool()


def open_direct(path: str | Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` with O_DIRECT if the filesystem takes it, without otherwise."""
    flags |= os.O_CLOEXEC
    if _DIRECT:
        try:
            return os.open(path, flags | _DIRECT, mode)
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
    return os.open(path, flags, mode)


def _is_direct(fd: int) -> bool:
    return bool(_DIRECT and fcntl.fcntl(fd, fcntl.F_GETFL) & _DIRECT)


def _drop_direct(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_DIRECT)


def write_aligned(fd: int, data: memoryview, offset: int = 0) -> None:
    """Write ``data`` (which starts page-aligned in memory) at ``offset`` (page-aligned): whole
    pages directly if ``fd`` has O_DIRECT, the last partial page through the page cache."""
    done = 0
    if _is_direct(fd):
        aligned = len(data) // PAGE * PAGE
        try:
            while done < aligned and done % PAGE == 0:
                done += os.pwrite(fd, data[done:aligned], offset + done)
        except OSError as error:
            if error.errno != errno.EINVAL:  # EINVAL: this device wants another alignment
                raise
        _drop_direct(fd)
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)


def aligned_empty(size: int) -> memoryview:
    """``size`` writable bytes (not zeroed) starting on a page boundary in memory: write_file sends
    them to disk straight from there, with no copy into a pool buffer."""
    raw = np.empty(size + PAGE, dtype=np.uint8)
    start = -raw.ctypes.data % PAGE
    return memoryview(raw[start : start + size])


def _address(view: memoryview) -> int:
    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data) if len(view) else 0


def _write_direct(fd: int, data: memoryview, offset: int) -> int:
    """Write ``data`` (page-aligned in memory, a whole number of pages) at ``offset`` with O_DIRECT
    while the device takes it; how many bytes were written (fewer than asked: O_DIRECT was refused,
    and dropped)."""
    done = 0
    try:
        while done < len(data) and done % PAGE == 0:
            written = os.pwrite(fd, data[done:], offset + done)
            if written <= 0:
                break
            done += written
    except OSError as error:
        if error.errno != errno.EINVAL:  # EINVAL: this device wants another alignment
            raise
    if done < len(data):
        _drop_direct(fd)
    return done


def write_file(path: str | Path, data: bytes | bytearray | memoryview, sync: bool = False) -> None:
    """Create (or truncate) ``path`` holding ``data``; fdatasync it with ``sync``.

    With O_DIRECT every byte goes past the page cache, also a last partial page: it is written as a
    whole page padded with zeros, and the file cut back to its length (a tail written through the
    page cache instead costs a dirty page, its writeback and two fcntl calls per file). Data that
    starts on a page boundary in memory (aligned_empty) is written from where it lies; anything else
    is copied into a pooled aligned buffer first."""
    source = memoryview(data).cast("B")
    length = len(source)
    fd = open_direct(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        done = 0
        if length and _is_direct(fd):
            whole = length // PAGE * PAGE
            if _address(source) % PAGE == 0:
                written = _write_direct(fd, source[:whole], 0) if whole else 0
                if written == whole < length and _is_direct(fd):
                    with POOL.borrow(PAGE) as buffer, memoryview(buffer) as page:
                        page[: length - whole] = source[whole:]
                        page[length - whole : PAGE] = bytes(PAGE - (length - whole))
                        written += _write_direct(fd, page[:PAGE], whole)
            else:
                padded = round_up(length)
                with POOL.borrow(padded) as buffer, memoryview(buffer) as view:
                    view[:length] = source
                    view[length:padded] = bytes(padded - length)
                    written = _write_direct(fd, view[:padded], 0)
            if written > length:
                os.ftruncate(fd, length)  # the zeros padding the last page
            done = min(written, length)
        if done < length and _is_direct(fd):
            _drop_direct(fd)
        while done < length:
            done += os.pwrite(fd, source[done:], done)
        if sync:
            os.fdatasync(fd)
    finally:
        os.close(fd)


def read_range(fd: int, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes at ``offset`` (fewer at the end of the file)."""
    if length <= 0:
        return b""
    if not _is_direct(fd):
        return _pread_all(fd, offset, length)
    start = offset // PAGE * PAGE
    span = round_up(offset + length) - start
    with POOL.borrow(span) as buffer, memoryview(buffer) as view:
        got = 0
        try:
            while got < span:
                n = os.preadv(fd, [view[got:span]], start + got)
                if n == 0:
                    break
                got += n
                if got % PAGE:
                    break  # end of file
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
            _drop_direct(fd)
            return _pread_all(fd, offset, length)
        skip = offset - start
        return bytes(view[skip : max(skip, min(got, skip + length))])


def read_file(path: str | Path) -> bytes | None:
    """The whole file, or None if it does not exist."""
    try:
        fd = open_direct(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return read_range(fd, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _pread_all(fd: int, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    chunks = [data]
    got = len(data)
    while got < length:
        chunk = os.pread(fd, length - got, offset + got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
