"""Mounting and unmounting: nothing is lost across unmounts (clean, plain, or a crashed daemon), one
writable mount at a time, ``mount -t walrusfs`` through the helper, errors that reach the caller."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fs_harness import (
    WALRUSFS,
    Filesystem,
    installed_helper,
    is_mounted,
    mounted,
    run,
    status,
    tree_snapshot,
    wait_gone,
)

MiB = 1 << 20


def make_tree(root: Path, seed: int = 0, files: int = 30) -> None:
    """A small tree of distinct files (no two blocks alike), a link and a symlink."""
    (root / "dir" / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        size = (i * 37_813 + seed * 1000) % (MiB + 300_000)
        data = (f"{seed}-{i}-".encode() * (size // 6 + 1))[:size]
        where = root / "dir" if i % 3 else root / "dir" / "sub"
        (where / f"file{i}").write_bytes(data)
    os.link(root / "dir" / "file1", root / "dir" / "hardlink")
    os.symlink("sub/file0", root / "dir" / "symlink")


def assert_all_certified(fs: Filesystem) -> None:
    with fs.db() as db:
        staged = db.execute("SELECT COUNT(*) FROM blocks WHERE blob IS NULL").fetchone()[0]
        uncertified = db.execute("SELECT COUNT(*) FROM blobs WHERE certificate = ''").fetchone()[0]
    assert staged == 0, f"{staged} blocks still staged"
    assert uncertified == 0
    assert not any(fs.staging_dir.iterdir()), "staging files left behind"


def test_umount_remount_keeps_everything(shared_network, make_fs, tmp_path: Path) -> None:
    fs = make_fs(shared_network)
    mp = tmp_path / "mnt"
    with mounted(fs, mp):
        make_tree(mp)
        before = tree_snapshot(mp)
        fs.umount(mp)
        assert_all_certified(fs)
        fs.clear_cache()
        fs.mount(mp)
        assert tree_snapshot(mp) == before
        assert (mp / "dir" / "hardlink").stat().st_nlink == 2
        assert status(mp)["cache_misses"] > 0, "reads after an emptied cache must come from the network"


def test_walrusfs_umount_waits_for_certification(shared_network, make_fs, tmp_path: Path) -> None:
    fs = make_fs(shared_network)
    mp = tmp_path / "mnt"
    with mounted(fs, mp):
        (mp / "f").write_bytes(os.urandom(3 * MiB))
        assert status(mp)["staged_bytes"] + status(mp)["dirty_bytes"] > 0
        result = fs.umount(mp)
        assert "certified" in result.stderr
        assert_all_certified(fs)


def test_plain_fusermount_loses_nothing(shared_network, make_fs, tmp_path: Path) -> None:
    """``fusermount3 -u`` right after writing (nothing fsynced, uploads not started): the daemon
    uploads before it exits, and the next mount sees every byte from the network."""
    fs = make_fs(shared_network)
    mp = tmp_path / "mnt"
    with mounted(fs, mp):
        make_tree(mp, seed=1)
        before = tree_snapshot(mp)
        assert status(mp)["uploaded_blobs"] == 0
        fs.plain_umount(mp)
        assert not is_mounted(mp)
        assert_all_certified(fs)
        fs.clear_cache()
        fs.mount(mp)
        assert tree_snapshot(mp) == before


def test_crashed_daemon_loses_nothing_closed(shared_network, make_fs, tmp_path: Path) -> None:
    """Files closed before the daemon is killed -9 are staged on disk; the next mount uploads them."""
    fs = make_fs(shared_network)
    mp = tmp_path / "mnt"
    with mounted(fs, mp):
        make_tree(mp, seed=2, files=10)
        before = tree_snapshot(mp)
        pid = status(mp)["pid"]
        assert status(mp)["uploaded_blobs"] == 0, "too slow: the upload started before the kill"
        os.kill(pid, signal.SIGKILL)
        assert wait_gone(pid, 10)
        subprocess.run(["fusermount3", "-u", str(mp.resolve())], check=True, timeout=30)
        fs.mounts.clear()
        fs.mount(mp)
        assert status(mp)["staged_bytes"] > 0, "the staged blocks were not found at the next mount"
        fs.umount(mp)
        assert_all_certified(fs)
        fs.clear_cache()
        fs.mount(mp)
        assert tree_snapshot(mp) == before


def test_second_writable_mount_is_refused(shared_network, make_fs, tmp_path: Path) -> None:
    fs = make_fs(shared_network)
    first, second = tmp_path / "first", tmp_path / "second"
    with mounted(fs, first):
        (first / "f").write_bytes(b"one")
        second.mkdir()
        result = fs.mount(second, check=False)
        assert result.returncode != 0
        assert "already mounted" in result.stderr
        assert str(status(first)["pid"]) in result.stderr
        assert not is_mounted(second.resolve())
        assert (first / "f").read_bytes() == b"one"  # the first mount is unharmed


def test_removing_everything_frees_everything(shared_network, make_fs, tmp_path: Path) -> None:
    """Invariant I1: once unmounted, no inode is left without a name, and nothing of deleted files
    stays in the metadata (blocks, xattrs, staging files)."""
    fs = make_fs(shared_network)
    mp = tmp_path / "mnt"
    with mounted(fs, mp):
        make_tree(mp, seed=3, files=12)
        os.setxattr(mp / "dir", "user.x", b"y")
        for directory, dirs, files in os.walk(mp):  # list everything, as any file manager does
            for name in dirs + files:
                os.lstat(Path(directory, name))
        shutil.rmtree(mp / "dir")
        assert os.listdir(mp) == []
    with fs.db() as db:
        inodes = db.execute("SELECT id, mode, refcount FROM inodes ORDER BY id").fetchall()
        counts = {table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                  for table in ("dirents", "inode_blocks", "blocks", "xattrs", "symlinks")}
    assert [row[0] for row in inodes] == [1], f"inodes left after removing everything: {inodes}"
    assert counts == dict.fromkeys(counts, 0)
    assert not any(fs.staging_dir.iterdir())


def test_read_only_mount(shared_network, make_fs, tmp_path: Path) -> None:
    fs = make_fs(shared_network)
    mp = tmp_path / "mnt"
    with mounted(fs, mp):
        (mp / "f").write_bytes(b"data")
    with mounted(fs, mp, "-o", "ro"):
        assert (mp / "f").read_bytes() == b"data"
        with pytest.raises(OSError) as error:
            (mp / "g").write_bytes(b"x")
        assert error.value.errno == 30  # EROFS


def test_mount_errors_reach_the_caller(shared_network, make_fs, tmp_path: Path) -> None:
    fs = make_fs(shared_network)
    missing = make_fs(shared_network, name="never-created", mkfs=False)
    (tmp_path / "mnt").mkdir()
    result = missing.mount(tmp_path / "mnt", check=False)
    assert result.returncode != 0
    assert "not a walrusfs filesystem" in result.stderr
    result = run([WALRUSFS, "mount", fs.name, str(tmp_path / "nonexistent")], fs.env, check=False)
    assert result.returncode != 0
    assert "does not exist" in result.stderr
    (tmp_path / "a-file").write_text("")
    result = run([WALRUSFS, "mount", fs.name, str(tmp_path / "a-file")], fs.env, check=False)
    assert result.returncode != 0
    assert "not a directory" in result.stderr
    result = fs.mount(tmp_path / "mnt", "-o", "bogus", check=False)
    assert result.returncode != 0
    assert "unknown mount option" in result.stderr
    result = run([WALRUSFS, "mkfs", fs.name, "--committee", str(fs.network.committee_path),
                  "--writer-key", str(fs.network.writer_key_path)], fs.env, check=False)
    assert result.returncode != 0
    assert "already holds a filesystem" in result.stderr
    assert not is_mounted((tmp_path / "mnt").resolve())


@pytest.fixture
def helper() -> Iterator[Path]:
    with installed_helper() as path:
        yield path


def test_mount_t_walrusfs_through_the_helper(shared_network, make_fs, tmp_path: Path, helper: Path) -> None:
    assert os.access(helper, os.X_OK)
    fs = make_fs(shared_network)
    mp = (tmp_path / "mnt").resolve()
    mp.mkdir()
    result = subprocess.run(["mount", "-t", "walrusfs", fs.name, str(mp)], env=fs.env, capture_output=True,
                            text=True, timeout=60)
    if is_mounted(mp):
        fs.mounts[mp] = status(mp)["pid"]
    try:
        assert result.returncode == 0, result.stderr
        assert is_mounted(mp)
        (mp / "hello").write_text("through mount(8)")
        fs.umount(mp)
        fs.mount(mp)
        assert (mp / "hello").read_text() == "through mount(8)"
        fs.umount(mp)
    finally:
        fs.cleanup()
    missing = (tmp_path / "other").resolve()
    missing.mkdir()
    started = time.monotonic()
    result = subprocess.run(["mount", "-t", "walrusfs", "no-such-filesystem", str(missing)], env=fs.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "not a walrusfs filesystem" in result.stderr
    assert time.monotonic() - started < 30
    assert not is_mounted(missing)
