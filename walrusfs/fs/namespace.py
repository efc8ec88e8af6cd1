"""The namespace: inodes, directory entries, symlinks, xattrs and POSIX ACLs, with every SQL
statement on those tables (schema.py: inodes, dirents, symlinks, xattrs; invariants I1, I2, I10,
I11, checked by fsck.py).

Inodes come back as ``Inode`` objects, never positional rows. Refusals are ``FsError``s carrying
the errno a local filesystem gives; operations.py turns them into FUSE replies. Nothing here knows
about FUSE, file data or blocks: an inode whose last name goes is left at refcount 0, and the
caller (who knows whether the kernel still holds it) deletes it with ``delete`` once unused.

A directory's st_nlink is 2 + its subdirectories, as on ext4, xfs and tmpfs (I10). New entries get
their directory's default ACL in place of the umask (acl(5)); chmod and ACL changes keep the mode
and the access ACL in step (acl.py).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from .acl import ACCESS, DEFAULT, Acl, AclError
from .db import Database

log = logging.getLogger(__name__)

ROOT = 1  # pyfuse3.ROOT_INODE, which the kernel asks for first
NAME_MAX = 255  # bytes in one name, as statfs says
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_COLUMNS = ("id", "mode", "uid", "gid", "rdev", "size", "atime_ns", "mtime_ns", "ctime_ns", "refcount", "subdirs")
_SELECT = ", ".join(_COLUMNS)


def now_ns() -> int:
    return time.time_ns()


class FsError(OSError):
    """A refused operation: ``errno`` is what the caller is told (ENOENT, EEXIST, ...)."""

    def __init__(self, code: int, what: str = "") -> None:
        super().__init__(code, what or os.strerror(code))


@dataclass(slots=True)
class Inode:
    id: int
    mode: int
    uid: int
    gid: int
    rdev: int
    size: int  # as recorded: bytes still in write-back buffers are not counted (writeback.py)
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    refcount: int  # names (I1); 0: unlinked, alive only while the kernel knows it
    subdirs: int  # directories only (I10)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def nlink(self) -> int:
        if self.is_dir:  # its name, its ".", each subdirectory's ".."; 0 once removed
            return 2 + self.subdirs if self.refcount else 0
        return self.refcount


def check_name(name: bytes) -> None:
    """Every operation that takes a name refuses one longer than NAME_MAX, as local filesystems do
    (a lookup of it must not say ENOENT, nor a link or rename create it)."""
    if len(name) > NAME_MAX:
        raise FsError(errno.ENAMETOOLONG, f"a name of {len(name)} bytes (at most {NAME_MAX})")


class Namespace:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- inodes ------------------------------------------------------------------------------------

    def get(self, inode: int) -> Inode:
        row = self.db.get_row(f"SELECT {_SELECT} FROM inodes WHERE id=?", (inode,))
        if row is None:
            raise FsError(errno.ENOENT, f"no inode {inode}")
        return Inode(*row)

    def recorded_size(self, inode: int) -> int:
        return self.db.get_val("SELECT size FROM inodes WHERE id=?", (inode,))

    def record_size_at_least(self, inode: int, size: int) -> None:
        """The file's bytes up to ``size`` are staged: its recorded size covers them (never shrinks)."""
        self.db.execute("UPDATE inodes SET size=MAX(size, ?) WHERE id=?", (size, inode))

    def set_size(self, inode: int, size: int, now: int | None) -> None:
        """The file's size, and its mtime and ctime set to ``now`` (None: left as they are)."""
        if now is None:
            self.db.execute("UPDATE inodes SET size=? WHERE id=?", (size, inode))
        else:
            self.db.execute("UPDATE inodes SET size=?, mtime_ns=?, ctime_ns=? WHERE id=?", (size, now, now, inode))

    def touch(self, inode: int, now: int, mtime: bool = True) -> None:
        if mtime:
            self.db.execute("UPDATE inodes SET mtime_ns=?, ctime_ns=? WHERE id=?", (now, now, inode))
        else:
            self.db.execute("UPDATE inodes SET ctime_ns=? WHERE id=?", (now, inode))

    def set_attributes(self, inode: int, *, ctime: int, mode: int | None = None, uid: int | None = None,
                       gid: int | None = None, atime: int | None = None, mtime: int | None = None) -> None:
        """chmod/chown/utimes: the given fields, ctime always. chmod keeps an access ACL in step."""
        # One UPDATE of the fields given (tar sets times, owner and mode of every file it unpacks).
        fields = {"uid": uid, "gid": gid, "atime_ns": atime, "mtime_ns": mtime, "ctime_ns": ctime}
        with self.db.transaction():
            if mode is not None:
                fields["mode"] = stat.S_IFMT(self.get(inode).mode) | stat.S_IMODE(mode)
                self._chmod_acl(inode, mode)
            given = {name: value for name, value in fields.items() if value is not None}
            self.db.execute(f"UPDATE inodes SET {', '.join(f'{name}=?' for name in given)} WHERE id=?",
                            (*given.values(), inode))

    def count(self) -> int:
        return int(self.db.get_val("SELECT COUNT(*) FROM inodes"))

    def orphans(self) -> list[int]:
        """Inodes no directory names (unlinked while open, then a crash or unmount)."""
        return [i for (i,) in self.db.execute("SELECT id FROM inodes WHERE refcount=0 AND id != ?", (ROOT,))]

    def is_unlinked(self, inode: int) -> bool:
        return inode != ROOT and self.db.get_val("SELECT refcount FROM inodes WHERE id=?", (inode,)) == 0

    def delete(self, inode: int) -> None:
        """Remove an unlinked inode's row, xattrs and symlink target. Its file data is the caller's
        (writeback.py releases the blocks in the same transaction). In a transaction."""
        self.db.execute("DELETE FROM xattrs WHERE inode=?", (inode,))
        self.db.execute("DELETE FROM symlinks WHERE inode=?", (inode,))
        self.db.execute("DELETE FROM inodes WHERE id=?", (inode,))

    # --- names ------------------------------------------------------------------------------------

    def find(self, parent: int, name: bytes) -> int | None:
        """The inode ``name`` in ``parent`` names, if any (the name's length is the caller's check)."""
        return self.db.get_val("SELECT inode FROM dirents WHERE parent=? AND name=?", (parent, name))

    def child(self, parent: int, name: bytes) -> int:
        check_name(name)
        inode = self.find(parent, name)
        if inode is None:
            raise FsError(errno.ENOENT, f"no entry {name!r} in directory {parent}")
        return inode

    def parent_of(self, inode: int) -> int | None:
        """The directory naming ``inode`` (for a directory, its only one); None if none does."""
        return self.db.get_val("SELECT parent FROM dirents WHERE inode=? LIMIT 1", (inode,))

    def entries(self, parent: int, after: int, limit: int) -> list[tuple[int, bytes, Inode]]:
        """(dirent id, name, inode) of the directory's entries with ids above ``after``, in id order:
        the id is a stable readdir offset."""
        columns = ", ".join("inodes." + c for c in _COLUMNS)
        rows = self.db.execute(
            f"SELECT dirents.id, dirents.name, {columns} FROM dirents JOIN inodes ON inodes.id = dirents.inode "
            "WHERE dirents.parent=? AND dirents.id>? ORDER BY dirents.id LIMIT ?", (parent, after, limit)).fetchall()
        return [(row[0], row[1], Inode(*row[2:])) for row in rows]

    def readlink(self, inode: int) -> bytes:
        target = self.db.get_val("SELECT target FROM symlinks WHERE inode=?", (inode,))
        if target is None:
            raise FsError(errno.EINVAL, f"inode {inode} is not a symlink")
        return target

    def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int, umask: int,
               rdev: int = 0, target: bytes | None = None) -> Inode:
        """A new file, directory, device, fifo or (with ``target``) symlink named ``name`` in ``parent``."""
        check_name(name)
        directory = self.get(parent)
        if not directory.is_dir:
            raise FsError(errno.ENOTDIR, f"inode {parent} is not a directory")
        if directory.refcount == 0:  # a directory that was removed while still open
            raise FsError(errno.ENOENT, f"directory {parent} was removed")
        now = now_ns()
        inherited = None if target is not None else self.default_acl(parent)
        if inherited is not None:  # the default ACL takes the umask's place (acl(5))
            access = inherited.masked_by(mode)
            mode = (mode & ~0o777) | access.mode_bits()
        elif target is None:
            # The kernel applied the umask already unless it was asked not to (fuse_ext.py).
            mode &= ~umask
        if directory.mode & stat.S_ISGID:  # a setgid directory passes its group on, and to directories the bit
            gid = directory.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        with self.db.transaction():
            self._refuse_existing(parent, name)
            inode = self.db.rowid(
                "INSERT INTO inodes (mode, uid, gid, rdev, size, atime_ns, mtime_ns, ctime_ns, refcount)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)",
                (mode, uid, gid, rdev, len(target) if target is not None else 0, now, now, now))
            self.db.execute("INSERT INTO dirents (parent, name, inode) VALUES (?, ?, ?)", (parent, name, inode))
            if target is not None:
                self.db.execute("INSERT INTO symlinks (inode, target) VALUES (?, ?)", (inode, target))
            if inherited is not None:
                if not access.is_minimal:
                    self._store_xattr(inode, ACCESS, access.to_bytes())
                if stat.S_ISDIR(mode):
                    self._store_xattr(inode, DEFAULT, inherited.to_bytes())
            subdir = 1 if stat.S_ISDIR(mode) else 0
            self.db.execute("UPDATE inodes SET mtime_ns=?, ctime_ns=?, subdirs=subdirs+? WHERE id=?",
                            (now, now, subdir, parent))
        # What was just inserted, without reading it back (one query less per file created).
        return Inode(inode, mode, uid, gid, rdev, len(target) if target is not None else 0, now, now, now, 1, 0)

    def link(self, inode: int, new_parent: int, new_name: bytes) -> Inode:
        check_name(new_name)
        if self.get(inode).is_dir:
            raise FsError(errno.EPERM, "a directory cannot have a second name")
        if not self.get(new_parent).is_dir:
            raise FsError(errno.ENOTDIR, f"inode {new_parent} is not a directory")
        now = now_ns()
        with self.db.transaction():
            self._refuse_existing(new_parent, new_name)
            self.db.execute("INSERT INTO dirents (parent, name, inode) VALUES (?, ?, ?)",
                            (new_parent, new_name, inode))
            self.db.execute("UPDATE inodes SET refcount=refcount+1, ctime_ns=? WHERE id=?", (now, inode))
            self.db.execute("UPDATE inodes SET mtime_ns=?, ctime_ns=? WHERE id=?", (now, now, new_parent))
        return self.get(inode)

    def unlink(self, parent: int, name: bytes) -> int:
        """Remove a non-directory's name; returns the inode (unlinked if that was its last name)."""
        inode = self.child(parent, name)
        if self.get(inode).is_dir:
            raise FsError(errno.EISDIR, f"{name!r} is a directory")
        with self.db.transaction():
            self._remove_entry(parent, name, inode)
        return inode

    def rmdir(self, parent: int, name: bytes) -> int:
        """Remove an empty directory's name; returns the inode."""
        inode = self.child(parent, name)
        if not self.get(inode).is_dir:
            raise FsError(errno.ENOTDIR, f"{name!r} is not a directory")
        if not self._is_empty_dir(inode):
            raise FsError(errno.ENOTEMPTY, f"directory {name!r} is not empty")
        with self.db.transaction():
            self._remove_entry(parent, name, inode)
        return inode

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int) -> int | None:
        """rename(2)/renameat2(2). Returns the inode that lost its name to the move, if any (the
        caller deletes it once unused)."""
        inode = self.child(old_parent, old_name)
        check_name(new_name)
        is_dir = self.get(inode).is_dir
        if is_dir and new_parent != old_parent and self._is_ancestor(inode, new_parent):
            raise FsError(errno.EINVAL, "a directory cannot move inside itself")
        target = self.find(new_parent, new_name)
        now = now_ns()
        if flags & RENAME_EXCHANGE:
            if target is None:
                raise FsError(errno.ENOENT, f"no entry {new_name!r} to exchange with")
            target_is_dir = self.get(target).is_dir
            if target_is_dir and self._is_ancestor(target, old_parent):
                raise FsError(errno.EINVAL, "a directory cannot move inside itself")
            with self.db.transaction():
                # A directory that changes parent moves one ".." from one count to the other.
                self._move_subdir(old_parent, new_parent, int(is_dir) - int(target_is_dir))
                self.db.execute("UPDATE dirents SET inode=? WHERE parent=? AND name=?", (target, old_parent, old_name))
                self.db.execute("UPDATE dirents SET inode=? WHERE parent=? AND name=?", (inode, new_parent, new_name))
                self.db.execute("UPDATE inodes SET ctime_ns=? WHERE id IN (?, ?)", (now, inode, target))
                self.db.execute("UPDATE inodes SET mtime_ns=?, ctime_ns=? WHERE id IN (?, ?)",
                                (now, now, old_parent, new_parent))
            return None
        if target == inode:
            return None  # two names of one file: POSIX says do nothing
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise FsError(errno.EEXIST, f"{new_name!r} exists")
            target_is_dir = self.get(target).is_dir
            if is_dir and not target_is_dir:
                raise FsError(errno.ENOTDIR, f"{new_name!r} is not a directory")
            if target_is_dir and not is_dir:
                raise FsError(errno.EISDIR, f"{new_name!r} is a directory")
            if target_is_dir and not self._is_empty_dir(target):
                raise FsError(errno.ENOTEMPTY, f"directory {new_name!r} is not empty")
        with self.db.transaction():
            if target is not None:
                self._remove_entry(new_parent, new_name, target)
            self.db.execute("UPDATE dirents SET parent=?, name=? WHERE parent=? AND name=?",
                            (new_parent, new_name, old_parent, old_name))
            self._move_subdir(old_parent, new_parent, int(is_dir))
            self.db.execute("UPDATE inodes SET ctime_ns=? WHERE id=?", (now, inode))
            self.db.execute("UPDATE inodes SET mtime_ns=?, ctime_ns=? WHERE id IN (?, ?)",
                            (now, now, old_parent, new_parent))
        return target

    def _refuse_existing(self, parent: int, name: bytes) -> None:
        if self.find(parent, name) is not None:
            raise FsError(errno.EEXIST, f"{name!r} exists")

    def _is_empty_dir(self, inode: int) -> bool:
        return self.db.get_val("SELECT 1 FROM dirents WHERE parent=? LIMIT 1", (inode,)) is None

    def _remove_entry(self, parent: int, name: bytes, inode: int) -> None:
        """Delete one name of ``inode`` (I1, I10). In a transaction."""
        now = now_ns()
        subdir = 1 if self.get(inode).is_dir else 0
        self.db.execute("DELETE FROM dirents WHERE parent=? AND name=?", (parent, name))
        self.db.execute("UPDATE inodes SET refcount=refcount-1, ctime_ns=? WHERE id=?", (now, inode))
        self.db.execute("UPDATE inodes SET mtime_ns=?, ctime_ns=?, subdirs=subdirs-? WHERE id=?",
                        (now, now, subdir, parent))

    def _is_ancestor(self, ancestor: int, inode: int) -> bool:
        while inode != ROOT:
            if inode == ancestor:
                return True
            parent = self.parent_of(inode)
            if parent is None:
                return False
            inode = parent
        return ancestor == ROOT

    def _move_subdir(self, old_parent: int, new_parent: int, count: int) -> None:
        """``count`` subdirectories moved from old_parent to new_parent (I10). In a transaction."""
        if count and old_parent != new_parent:
            self.db.execute("UPDATE inodes SET subdirs=subdirs-? WHERE id=?", (count, old_parent))
            self.db.execute("UPDATE inodes SET subdirs=subdirs+? WHERE id=?", (count, new_parent))

    # --- extended attributes and ACLs --------------------------------------------------------------

    def get_xattr(self, inode: int, name: bytes) -> bytes:
        value = self.db.get_val("SELECT value FROM xattrs WHERE inode=? AND name=?", (inode, name))
        if value is None:
            raise FsError(errno.ENODATA, f"inode {inode} has no xattr {name!r}")
        return value

    def list_xattrs(self, inode: int) -> list[bytes]:
        return [n for (n,) in self.db.execute("SELECT name FROM xattrs WHERE inode=?", (inode,))]

    def set_xattr(self, inode: int, name: bytes, value: bytes, in_group: Callable[[int], bool]) -> None:
        """Set an xattr; an ACL (which the kernel checked the caller may set) also sets the mode.
        ``in_group(gid)``: whether the caller is in that group (setting an ACL may keep setgid)."""
        node = self.get(inode)
        with self.db.transaction():
            if name in (ACCESS, DEFAULT):
                self._set_acl(node, name, value, in_group)
            else:
                self._store_xattr(inode, name, value)
            self.db.execute("UPDATE inodes SET ctime_ns=? WHERE id=?", (now_ns(), inode))

    def remove_xattr(self, inode: int, name: bytes) -> None:
        cursor = self.db.execute("DELETE FROM xattrs WHERE inode=? AND name=?", (inode, name))
        if not cursor.rowcount and name not in (ACCESS, DEFAULT):  # removing no ACL succeeds, as on ext4
            raise FsError(errno.ENODATA, f"inode {inode} has no xattr {name!r}")

    def default_acl(self, directory: int) -> Acl | None:
        value = self.db.get_val("SELECT value FROM xattrs WHERE inode=? AND name=?", (directory, DEFAULT))
        return None if value is None else Acl.parse(value)

    def _store_xattr(self, inode: int, name: bytes, value: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO xattrs (inode, name, value) VALUES (?, ?, ?)", (inode, name, value))

    def _set_acl(self, node: Inode, name: bytes, value: bytes, in_group: Callable[[int], bool]) -> None:
        """In a transaction (I11)."""
        try:
            acl = Acl.parse(value)
        except AclError as error:
            log.info("inode %d: %s refused: %s", node.id, name.decode(), error)
            raise FsError(errno.EINVAL, f"{name.decode()}: {error}") from error
        if name == DEFAULT:
            if not node.is_dir:
                raise FsError(errno.EACCES, "only a directory has a default ACL")  # as the kernel says
            self._store_xattr(node.id, name, acl.to_bytes())
            return
        new_mode = (node.mode & ~0o777) | acl.mode_bits()
        if new_mode & stat.S_ISGID and not in_group(node.gid):
            # What the kernel asks of us with FUSE_SETXATTR_ACL_KILL_SGID, which libfuse 3.14 does
            # not pass on: setting an ACL drops setgid unless the caller is in the file's group.
            new_mode &= ~stat.S_ISGID
        self.db.execute("UPDATE inodes SET mode=? WHERE id=?", (new_mode, node.id))
        if acl.is_minimal:  # the mode says it all: nothing to store
            self.db.execute("DELETE FROM xattrs WHERE inode=? AND name=?", (node.id, name))
        else:
            self._store_xattr(node.id, name, acl.to_bytes())

    def _chmod_acl(self, inode: int, mode: int) -> None:
        """chmod of a file with an extended ACL sets its owner, mask and other entries. In a transaction."""
        value = self.db.get_val("SELECT value FROM xattrs WHERE inode=? AND name=?", (inode, ACCESS))
        if value is not None:
            self._store_xattr(inode, ACCESS, Acl.parse(value).with_mode(mode).to_bytes())


def make_root(db: Database, uid: int | None = None, gid: int | None = None) -> None:
    now = now_ns()
    db.execute("INSERT INTO inodes (id, mode, uid, gid, rdev, size, atime_ns, mtime_ns, ctime_ns, refcount) "
               "VALUES (?, ?, ?, ?, 0, 0, ?, ?, ?, 1)",
               (ROOT, stat.S_IFDIR | 0o755, os.getuid() if uid is None else uid,
                os.getgid() if gid is None else gid, now, now, now))
