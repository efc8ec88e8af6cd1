"""walrusfs.directio: files written and read past the page cache, byte-exact, on any filesystem."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest

from walrusfs import directio
from walrusfs.directio import PAGE, BufferPool

SIZES = [0, 1, PAGE - 1, PAGE, PAGE + 1, 3 * PAGE + 17, (1 << 20) + 13]


def _has_direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


@pytest.mark.parametrize("size", SIZES)
def test_files_round_trip_byte_exact(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "f"
    directio.write_file(path, data, sync=True)
    assert path.read_bytes() == data  # as any other reader sees it
    assert directio.read_file(path) == data


@pytest.mark.parametrize("size", SIZES)
def test_page_aligned_memory_round_trips_byte_exact(tmp_path: Path, size: int) -> None:
    data = directio.aligned_empty(size)
    data[:] = os.urandom(size)
    directio.write_file(tmp_path / "f", data, sync=True)
    assert (tmp_path / "f").read_bytes() == bytes(data)


@pytest.mark.parametrize("aligned", [False, True])
def test_a_last_partial_page_goes_past_the_page_cache_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         aligned: bool) -> None:
    """A file whose length is not a page multiple (a sealed block: 1 MiB + 38 bytes) is written
    with O_DIRECT to its last byte, the last page padded and the file cut back to its length: no
    tail through the page cache (a dirty page and its writeback per file, and two fcntl calls)."""
    size = (1 << 20) + 38
    data: bytes | memoryview = os.urandom(size)
    if aligned:
        data = directio.aligned_empty(size)
        data[:] = os.urandom(size)

    def no_buffered_io(fd: int) -> None:
        raise AssertionError("fell back to buffered I/O on a filesystem that takes O_DIRECT")

    monkeypatch.setattr(directio, "_drop_direct", no_buffered_io)
    directio.write_file(tmp_path / "f", data)
    assert (tmp_path / "f").stat().st_size == size
    assert (tmp_path / "f").read_bytes() == bytes(data)


def test_the_working_filesystem_takes_o_direct(tmp_path: Path) -> None:
    fd = directio.open_direct(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        assert _has_direct(fd)  # ext4 here: if this fails, the measurements behind directio lie
    finally:
        os.close(fd)


def test_a_filesystem_refusing_o_direct_gets_buffered_io(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def refusing_open(path, flags, mode=0o777, **kwargs):  # as tmpfs did before Linux 6.6
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    fd = directio.open_direct(tmp_path / "probe", os.O_WRONLY | os.O_CREAT)
    try:
        assert not _has_direct(fd)
    finally:
        os.close(fd)
    for size in SIZES:
        data = os.urandom(size)
        directio.write_file(tmp_path / "f", data, sync=True)
        assert directio.read_file(tmp_path / "f") == data


def test_a_device_refusing_the_alignment_gets_buffered_io(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    real_pwrite, real_preadv = os.pwrite, os.preadv

    def picky_pwrite(fd, data, offset):
        if _has_direct(fd):
            raise OSError(errno.EINVAL, "Invalid argument")  # wants a larger alignment
        return real_pwrite(fd, data, offset)

    def picky_preadv(fd, buffers, offset):
        if _has_direct(fd):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "pwrite", picky_pwrite)
    monkeypatch.setattr(os, "preadv", picky_preadv)
    data = os.urandom(5 * PAGE + 3)
    directio.write_file(tmp_path / "f", data, sync=True)
    assert (tmp_path / "f").read_bytes() == data
    assert directio.read_file(tmp_path / "f") == data
    aligned = directio.aligned_empty(len(data))  # written from where it lies, until refused
    aligned[:] = data
    directio.write_file(tmp_path / "g", aligned, sync=True)
    assert (tmp_path / "g").read_bytes() == data


def test_rewriting_a_longer_file_leaves_no_old_tail(tmp_path: Path) -> None:
    path = tmp_path / "f"
    directio.write_file(path, b"x" * (5 * PAGE))
    directio.write_file(path, b"short")
    assert path.read_bytes() == b"short"


@pytest.mark.parametrize("offset,length", [(0, 10), (1, PAGE), (PAGE - 3, 7), (5000, 20000),
                                           (3 * PAGE, PAGE), (12_000, 10_000), (20_000, 5)])
def test_ranges_at_any_offset_and_past_the_end(tmp_path: Path, offset: int, length: int) -> None:
    data = os.urandom(4 * PAGE - 100)
    path = tmp_path / "f"
    directio.write_file(path, data)
    fd = directio.open_direct(path, os.O_RDONLY)
    try:
        assert directio.read_range(fd, offset, length) == data[offset : offset + length]
    finally:
        os.close(fd)


def test_a_missing_file_reads_as_none(tmp_path: Path) -> None:
    assert directio.read_file(tmp_path / "absent") is None


def test_buffers_are_reused_only_when_nothing_still_views_them() -> None:
    pool = BufferPool(max_idle_bytes=8 << 20)
    with pool.borrow(100) as first:
        first[:5] = b"hello"
    with pool.borrow(100) as again:
        assert again is first  # handed back, reused
    with pool.borrow(100) as held:
        view = memoryview(held)  # still alive after the block: must not be handed out again
    with pool.borrow(100) as other:
        assert other is not held
        other[:5] = b"later"
    assert bytes(view[:5]) == b"hello"  # untouched by the later borrower
    view.release()


def test_idle_buffers_are_bounded() -> None:
    pool = BufferPool(max_idle_bytes=1 << 20)
    with pool.borrow(1 << 20) as a, pool.borrow(1 << 20) as b:
        assert a is not b
    assert pool._idle_bytes <= 1 << 20
