"""Framing shared by every binary format: a 4-byte magic naming the kind, then a format version.

Everything the codec emits travels over HTTP and lives on disk for decades, so each object starts
with ``MAGIC (4 bytes) | version (u8)``; all integers are little-endian. A reader that meets a
version newer than it knows refuses with a message saying so, instead of guessing; a new version
of a format gets a new number, and readers keep understanding the old ones.
"""

from __future__ import annotations

import struct


class FormatError(ValueError):
    """Bytes that are not a well-formed object of the expected kind and version."""


def check_header(data: bytes | memoryview, magic: bytes, known_versions: tuple[int, ...], what: str) -> int:
    if len(data) < 5:
        raise FormatError(f"{what}: {len(data)} bytes is too short to be one")
    if bytes(data[:4]) != magic:
        raise FormatError(f"{what}: bad magic {bytes(data[:4])!r}, expected {magic!r}")
    version = data[4]
    if version not in known_versions:
        raise FormatError(
            f"{what}: format version {version} is not one this walrusfs reads "
            f"({', '.join(map(str, known_versions))}); a newer walrusfs may"
        )
    return version


def unpack(fmt: struct.Struct, data: bytes | memoryview, offset: int, what: str) -> tuple:
    if len(data) < offset + fmt.size:
        raise FormatError(f"{what}: truncated ({len(data)} bytes)")
    return fmt.unpack_from(data, offset)
