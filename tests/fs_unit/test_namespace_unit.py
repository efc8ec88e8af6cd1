"""The namespace rules, through WalrusOperations without FUSE: link counts, rename over existing
entries, name length, xattrs and ACLs (conftest.py builds the filesystem)."""

from __future__ import annotations

import errno
import stat
from collections.abc import Awaitable

import pytest
from conftest import Fields, UnitFs
from pyfuse3 import FUSEError

from walrusfs.fs.acl import ACCESS, DEFAULT, GROUP_OBJ, MASK, OTHER, USER, USER_OBJ, Acl, Entry
from walrusfs.fs.namespace import RENAME_EXCHANGE, RENAME_NOREPLACE, ROOT


async def refused(code: int, call: Awaitable[object]) -> None:
    with pytest.raises(FUSEError) as caught:
        await call
    assert caught.value.errno == code, f"expected {errno.errorcode[code]}, got {errno.errorcode[caught.value.errno]}"


def test_file_link_count_follows_its_names(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        ino = await fs.create(b"a")
        assert (await fs.attr(ino)).st_nlink == 1
        await fs.ops.link(ino, ROOT, b"b", fs.ctx)
        assert (await fs.attr(ino)).st_nlink == 2
        await fs.ops.unlink(ROOT, b"a", fs.ctx)
        assert (await fs.attr(ino)).st_nlink == 1
        assert await fs.ops.lookup(ROOT, b"b") and (await fs.ops.lookup(ROOT, b"b")).st_ino == ino
        await refused(errno.ENOENT, fs.ops.lookup(ROOT, b"a"))

    fs_run(body)


def test_directory_link_count_is_two_plus_subdirectories(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        assert (await fs.attr(ROOT)).st_nlink == 2
        a = await fs.mkdir(b"a")
        b = await fs.mkdir(b"b")
        await fs.create(b"file", parent=a)  # files do not count
        assert (await fs.attr(ROOT)).st_nlink == 4
        assert (await fs.attr(a)).st_nlink == 2
        await fs.mkdir(b"sub", parent=a)
        assert (await fs.attr(a)).st_nlink == 3
        await fs.ops.rename(a, b"sub", b, b"sub", 0, fs.ctx)  # its ".." moves from a to b
        assert ((await fs.attr(a)).st_nlink, (await fs.attr(b)).st_nlink) == (2, 3)
        await fs.ops.rmdir(b, b"sub", fs.ctx)
        assert (await fs.attr(b)).st_nlink == 2
        await fs.ops.rmdir(ROOT, b"b", fs.ctx)
        assert (await fs.attr(ROOT)).st_nlink == 3
        assert (await fs.attr(b)).st_nlink == 0  # removed, still known to the kernel

    fs_run(body)


def test_directories_cannot_be_hard_linked_nor_removed_while_not_empty(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        d = await fs.mkdir(b"d")
        await fs.create(b"f", parent=d)
        await refused(errno.EPERM, fs.ops.link(d, ROOT, b"d2", fs.ctx))
        await refused(errno.ENOTEMPTY, fs.ops.rmdir(ROOT, b"d", fs.ctx))
        await refused(errno.EISDIR, fs.ops.unlink(ROOT, b"d", fs.ctx))
        await refused(errno.ENOTDIR, fs.ops.rmdir(d, b"f", fs.ctx))
        await refused(errno.EEXIST, fs.ops.mkdir(ROOT, b"d", 0o755, fs.ctx))

    fs_run(body)


def test_rename_over_an_existing_file_replaces_it_and_frees_it_when_forgotten(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        old = await fs.create(b"old")
        await fs.write(old, 0, b"o" * 10000)
        await fs.ops.release(old)
        new = await fs.create(b"new")
        await fs.write(new, 0, b"n" * 100)
        await fs.ops.release(new)
        blocks_before = fs.block_rows()
        await fs.ops.rename(ROOT, b"new", ROOT, b"old", 0, fs.ctx)
        assert (await fs.ops.lookup(ROOT, b"old")).st_ino == new
        await refused(errno.ENOENT, fs.ops.lookup(ROOT, b"new"))
        assert (await fs.attr(old)).st_nlink == 0  # the kernel still knows it: kept
        await fs.ops.forget([(old, 1)])
        await refused(errno.ENOENT, fs.ops.getattr(old))
        assert fs.block_rows() < blocks_before  # its data was released with it
        assert await fs.read(new) == b"n" * 100

    fs_run(body)


def test_rename_over_an_existing_directory_needs_it_empty(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        src = await fs.mkdir(b"src")
        full = await fs.mkdir(b"full")
        await fs.create(b"x", parent=full)
        empty = await fs.mkdir(b"empty")
        await fs.create(b"file")
        await refused(errno.ENOTEMPTY, fs.ops.rename(ROOT, b"src", ROOT, b"full", 0, fs.ctx))
        await refused(errno.ENOTDIR, fs.ops.rename(ROOT, b"src", ROOT, b"file", 0, fs.ctx))
        await refused(errno.EISDIR, fs.ops.rename(ROOT, b"file", ROOT, b"empty", 0, fs.ctx))
        await refused(errno.EEXIST, fs.ops.rename(ROOT, b"src", ROOT, b"empty", RENAME_NOREPLACE, fs.ctx))
        await refused(errno.EINVAL, fs.ops.rename(ROOT, b"full", full, b"inside", 0, fs.ctx))
        nlink = (await fs.attr(ROOT)).st_nlink
        await fs.ops.rename(ROOT, b"src", ROOT, b"empty", 0, fs.ctx)
        assert (await fs.ops.lookup(ROOT, b"empty")).st_ino == src
        assert (await fs.attr(ROOT)).st_nlink == nlink - 1  # one subdirectory fewer
        assert (await fs.attr(empty)).st_nlink == 0

    fs_run(body)


def test_rename_exchange_swaps_two_names(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        d = await fs.mkdir(b"d")
        f = await fs.create(b"f", parent=d)
        g = await fs.create(b"g")
        await fs.ops.rename(d, b"f", ROOT, b"g", RENAME_EXCHANGE, fs.ctx)
        assert (await fs.ops.lookup(d, b"f")).st_ino == g
        assert (await fs.ops.lookup(ROOT, b"g")).st_ino == f
        await refused(errno.ENOENT, fs.ops.rename(ROOT, b"g", ROOT, b"none", RENAME_EXCHANGE, fs.ctx))

    fs_run(body)


def test_names_longer_than_255_bytes_are_refused_everywhere(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        long, longest = b"n" * 256, b"n" * 255
        f = await fs.create(longest)
        await refused(errno.ENAMETOOLONG, fs.ops.lookup(ROOT, long))
        await refused(errno.ENAMETOOLONG, fs.ops.create(ROOT, long, 0o644, 0, fs.ctx))
        await refused(errno.ENAMETOOLONG, fs.ops.mkdir(ROOT, long, 0o755, fs.ctx))
        await refused(errno.ENAMETOOLONG, fs.ops.link(f, ROOT, long, fs.ctx))
        await refused(errno.ENAMETOOLONG, fs.ops.rename(ROOT, longest, ROOT, long, 0, fs.ctx))
        await refused(errno.ENAMETOOLONG, fs.ops.unlink(ROOT, long, fs.ctx))
        assert (await fs.ops.lookup(ROOT, longest)).st_ino == f

    fs_run(body)


def test_symlinks_keep_their_target(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        entry = await fs.ops.symlink(ROOT, b"l", b"../somewhere", fs.ctx)
        assert stat.S_ISLNK(entry.st_mode) and entry.st_size == len(b"../somewhere")
        assert await fs.ops.readlink(entry.st_ino, fs.ctx) == b"../somewhere"
        f = await fs.create(b"f")
        await refused(errno.EINVAL, fs.ops.readlink(f, fs.ctx))

    fs_run(body)


def test_xattrs_are_set_listed_and_removed(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        f = await fs.create(b"f")
        await fs.ops.setxattr(f, b"user.a", b"1", fs.ctx)
        await fs.ops.setxattr(f, b"user.b", b"", fs.ctx)
        await fs.ops.setxattr(f, b"user.a", b"2", fs.ctx)
        assert await fs.ops.getxattr(f, b"user.a", fs.ctx) == b"2"
        assert sorted(await fs.ops.listxattr(f, fs.ctx)) == [b"user.a", b"user.b"]
        await fs.ops.removexattr(f, b"user.a", fs.ctx)
        await refused(errno.ENODATA, fs.ops.getxattr(f, b"user.a", fs.ctx))
        await refused(errno.ENODATA, fs.ops.removexattr(f, b"user.a", fs.ctx))
        await fs.ops.removexattr(f, ACCESS, fs.ctx)  # removing no ACL succeeds, as on ext4

    fs_run(body)


def _acl(*entries: Entry) -> bytes:
    return Acl(tuple(entries)).to_bytes()


def test_an_access_acl_sets_the_mode_and_chmod_rewrites_it(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        f = await fs.create(b"f", mode=0o600)
        value = _acl(Entry(USER_OBJ, 6), Entry(USER, 4, 12345), Entry(GROUP_OBJ, 4), Entry(MASK, 5),
                     Entry(OTHER, 1))
        await fs.ops.setxattr(f, ACCESS, value, fs.ctx)
        assert stat.S_IMODE((await fs.attr(f)).st_mode) == 0o651  # owner, mask, other
        entry = await fs.attr(f)
        entry.st_mode = stat.S_IFREG | 0o640
        await fs.ops.setattr(f, entry, Fields(update_mode=True), None, fs.ctx)  # type: ignore[arg-type]
        stored = Acl.parse(await fs.ops.getxattr(f, ACCESS, fs.ctx))
        assert {(e.tag, e.perm) for e in stored.entries if e.tag in (USER_OBJ, MASK, OTHER)} == \
            {(USER_OBJ, 6), (MASK, 4), (OTHER, 0)}
        # A minimal ACL is only the mode: nothing stored.
        await fs.ops.setxattr(f, ACCESS, _acl(Entry(USER_OBJ, 7), Entry(GROUP_OBJ, 0), Entry(OTHER, 0)), fs.ctx)
        assert stat.S_IMODE((await fs.attr(f)).st_mode) == 0o700
        await refused(errno.ENODATA, fs.ops.getxattr(f, ACCESS, fs.ctx))
        await refused(errno.EINVAL, fs.ops.setxattr(f, ACCESS, b"\x02\x00\x00\x00junk", fs.ctx))

    fs_run(body)


def test_a_default_acl_is_for_directories_and_is_inherited(fs_run) -> None:
    async def body(fs: UnitFs) -> None:
        d = await fs.mkdir(b"d")
        f = await fs.create(b"f")
        default = _acl(Entry(USER_OBJ, 7), Entry(USER, 5, 12345), Entry(GROUP_OBJ, 5), Entry(MASK, 7),
                       Entry(OTHER, 0))
        await refused(errno.EACCES, fs.ops.setxattr(f, DEFAULT, default, fs.ctx))
        await fs.ops.setxattr(d, DEFAULT, default, fs.ctx)
        child = await fs.create(b"c", parent=d, mode=0o666)
        assert stat.S_IMODE((await fs.attr(child)).st_mode) == 0o660  # masked by the mode, no umask
        assert any(e.tag == USER and e.id == 12345 for e in Acl.parse(
            await fs.ops.getxattr(child, ACCESS, fs.ctx)).entries)
        sub = await fs.mkdir(b"sub", parent=d)
        assert await fs.ops.getxattr(sub, DEFAULT, fs.ctx) == default

    fs_run(body)
