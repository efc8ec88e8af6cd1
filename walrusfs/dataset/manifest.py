"""The part of a dataset its ID covers: entries, pages, the hash tree, the header (docs/datasets.md).

Everything here is canonical bytes: integers little-endian of fixed width, strings length-prefixed,
entries sorted by their path's bytes, no floats and no maps. The same tree gives the same bytes on
any machine, so the same ID.
"""

from __future__ import annotations

import itertools
import stat
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

import blake3

from .ids import DatasetId

FORMAT_VERSION = 1
HEADER_MAGIC = b"WDSM"
PAGE_MAGIC = b"WDSP"
PAGE_ENTRIES = 1024  # entries per page: a page is ~100 KiB, a sample verify fetches only the pages it needs
FLAG_TIMES = 1  # every entry carries its modification time
MAX_PATH = 4096
MAX_NAME = 1024
HASH_SIZE = 32
_LEAF, _INNER = b"\x00", b"\x01"
EMPTY_ROOT = blake3.blake3(b"").digest()  # the root of a tree without leaves (an empty dataset)
_HEADER = struct.Struct("<4sBBQQQI")  # magic, version, flags, entries, files, file bytes, page entries
_ENTRY = struct.Struct("<BIQH")  # kind, mode, size, path length


class ManifestError(ValueError):
    """Bytes that are not a valid manifest part, or do not match what covers them."""


class Kind(IntEnum):
    DIRECTORY = 1
    FILE = 2
    SYMLINK = 3


@dataclass(frozen=True)
class Entry:
    """One name in the tree. ``path``: bytes, relative, '/'-separated; ``mode``: the permission bits
    (st_mode & 0o7777); ``size``: a file's length, a symlink's target length, 0 for a directory;
    ``content``: blake3 of a file's bytes; ``mtime_ns``: only in a manifest published with times."""

    path: bytes
    kind: Kind
    mode: int
    size: int = 0
    content: bytes = b""
    target: bytes = b""
    mtime_ns: int | None = None

    def encode(self, times: bool) -> bytes:
        check_path(self.path)
        if not 0 <= self.mode <= 0o7777:
            raise ManifestError(f"{self.display}: mode {self.mode:o} has bits beyond 7777")
        parts = [_ENTRY.pack(self.kind, self.mode, self.size, len(self.path)), self.path]
        if self.kind is Kind.FILE:
            if len(self.content) != HASH_SIZE:
                raise ManifestError(f"{self.display}: a file's content hash is {HASH_SIZE} bytes")
            parts.append(self.content)
        elif self.kind is Kind.SYMLINK:
            if self.size != len(self.target) or not 0 < len(self.target) <= MAX_PATH:
                raise ManifestError(f"{self.display}: a symlink's size is its target's length (1..{MAX_PATH})")
            parts += [struct.pack("<H", len(self.target)), self.target]
        elif self.size != 0:
            raise ManifestError(f"{self.display}: a directory has size 0")
        if times:
            if self.mtime_ns is None:
                raise ManifestError(f"{self.display}: a manifest with times needs every entry's mtime")
            parts.append(struct.pack("<q", self.mtime_ns))
        return b"".join(parts)

    @property
    def display(self) -> str:
        return self.path.decode("utf-8", "backslashreplace")


def check_path(path: bytes) -> None:
    """A path a manifest may hold: relative, no empty, '.' or '..' component, no NUL, at most 4096 bytes.
    (A reader that writes a dataset out relies on this: no entry reaches outside the destination.)"""
    if not 0 < len(path) <= MAX_PATH or b"\0" in path:
        raise ManifestError(f"path {path[:80]!r}: empty, longer than {MAX_PATH} bytes, or holding a NUL")
    if any(part in (b"", b".", b"..") for part in path.split(b"/")):
        raise ManifestError(f"path {path[:80]!r}: an empty, '.' or '..' component (or a leading '/')")


def decode_entry(data: memoryview, offset: int, times: bool) -> tuple[Entry, int]:
    """The entry at ``offset`` and the offset after it."""
    try:
        kind_value, mode, size, path_length = _ENTRY.unpack_from(data, offset)
        offset += _ENTRY.size
        path = bytes(data[offset:offset + path_length])
        if len(path) != path_length:
            raise ManifestError("entry cut short")
        offset += path_length
        kind = Kind(kind_value)
        content = target = b""
        if kind is Kind.FILE:
            content = bytes(data[offset:offset + HASH_SIZE])
            offset += HASH_SIZE
        elif kind is Kind.SYMLINK:
            (target_length,) = struct.unpack_from("<H", data, offset)
            target = bytes(data[offset + 2:offset + 2 + target_length])
            offset += 2 + target_length
        mtime = None
        if times:
            (mtime,) = struct.unpack_from("<q", data, offset)
            offset += 8
    except (struct.error, ValueError) as error:
        raise ManifestError(f"malformed entry at byte {offset}: {error}") from None
    entry = Entry(path, kind, mode, size, content, target, mtime)
    if bytes(data[offset - len(entry.encode(times)):offset]) != entry.encode(times):
        raise ManifestError(f"entry {entry.display!r} is not in canonical form")
    return entry, offset


def leaf(record: bytes) -> bytes:
    return blake3.blake3(_LEAF + record).digest()


def merkle_root(hashes: Sequence[bytes]) -> bytes:
    """Pairs of nodes hash to ``blake3(0x01 | left | right)``, level by level; an odd last node moves up
    unchanged. No leaves: EMPTY_ROOT."""
    level = list(hashes)
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        paired = [blake3.blake3(_INNER + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def encode_page(records: Sequence[bytes]) -> bytes:
    """A page as stored: ``"WDSP" | u8 version | u32 count | count x (u32 length | entry record)``."""
    parts = [PAGE_MAGIC, struct.pack("<BI", FORMAT_VERSION, len(records))]
    for record in records:
        parts += [struct.pack("<I", len(record)), record]
    return b"".join(parts)


def decode_page(data: bytes | memoryview, times: bool) -> tuple[list[Entry], bytes]:
    """The entries of a stored page and its root (the caller compares the root with the one expected)."""
    view = memoryview(data)
    if bytes(view[:4]) != PAGE_MAGIC or len(view) < 9:
        raise ManifestError("not a dataset manifest page (no WDSP magic)")
    version, count = struct.unpack_from("<BI", view, 4)
    if version != FORMAT_VERSION:
        raise ManifestError(f"manifest page version {version} is not one this walrusfs reads: upgrade walrusfs")
    offset, entries, leaves = 9, [], []
    for _ in range(count):
        if offset + 4 > len(view):
            raise ManifestError("manifest page cut short")
        (length,) = struct.unpack_from("<I", view, offset)
        record = view[offset + 4:offset + 4 + length]
        entry, end = decode_entry(record, 0, times)
        if end != length:
            raise ManifestError(f"entry {entry.display!r}: {length - end} bytes after its record")
        entries.append(entry)
        leaves.append(leaf(bytes(record)))
        offset += 4 + length
    if offset != len(view):
        raise ManifestError(f"{len(view) - offset} bytes after the last entry of a manifest page")
    return entries, merkle_root(leaves)


@dataclass(frozen=True)
class Header:
    """``"WDSM" | u8 version | u8 flags | u64 entries | u64 files | u64 file bytes | u32 page entries |
    u16 name length | name (UTF-8) | 32-byte tree root``; the ID is blake3 of a domain and these bytes."""

    entries: int
    files: int
    file_bytes: int
    tree_root: bytes
    name: str = ""
    times: bool = False
    page_entries: int = PAGE_ENTRIES
    version: int = FORMAT_VERSION

    def encode(self) -> bytes:
        name = self.name.encode()
        if len(name) > MAX_NAME:
            raise ManifestError(f"a dataset name is at most {MAX_NAME} bytes of UTF-8")
        return b"".join([_HEADER.pack(HEADER_MAGIC, self.version, FLAG_TIMES if self.times else 0, self.entries,
                                      self.files, self.file_bytes, self.page_entries),
                         struct.pack("<H", len(name)), name, self.tree_root])

    @property
    def dataset_id(self) -> DatasetId:
        return DatasetId.of_header(self.encode())

    @property
    def pages(self) -> int:
        return -(-self.entries // self.page_entries)

    @classmethod
    def decode(cls, data: bytes) -> Header:
        if data[:4] != HEADER_MAGIC:
            raise ManifestError("not a dataset manifest header (no WDSM magic)")
        try:
            _, version, flags, entries, files, file_bytes, page_entries = _HEADER.unpack_from(data, 0)
            if version != FORMAT_VERSION:
                raise ManifestError(f"manifest format version {version} is not one this walrusfs reads "
                                    f"(it reads {FORMAT_VERSION}): upgrade walrusfs")
            if flags & ~FLAG_TIMES or page_entries == 0:
                raise ManifestError(f"manifest header flags {flags:#x} or page size {page_entries} unknown")
            (name_length,) = struct.unpack_from("<H", data, _HEADER.size)
            start = _HEADER.size + 2
            name = data[start:start + name_length].decode()
            root = data[start + name_length:]
        except (struct.error, UnicodeDecodeError) as error:
            raise ManifestError(f"malformed manifest header: {error}") from None
        if len(root) != HASH_SIZE:
            raise ManifestError("manifest header: the tree root is not 32 bytes at its end")
        header = cls(entries, files, file_bytes, root, name, bool(flags & FLAG_TIMES), page_entries, version)
        if header.encode() != data:
            raise ManifestError("manifest header is not in canonical form")
        return header


@dataclass(frozen=True)
class Manifest:
    """The whole covered part: header, and every entry, split into pages of ``page_entries``."""

    header: Header
    pages: tuple[tuple[Entry, ...], ...]
    page_roots: tuple[bytes, ...]
    encoded_pages: tuple[bytes, ...]

    @property
    def dataset_id(self) -> DatasetId:
        return self.header.dataset_id

    @property
    def entries(self) -> Iterable[Entry]:
        for page in self.pages:
            yield from page


def build(entries: Iterable[Entry], name: str = "", times: bool = False,
          page_entries: int = PAGE_ENTRIES) -> Manifest:
    """The manifest of ``entries`` (in any order: they are sorted here; a path twice is refused)."""
    ordered = sorted(entries, key=lambda entry: entry.path)
    for before, after in itertools.pairwise(ordered):
        if before.path == after.path:
            raise ManifestError(f"path {after.display!r} twice")
    pages, roots, encoded = [], [], []
    for start in range(0, len(ordered), page_entries):
        page = tuple(ordered[start:start + page_entries])
        records = [entry.encode(times) for entry in page]
        pages.append(page)
        roots.append(merkle_root([leaf(record) for record in records]))
        encoded.append(encode_page(records))
    files = [entry for entry in ordered if entry.kind is Kind.FILE]
    header = Header(len(ordered), len(files), sum(entry.size for entry in files), merkle_root(roots), name, times,
                    page_entries)
    return Manifest(header, tuple(pages), tuple(roots), tuple(encoded))


def mode_bits(st_mode: int) -> int:
    return stat.S_IMODE(st_mode)


__all__ = ["EMPTY_ROOT", "FORMAT_VERSION", "PAGE_ENTRIES", "Entry", "Header", "Kind", "Manifest",
           "ManifestError", "build", "check_path", "decode_page", "leaf", "merkle_root"]
