"""POSIX semantics of a walrusfs mount, as programs see them through the kernel.

Every test works in an empty directory of its own (``mnt``) of one mount shared by the module; data
crosses the real upload path (staging, RedStuff, 7 node processes) whenever a test fsyncs.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import stat
import time
from pathlib import Path

import pytest
from fs_harness import status

MiB = 1 << 20
BS = MiB  # the filesystem's default block size

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error), str(old))


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes that differ at every position and between seeds (no two blocks alike: no dedup)."""
    import hashlib

    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.blake2b(f"{seed}:{counter}".encode(), digest_size=64).digest() * 16
        counter += 1
    return bytes(out[:size])


def write_file(path: Path, data: bytes, fsync: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view[:MiB]):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def drop_page_cache(path: Path) -> None:
    """Ask the kernel to forget the file's cached pages so reads reach the filesystem."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# --- create, read, write ---------------------------------------------------------------------------


def test_create_write_read_back(mnt: Path) -> None:
    data = pattern(3 * BS + 12345)
    write_file(mnt / "f", data)
    assert (mnt / "f").read_bytes() == data
    assert (mnt / "f").stat().st_size == len(data)
    assert stat.S_ISREG((mnt / "f").stat().st_mode)


def test_empty_file(mnt: Path) -> None:
    (mnt / "empty").touch()
    assert (mnt / "empty").stat().st_size == 0
    assert (mnt / "empty").read_bytes() == b""


def test_writes_at_offsets_across_block_boundaries(mnt: Path) -> None:
    size = 3 * BS + 100
    expected = bytearray(pattern(size, 1))
    write_file(mnt / "f", bytes(expected), fsync=True)
    fd = os.open(mnt / "f", os.O_RDWR)
    try:
        for offset, length in [(0, 1), (BS - 3, 7), (2 * BS - 1, BS + 2), (size - 10, 10), (12345, 4096)]:
            chunk = pattern(length, offset)
            assert os.pwrite(fd, chunk, offset) == length
            expected[offset:offset + length] = chunk
        for offset, length in [(0, size), (BS - 10, 20), (2 * BS, BS), (size - 5, 100)]:
            assert os.pread(fd, length, offset) == bytes(expected[offset:offset + length])
        os.fsync(fd)
    finally:
        os.close(fd)
    drop_page_cache(mnt / "f")
    assert (mnt / "f").read_bytes() == bytes(expected)


def test_append(mnt: Path) -> None:
    path = mnt / "log"
    expected = b""
    for i in range(50):
        line = f"line {i} ".encode() * (i * 100 + 1)
        with open(path, "ab") as handle:
            handle.write(line)
        expected += line
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.pwrite(fd, b"tail", 0)  # Linux: O_APPEND writes go to the end whatever the offset
    finally:
        os.close(fd)
    expected += b"tail"
    assert path.read_bytes() == expected


def test_overwrite_in_place_keeps_size(mnt: Path) -> None:
    write_file(mnt / "f", b"a" * 10000)
    with open(mnt / "f", "r+b") as handle:
        handle.seek(5000)
        handle.write(b"b" * 10)
    assert (mnt / "f").stat().st_size == 10000
    assert (mnt / "f").read_bytes() == b"a" * 5000 + b"b" * 10 + b"a" * 4990


# --- truncate and holes ----------------------------------------------------------------------------


@pytest.mark.parametrize("new_size", [0, 1, BS - 1, BS, BS + 1, 2 * BS + 777])
def test_truncate_shrink(mnt: Path, new_size: int) -> None:
    data = pattern(3 * BS + 500, new_size)
    write_file(mnt / "f", data, fsync=True)
    os.truncate(mnt / "f", new_size)
    assert (mnt / "f").stat().st_size == new_size
    assert (mnt / "f").read_bytes() == data[:new_size]
    drop_page_cache(mnt / "f")
    assert (mnt / "f").read_bytes() == data[:new_size]


def test_truncate_shrink_then_extend_reads_zeros(mnt: Path) -> None:
    """Bytes cut off by a truncate never come back: growing again exposes zeros."""
    data = pattern(2 * BS + 300, 7)
    write_file(mnt / "f", data, fsync=True)
    os.truncate(mnt / "f", BS + 10)
    os.truncate(mnt / "f", 3 * BS)
    drop_page_cache(mnt / "f")
    assert (mnt / "f").read_bytes() == data[:BS + 10] + bytes(3 * BS - BS - 10)
    with open(mnt / "f", "rb+") as handle:
        os.fsync(handle.fileno())
    drop_page_cache(mnt / "f")
    assert (mnt / "f").read_bytes() == data[:BS + 10] + bytes(3 * BS - BS - 10)


def test_truncate_extend_is_sparse_zeros(mnt: Path) -> None:
    write_file(mnt / "f", b"head")
    os.truncate(mnt / "f", 5 * BS + 3)
    assert (mnt / "f").stat().st_size == 5 * BS + 3
    assert (mnt / "f").read_bytes() == b"head" + bytes(5 * BS + 3 - 4)


def test_write_past_end_leaves_a_hole_of_zeros(mnt: Path) -> None:
    fd = os.open(mnt / "sparse", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"start", 0)
        os.pwrite(fd, b"far", 7 * BS + 5)
        os.fsync(fd)
    finally:
        os.close(fd)
    drop_page_cache(mnt / "sparse")
    data = (mnt / "sparse").read_bytes()
    assert len(data) == 7 * BS + 8
    assert data == b"start" + bytes(7 * BS) + b"far"


def test_ftruncate_on_open_file_with_unflushed_writes(mnt: Path) -> None:
    fd = os.open(mnt / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, pattern(BS + 1000, 3))
        os.ftruncate(fd, 500)
        os.pwrite(fd, b"x", 2000)
        os.fsync(fd)
    finally:
        os.close(fd)
    drop_page_cache(mnt / "f")
    assert (mnt / "f").read_bytes() == pattern(500, 3) + bytes(1500) + b"x"


# --- names ---------------------------------------------------------------------------------------


def test_unlink_while_open_keeps_data_until_close(mnt: Path) -> None:
    data = pattern(2 * BS + 17, 11)
    write_file(mnt / "f", data, fsync=True)
    fd = os.open(mnt / "f", os.O_RDWR)
    try:
        os.unlink(mnt / "f")
        assert not (mnt / "f").exists()
        assert os.listdir(mnt) == []
        assert os.pread(fd, len(data) + 10, 0) == data
        os.pwrite(fd, b"still writable", 5)
        assert os.pread(fd, 14, 5) == b"still writable"
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    assert os.listdir(mnt) == []


def test_unlinked_open_file_survives_page_cache_drop(mnt: Path) -> None:
    data = pattern(BS + 5, 12)
    write_file(mnt / "f", data)
    fd = os.open(mnt / "f", os.O_RDONLY)
    try:
        os.unlink(mnt / "f")
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert os.pread(fd, len(data), 0) == data
    finally:
        os.close(fd)


def test_rename_file_and_over_existing(mnt: Path) -> None:
    write_file(mnt / "a", b"A" * 100)
    write_file(mnt / "b", b"B" * 200)
    ino_a = (mnt / "a").stat().st_ino
    os.rename(mnt / "a", mnt / "b")
    assert not (mnt / "a").exists()
    assert (mnt / "b").read_bytes() == b"A" * 100
    assert (mnt / "b").stat().st_ino == ino_a
    assert sorted(os.listdir(mnt)) == ["b"]


def test_rename_over_open_file_keeps_the_old_contents_open(mnt: Path) -> None:
    write_file(mnt / "old", b"old contents")
    write_file(mnt / "new", b"new contents")
    with open(mnt / "old", "rb") as reader:
        os.replace(mnt / "new", mnt / "old")
        assert reader.read() == b"old contents"
    assert (mnt / "old").read_bytes() == b"new contents"


def test_rename_is_atomic_for_readers(mnt: Path) -> None:
    """The write-temp-then-rename idiom: the name always holds a complete version."""
    write_file(mnt / "config", b"v0" * 1000)
    for version in range(1, 30):
        write_file(mnt / "config.tmp", f"v{version}".encode() * 1000)
        os.rename(mnt / "config.tmp", mnt / "config")
        content = (mnt / "config").read_bytes()
        assert content == f"v{version}".encode() * 1000
    assert sorted(os.listdir(mnt)) == ["config"]


def test_rename_directories(mnt: Path) -> None:
    (mnt / "d1" / "sub").mkdir(parents=True)
    write_file(mnt / "d1" / "sub" / "f", b"deep")
    (mnt / "d2").mkdir()
    os.rename(mnt / "d1", mnt / "d2" / "moved")
    assert (mnt / "d2" / "moved" / "sub" / "f").read_bytes() == b"deep"
    assert not (mnt / "d1").exists()
    assert os.path.samefile(mnt / "d2" / "moved" / "sub" / "..", mnt / "d2" / "moved")
    # over an empty directory: allowed; over a non-empty one: ENOTEMPTY
    (mnt / "empty").mkdir()
    os.rename(mnt / "d2" / "moved", mnt / "empty")
    assert (mnt / "empty" / "sub" / "f").read_bytes() == b"deep"
    (mnt / "full").mkdir()
    (mnt / "full" / "x").touch()
    with pytest.raises(OSError) as error:
        os.rename(mnt / "empty", mnt / "full")
    assert error.value.errno in (errno.ENOTEMPTY, errno.EEXIST)
    # into itself: EINVAL
    with pytest.raises(OSError) as error:
        os.rename(mnt / "empty", mnt / "empty" / "sub" / "inside")
    assert error.value.errno == errno.EINVAL
    # file over directory and directory over file
    with pytest.raises(IsADirectoryError):
        os.rename(mnt / "full" / "x", mnt / "empty")
    with pytest.raises(NotADirectoryError):
        os.rename(mnt / "empty", mnt / "full" / "x")


def test_rename_noreplace_and_exchange(mnt: Path) -> None:
    write_file(mnt / "a", b"AAA")
    write_file(mnt / "b", b"BBB")
    with pytest.raises(FileExistsError):
        renameat2(mnt / "a", mnt / "b", RENAME_NOREPLACE)
    assert (mnt / "a").read_bytes() == b"AAA"
    assert (mnt / "b").read_bytes() == b"BBB"
    renameat2(mnt / "a", mnt / "c", RENAME_NOREPLACE)
    assert (mnt / "c").read_bytes() == b"AAA"
    assert not (mnt / "a").exists()
    renameat2(mnt / "c", mnt / "b", RENAME_EXCHANGE)
    assert (mnt / "c").read_bytes() == b"BBB"
    assert (mnt / "b").read_bytes() == b"AAA"
    (mnt / "dir").mkdir()
    write_file(mnt / "dir" / "inner", b"in")
    renameat2(mnt / "dir", mnt / "b", RENAME_EXCHANGE)
    assert (mnt / "b" / "inner").read_bytes() == b"in"
    assert (mnt / "dir").read_bytes() == b"AAA"


def test_hard_links(mnt: Path) -> None:
    write_file(mnt / "a", b"shared data")
    (mnt / "sub").mkdir()
    os.link(mnt / "a", mnt / "b")
    os.link(mnt / "a", mnt / "sub" / "c")
    assert (mnt / "a").stat().st_nlink == 3
    assert (mnt / "a").stat().st_ino == (mnt / "sub" / "c").stat().st_ino
    with open(mnt / "b", "r+b") as handle:
        handle.write(b"SHARED")
    assert (mnt / "sub" / "c").read_bytes() == b"SHARED data"
    os.unlink(mnt / "a")
    assert (mnt / "b").stat().st_nlink == 2
    os.unlink(mnt / "sub" / "c")
    assert (mnt / "b").stat().st_nlink == 1
    assert (mnt / "b").read_bytes() == b"SHARED data"
    with pytest.raises(FileExistsError):
        os.link(mnt / "b", mnt / "b")
    with pytest.raises(PermissionError):
        os.link(mnt / "sub", mnt / "sublink")


def test_symlinks(mnt: Path) -> None:
    write_file(mnt / "target", b"pointed at")
    os.symlink("target", mnt / "rel")
    os.symlink(str(mnt / "target"), mnt / "abs")
    os.symlink("does/not/exist", mnt / "dangling")
    long_target = "x/" * 500 + "end"
    os.symlink(long_target, mnt / "long")
    assert os.readlink(mnt / "rel") == "target"
    assert os.readlink(mnt / "long") == long_target
    assert (mnt / "rel").read_bytes() == b"pointed at"
    assert (mnt / "abs").read_bytes() == b"pointed at"
    assert stat.S_ISLNK((mnt / "rel").lstat().st_mode)
    assert (mnt / "rel").lstat().st_size == len("target")
    assert not (mnt / "dangling").exists()
    assert (mnt / "dangling").is_symlink()
    os.unlink(mnt / "rel")
    assert (mnt / "target").exists()


def test_mkdir_rmdir(mnt: Path) -> None:
    (mnt / "a" / "b" / "c").mkdir(parents=True)
    assert stat.S_ISDIR((mnt / "a" / "b").stat().st_mode)
    with pytest.raises(FileExistsError):
        (mnt / "a").mkdir()
    with pytest.raises(OSError) as error:
        os.rmdir(mnt / "a")
    assert error.value.errno == errno.ENOTEMPTY
    write_file(mnt / "a" / "file", b"")
    with pytest.raises(NotADirectoryError):
        os.rmdir(mnt / "a" / "file")
    with pytest.raises(IsADirectoryError):
        os.unlink(mnt / "a" / "b")
    os.rmdir(mnt / "a" / "b" / "c")
    os.rmdir(mnt / "a" / "b")
    assert sorted(os.listdir(mnt / "a")) == ["file"]


def test_long_and_odd_names(mnt: Path) -> None:
    names = ["a" * 255, "spaces in name", "tab\tand\nnewline", "ünïcödé-名前", "-dash", ".hidden",
             "back\\slash", "quote'\"", "*?[glob]", bytes(range(1, 47)).decode("latin-1").replace("/", "")]
    for name in names:
        write_file(mnt / name, name.encode("utf-8", "surrogateescape"))
    raw = os.fsencode(mnt) + b"/caf\xe9-not-utf8"
    with open(raw, "wb") as handle:
        handle.write(b"latin1")
    assert sorted(os.listdir(mnt)) == sorted([*names, os.fsdecode(b"caf\xe9-not-utf8")])
    for name in names:
        assert (mnt / name).read_bytes() == name.encode("utf-8", "surrogateescape")
    with pytest.raises(OSError) as error:
        (mnt / ("b" * 256)).touch()
    assert error.value.errno == errno.ENAMETOOLONG


# --- attributes ----------------------------------------------------------------------------------


def test_chmod_chown_utimens(mnt: Path) -> None:
    write_file(mnt / "f", b"x")
    before = (mnt / "f").stat()
    time.sleep(0.01)
    os.chmod(mnt / "f", 0o4751)
    st = (mnt / "f").stat()
    assert stat.S_IMODE(st.st_mode) == 0o4751
    assert stat.S_ISREG(st.st_mode)
    assert st.st_ctime_ns > before.st_ctime_ns
    os.chown(mnt / "f", 1234, 5678)
    st = (mnt / "f").stat()
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.utime(mnt / "f", ns=(1_000_000_123, 2_000_000_456))
    st = (mnt / "f").stat()
    assert st.st_atime_ns == 1_000_000_123
    assert st.st_mtime_ns == 2_000_000_456
    os.symlink("f", mnt / "link")
    os.chown(mnt / "link", 42, 43, follow_symlinks=False)
    assert (mnt / "link").lstat().st_uid == 42
    assert (mnt / "f").stat().st_uid == 1234
    (mnt / "d").mkdir()
    os.chmod(mnt / "d", 0o700)
    assert stat.S_IMODE((mnt / "d").stat().st_mode) == 0o700


def test_write_updates_mtime_and_size(mnt: Path) -> None:
    write_file(mnt / "f", b"1")
    os.utime(mnt / "f", ns=(0, 0))
    with open(mnt / "f", "ab") as handle:
        handle.write(b"2")
    st = (mnt / "f").stat()
    assert st.st_size == 2
    assert st.st_mtime_ns > 0


def test_directory_mtime_changes_on_create_and_remove(mnt: Path) -> None:
    (mnt / "d").mkdir()
    os.utime(mnt / "d", ns=(0, 0))
    (mnt / "d" / "f").touch()
    assert (mnt / "d").stat().st_mtime_ns > 0
    os.utime(mnt / "d", ns=(0, 0))
    os.unlink(mnt / "d" / "f")
    assert (mnt / "d").stat().st_mtime_ns > 0


def test_xattrs(mnt: Path) -> None:
    write_file(mnt / "f", b"x")
    os.setxattr(mnt / "f", "user.one", b"1")
    os.setxattr(mnt / "f", "user.binary", bytes(range(256)))
    os.setxattr(mnt / "f", "user.empty", b"")
    os.setxattr(mnt / "f", "user.big", b"v" * 60000)
    assert os.getxattr(mnt / "f", "user.one") == b"1"
    assert os.getxattr(mnt / "f", "user.binary") == bytes(range(256))
    assert os.getxattr(mnt / "f", "user.empty") == b""
    assert os.getxattr(mnt / "f", "user.big") == b"v" * 60000
    assert sorted(os.listxattr(mnt / "f")) == ["user.big", "user.binary", "user.empty", "user.one"]
    with pytest.raises(FileExistsError):
        os.setxattr(mnt / "f", "user.one", b"2", os.XATTR_CREATE)
    with pytest.raises(OSError) as error:
        os.setxattr(mnt / "f", "user.none", b"2", os.XATTR_REPLACE)
    assert error.value.errno == errno.ENODATA
    os.setxattr(mnt / "f", "user.one", b"replaced", os.XATTR_REPLACE)
    assert os.getxattr(mnt / "f", "user.one") == b"replaced"
    os.removexattr(mnt / "f", "user.one")
    with pytest.raises(OSError) as error:
        os.getxattr(mnt / "f", "user.one")
    assert error.value.errno == errno.ENODATA
    with pytest.raises(OSError) as error:
        os.removexattr(mnt / "f", "user.one")
    assert error.value.errno == errno.ENODATA
    assert sorted(os.listxattr(mnt / "f")) == ["user.big", "user.binary", "user.empty"]
    (mnt / "d").mkdir()
    os.setxattr(mnt / "d", "user.dir", b"on a dir")
    assert os.getxattr(mnt / "d", "user.dir") == b"on a dir"
    os.symlink("f", mnt / "l")
    os.setxattr(mnt / "l", "trusted.link", b"on the link", follow_symlinks=False)
    assert os.getxattr(mnt / "l", "trusted.link", follow_symlinks=False) == b"on the link"
    assert "trusted.link" not in os.listxattr(mnt / "f")


def test_xattr_value_too_large_for_buffer_is_erange(mnt: Path) -> None:
    import ctypes.util

    write_file(mnt / "f", b"")
    os.setxattr(mnt / "f", "user.v", b"0123456789")
    buffer = ctypes.create_string_buffer(4)
    result = _libc.getxattr(os.fsencode(mnt / "f"), b"user.v", buffer, 4)
    assert result == -1
    assert ctypes.get_errno() == errno.ERANGE
    assert _libc.getxattr(os.fsencode(mnt / "f"), b"user.v", None, 0) == 10


def test_posix_acls_are_enforced_or_refused(mnt: Path) -> None:
    """An ACL the filesystem accepts must be enforced: an ACL entry denying uid 65534 must keep that
    user out even though "other" may read. A filesystem that cannot enforce ACLs must refuse them
    (EOPNOTSUPP), as tar --acls and rsync -A then report, instead of silently storing them."""
    import struct

    write_file(mnt / "secret", b"secret")
    os.chmod(mnt / "secret", 0o644)
    os.chmod(mnt, 0o755)
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in [
        (0x01, 6, 0xFFFFFFFF),  # user::rw-
        (0x02, 0, 65534),       # user:nobody:---
        (0x04, 4, 0xFFFFFFFF),  # group::r--
        (0x10, 4, 0xFFFFFFFF),  # mask::r--
        (0x20, 4, 0xFFFFFFFF),  # other::r--
    ])
    try:
        os.setxattr(mnt / "secret", "system.posix_acl_access", acl)
    except OSError as error:
        assert error.errno == errno.EOPNOTSUPP
        return
    pid = os.fork()
    if pid == 0:  # the child: become nobody and try to read
        try:
            os.setgid(65534)
            os.setuid(65534)
            with open(mnt / "secret", "rb"):
                os._exit(1)  # read allowed: the ACL is not enforced
        except PermissionError:
            os._exit(0)
        except BaseException:
            os._exit(2)
    _, code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(code) == 0, (
        "the ACL was accepted (setxattr system.posix_acl_access succeeded) but not enforced: "
        "uid 65534 can read a file its ACL entry denies")


def test_statfs(mnt: Path) -> None:
    st = os.statvfs(mnt)
    assert st.f_bsize > 0 and st.f_frsize > 0
    assert st.f_blocks >= st.f_bfree >= st.f_bavail > 0
    assert st.f_files >= st.f_ffree > 0
    assert st.f_namemax == 255
    before = st.f_bfree
    write_file(mnt / "f", pattern(4 * BS, 99), fsync=True)
    assert os.statvfs(mnt).f_bfree <= before - (4 * BS) // st.f_frsize
    files_before = os.statvfs(mnt).f_ffree
    for i in range(10):
        (mnt / f"n{i}").touch()
    assert os.statvfs(mnt).f_ffree == files_before - 10


# --- mmap, fsync ---------------------------------------------------------------------------------


def test_mmap_read_and_write(mnt: Path) -> None:
    size = 2 * BS + 4096
    data = pattern(size, 21)
    write_file(mnt / "f", data, fsync=True)
    drop_page_cache(mnt / "f")
    with open(mnt / "f", "r+b") as handle:
        mapping = mmap.mmap(handle.fileno(), size)
        try:
            assert mapping[:] == data
            mapping[BS - 2:BS + 2] = b"MMAP"
            mapping[size - 1:size] = b"!"
            mapping.flush()  # msync(MS_SYNC)
        finally:
            mapping.close()
        os.fsync(handle.fileno())
    expected = bytearray(data)
    expected[BS - 2:BS + 2] = b"MMAP"
    expected[size - 1] = ord("!")
    drop_page_cache(mnt / "f")
    assert (mnt / "f").read_bytes() == bytes(expected)
    with open(mnt / "f", "rb") as handle, mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ) as mapping:
        assert mapping[BS - 2:BS + 2] == b"MMAP"


@pytest.mark.parametrize("sync", [os.fsync, os.fdatasync], ids=["fsync", "fdatasync"])
def test_fsync_certifies_every_block(mnt: Path, module_fs, sync) -> None:
    """After fsync returns, every block of the file lies in a blob with an availability certificate."""
    data = pattern(5 * BS + 1234, 31)
    fd = os.open(mnt / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        sync(fd)
        inode = os.fstat(fd).st_ino
        with module_fs.db() as db:
            rows = db.execute(
                "SELECT blocks.id, blocks.blob, blobs.certificate FROM inode_blocks "
                "JOIN blocks ON blocks.id = inode_blocks.block LEFT JOIN blobs ON blobs.id = blocks.blob "
                "WHERE inode_blocks.inode=?", (inode,)).fetchall()
    finally:
        os.close(fd)
    assert len(rows) == 6
    from walrusfs.client.certificate import Certificate
    from walrusfs.committee import Committee

    committee = Committee.load(module_fs.network.committee_path)
    for block, blob, certificate in rows:
        assert blob is not None, f"block {block} still staged after fsync"
        Certificate.from_json(certificate).verify(committee)


def test_fsync_directory(mnt: Path) -> None:
    (mnt / "d").mkdir()
    write_file(mnt / "d" / "f", b"x", fsync=True)
    fd = os.open(mnt / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_status_xattr(module_mount: Path) -> None:
    current = status(module_mount)
    for key in ("pid", "staged_bytes", "dirty_bytes", "uploads_in_flight", "uploaded_blobs", "last_error"):
        assert key in current
    assert Path(f"/proc/{current['pid']}").exists()


def metadata_snapshot(root: Path) -> dict[str, dict]:
    """Everything a backup tool would look at, for every path under ``root``."""
    import hashlib

    out: dict[str, dict] = {}
    for directory, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(directory, name)
            st = path.lstat()
            entry = {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid, "ino": st.st_ino,
                     "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
                     "xattrs": {k: os.getxattr(path, k, follow_symlinks=False)
                                for k in sorted(os.listxattr(path, follow_symlinks=False))}}
            if stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                entry.update(size=st.st_size, nlink=st.st_nlink,
                             blake2b=hashlib.blake2b(path.read_bytes()).hexdigest())
            out[str(path.relative_to(root))] = entry
    return out


def test_zz_everything_above_survives_a_remount(module_fs, module_mount: Path) -> None:
    """Run after the tests above (file order): their trees, remounted with an empty read cache, are
    the same to the byte, the mode, the owner, the time and the xattr."""
    before = metadata_snapshot(module_mount)
    assert len(before) > 50
    module_fs.remount(module_mount, clear_cache=True)
    after = metadata_snapshot(module_mount)
    assert set(after) == set(before)
    differences = {path: (before[path], after[path]) for path in before if before[path] != after[path]}
    assert not differences, f"{len(differences)} paths differ after remount, e.g. {next(iter(differences.items()))}"


# --- big directories -------------------------------------------------------------------------------


@pytest.mark.slow
def test_directory_with_100k_entries(mnt: Path) -> None:
    count = 100_000
    big = mnt / "big"
    big.mkdir()
    prefix = os.fsencode(big) + b"/entry-"
    start = time.monotonic()
    for i in range(count):
        os.mknod(prefix + str(i).encode())
    created = time.monotonic() - start
    start = time.monotonic()
    names = os.listdir(big)
    listed = time.monotonic() - start
    assert len(names) == count
    assert set(names) == {f"entry-{i}" for i in range(count)}
    with os.scandir(big) as entries:
        assert sum(1 for _ in entries) == count
    assert (big / "entry-99999").exists()
    assert not (big / "entry-100000").exists()
    print(f"100k entries: created in {created:.1f} s, listed in {listed:.1f} s")
