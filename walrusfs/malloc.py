"""glibc malloc thresholds: how big a buffer gets its own mapping, and how much free heap is kept.

Processes here allocate MiB-sized buffers all the time (slivers, blobs). Whether freed ones should
be kept for reuse (fast, RSS stays at the high-water mark) or handed back (RSS follows use) depends
on the process; each one sets its own policy once at start. Elsewhere than glibc: a no-op.
"""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                     "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def free_heap_bytes() -> int | None:
    """Bytes of freed memory the heap holds (glibc's mallinfo2 ``fordblks``); None elsewhere."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    return int(libc.mallinfo2().fordblks)


def trim() -> bool:
    """Hand every whole free page of the heap back to the kernel (``malloc_trim(0)``): resident
    memory falls to what is in use. Takes the heap's lock while it walks it (milliseconds for a
    large heap): call it from a thread other than an event loop's. Whether anything was returned."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))


def set_thresholds(mmap_threshold: int, trim_threshold: int, arenas: int | None = None) -> None:
    libc = _libc()
    if libc is None:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    if arenas is not None:
        libc.mallopt(_M_ARENA_MAX, arenas)


def keep_freed_buffers(keep: int = 1 << 30) -> None:
    """For processes that move blobs (storage nodes, blob commands, benchmarks): buffers up to
    256 MiB (a whole encoded blob) come from the heap and up to ``keep`` bytes of free heap are kept
    (a process with a memory budget, the mount daemon, keeps less), so a
    blob-sized buffer is reused instead of page-faulted in afresh (measured with
    ``walrusfs bench blob``: client CPU per 32 MiB put 345 -> 246 ms). One arena for all threads:
    a worker thread's own arena cannot hold a buffer over 64 MiB and maps each one afresh (encoding
    a 32 MiB blob in a worker thread spent 11% of the client's CPU zeroing new pages)."""
    set_thresholds(mmap_threshold=256 << 20, trim_threshold=keep, arenas=1)
