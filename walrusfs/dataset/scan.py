"""A local directory as manifest entries (any directory: a plain one or one inside a walrusfs mount).

Symlinks are kept as links, never followed; hard links become separate files (their bytes are
stored once: data is deduplicated by content). Devices, FIFOs and sockets have no bytes to publish
and are refused by name.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import blake3

from ..errors import UserError
from .manifest import Entry, Kind, ManifestError, check_path

READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Scanned:
    entry: Entry
    source: Path  # where its bytes are read from (files)


def content_hash(path: Path, on_bytes: Callable[[int], None] | None = None) -> tuple[bytes, int]:
    """(blake3 of the file's bytes, its length), read in chunks."""
    hasher = blake3.blake3()
    size = 0
    with open(path, "rb") as source:
        while chunk := source.read(READ_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return hasher.digest(), size


def scan(root: Path, times: bool = False, on_bytes: Callable[[int], None] | None = None) -> list[Scanned]:
    """Every entry under ``root`` (not ``root`` itself), files hashed."""
    if not root.is_dir():
        raise UserError(f"{root} is not a directory: publish a directory (its content becomes the dataset)")
    out: list[Scanned] = []
    pending = [b""]
    base = os.fsencode(root)
    while pending:
        relative = pending.pop()
        directory = os.path.join(base, relative) if relative else base
        try:
            children = sorted(os.scandir(directory), key=lambda child: child.name)
        except OSError as error:
            raise UserError(f"cannot list {os.fsdecode(directory)}: {error.strerror}; fix its permissions and "
                            "publish again") from error
        for child in children:
            path = relative + b"/" + child.name if relative else child.name
            full = Path(os.fsdecode(child.path))
            try:
                info = child.stat(follow_symlinks=False)
                check_path(path)
                out.append(Scanned(_entry(path, info, full, times, on_bytes), full))
            except OSError as error:
                raise UserError(f"cannot read {full}: {error.strerror}; fix it and publish again") from error
            except ManifestError as error:
                raise UserError(f"cannot publish {full}: {error}") from error
            if stat.S_ISDIR(info.st_mode):
                pending.append(path)
    return out


def _entry(path: bytes, info: os.stat_result, full: Path, times: bool,
           on_bytes: Callable[[int], None] | None) -> Entry:
    mode = stat.S_IMODE(info.st_mode)
    mtime = info.st_mtime_ns if times else None
    if stat.S_ISDIR(info.st_mode):
        return Entry(path, Kind.DIRECTORY, mode, mtime_ns=mtime)
    if stat.S_ISLNK(info.st_mode):
        target = os.readlink(os.fsencode(full))
        return Entry(path, Kind.SYMLINK, mode, len(target), target=target, mtime_ns=mtime)
    if stat.S_ISREG(info.st_mode):
        digest, size = content_hash(full, on_bytes)
        return Entry(path, Kind.FILE, mode, size, digest, mtime_ns=mtime)
    raise ManifestError("a device, FIFO or socket: a dataset holds files, directories and symlinks only; "
                        "move it out of the tree")


__all__ = ["Scanned", "content_hash", "scan"]
