"""Replacing a small file so that a crash leaves the old or the new contents, never a torn file."""

from __future__ import annotations

import os
from pathlib import Path


def replace_durably(path: os.PathLike | str, payload: bytes, mode: int = 0o600) -> None:
    """Write ``payload`` to a temporary file beside ``path``, fsync it, rename it over ``path`` and
    fsync the directory, so the rename itself survives a power loss."""
    path = Path(path)
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
