"""The pyfuse3 filesystem: POSIX operations over the metadata database and the block store.

File data lives in blocks of ``block_size`` bytes (the last one shorter). Writes go into per-inode
dirty buffers; a buffer is staged (hashed, deduplicated, written to the staging directory) as soon
as it is full, when the file is flushed, and when the buffers outgrow their bound. fsync waits until
every block of the file is in a certified blob. The kernel's writeback cache merges small writes.

A directory's st_nlink is 2 + its subdirectories, as on ext4, xfs and tmpfs (schema I10).
Reading does not update atime (as with the noatime mount option).

POSIX ACLs: the kernel checks them (FUSE_POSIX_ACL, which implies default_permissions) with the
ACLs this class returns from getxattr; this class keeps them and the mode in step (acl.py) and
gives new entries their directory's default ACL.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

import pyfuse3
import trio
from pyfuse3 import FUSEError

from .acl import ACCESS, DEFAULT, Acl, AclError
from .blocks import BlockCorruptError, BlockStore
from .db import Database
from .mount_status import CONTROL_PREFIX
from .uploader import Uploader, UploadError

log = logging.getLogger(__name__)

ROOT = pyfuse3.ROOT_INODE
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_ATTR_COLUMNS = "id, mode, uid, gid, rdev, size, atime_ns, mtime_ns, ctime_ns, refcount, subdirs"
NAME_MAX = 255  # bytes in one name, as statfs says
_TIMEOUT = 300.0  # the kernel may cache names and attributes: nobody else changes them
_READAHEAD_EVERY = 4  # blocks between read-ahead checks of a file being read
_READAHEAD_BLOBS = 3  # blobs fetched ahead at most per check


def _now() -> int:
    return time.time_ns()


def _check_name(name: bytes) -> None:
    """Every operation that takes a name refuses one longer than NAME_MAX, as local filesystems do
    (a lookup of it must not say ENOENT, nor a link or rename create it)."""
    if len(name) > NAME_MAX:
        raise FUSEError(errno.ENAMETOOLONG)


class WalrusOperations(pyfuse3.Operations):
    enable_writeback_cache = True
    supports_dot_lookup = True
    enable_acl = True  # FUSE_POSIX_ACL: the kernel enforces the ACLs getxattr returns

    def __init__(self, db: Database, blocks: BlockStore, uploader: Uploader, block_size: int,
                 staging_limit: int, status: Callable[[], dict] | None = None,
                 dirty_limit: int = 32 << 20, readahead_bytes: int = 96 << 20) -> None:
        super().__init__()
        self.db = db
        self.blocks = blocks
        self.uploader = uploader
        self.bs = block_size
        self.staging_limit = staging_limit
        self.status = status or (lambda: {})
        self.dirty_limit = dirty_limit
        self.dirty: dict[int, dict[int, bytearray]] = {}
        self.dirty_bytes = 0
        # Sizes grown by writes still in dirty buffers: recorded only with the staged data, so a
        # crash never leaves a file claiming bytes it lost (they would read as zeros).
        self.pending_size: dict[int, int] = {}
        self.open_count: dict[int, int] = defaultdict(int)
        self.lookup_count: dict[int, int] = defaultdict(int)
        self.locks: dict[int, trio.Lock] = defaultdict(trio.Lock)
        self.nursery: trio.Nursery | None = None  # for readahead, set by the mount
        self.readahead_blocks = max(readahead_bytes // block_size, 1)
        # More control xattrs of the root (walrusfs.<name>), set by the mount: e.g. snapshot.
        self.controls: dict[bytes, Callable[[], Awaitable[None]]] = {}
        # Set by a writable mount: raises OSError unless this writer provably holds the filesystem
        # (its writer lease), so that fsync never reports durable what another writer may discard.
        self.durability_guard: Callable[[], Awaitable[None]] | None = None

    # --- attributes ---------------------------------------------------------------------------

    def _row(self, inode: int) -> tuple:
        row = self.db.get_row(f"SELECT {_ATTR_COLUMNS} FROM inodes WHERE id=?", (inode,))
        if row is None:
            raise FUSEError(errno.ENOENT)
        pending = self.pending_size.get(inode)
        if pending is not None and pending > row[5]:
            row = (*row[:5], pending, *row[6:])
        return row

    def _entry(self, row: tuple) -> pyfuse3.EntryAttributes:
        inode, mode, uid, gid, rdev, size, atime, mtime, ctime, refcount, subdirs = row
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = inode
        entry.generation = 0
        entry.entry_timeout = _TIMEOUT
        entry.attr_timeout = _TIMEOUT
        entry.st_mode = mode
        if stat.S_ISDIR(mode):  # its name, its ".", each subdirectory's ".."; 0 once removed
            entry.st_nlink = 2 + subdirs if refcount else 0
        else:
            entry.st_nlink = refcount
        entry.st_uid = uid
        entry.st_gid = gid
        entry.st_rdev = rdev
        entry.st_size = size
        entry.st_blksize = self.bs
        entry.st_blocks = (size + 511) // 512
        entry.st_atime_ns = atime
        entry.st_mtime_ns = mtime
        entry.st_ctime_ns = ctime
        return entry

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        return self._entry(self._row(inode))

    async def lookup(self, parent: int, name: bytes, ctx: pyfuse3.RequestContext | None = None):
        if name == b".":
            inode = parent
        elif len(name) > NAME_MAX:
            raise FUSEError(errno.ENAMETOOLONG)
        elif name == b"..":
            inode = ROOT if parent == ROOT else self.db.get_val(
                "SELECT parent FROM dirents WHERE inode=? LIMIT 1", (parent,))
        else:
            inode = self.db.get_val("SELECT inode FROM dirents WHERE parent=? AND name=?", (parent, name))
        if inode is None:
            raise FUSEError(errno.ENOENT)
        entry = self._entry(self._row(inode))
        self.lookup_count[inode] += 1
        return entry

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self.lookup_count[inode] -= count
            if self.lookup_count[inode] <= 0:
                del self.lookup_count[inode]
                self._maybe_purge(inode)

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        now = _now()
        async with self.locks[inode]:
            if fields.update_size:
                await self._truncate(inode, attr.st_size)
            with self.db.transaction():
                if fields.update_mode:
                    mode = self._row(inode)[1]
                    self.db.execute("UPDATE inodes SET mode=? WHERE id=?",
                                    (stat.S_IFMT(mode) | stat.S_IMODE(attr.st_mode), inode))
                    self._chmod_acl(inode, attr.st_mode)
                if fields.update_uid:
                    self.db.execute("UPDATE inodes SET uid=? WHERE id=?", (attr.st_uid, inode))
                if fields.update_gid:
                    self.db.execute("UPDATE inodes SET gid=? WHERE id=?", (attr.st_gid, inode))
                if fields.update_atime:
                    self.db.execute("UPDATE inodes SET atime_ns=? WHERE id=?", (attr.st_atime_ns, inode))
                if fields.update_mtime:
                    self.db.execute("UPDATE inodes SET mtime_ns=? WHERE id=?", (attr.st_mtime_ns, inode))
                ctime = attr.st_ctime_ns if fields.update_ctime else now
                self.db.execute("UPDATE inodes SET ctime_ns=? WHERE id=?", (ctime, inode))
        return self._entry(self._row(inode))

    # --- names ---------------------------------------------------------------------------------

    def _create_inode(self, parent: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext,
                      rdev: int = 0, target: bytes | None = None) -> pyfuse3.EntryAttributes:
        _check_name(name)
        parent_row = self._row(parent)
        if not stat.S_ISDIR(parent_row[1]):
            raise FUSEError(errno.ENOTDIR)
        if parent_row[9] == 0:  # a directory that was removed while still open
            raise FUSEError(errno.ENOENT)
        now = _now()
        inherited = None if target is not None else self._default_acl(parent)
        if inherited is not None:  # the default ACL takes the umask's place (acl(5))
            access = inherited.masked_by(mode)
            mode = (mode & ~0o777) | access.mode_bits()
        elif target is None:
            # The kernel applied the umask already unless it was asked not to (fuse_ext.py).
            mode &= ~ctx.umask
        gid = ctx.gid
        if parent_row[1] & stat.S_ISGID:  # a setgid directory passes its group on, and to directories the bit
            gid = parent_row[3]
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        with self.db.transaction():
            if self.db.get_val("SELECT 1 FROM dirents WHERE parent=? AND name=?", (parent, name)):
                raise FUSEError(errno.EEXIST)
            inode = self.db.rowid(
                "INSERT INTO inodes (mode, uid, gid, rdev, size, atime_ns, mtime_ns, ctime_ns, refcount)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)",
                (mode, ctx.uid, gid, rdev, len(target) if target is not None else 0, now, now, now))
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
        self.lookup_count[inode] += 1
        return self._entry(self._row(inode))

    async def mknod(self, parent: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext):
        return self._create_inode(parent, name, mode, ctx, rdev=rdev)

    async def mkdir(self, parent: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext):
        return self._create_inode(parent, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx)

    async def symlink(self, parent: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext):
        return self._create_inode(parent, name, stat.S_IFLNK | 0o777, ctx, target=target)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        target = self.db.get_val("SELECT target FROM symlinks WHERE inode=?", (inode,))
        if target is None:
            raise FUSEError(errno.EINVAL)
        return target

    async def create(self, parent: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext):
        entry = self._create_inode(parent, name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        self.open_count[entry.st_ino] += 1
        return pyfuse3.FileInfo(fh=entry.st_ino), entry

    async def link(self, inode: int, new_parent: int, new_name: bytes, ctx: pyfuse3.RequestContext):
        _check_name(new_name)
        row = self._row(inode)
        if stat.S_ISDIR(row[1]):
            raise FUSEError(errno.EPERM)
        if not stat.S_ISDIR(self._row(new_parent)[1]):
            raise FUSEError(errno.ENOTDIR)
        now = _now()
        with self.db.transaction():
            if self.db.get_val("SELECT 1 FROM dirents WHERE parent=? AND name=?", (new_parent, new_name)):
                raise FUSEError(errno.EEXIST)
            self.db.execute("INSERT INTO dirents (parent, name, inode) VALUES (?, ?, ?)",
                            (new_parent, new_name, inode))
            self.db.execute("UPDATE inodes SET refcount=refcount+1, ctime_ns=? WHERE id=?", (now, inode))
            self.db.execute("UPDATE inodes SET mtime_ns=?, ctime_ns=? WHERE id=?", (now, now, new_parent))
        self.lookup_count[inode] += 1
        return self._entry(self._row(inode))

    def _child(self, parent: int, name: bytes) -> int:
        _check_name(name)
        inode = self.db.get_val("SELECT inode FROM dirents WHERE parent=? AND name=?", (parent, name))
        if inode is None:
            raise FUSEError(errno.ENOENT)
        return inode

    def _is_empty_dir(self, inode: int) -> bool:
        return self.db.get_val("SELECT 1 FROM dirents WHERE parent=? LIMIT 1", (inode,)) is None

    def _remove_entry(self, parent: int, name: bytes, inode: int) -> None:
        """Delete one name of ``inode``; the inode goes when no name, handle or lookup is left."""
        now = _now()
        subdir = 1 if stat.S_ISDIR(self._row(inode)[1]) else 0
        self.db.execute("DELETE FROM dirents WHERE parent=? AND name=?", (parent, name))
        self.db.execute("UPDATE inodes SET refcount=refcount-1, ctime_ns=? WHERE id=?", (now, inode))
        self.db.execute("UPDATE inodes SET mtime_ns=?, ctime_ns=?, subdirs=subdirs-? WHERE id=?",
                        (now, now, subdir, parent))

    async def unlink(self, parent: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        inode = self._child(parent, name)
        if stat.S_ISDIR(self._row(inode)[1]):
            raise FUSEError(errno.EISDIR)
        with self.db.transaction():
            self._remove_entry(parent, name, inode)
        self._maybe_purge(inode)

    async def rmdir(self, parent: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        inode = self._child(parent, name)
        if not stat.S_ISDIR(self._row(inode)[1]):
            raise FUSEError(errno.ENOTDIR)
        if not self._is_empty_dir(inode):
            raise FUSEError(errno.ENOTEMPTY)
        with self.db.transaction():
            self._remove_entry(parent, name, inode)
        self._maybe_purge(inode)

    def _is_ancestor(self, ancestor: int, inode: int) -> bool:
        while inode != ROOT:
            if inode == ancestor:
                return True
            parent = self.db.get_val("SELECT parent FROM dirents WHERE inode=? LIMIT 1", (inode,))
            if parent is None:
                return False
            inode = parent
        return ancestor == ROOT

    async def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
                     flags: int, ctx: pyfuse3.RequestContext) -> None:
        inode = self._child(old_parent, old_name)
        _check_name(new_name)
        is_dir = stat.S_ISDIR(self._row(inode)[1])
        if is_dir and new_parent != old_parent and self._is_ancestor(inode, new_parent):
            raise FUSEError(errno.EINVAL)  # a directory cannot move inside itself
        target = self.db.get_val("SELECT inode FROM dirents WHERE parent=? AND name=?", (new_parent, new_name))
        now = _now()
        if flags & RENAME_EXCHANGE:
            if target is None:
                raise FUSEError(errno.ENOENT)
            target_is_dir = stat.S_ISDIR(self._row(target)[1])
            if target_is_dir and self._is_ancestor(target, old_parent):
                raise FUSEError(errno.EINVAL)
            with self.db.transaction():
                # A directory that changes parent moves one ".." from one count to the other.
                self._move_subdir(old_parent, new_parent, int(is_dir) - int(target_is_dir))
                self.db.execute("UPDATE dirents SET inode=? WHERE parent=? AND name=?", (target, old_parent, old_name))
                self.db.execute("UPDATE dirents SET inode=? WHERE parent=? AND name=?", (inode, new_parent, new_name))
                self.db.execute("UPDATE inodes SET ctime_ns=? WHERE id IN (?, ?)", (now, inode, target))
                self.db.execute("UPDATE inodes SET mtime_ns=?, ctime_ns=? WHERE id IN (?, ?)",
                                (now, now, old_parent, new_parent))
            return
        if target == inode:
            return  # two names of one file: POSIX says do nothing
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise FUSEError(errno.EEXIST)
            target_is_dir = stat.S_ISDIR(self._row(target)[1])
            if is_dir and not target_is_dir:
                raise FUSEError(errno.ENOTDIR)
            if target_is_dir and not is_dir:
                raise FUSEError(errno.EISDIR)
            if target_is_dir and not self._is_empty_dir(target):
                raise FUSEError(errno.ENOTEMPTY)
        with self.db.transaction():
            if target is not None:
                self._remove_entry(new_parent, new_name, target)
            self.db.execute("UPDATE dirents SET parent=?, name=? WHERE parent=? AND name=?",
                            (new_parent, new_name, old_parent, old_name))
            self._move_subdir(old_parent, new_parent, int(is_dir))
            self.db.execute("UPDATE inodes SET ctime_ns=? WHERE id=?", (now, inode))
            self.db.execute("UPDATE inodes SET mtime_ns=?, ctime_ns=? WHERE id IN (?, ?)",
                            (now, now, old_parent, new_parent))
        if target is not None:
            self._maybe_purge(target)

    def _move_subdir(self, old_parent: int, new_parent: int, count: int) -> None:
        """``count`` subdirectories moved from old_parent to new_parent (I10). In a transaction."""
        if count and old_parent != new_parent:
            self.db.execute("UPDATE inodes SET subdirs=subdirs-? WHERE id=?", (count, old_parent))
            self.db.execute("UPDATE inodes SET subdirs=subdirs+? WHERE id=?", (count, new_parent))

    def purge_orphans(self) -> int:
        """At mount, before the kernel knows any inode: delete those no directory names (unlinked
        while open, then a crash or unmount). Returns how many."""
        orphans = [i for (i,) in self.db.execute("SELECT id FROM inodes WHERE refcount=0 AND id != ?", (ROOT,))]
        for inode in orphans:
            self._maybe_purge(inode)
        return len(orphans)

    def _maybe_purge(self, inode: int) -> None:
        """Delete an inode and release its blocks once nothing refers to it any more."""
        if inode == ROOT or self.lookup_count.get(inode) or self.open_count.get(inode):
            return
        if self.db.get_val("SELECT refcount FROM inodes WHERE id=?", (inode,)) != 0:
            return
        self._drop_dirty(inode)
        with self.db.transaction():
            for (block,) in self.db.execute("SELECT block FROM inode_blocks WHERE inode=?", (inode,)).fetchall():
                self.blocks.release(block)
            self.db.execute("DELETE FROM inode_blocks WHERE inode=?", (inode,))
            self.db.execute("DELETE FROM xattrs WHERE inode=?", (inode,))
            self.db.execute("DELETE FROM symlinks WHERE inode=?", (inode,))
            self.db.execute("DELETE FROM inodes WHERE id=?", (inode,))
        self.locks.pop(inode, None)

    # --- directories ---------------------------------------------------------------------------

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if not stat.S_ISDIR(self._row(inode)[1]):
            raise FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # Offsets: 1 after ".", 2 after "..", then dirents.id + 2 after each entry.
        if start_id < 2:
            parent = ROOT if fh == ROOT else self.db.get_val(
                "SELECT parent FROM dirents WHERE inode=? LIMIT 1", (fh,)) or ROOT
            for offset, name, inode in ((1, b".", fh), (2, b"..", parent)):
                if offset <= start_id:
                    continue
                # The kernel takes no reference for "." and "..": no lookup count to add.
                if not pyfuse3.readdir_reply(token, name, self._entry(self._row(inode)), offset):
                    return
            start_id = 2
        start_id -= 2
        while True:
            rows = self.db.execute(
                f"SELECT dirents.id, dirents.name, {', '.join('inodes.' + c for c in _ATTR_COLUMNS.split(', '))} "
                "FROM dirents JOIN inodes ON inodes.id = dirents.inode "
                "WHERE dirents.parent=? AND dirents.id>? ORDER BY dirents.id LIMIT 1000",
                (fh, start_id)).fetchall()
            if not rows:
                return
            for row in rows:
                entry = self._entry(row[2:])
                if not pyfuse3.readdir_reply(token, row[1], entry, row[0] + 2):
                    return
                self.lookup_count[entry.st_ino] += 1
                start_id = row[0]

    async def releasedir(self, fh: int) -> None:
        pass

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self.db.sync()

    # --- file data -----------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if stat.S_ISDIR(self._row(inode)[1]):
            raise FUSEError(errno.EISDIR)
        self.open_count[inode] += 1
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh: int, offset: int, length: int) -> bytes:
        inode = fh
        size = self._row(inode)[5]
        end = min(offset + length, size)
        if end <= offset:
            return b""
        parts = []
        position = offset
        while position < end:
            blockno, in_block = divmod(position, self.bs)
            take = min(self.bs - in_block, end - position)
            data = await self._block_bytes(inode, blockno)
            piece = data[in_block : in_block + take]
            if len(piece) < take:
                piece = bytes(piece) + bytes(take - len(piece))  # a hole or a short last block
            parts.append(piece)
            position += take
        return b"".join(parts)

    async def _block_bytes(self, inode: int, blockno: int) -> bytes | bytearray:
        dirty = self.dirty.get(inode)
        if dirty is not None and blockno in dirty:
            return dirty[blockno]
        block = self.db.get_val("SELECT block FROM inode_blocks WHERE inode=? AND blockno=?", (inode, blockno))
        if block is None:
            return b""
        if blockno % _READAHEAD_EVERY == 0:
            self._read_ahead(inode, blockno)
        try:
            return await self.blocks.content(block)
        except BlockCorruptError as error:
            log.error("inode %d block %d: %s", inode, blockno, error)
            raise FUSEError(errno.EIO) from error
        except Exception as error:
            log.error("inode %d block %d could not be read: %s", inode, blockno, error)
            raise FUSEError(errno.EIO) from error

    def _read_ahead(self, inode: int, blockno: int) -> None:
        """Start fetching the blobs that hold the next blocks of a file being read, so sequential
        reads find them cached instead of waiting for the network blob by blob."""
        if self.nursery is None:
            return
        cache = self.blocks.cache
        rows = self.db.execute(
            "SELECT DISTINCT blobs.blob_id FROM inode_blocks "
            "JOIN blocks ON blocks.id = inode_blocks.block JOIN blobs ON blobs.id = blocks.blob "
            "WHERE inode_blocks.inode=? AND inode_blocks.blockno > ? AND inode_blocks.blockno <= ?",
            (inode, blockno, blockno + self.readahead_blocks)).fetchall()
        for (blob_id,) in rows[:_READAHEAD_BLOBS]:
            if not cache.contains(blob_id) and not cache.fetching(blob_id):
                self.nursery.start_soon(self._prefetch, blob_id)

    async def _prefetch(self, blob_id: str) -> None:
        try:
            await self.blocks.cache.ensure(blob_id)
        except Exception as error:  # a read that needs it will fetch again and report
            log.info("read-ahead of blob %s failed: %s", blob_id, error)

    async def write(self, fh: int, offset: int, buf: bytes) -> int:
        inode = fh
        view = memoryview(buf)
        async with self.locks[inode]:
            now = _now()
            end = offset + len(buf)
            # First: staging a full block trims it to the size. A pending size is always above the
            # recorded one, so appends need no database read here.
            pending = self.pending_size.get(inode)
            if end > (pending if pending is not None else self._row(inode)[5]):
                self.pending_size[inode] = end
            if not self.enable_writeback_cache:
                # With the writeback cache the kernel owns a written file's times: it shows its own
                # and sends them in a setattr when it flushes, which a late write must not overwrite.
                self.db.execute("UPDATE inodes SET mtime_ns=?, ctime_ns=? WHERE id=?", (now, now, inode))
            position = offset
            while view:
                blockno, in_block = divmod(position, self.bs)
                take = min(self.bs - in_block, len(view))
                if in_block == 0 and take == self.bs:  # a whole block: staged as it came, no buffer
                    self.dirty.get(inode, {}).pop(blockno, None)
                    await self._stage(inode, blockno, buf if take == len(buf) else bytes(view[:take]))
                    view = view[take:]
                    position += take
                    continue
                block = await self._dirty_block(inode, blockno, whole=False)
                if len(block) < in_block:
                    block.extend(bytes(in_block - len(block)))
                block[in_block : in_block + take] = view[:take]
                view = view[take:]
                position += take
                if in_block + take == self.bs:
                    await self._stage(inode, blockno)
            self._track_dirty()
            if self.dirty_bytes > self.dirty_limit:
                await self._stage_inode(inode)
        return len(buf)

    async def _dirty_block(self, inode: int, blockno: int, whole: bool) -> bytearray:
        blocks = self.dirty.setdefault(inode, {})
        buffer = blocks.get(blockno)
        if buffer is None:
            buffer = bytearray() if whole else bytearray(await self._block_bytes(inode, blockno))
            blocks[blockno] = buffer
        return buffer

    def _track_dirty(self) -> None:
        self.dirty_bytes = sum(len(b) for blocks in self.dirty.values() for b in blocks.values())

    async def _stage(self, inode: int, blockno: int, whole: bytes | None = None) -> None:
        """Turn one dirty buffer (or ``whole``, the block's complete new content) into a staged
        block mapped at (inode, blockno)."""
        buffer = self.dirty.get(inode, {}).pop(blockno, None) if whole is None else whole
        if buffer is None:
            return
        while self.blocks.staged_bytes > self.staging_limit:  # backpressure: uploads catch up
            log.debug("staging full (%d bytes); write waits for uploads", self.blocks.staged_bytes)
            await self.uploader.wait_progress()
        size = self._row(inode)[5]
        length = min(self.bs, size - blockno * self.bs)
        if length <= 0:
            return  # truncated away meanwhile
        data = buffer if len(buffer) == length and isinstance(buffer, bytes) else bytes(memoryview(buffer)[:length])
        if len(data) < length:
            data += bytes(length - len(data))
        with self.db.transaction():
            self._map_block(inode, blockno, data)
            # The file's recorded size covers this block's bytes from now on, in the same commit.
            self.db.execute("UPDATE inodes SET size=MAX(size, ?) WHERE id=?", (blockno * self.bs + length, inode))
        self._settle_size(inode)
        self.uploader.notify_staged()
        self._track_dirty()

    def _map_block(self, inode: int, blockno: int, data: bytes) -> None:
        """Stage ``data`` as block ``blockno`` of the file. Call inside a transaction."""
        block = self.blocks.stage(data)
        old = self.db.get_val("SELECT block FROM inode_blocks WHERE inode=? AND blockno=?", (inode, blockno))
        self.db.execute("INSERT OR REPLACE INTO inode_blocks (inode, blockno, block) VALUES (?, ?, ?)",
                        (inode, blockno, block))
        if old is not None:
            self.blocks.release(old)

    def _settle_size(self, inode: int) -> None:
        pending = self.pending_size.get(inode)
        if pending is not None and self.db.get_val("SELECT size FROM inodes WHERE id=?", (inode,)) >= pending:
            del self.pending_size[inode]

    async def _stage_inode(self, inode: int) -> None:
        for blockno in sorted(self.dirty.get(inode, {})):
            await self._stage(inode, blockno)
        self.dirty.pop(inode, None)
        pending = self.pending_size.pop(inode, None)
        if pending is not None:  # every written byte is staged: the size may all be recorded
            self.db.execute("UPDATE inodes SET size=MAX(size, ?) WHERE id=?", (pending, inode))

    def _drop_dirty(self, inode: int) -> None:
        self.dirty.pop(inode, None)
        self.pending_size.pop(inode, None)
        self._track_dirty()

    async def _truncate(self, inode: int, size: int) -> None:
        old_size = self._row(inode)[5]
        now = _now()
        if size >= old_size:
            self.pending_size.pop(inode, None)
            self.db.execute("UPDATE inodes SET size=?, mtime_ns=?, ctime_ns=? WHERE id=?", (size, now, now, inode))
            return
        last = (size - 1) // self.bs if size else -1  # the last block that keeps any byte
        for blockno in [b for b in self.dirty.get(inode, {}) if b > last]:
            del self.dirty[inode][blockno]
        cut = None
        if size % self.bs:
            # The kept block, cut at the new end, is staged in the same commit as the new size: a
            # crash never leaves its old tail to reappear if the file grows again.
            buffer = await self._dirty_block(inode, last, whole=False)
            cut = bytes(buffer[: size % self.bs])
            cut += bytes(size % self.bs - len(cut))
            while self.blocks.staged_bytes > self.staging_limit:
                await self.uploader.wait_progress()
            self.dirty.get(inode, {}).pop(last, None)
        with self.db.transaction():
            if cut is not None:
                self._map_block(inode, last, cut)
            for (block,) in self.db.execute(
                    "SELECT block FROM inode_blocks WHERE inode=? AND blockno>?", (inode, last)).fetchall():
                self.blocks.release(block)
            self.db.execute("DELETE FROM inode_blocks WHERE inode=? AND blockno>?", (inode, last))
            self.db.execute("UPDATE inodes SET size=?, mtime_ns=?, ctime_ns=? WHERE id=?", (size, now, now, inode))
        self.pending_size.pop(inode, None)
        if cut is not None:
            self.uploader.notify_staged()
        self._track_dirty()

    async def fallocate(self, inode: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2) (reached through fuse_ext.py). Plain mode and FALLOC_FL_ZERO_RANGE grow the
        file to offset+length unless FALLOC_FL_KEEP_SIZE; FALLOC_FL_PUNCH_HOLE and ZERO_RANGE make
        the range read as zeros: whole blocks become holes (their references released), the
        partial blocks at its ends are rewritten. Nothing is reserved: the bytes live on the
        storage network, whose capacity no single client can hold back (README, "fallocate")."""
        if mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            raise FUSEError(errno.EOPNOTSUPP)  # collapse, insert, unshare ranges: not offered
        if offset < 0 or length <= 0:
            raise FUSEError(errno.EINVAL)
        async with self.locks[inode]:
            row = self._row(inode)
            if not stat.S_ISREG(row[1]):
                raise FUSEError(errno.ENODEV)
            if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                await self._zero_range(inode, offset, min(offset + length, row[5]))
            if not mode & FALLOC_FL_KEEP_SIZE and offset + length > row[5]:
                await self._truncate(inode, offset + length)  # growing: a hole up to the new end
            else:
                self.db.execute("UPDATE inodes SET ctime_ns=? WHERE id=?", (_now(), inode))

    async def _zero_range(self, inode: int, start: int, end: int) -> None:
        """Make [start, end) read as zeros; end is within the file."""
        if end <= start:
            return
        first_whole = -(-start // self.bs)
        end_whole = end // self.bs  # blocks first_whole .. end_whole-1 lie wholly inside
        for blockno in {start // self.bs, (end - 1) // self.bs}:
            if first_whole <= blockno < end_whole:
                continue
            mapped = self.db.get_val("SELECT 1 FROM inode_blocks WHERE inode=? AND blockno=?", (inode, blockno))
            if not mapped and blockno not in self.dirty.get(inode, {}):
                continue  # a hole already
            buffer = await self._dirty_block(inode, blockno, whole=False)
            lo = max(start - blockno * self.bs, 0)
            hi = min(end - blockno * self.bs, len(buffer))
            if hi > lo:
                buffer[lo:hi] = bytes(hi - lo)
            await self._stage(inode, blockno)
        if end_whole > first_whole:
            for blockno in [b for b in self.dirty.get(inode, {}) if first_whole <= b < end_whole]:
                del self.dirty[inode][blockno]
            with self.db.transaction():
                for (block,) in self.db.execute(
                        "SELECT block FROM inode_blocks WHERE inode=? AND blockno>=? AND blockno<?",
                        (inode, first_whole, end_whole)).fetchall():
                    self.blocks.release(block)
                self.db.execute("DELETE FROM inode_blocks WHERE inode=? AND blockno>=? AND blockno<?",
                                (inode, first_whole, end_whole))
        now = _now()
        self.db.execute("UPDATE inodes SET mtime_ns=?, ctime_ns=? WHERE id=?", (now, now, inode))
        self._track_dirty()

    async def flush(self, fh: int) -> None:
        async with self.locks[fh]:
            await self._stage_inode(fh)

    async def release(self, fh: int) -> None:
        async with self.locks[fh]:
            await self._stage_inode(fh)
        self.open_count[fh] -= 1
        if self.open_count[fh] <= 0:
            del self.open_count[fh]
            self._maybe_purge(fh)

    async def fsync(self, fh: int, datasync: bool) -> None:
        """Return only when every block of the file is in a certified blob (EIO if not possible)."""
        async with self.locks[fh]:
            await self._stage_inode(fh)
        blocks = [b for (b,) in self.db.execute(
            "SELECT blocks.id FROM inode_blocks JOIN blocks ON blocks.id = inode_blocks.block "
            "WHERE inode_blocks.inode=? AND blocks.blob IS NULL", (fh,))]
        try:
            if blocks:
                await self.uploader.wait_certified(blocks)
            if self.durability_guard is not None:
                await self.durability_guard()
        except OSError as error:  # UploadError, or the writer lease lost
            log.error("fsync of inode %d failed: %s", fh, error)
            raise FUSEError(errno.EIO) from error
        self.db.sync()

    async def flush_all(self) -> None:
        """Stage every dirty buffer and wait until everything staged is certified."""
        for inode in list(self.dirty):
            async with self.locks[inode]:
                await self._stage_inode(inode)
        await self.uploader.wait_certified()
        self.db.sync()

    # --- extended attributes -----------------------------------------------------------------

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        if inode == ROOT and name.startswith(CONTROL_PREFIX):
            await self._control(name[len(CONTROL_PREFIX):], value)
            return
        row = self._row(inode)
        with self.db.transaction():
            if name in (ACCESS, DEFAULT):
                self._set_acl(row, name, value, ctx)
            else:
                self._store_xattr(inode, name, value)
            self.db.execute("UPDATE inodes SET ctime_ns=? WHERE id=?", (_now(), inode))

    def _store_xattr(self, inode: int, name: bytes, value: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO xattrs (inode, name, value) VALUES (?, ?, ?)", (inode, name, value))

    def _set_acl(self, row: tuple, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        """Set an ACL the kernel has checked the caller may set (owner or CAP_FOWNER). In a transaction."""
        inode, mode, gid = row[0], row[1], row[3]
        try:
            acl = Acl.parse(value)
        except AclError as error:
            log.info("inode %d: %s refused: %s", inode, name.decode(), error)
            raise FUSEError(errno.EINVAL) from error
        if name == DEFAULT:
            if not stat.S_ISDIR(mode):
                raise FUSEError(errno.EACCES)  # as the kernel says for a default ACL of a file
            self._store_xattr(inode, name, acl.to_bytes())
            return
        new_mode = (mode & ~0o777) | acl.mode_bits()
        if new_mode & stat.S_ISGID and not self._in_group(ctx, gid):
            # What the kernel asks of us with FUSE_SETXATTR_ACL_KILL_SGID, which libfuse 3.14 does
            # not pass on: setting an ACL drops setgid unless the caller is in the file's group.
            new_mode &= ~stat.S_ISGID
        self.db.execute("UPDATE inodes SET mode=? WHERE id=?", (new_mode, inode))
        if acl.is_minimal:  # the mode says it all: nothing to store
            self.db.execute("DELETE FROM xattrs WHERE inode=? AND name=?", (inode, name))
        else:
            self._store_xattr(inode, name, acl.to_bytes())

    @staticmethod
    def _in_group(ctx: pyfuse3.RequestContext, gid: int) -> bool:
        if ctx.uid == 0 or ctx.gid == gid:
            return True
        try:
            return gid in pyfuse3.get_sup_groups(ctx.pid)
        except (OSError, ValueError):  # the caller is gone: nobody to keep setgid for
            return False

    def _chmod_acl(self, inode: int, mode: int) -> None:
        """chmod of a file with an extended ACL sets its owner, mask and other entries. In a transaction."""
        value = self.db.get_val("SELECT value FROM xattrs WHERE inode=? AND name=?", (inode, ACCESS))
        if value is not None:
            self._store_xattr(inode, ACCESS, Acl.parse(value).with_mode(mode).to_bytes())

    def _default_acl(self, directory: int) -> Acl | None:
        value = self.db.get_val("SELECT value FROM xattrs WHERE inode=? AND name=?", (directory, DEFAULT))
        return None if value is None else Acl.parse(value)

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if inode == ROOT and name == CONTROL_PREFIX + b"status":
            try:
                return json.dumps(self.status()).encode()
            except Exception as error:  # a bug in a report must not take the whole mount down
                log.exception("building the status report failed")
                raise FUSEError(errno.EIO) from error
        value = self.db.get_val("SELECT value FROM xattrs WHERE inode=? AND name=?", (inode, name))
        if value is None:
            raise FUSEError(errno.ENODATA)
        return value

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return [n for (n,) in self.db.execute("SELECT name FROM xattrs WHERE inode=?", (inode,))]

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        cursor = self.db.execute("DELETE FROM xattrs WHERE inode=? AND name=?", (inode, name))
        if not cursor.rowcount and name not in (ACCESS, DEFAULT):  # removing no ACL succeeds, as on ext4
            raise FUSEError(errno.ENODATA)

    async def _control(self, command: bytes, value: bytes) -> None:
        if command == b"flush":
            try:
                await self.flush_all()
            except UploadError as error:
                log.error("flush failed: %s", error)
                raise FUSEError(errno.EIO) from error
            return
        handler = self.controls.get(command)
        if handler is None:
            raise FUSEError(errno.EINVAL)
        try:
            await handler()
        except OSError as error:
            raise FUSEError(error.errno or errno.EIO) from error

    # --- the whole filesystem ------------------------------------------------------------------

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        used = int(self.db.get_val("SELECT COALESCE(SUM(size), 0) FROM blocks"))
        files = int(self.db.get_val("SELECT COUNT(*) FROM inodes"))
        data.f_bsize = self.bs
        data.f_frsize = 4096
        capacity = max(1 << 50, used * 2)  # the network's capacity is not known here: say "plenty"
        data.f_blocks = capacity // data.f_frsize
        data.f_bfree = data.f_bavail = (capacity - used) // data.f_frsize
        data.f_files = max(1 << 32, files * 2)
        data.f_ffree = data.f_favail = data.f_files - files
        data.f_namemax = 255
        return data


def make_root(db: Database, uid: int | None = None, gid: int | None = None) -> None:
    now = _now()
    db.execute("INSERT INTO inodes (id, mode, uid, gid, rdev, size, atime_ns, mtime_ns, ctime_ns, refcount) "
               "VALUES (?, ?, ?, ?, 0, 0, ?, ?, ?, 1)",
               (ROOT, stat.S_IFDIR | 0o755, os.getuid() if uid is None else uid,
                os.getgid() if gid is None else gid, now, now, now))
