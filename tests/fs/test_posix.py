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
import subprocess
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


FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_COLLAPSE_RANGE = 0x01, 0x02, 0x08


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if _libc.fallocate(fd, mode, offset, length) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def test_fallocate_plain_mode_grows_the_file_with_zeros(mnt: Path) -> None:
    write_file(mnt / "f", b"head")
    fd = os.open(mnt / "f", os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, 3 * BS + 10)
        assert os.fstat(fd).st_size == 3 * BS + 10
        os.posix_fallocate(fd, 0, 100)  # inside the file: nothing changes
        assert os.fstat(fd).st_size == 3 * BS + 10
        os.pwrite(fd, b"tail", 3 * BS + 6)
        os.fsync(fd)
    finally:
        os.close(fd)
    subprocess.run(["fallocate", "-l", str(5 * BS), str(mnt / "g")], check=True)  # the util-linux tool
    drop_page_cache(mnt / "f")
    assert (mnt / "f").read_bytes() == b"head" + bytes(3 * BS - 4 + 6) + b"tail"
    assert (mnt / "g").stat().st_size == 5 * BS
    assert (mnt / "g").read_bytes() == bytes(5 * BS)


def test_fallocate_keep_size_leaves_size_and_data(mnt: Path) -> None:
    data = pattern(BS + 500, 41)
    write_file(mnt / "f", data, fsync=True)
    fd = os.open(mnt / "f", os.O_RDWR)
    try:
        fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 8 * BS)
        assert os.fstat(fd).st_size == BS + 500
    finally:
        os.close(fd)
    drop_page_cache(mnt / "f")
    assert (mnt / "f").read_bytes() == data


@pytest.mark.parametrize("staged", [False, True], ids=["written", "certified"])
def test_fallocate_punch_hole_zeroes_the_range_and_frees_whole_blocks(mnt: Path, module_fs, staged: bool) -> None:
    size = 4 * BS + 1000
    data = pattern(size, 43)
    write_file(mnt / "f", data, fsync=staged)
    inode = (mnt / "f").stat().st_ino
    expected = bytearray(data)
    fd = os.open(mnt / "f", os.O_RDWR)
    try:
        # From the middle of block 0 to the middle of block 3: blocks 1 and 2 are whole holes.
        start, end = BS // 2, 3 * BS + 100
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, start, end - start)
        expected[start:end] = bytes(end - start)
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, size - 10, 1000)  # past the end: cut there
        expected[size - 10:] = bytes(10)
        assert os.fstat(fd).st_size == size
        assert os.pread(fd, size, 0) == bytes(expected)
        os.fsync(fd)
    finally:
        os.close(fd)
    with module_fs.db() as db:
        mapped = [b for (b,) in db.execute("SELECT blockno FROM inode_blocks WHERE inode=? ORDER BY blockno", (inode,))]
    assert mapped == [0, 3, 4]
    drop_page_cache(mnt / "f")
    assert (mnt / "f").read_bytes() == bytes(expected)
    subprocess.run(["fallocate", "--punch-hole", "--offset", "0", "--length", str(size), str(mnt / "f")], check=True)
    assert (mnt / "f").read_bytes() == bytes(size)


def test_fallocate_zero_range(mnt: Path) -> None:
    data = pattern(2 * BS + 50, 45)
    write_file(mnt / "f", data, fsync=True)
    subprocess.run(["fallocate", "--zero-range", "--offset", "100", "--length", str(BS), str(mnt / "f")], check=True)
    assert (mnt / "f").read_bytes() == data[:100] + bytes(BS) + data[BS + 100:]
    subprocess.run(["fallocate", "--zero-range", "--offset", str(2 * BS), "--length", str(BS), str(mnt / "f")],
                   check=True)  # past the end, without --keep-size: the file grows, with zeros
    drop_page_cache(mnt / "f")
    assert (mnt / "f").read_bytes() == data[:100] + bytes(BS) + data[BS + 100:2 * BS] + bytes(BS)


def test_fallocate_modes_not_offered_are_eopnotsupp(mnt: Path) -> None:
    write_file(mnt / "f", pattern(2 * BS, 44))
    fd = os.open(mnt / "f", os.O_RDWR)
    try:
        with pytest.raises(OSError) as error:
            fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, 0, BS)
        assert error.value.errno == errno.EOPNOTSUPP
    finally:
        os.close(fd)
    assert (mnt / "f").read_bytes() == pattern(2 * BS, 44)


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


def test_directory_link_counts(mnt: Path) -> None:
    """A directory's st_nlink is 2 + its subdirectories, as ext4, xfs and tmpfs report (find and
    other tools rely on it), through mkdir, rmdir, renames across directories and exchanges."""
    def nlink(path: str) -> int:
        return (mnt / path).stat().st_nlink

    (mnt / "d").mkdir()
    assert nlink("d") == 2
    (mnt / "d" / "a").mkdir()
    (mnt / "d" / "b").mkdir()
    write_file(mnt / "d" / "file", b"not a directory")
    os.symlink("a", mnt / "d" / "link")
    assert (nlink("d"), nlink("d/a")) == (4, 2)
    (mnt / "e").mkdir()
    os.rename(mnt / "d" / "b", mnt / "e" / "b")
    assert (nlink("d"), nlink("e")) == (3, 3)
    os.rename(mnt / "e" / "b", mnt / "e" / "b2")  # same directory: no change
    assert nlink("e") == 3
    (mnt / "d" / "empty").mkdir()
    os.rename(mnt / "e" / "b2", mnt / "d" / "empty")  # over an empty directory elsewhere
    assert (nlink("d"), nlink("e")) == (4, 2)
    write_file(mnt / "e" / "f", b"f")
    renameat2(mnt / "d" / "a", mnt / "e" / "f", RENAME_EXCHANGE)  # a directory and a file swap places
    assert (nlink("d"), nlink("e")) == (3, 3)
    assert nlink(".") == 4  # the test's own directory: d and e
    fd = os.open(mnt / "e" / "f", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(mnt / "e" / "f")
        assert os.fstat(fd).st_nlink == 0  # removed while open
    finally:
        os.close(fd)
    assert nlink("e") == 2
    result = subprocess.run(["find", str(mnt), "-name", "f*"], capture_output=True, text=True, check=True)
    assert sorted(Path(line).name for line in result.stdout.split()) == ["file"]


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


def test_every_operation_refuses_a_name_over_255_bytes(mnt: Path) -> None:
    """statfs says 255: no operation may treat a longer name as absent (ENOENT) or create it."""
    long = mnt / ("n" * 256)
    write_file(mnt / "file", b"x")
    (mnt / "dir").mkdir()
    attempts = {
        "stat": lambda: os.stat(long),
        "lstat": lambda: os.lstat(long),
        "open": lambda: os.open(long, os.O_RDONLY),
        "create": lambda: os.open(long, os.O_CREAT | os.O_WRONLY, 0o644),
        "mkdir": lambda: os.mkdir(long),
        "mknod": lambda: os.mknod(long),
        "symlink": lambda: os.symlink("file", long),
        "link": lambda: os.link(mnt / "file", long),
        "rename to": lambda: os.rename(mnt / "file", long),
        "rename dir to": lambda: os.rename(mnt / "dir", long),
        "rename from": lambda: os.rename(long, mnt / "other"),
        "unlink": lambda: os.unlink(long),
        "rmdir": lambda: os.rmdir(long),
        "getxattr": lambda: os.getxattr(long, "user.x"),
    }
    results = {}
    for what, attempt in attempts.items():
        try:
            attempt()
            results[what] = "succeeded"
        except OSError as error:
            results[what] = errno.errorcode.get(error.errno, str(error.errno))
    assert results == dict.fromkeys(attempts, "ENAMETOOLONG")
    assert sorted(os.listdir(mnt)) == ["dir", "file"]
    assert (mnt / "file").stat().st_nlink == 1


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


def as_nobody(directory: Path, action) -> int:
    """Run ``action()`` in a child process that works in ``directory`` as uid/gid 65534 (it enters
    the directory as root first: pytest's temporary directories above it are 0700). The child's
    exit code: 0 if ``action`` was allowed, 13 if it raised PermissionError, 2 on anything else."""
    pid = os.fork()
    if pid == 0:
        try:
            os.chdir(directory)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            action()
            os._exit(0)
        except PermissionError:
            os._exit(13)
        except BaseException:
            os._exit(2)
    _, code = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(code)


def read_it(name: str):
    return lambda: Path(name).read_bytes()


def write_it(name: str):
    return lambda: Path(name).write_bytes(b"written by nobody")


def acl_xattr(*entries: tuple[int, int, int]) -> bytes:
    import struct

    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in entries)


UNDEF = 0xFFFFFFFF


def test_posix_acls_are_enforced_or_refused(mnt: Path) -> None:
    """An ACL the filesystem accepts must be enforced: an ACL entry denying uid 65534 must keep that
    user out even though "other" may read. A filesystem that cannot enforce ACLs must refuse them
    (EOPNOTSUPP), as tar --acls and rsync -A then report, instead of silently storing them."""
    write_file(mnt / "secret", b"secret")
    os.chmod(mnt / "secret", 0o644)
    os.chmod(mnt, 0o755)
    assert as_nobody(mnt, read_it("secret")) == 0, "the test cannot work: nobody cannot read a 0644 file"
    acl = acl_xattr((0x01, 6, UNDEF), (0x02, 0, 65534), (0x04, 4, UNDEF), (0x10, 4, UNDEF), (0x20, 4, UNDEF))
    try:
        os.setxattr(mnt / "secret", "system.posix_acl_access", acl)
    except OSError as error:
        assert error.errno == errno.EOPNOTSUPP
        return
    assert as_nobody(mnt, read_it("secret")) == 13, (
        "the ACL was accepted (setxattr system.posix_acl_access succeeded) but not enforced: "
        "uid 65534 can read a file its ACL entry denies")


def test_an_acl_entry_grants_what_the_mode_does_not(mnt: Path) -> None:
    write_file(mnt / "private", b"private")
    os.chmod(mnt / "private", 0o600)
    os.chmod(mnt, 0o755)
    assert as_nobody(mnt, read_it("private")) == 13
    subprocess.run(["setfacl", "-m", "u:65534:rw", str(mnt / "private")], check=True)
    assert stat.S_IMODE((mnt / "private").stat().st_mode) == 0o660  # the group bits show the mask
    assert as_nobody(mnt, read_it("private")) == 0
    assert as_nobody(mnt, write_it("private")) == 0
    os.chmod(mnt / "private", 0o600)  # chmod sets the mask: the entry no longer grants anything
    assert as_nobody(mnt, read_it("private")) == 13


def test_setting_a_minimal_acl_sets_the_mode(mnt: Path) -> None:
    """What GNU cp -a and rsync -A do for every file: the ACL's owner/group/other entries are the
    mode, and nothing is stored besides it."""
    write_file(mnt / "f", b"x")
    os.chmod(mnt / "f", 0o600)
    os.setxattr(mnt / "f", "system.posix_acl_access", acl_xattr((0x01, 7, UNDEF), (0x04, 5, UNDEF), (0x20, 4, UNDEF)))
    assert stat.S_IMODE((mnt / "f").stat().st_mode) == 0o754
    assert "system.posix_acl_access" not in os.listxattr(mnt / "f")
    with pytest.raises(OSError) as error:
        os.getxattr(mnt / "f", "system.posix_acl_access")
    assert error.value.errno == errno.ENODATA


def varied_tree(root: Path) -> None:
    """Files and directories of many modes (setuid, setgid, sticky too), hard and symbolic links,
    and a part of /usr/share/doc as a real tree."""
    root.mkdir()
    for mode in (0o644, 0o755, 0o600, 0o700, 0o444, 0o640, 0o750, 0o711, 0o604, 0o4755, 0o2755, 0o000):
        write_file(root / f"file-{mode:04o}", f"{mode:o}".encode())
        os.chmod(root / f"file-{mode:04o}", mode)
    for mode in (0o755, 0o700, 0o750, 0o711, 0o1777, 0o2775, 0o555):
        (root / f"dir-{mode:04o}" / "inner").mkdir(parents=True)
        write_file(root / f"dir-{mode:04o}" / "inner" / "f", b"in")
        os.chmod(root / f"dir-{mode:04o}", mode)
    os.link(root / "file-0640", root / "hardlink-0640")
    os.symlink("file-0755", root / "symlink")
    docs = sorted(Path("/usr/share/doc").iterdir())[:60]
    subprocess.run(["cp", "-a", *map(str, docs), str(root / "dir-0755")], check=True)


def modes_under(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): oct(path.lstat().st_mode) for path in sorted(root.rglob("*"))}


def getfacl(root: Path) -> dict[str, str]:
    """path -> getfacl's report, for every path under ``root`` (numeric ids; in any directory order)."""
    result = subprocess.run(["getfacl", "-R", "-n", "-p", "."], cwd=root, capture_output=True, text=True, check=True)
    return {block.split("\n", 1)[0]: block for block in result.stdout.strip().split("\n\n")}


def test_cp_a_keeps_every_mode(mnt: Path, tmp_path: Path) -> None:
    varied_tree(tmp_path / "src")
    expected = modes_under(tmp_path / "src")
    assert len(expected) > 200
    subprocess.run(["cp", "-a", str(tmp_path / "src"), str(mnt)], check=True)
    copied = modes_under(mnt / "src")
    wrong = {path: (expected[path], copied.get(path)) for path in expected if copied.get(path) != expected[path]}
    assert not wrong, f"{len(wrong)} of {len(expected)} entries lost their mode, e.g. {list(wrong.items())[:5]}"
    assert getfacl(mnt / "src") == getfacl(tmp_path / "src")


def acl_script(root: Path) -> None:
    """setfacl, chmod and creation under default ACLs, as a user would type them."""
    def sh(*args: str) -> None:
        subprocess.run(args, cwd=root, check=True)

    old_umask = os.umask(0o022)
    try:
        write_file(root / "f", b"f")
        os.chmod(root / "f", 0o640)
        sh("setfacl", "-m", "u:65534:rw,g:65534:r", "f")
        os.chmod(root / "f", 0o604)  # the mask follows the group bits: ---
        sh("setfacl", "-m", "m::rw", "f")
        write_file(root / "g", b"g")
        sh("setfacl", "-m", "u:1000:rwx", "g")
        sh("setfacl", "-b", "g")  # back to the mode alone
        write_file(root / "h", b"h")
        sh("setfacl", "-m", "u:1000:r,u:1001:rw,g:50:x", "h")
        sh("setfacl", "-x", "u:1000", "h")
        (root / "d").mkdir(mode=0o750)
        sh("setfacl", "-d", "-m", "u:65534:rw,g::rx,o::-", "d")
        os.close(os.open(root / "d" / "new", os.O_CREAT | os.O_WRONLY, 0o666))  # umask 022: not applied
        (root / "d" / "sub").mkdir(mode=0o777)
        write_file(root / "d" / "sub" / "deeper", b"inherits twice")
        os.mkfifo(root / "d" / "fifo", 0o640)
        os.symlink("new", root / "d" / "link")
        (root / "e").mkdir()
        sh("setfacl", "-d", "-m", "u:65534:rwx", "e")
        sh("setfacl", "-k", "e")  # default ACL removed again
        write_file(root / "e" / "plain", b"umask applies")
    finally:
        os.umask(old_umask)


def test_acls_behave_as_on_a_local_filesystem(mnt: Path, tmp_path: Path) -> None:
    """The same setfacl/chmod/create script on the local ext4 and on the mount: getfacl and the
    modes show the same everywhere (access ACLs, masks, default ACLs and their inheritance)."""
    (tmp_path / "local").mkdir()
    acl_script(tmp_path / "local")
    acl_script(mnt)
    assert modes_under(mnt) == modes_under(tmp_path / "local")
    assert getfacl(mnt) == getfacl(tmp_path / "local")


def test_setgid_directories_pass_their_group_on(mnt: Path, tmp_path: Path) -> None:
    """As on ext4: entries made in a setgid directory get its group, new directories the bit too."""
    def script(root: Path) -> dict[str, tuple[str, int]]:
        (root / "team").mkdir()
        os.chown(root / "team", 0, 100)
        os.chmod(root / "team", 0o2775)
        write_file(root / "team" / "file", b"x")
        (root / "team" / "sub").mkdir()
        os.mkfifo(root / "team" / "sub" / "fifo")
        return {str(p.relative_to(root)): (oct(p.lstat().st_mode), p.lstat().st_gid) for p in root.rglob("*")}

    (tmp_path / "local").mkdir()
    assert script(mnt) == script(tmp_path / "local")


def test_inherited_acl_is_enforced(mnt: Path) -> None:
    os.chmod(mnt, 0o755)
    (mnt / "shared").mkdir(mode=0o755)
    subprocess.run(["setfacl", "-d", "-m", "u:65534:rw,o::-", str(mnt / "shared")], check=True)
    subprocess.run(["setfacl", "-m", "o::rx", str(mnt / "shared")], check=True)
    os.close(os.open(mnt / "shared" / "doc", os.O_CREAT | os.O_WRONLY, 0o666))
    assert as_nobody(mnt, write_it("shared/doc")) == 0
    assert (mnt / "shared" / "doc").read_bytes() == b"written by nobody"
    os.close(os.open(mnt / "shared" / "closed", os.O_CREAT | os.O_WRONLY, 0o666))
    subprocess.run(["setfacl", "-x", "u:65534", str(mnt / "shared" / "closed")], check=True)
    assert as_nobody(mnt, read_it("shared/closed")) == 13


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


def _fill(directory: Path, count: int) -> float:
    """Create ``count`` entries (device-less nodes: no data to upload) in a new directory; seconds taken."""
    directory.mkdir()
    prefix = os.fsencode(directory) + b"/entry-"
    start = time.monotonic()
    for i in range(count):
        os.mknod(prefix + str(i).encode())
    return time.monotonic() - start


def _list_seconds(directory: Path) -> float:
    """The fastest of five full listings: the least disturbed by whatever else the machine runs."""
    best = float("inf")
    for _ in range(5):
        start = time.monotonic()
        os.listdir(directory)
        best = min(best, time.monotonic() - start)
    return best


def test_a_big_directory_lists_every_entry_once_and_scales_linearly(mnt: Path) -> None:
    """A directory of 10,000 entries lists each exactly once: ten database pages of readdir (1,000
    rows each) and hundreds of kernel readdir buffers, resumed at stable offsets.

    Creating and listing entries must not get slower per entry as the directory grows. One big size
    (this test used 100,000 entries, 94 s) shows that only as "it finished"; two sizes 10x apart show
    it as a ratio: linear work takes ~10x as long at the larger size (12.5x measured on a loaded
    machine); a listing that rescanned the directory for each page (quadratic) measured 69x. The
    bounds sit between, generous for a loaded machine."""
    small, large = 1_000, 10_000
    created_small = _fill(mnt / "small", small)
    created_large = _fill(mnt / "big", large)
    big = mnt / "big"

    names = os.listdir(big)
    assert len(names) == large
    assert set(names) == {f"entry-{i}" for i in range(large)}
    with os.scandir(big) as entries:
        assert sum(1 for _ in entries) == large
    assert (big / f"entry-{large - 1}").exists()
    assert not (big / f"entry-{large}").exists()

    per_entry = (created_large / large) / (created_small / small)
    listed_small, listed_large = _list_seconds(mnt / "small"), _list_seconds(big)
    listed = listed_large / listed_small
    print(f"create: {created_small:.1f} s for {small}, {created_large:.1f} s for {large}; "
          f"list: {listed_small * 1000:.0f} ms, {listed_large * 1000:.0f} ms")
    assert per_entry < 3.5, f"creating an entry took {per_entry:.1f}x as long in a 10x bigger directory"
    assert listed < 30, f"listing 10x the entries took {listed:.1f}x as long (linear: ~10x)"
