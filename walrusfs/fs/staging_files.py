"""Staging files: one per staged block, ``<state>/staging/<block id>``, holding the block as stored
(sealed). Never fsynced (docs/crash-safety.md: a staged block survives a crash of the daemon, not a
power loss, until its blob is certified).

A large block is written and read past the page cache (O_DIRECT: filling the page cache costs more
than the write, docs/performance.md). A small one goes through it: an O_DIRECT write waits for the
disk, milliseconds that a small file's close() waited for on a busy machine, while a buffered one
survives a crash of the daemon just as well.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import directio

DIRECT_BYTES = 256 << 10  # staged blocks at least this large bypass the page cache


def write_staging_file(path: Path, stored: bytes | bytearray) -> None:
    """Create (or replace) ``path`` holding a staged block's stored bytes."""
    if len(stored) >= DIRECT_BYTES:
        directio.write_file(path, stored)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(stored).cast("B")
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def read_staging_file(path: Path) -> bytes | None:
    """A staging file's bytes, or None if it does not exist. A small one is read through the page
    cache: an O_DIRECT read would first make the kernel write its cached pages to disk."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size < DIRECT_BYTES:
            return directio.read_range(fd, 0, size)  # this fd has no O_DIRECT: a plain read
    finally:
        os.close(fd)
    return directio.read_file(path)
