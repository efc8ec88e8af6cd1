"""``walrusfs dataset get`` (the tree written out, every byte verified) and ``dataset diff``.

A file is written under a temporary name and gets its own name only once its bytes hashed to the
manifest's content hash. Symlinks are made last and directories only by us, so no entry of a
dataset (whoever published it) writes outside the destination through a link.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from ..client import BlobClient, ReadError
from ..errors import UserError
from ..progress import Progress
from .fetch import BlobCache, Located, Sightings, load_page, locate
from .ids import DatasetId
from .index import IndexFormatError
from .manifest import Entry, Kind, ManifestError


@dataclass
class GetReport:
    dataset: str
    files: int = 0
    bytes: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    liars: dict[str, str] = field(default_factory=dict)


async def entries_of(located: Located, cache: BlobCache) -> list[tuple[Entry, list | None]]:
    """Every entry with its file's extents, each page checked against the ID."""
    out = []
    for number in range(len(located.index.pages)):
        try:
            page = await load_page(located, number, cache)
        except (ReadError, ManifestError, IndexFormatError) as error:
            raise UserError(f"dataset {located.dataset}: manifest page {number} cannot be used: {error}. "
                            f"Run 'walrusfs dataset verify {located.dataset}' for the whole picture", 2) from error
        out += list(zip(page.entries, page.locations, strict=True))
    return out


def _prepare(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"{dest} exists and is not an empty directory: give a new or empty destination "
                        "(nothing is overwritten)")
    dest.mkdir(parents=True, exist_ok=True)


async def get(client: BlobClient, dataset: DatasetId, dest: Path) -> GetReport:
    _prepare(dest)
    sightings = Sightings()
    cache = BlobCache(client, sightings)
    await client.refresh_chain("reading a dataset")
    located = await locate(client, dataset, cache)
    entries = await entries_of(located, cache)
    report = GetReport(str(dataset))
    base = os.fsencode(dest)
    made = {b""}  # directories we made (relative paths): the only parents anything is written into
    kinds = {entry.path: entry.kind for entry, _ in entries}
    with Progress(f"getting {dataset}", located.header.file_bytes) as progress:
        for entry, extents in entries:
            parent = entry.path.rpartition(b"/")[0]
            if not _under_directories(parent, kinds) or (parent not in made
                                                         and not _make_parents(base, parent, made)):
                report.problems.append((entry.display, "a path above it is not a directory in the dataset "
                                        "(a file or a symlink): it is not written"))
                continue
            target = os.path.join(base, entry.path)
            if entry.kind is Kind.DIRECTORY:
                os.mkdir(target, 0o700)  # its own mode once everything inside is written
                made.add(entry.path)
            elif entry.kind is Kind.FILE:
                why = await _write_file(entry, extents or [], target, cache)
                if why:
                    report.problems.append((entry.display, why))
                else:
                    report.files += 1
                    report.bytes += entry.size
                    progress.update(report.bytes)
        for entry, _ in entries:  # links last: nothing is written through one
            if entry.kind is Kind.SYMLINK and entry.path.rpartition(b"/")[0] in made:
                try:
                    os.symlink(entry.target, os.path.join(base, entry.path))
                except OSError as error:
                    report.problems.append((entry.display, f"the symlink cannot be made: {error.strerror}"))
        for entry, _ in reversed(entries):  # deepest first: a read-only directory is closed last
            path = os.path.join(base, entry.path)
            if entry.kind is Kind.SYMLINK or not os.path.lexists(path):
                continue
            os.chmod(path, entry.mode)
            if entry.mtime_ns is not None:
                os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
        for entry, _ in entries:
            path = os.path.join(base, entry.path)
            if entry.kind is Kind.SYMLINK and entry.mtime_ns is not None and os.path.lexists(path):
                os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
    report.liars = sightings.liars
    return report


def _under_directories(parent: bytes, kinds: dict[bytes, Kind]) -> bool:
    """No component of ``parent`` is a file or symlink of the dataset (one listed as both a link and a
    directory above other entries would let a publisher write through the link)."""
    parts = parent.split(b"/") if parent else []
    return all(kinds.get(b"/".join(parts[:depth]), Kind.DIRECTORY) is Kind.DIRECTORY
               for depth in range(1, len(parts) + 1))


def _make_parents(base: bytes, parent: bytes, made: set[bytes]) -> bool:
    """Directories the manifest implies but does not list (a publisher's omission), made like ours;
    False if a component is something else already (a file of the dataset)."""
    parts = parent.split(b"/")
    for depth in range(1, len(parts) + 1):
        relative = b"/".join(parts[:depth])
        if relative in made:
            continue
        path = os.path.join(base, relative)
        if os.path.lexists(path):
            return False
        os.mkdir(path, 0o755)
        made.add(relative)
    return True


async def _write_file(entry: Entry, extents: list, target: bytes, cache: BlobCache) -> str:
    temporary = target + b".wds-part"
    hasher = blake3.blake3()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            for extent in extents:
                try:
                    data = await cache.extent(extent)
                except ReadError as error:
                    return f"missing: blob {extent.blob} cannot be read ({error})"
                hasher.update(data)
                out.write(data)
        if hasher.digest() != entry.content or sum(e.length for e in extents) != entry.size:
            return "wrong bytes: what the blobs hold does not hash to the file's content hash"
        os.rename(temporary, target)
        temporary = b""
        return ""
    finally:
        if temporary:
            os.unlink(temporary)


@dataclass
class Difference:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: dict[str, list[str]] = field(default_factory=dict)  # path -> what changed

    @property
    def same(self) -> bool:
        return not (self.added or self.removed or self.changed)


def _changes(before: Entry, after: Entry) -> list[str]:
    what = []
    if before.kind is not after.kind:
        what.append(f"type {before.kind.name.lower()} -> {after.kind.name.lower()}")
    else:
        if before.content != after.content or before.size != after.size:
            what.append(f"content ({before.size} -> {after.size} bytes)" if before.size != after.size else "content")
        if before.target != after.target:
            what.append("target")
    if before.mode != after.mode:
        what.append(f"mode {before.mode:o} -> {after.mode:o}")
    if before.mtime_ns != after.mtime_ns and before.mtime_ns is not None and after.mtime_ns is not None:
        what.append("mtime")
    return what


async def diff(client: BlobClient, first: DatasetId, second: DatasetId) -> Difference:
    sightings = Sightings()
    cache = BlobCache(client, sightings)
    await client.refresh_chain("comparing datasets")
    trees = []
    for dataset in (first, second):
        located = await locate(client, dataset, cache)
        trees.append({entry.path: entry for entry, _ in await entries_of(located, cache)})
    before, after = trees
    out = Difference()
    for path in sorted(before.keys() | after.keys()):
        if path not in after:
            out.removed.append(before[path].display)
        elif path not in before:
            out.added.append(after[path].display)
        elif what := _changes(before[path], after[path]):
            out.changed[after[path].display] = what
    return out


__all__ = ["Difference", "GetReport", "diff", "entries_of", "get"]
