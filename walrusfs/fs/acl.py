"""POSIX ACLs in the Linux xattr format, and how they relate to a file's mode.

The kernel hands a FUSE filesystem ACLs as the values of the xattrs ``system.posix_acl_access``
and ``system.posix_acl_default``, in the format of <linux/posix_acl_xattr.h>: a little-endian u32
version (2), then one 8-byte entry per ACL entry: u16 tag, u16 permissions (rwx = 4|2|1), u32 uid
or gid (unused for the owner, owning group, mask and other entries). walrusfs stores those bytes as
they came, in the xattrs table, and keeps the mode in step the way local Linux filesystems do:

- The access ACL's owner, group-class and other entries *are* the mode's permission bits. The
  group class is the mask entry when there is one, else the owning group's entry.
- An access ACL with no named user or group entry says nothing the mode does not: setting one only
  changes the mode, and nothing is stored.
- chmod rewrites the stored access ACL's owner, mask (or owning group) and other entries.
- A new file or directory in a directory with a default ACL gets that ACL as its access ACL, each
  class entry cut down to what the creating call's mode allows (a directory also inherits the
  default ACL itself); without a default ACL the mode is the caller's, less its umask.

Pure functions only: the namespace applies them (namespace.py).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ACCESS = b"system.posix_acl_access"
DEFAULT = b"system.posix_acl_default"
NAMES = (ACCESS, DEFAULT)

VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED_ID = 0xFFFFFFFF
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
_ORDER = {USER_OBJ: 0, USER: 1, GROUP_OBJ: 2, GROUP: 3, MASK: 4, OTHER: 5}


class AclError(ValueError):
    """Bytes that are not a valid ACL (the caller answers EINVAL)."""


@dataclass(frozen=True)
class Entry:
    tag: int
    perm: int
    id: int = UNDEFINED_ID


@dataclass(frozen=True)
class Acl:
    entries: tuple[Entry, ...]

    @classmethod
    def parse(cls, value: bytes) -> Acl:
        """Parse and validate: one owner, owning-group and other entry, a mask whenever there are
        named entries, no duplicate names, permissions within rwx."""
        if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _ENTRY.size:
            raise AclError(f"an ACL of {len(value)} bytes is not a 4-byte header plus 8-byte entries")
        (version,) = _HEADER.unpack_from(value)
        if version != VERSION:
            raise AclError(f"ACL format version {version} is not the Linux xattr version {VERSION}")
        entries = []
        for offset in range(_HEADER.size, len(value), _ENTRY.size):
            tag, perm, ident = _ENTRY.unpack_from(value, offset)
            if tag not in _ORDER:
                raise AclError(f"unknown ACL entry tag {tag:#x}")
            if perm & ~7:
                raise AclError(f"ACL entry permissions {perm:#o} go beyond rwx")
            entries.append(Entry(tag, perm, ident if tag in (USER, GROUP) else UNDEFINED_ID))
        acl = cls(tuple(sorted(entries, key=lambda e: (_ORDER[e.tag], e.id))))
        counts = {tag: sum(1 for e in acl.entries if e.tag == tag) for tag in _ORDER}
        if counts[USER_OBJ] != 1 or counts[GROUP_OBJ] != 1 or counts[OTHER] != 1 or counts[MASK] > 1:
            raise AclError("an ACL needs exactly one owner, owning-group and other entry, and at most one mask")
        if (counts[USER] or counts[GROUP]) and not counts[MASK]:
            raise AclError("an ACL with named user or group entries needs a mask entry")
        named = [(e.tag, e.id) for e in acl.entries if e.tag in (USER, GROUP)]
        if len(set(named)) != len(named):
            raise AclError("an ACL names the same user or group twice")
        return acl

    def to_bytes(self) -> bytes:
        return _HEADER.pack(VERSION) + b"".join(_ENTRY.pack(e.tag, e.perm, e.id) for e in self.entries)

    @classmethod
    def from_mode(cls, mode: int) -> Acl:
        return cls((Entry(USER_OBJ, (mode >> 6) & 7), Entry(GROUP_OBJ, (mode >> 3) & 7), Entry(OTHER, mode & 7)))

    def _get(self, tag: int) -> Entry | None:
        return next((e for e in self.entries if e.tag == tag), None)

    @property
    def is_minimal(self) -> bool:
        """True when the mode alone says the same (no named user or group entry)."""
        return not any(e.tag in (USER, GROUP) for e in self.entries)

    def mode_bits(self) -> int:
        """The permission bits (0o777) this access ACL stands for."""
        group_class = self._get(MASK) or self._get(GROUP_OBJ)
        owner, other = self._get(USER_OBJ), self._get(OTHER)
        assert owner is not None and group_class is not None and other is not None  # parse() checked
        return owner.perm << 6 | group_class.perm << 3 | other.perm

    def with_mode(self, mode: int) -> Acl:
        """This ACL after chmod(mode): owner, group class and other entries take the mode's bits."""
        group_class = MASK if self._get(MASK) else GROUP_OBJ
        bits = {USER_OBJ: (mode >> 6) & 7, group_class: (mode >> 3) & 7, OTHER: mode & 7}
        return Acl(tuple(Entry(e.tag, bits.get(e.tag, e.perm), e.id) for e in self.entries))

    def masked_by(self, mode: int) -> Acl:
        """A default ACL turned into a new entry's access ACL: each class entry keeps only what
        the creating call's mode allows (as the kernel's posix_acl_create does)."""
        group_class = MASK if self._get(MASK) else GROUP_OBJ
        bits = {USER_OBJ: (mode >> 6) & 7, group_class: (mode >> 3) & 7, OTHER: mode & 7}
        return Acl(tuple(Entry(e.tag, e.perm & bits[e.tag] if e.tag in bits else e.perm, e.id)
                         for e in self.entries))
