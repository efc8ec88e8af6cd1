"""The pyfuse3 filesystem: the kernel's requests translated to the namespace (namespace.py: names,
inodes, xattrs, ACLs) and the write-back (writeback.py: file data), and their refusals (FsError)
to errno replies.

This class keeps what only the FUSE session knows: how many lookups the kernel holds of each inode
and how many handles are open (an unlinked inode is deleted when both reach zero), the attribute
replies (EntryAttributes), read-ahead, fsync's durability wait, and the root's control xattrs.
The kernel's writeback cache merges small writes; fsync waits until every block of the file is in
a certified blob. Reading does not update atime (as with the noatime mount option).

POSIX ACLs: the kernel checks them (FUSE_POSIX_ACL, which implies default_permissions) with the
ACLs returned from getxattr; the namespace keeps them and the mode in step.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import stat
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3
import trio
from pyfuse3 import FUSEError

from .blocks import BlockStore
from .db import Database
from .mount_status import CONTROL_PREFIX
from .namespace import (  # noqa: F401 (make_root, NAME_MAX, RENAME_*: this module's API before the split)
    NAME_MAX,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT,
    FsError,
    Inode,
    Namespace,
    make_root,
    now_ns,
)
from .uploader import Uploader, UploadError
from .waits import all_of
from .writeback import WriteBack

log = logging.getLogger(__name__)

assert ROOT == pyfuse3.ROOT_INODE
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
_TIMEOUT = 300.0  # the kernel may cache names and attributes: nobody else changes them
_READAHEAD_EVERY = 4  # blocks between read-ahead checks of a file being read
_READAHEAD_BLOBS = 3  # blobs fetched ahead at most per check

_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])


def _replies(method: _F) -> _F:
    """An FsError from below becomes the FUSE reply with its errno."""

    @functools.wraps(method)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except FsError as error:
            raise FUSEError(error.errno) from error

    return wrapper  # type: ignore[return-value]


def _stale(inode: int, error: FsError, follows: bool) -> FsError:
    """In a mount that ``follows`` new snapshots (follow.py), an inode the kernel knows that the
    database lacks was removed by the writer: ESTALE, as NFS says of a file removed on the server."""
    if error.errno != errno.ENOENT or not follows:
        return error
    log.warning("inode %d is known to the kernel (an open file, a cached name) but not in the snapshot now "
                "shown: the writer removed it; ESTALE (open it again by name)", inode)
    return FsError(errno.ESTALE, f"inode {inode} is not in the snapshot now shown")


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
        self.status = status or (lambda: {})
        self.namespace = Namespace(db)
        self.writeback = WriteBack(db, self.namespace, blocks, uploader, block_size, staging_limit, dirty_limit)
        self.writeback.on_load = self._loading
        self.locks = self.writeback.locks
        self.open_count: dict[int, int] = defaultdict(int)
        self.lookup_count: dict[int, int] = defaultdict(int)
        self.nursery: trio.Nursery | None = None  # for readahead, set by the mount
        self.readahead_blocks = max(readahead_bytes // block_size, 1)
        # More control xattrs of the root (walrusfs.<name>), set by the mount: e.g. snapshot.
        self.controls: dict[bytes, Callable[[], Awaitable[None]]] = {}
        # Set by a writable mount: raises OSError unless this writer provably holds the filesystem
        # (its writer lease), so that fsync never reports durable what another writer may discard.
        self.durability_guard: Callable[[], Awaitable[None]] | None = None
        # Set by the mount: what df shows as used, the bytes this filesystem occupies on the nodes
        # after encoding and those staged to go there (space.py); without it, the logical bytes.
        self.used_bytes: Callable[[], int] | None = None
        # Set by a read-only mount that switches to newer snapshots: inodes may vanish under it.
        self.follows_snapshots = False

    @property
    def dirty_bytes(self) -> int:
        return self.writeback.dirty_bytes

    # --- attributes ---------------------------------------------------------------------------

    def _inode(self, inode: int) -> Inode:
        try:
            return self.writeback.visible(self.namespace.get(inode))
        except FsError as error:
            raise _stale(inode, error, self.follows_snapshots) from None

    def _entry(self, node: Inode) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = node.id
        entry.generation = 0
        entry.entry_timeout = _TIMEOUT
        entry.attr_timeout = _TIMEOUT
        entry.st_mode = node.mode
        entry.st_nlink = node.nlink
        entry.st_uid = node.uid
        entry.st_gid = node.gid
        entry.st_rdev = node.rdev
        entry.st_size = node.size
        entry.st_blksize = self.bs
        entry.st_blocks = (node.size + 511) // 512
        entry.st_atime_ns = node.atime_ns
        entry.st_mtime_ns = node.mtime_ns
        entry.st_ctime_ns = node.ctime_ns
        return entry

    @_replies
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        return self._entry(self._inode(inode))

    @_replies
    async def lookup(self, parent: int, name: bytes, ctx: pyfuse3.RequestContext | None = None):
        if name == b".":
            inode = parent
        elif len(name) > NAME_MAX:
            raise FUSEError(errno.ENAMETOOLONG)
        elif name == b"..":
            inode = ROOT if parent == ROOT else self.namespace.parent_of(parent)
        else:
            inode = self.namespace.find(parent, name)
        if inode is None:
            raise FUSEError(errno.ENOENT)
        entry = self._entry(self._inode(inode))
        self.lookup_count[inode] += 1
        return entry

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self.lookup_count[inode] -= count
            if self.lookup_count[inode] <= 0:
                del self.lookup_count[inode]
                self._maybe_purge(inode)

    @_replies
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        now = now_ns()
        async with self.locks(inode):
            if fields.update_size:
                await self.writeback.truncate(inode, attr.st_size)
            self.namespace.set_attributes(
                inode,
                mode=attr.st_mode if fields.update_mode else None,
                uid=attr.st_uid if fields.update_uid else None,
                gid=attr.st_gid if fields.update_gid else None,
                atime=attr.st_atime_ns if fields.update_atime else None,
                mtime=attr.st_mtime_ns if fields.update_mtime else None,
                ctime=attr.st_ctime_ns if fields.update_ctime else now)
        return self._entry(self._inode(inode))

    # --- names ---------------------------------------------------------------------------------

    def _create(self, parent: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext,
                rdev: int = 0, target: bytes | None = None) -> pyfuse3.EntryAttributes:
        node = self.namespace.create(parent, name, mode, ctx.uid, ctx.gid, ctx.umask, rdev=rdev, target=target)
        self.lookup_count[node.id] += 1
        return self._entry(node)  # new: nothing of it is buffered

    @_replies
    async def mknod(self, parent: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext):
        return self._create(parent, name, mode, ctx, rdev=rdev)

    @_replies
    async def mkdir(self, parent: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext):
        return self._create(parent, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx)

    @_replies
    async def symlink(self, parent: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext):
        return self._create(parent, name, stat.S_IFLNK | 0o777, ctx, target=target)

    @_replies
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.namespace.readlink(inode)

    @_replies
    async def create(self, parent: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext):
        entry = self._create(parent, name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        self.open_count[entry.st_ino] += 1
        return pyfuse3.FileInfo(fh=entry.st_ino), entry

    @_replies
    async def link(self, inode: int, new_parent: int, new_name: bytes, ctx: pyfuse3.RequestContext):
        node = self.namespace.link(inode, new_parent, new_name)
        self.lookup_count[inode] += 1
        return self._entry(self.writeback.visible(node))

    @_replies
    async def unlink(self, parent: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._maybe_purge(self.namespace.unlink(parent, name))

    @_replies
    async def rmdir(self, parent: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._maybe_purge(self.namespace.rmdir(parent, name))

    @_replies
    async def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
                     flags: int, ctx: pyfuse3.RequestContext) -> None:
        replaced = self.namespace.rename(old_parent, old_name, new_parent, new_name, flags)
        if replaced is not None:
            self._maybe_purge(replaced)

    def purge_orphans(self) -> int:
        """At mount, before the kernel knows any inode: delete those no directory names (unlinked
        while open, then a crash or unmount). Returns how many."""
        orphans = self.namespace.orphans()
        for inode in orphans:
            self._maybe_purge(inode)
        return len(orphans)

    def _maybe_purge(self, inode: int) -> None:
        """Delete an inode and release its blocks once nothing refers to it any more."""
        if inode == ROOT or self.lookup_count.get(inode) or self.open_count.get(inode):
            return
        if not self.namespace.is_unlinked(inode):
            return
        self.writeback.drop(inode)
        with self.db.transaction():
            self.writeback.delete(inode)
            self.namespace.delete(inode)

    # --- directories ---------------------------------------------------------------------------

    @_replies
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if not self._inode(inode).is_dir:
            raise FUSEError(errno.ENOTDIR)
        return inode

    @_replies
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # Offsets: 1 after ".", 2 after "..", then dirents.id + 2 after each entry.
        if start_id < 2:
            parent = ROOT if fh == ROOT else self.namespace.parent_of(fh) or ROOT
            for offset, name, inode in ((1, b".", fh), (2, b"..", parent)):
                if offset <= start_id:
                    continue
                # The kernel takes no reference for "." and "..": no lookup count to add.
                if not pyfuse3.readdir_reply(token, name, self._entry(self._inode(inode)), offset):
                    return
            start_id = 2
        start_id -= 2
        while True:
            rows = self.namespace.entries(fh, start_id, 1000)
            if not rows:
                return
            for dirent, name, node in rows:
                if not pyfuse3.readdir_reply(token, name, self._entry(node), dirent + 2):
                    return
                self.lookup_count[node.id] += 1
                start_id = dirent

    async def releasedir(self, fh: int) -> None:
        pass

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self.db.sync()

    # --- file data -----------------------------------------------------------------------------

    @_replies
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if self._inode(inode).is_dir:
            raise FUSEError(errno.EISDIR)
        self.open_count[inode] += 1
        return pyfuse3.FileInfo(fh=inode)

    @_replies
    async def read(self, fh: int, offset: int, length: int) -> bytes:
        inode = fh
        try:
            size = self.writeback.size(inode)
        except FsError as error:
            raise _stale(inode, error, self.follows_snapshots) from None
        end = min(offset + length, size)
        if end <= offset:
            return b""
        parts = []
        position = offset
        while position < end:
            blockno, in_block = divmod(position, self.bs)
            take = min(self.bs - in_block, end - position)
            data = await self.writeback.read_block(inode, blockno)
            piece = data[in_block : in_block + take]
            if len(piece) < take:
                piece = bytes(piece) + bytes(take - len(piece))  # a hole or a short last block
            parts.append(piece)
            position += take
        return b"".join(parts)

    def _loading(self, inode: int, blockno: int) -> None:
        if blockno % _READAHEAD_EVERY == 0:
            self._read_ahead(inode, blockno)

    def _read_ahead(self, inode: int, blockno: int) -> None:
        """Start fetching the blobs that hold the next blocks of a file being read, so sequential
        reads find them cached instead of waiting for the network blob by blob."""
        if self.nursery is None:
            return
        cache = self.blocks.cache
        for blob_id in self.writeback.map.blobs_after(inode, blockno, self.readahead_blocks)[:_READAHEAD_BLOBS]:
            if not cache.contains(blob_id) and not cache.fetching(blob_id):
                self.nursery.start_soon(self._prefetch, blob_id)

    async def _prefetch(self, blob_id: str) -> None:
        try:
            await self.blocks.cache.ensure(blob_id)
        except Exception as error:  # a read that needs it will fetch again and report
            log.info("read-ahead of blob %s failed: %s", blob_id, error)

    @_replies
    async def write(self, fh: int, offset: int, buf: bytes) -> int:
        async with self.locks(fh):
            if not self.enable_writeback_cache:
                # With the writeback cache the kernel owns a written file's times: it shows its own
                # and sends them in a setattr when it flushes, which a late write must not overwrite.
                self.namespace.touch(fh, now_ns())
            await self.writeback.write(fh, offset, buf)
        return len(buf)

    @_replies
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
        async with self.locks(inode):
            node = self._inode(inode)
            if not node.is_reg:
                raise FUSEError(errno.ENODEV)
            # A regular file's times are the kernel's under the writeback cache (it keeps them and sends
            # them with setattr): fallocate leaves them alone here, or the filesystem would hold times
            # the kernel never showed, and a remount would change them.
            if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                await self.writeback.zero_range(inode, offset, min(offset + length, node.size), times=False)
            if not mode & FALLOC_FL_KEEP_SIZE and offset + length > node.size:
                await self.writeback.truncate(inode, offset + length, times=False)  # growing: a hole

    @_replies
    async def flush(self, fh: int) -> None:
        async with self.locks(fh):
            await self.writeback.stage_inode(fh)

    @_replies
    async def release(self, fh: int) -> None:
        async with self.locks(fh):
            await self.writeback.stage_inode(fh)
        self.open_count[fh] -= 1
        if self.open_count[fh] <= 0:
            del self.open_count[fh]
            self._maybe_purge(fh)

    @_replies
    async def fsync(self, fh: int, datasync: bool) -> None:
        """Return only when every block of the file is in a certified blob (EIO if not possible)."""
        async with self.locks(fh):
            await self.writeback.stage_inode(fh)
        blocks = self.writeback.map.uncertified(fh)
        try:
            # Both at once: the lease round is asked for after this call began either way, and a
            # small file's certification and the round each take a network round trip. Failures are
            # reported as when they ran one after the other: the upload's first.
            await all_of(*([functools.partial(self.uploader.wait_certified, blocks)] if blocks else []),
                         *([self.durability_guard] if self.durability_guard is not None else []))
        except OSError as error:  # UploadError, or the writer lease lost
            log.error("fsync of inode %d failed: %s", fh, error)
            # Over quota on the nodes: EDQUOT, as a local filesystem answers a user over quota.
            raise FUSEError(errno.EDQUOT if error.errno == errno.EDQUOT else errno.EIO) from error
        self.db.sync()

    async def flush_all(self) -> None:
        """Stage every dirty buffer and wait until everything staged is certified."""
        for inode in self.writeback.buffered_inodes():
            async with self.locks(inode):
                await self.writeback.stage_inode(inode)
        await self.uploader.wait_certified()
        self.db.sync()

    # --- extended attributes -----------------------------------------------------------------

    @_replies
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        if inode == ROOT and name.startswith(CONTROL_PREFIX):
            await self._control(name[len(CONTROL_PREFIX):], value)
            return
        self.namespace.set_xattr(inode, name, value, functools.partial(self._in_group, ctx))

    @staticmethod
    def _in_group(ctx: pyfuse3.RequestContext, gid: int) -> bool:
        if ctx.uid == 0 or ctx.gid == gid:
            return True
        try:
            return gid in pyfuse3.get_sup_groups(ctx.pid)
        except (OSError, ValueError):  # the caller is gone: nobody to keep setgid for
            return False

    @_replies
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if inode == ROOT and name == CONTROL_PREFIX + b"status":
            try:
                return json.dumps(self.status()).encode()
            except Exception as error:  # a bug in a report must not take the whole mount down
                log.exception("building the status report failed")
                raise FUSEError(errno.EIO) from error
        return self.namespace.get_xattr(inode, name)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return self.namespace.list_xattrs(inode)

    @_replies
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.namespace.remove_xattr(inode, name)

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
        used = self.writeback.map.used_bytes() if self.used_bytes is None else self.used_bytes()
        files = self.namespace.count()
        data.f_bsize = self.bs
        data.f_frsize = 4096
        capacity = max(1 << 50, used * 2)  # the network's capacity is not known here: say "plenty"
        data.f_blocks = capacity // data.f_frsize
        data.f_bfree = data.f_bavail = (capacity - used) // data.f_frsize
        data.f_files = max(1 << 32, files * 2)
        data.f_ffree = data.f_favail = data.f_files - files
        data.f_namemax = 255
        return data
