"""Everyday programs working inside the mount: tar, git, SQLite. Each result is checked again after a
remount that reads everything back from the network."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from fs_harness import Filesystem
from tree_maker import describe_tree, diff_trees, make_source_tree


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("tools-source") / "tree"
    make_source_tree(source, seed=7, small=150, medium=20, large=2)
    return source


def sh(args: list[str], cwd: Path | None = None, **env: str) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, timeout=300, env={**os.environ, **env})
    assert result.returncode == 0, (args, result.stderr.decode(errors="replace"))
    return result.stdout.decode(errors="replace")


TAR_FLAGS = ["--xattrs", "--xattrs-include=*", "--numeric-owner", "-p"]


def test_tar_create_and_extract_inside_the_mount(module_fs: Filesystem, module_mount: Path, mnt: Path,
                                                small_tree: Path, tmp_path: Path) -> None:
    expected = describe_tree(small_tree)
    sh(["tar", *TAR_FLAGS, "-cf", str(mnt / "source.tar"), "-C", str(small_tree), "."])
    (mnt / "extracted").mkdir()
    sh(["tar", *TAR_FLAGS, "-xf", str(mnt / "source.tar"), "-C", str(mnt / "extracted")])
    problems = diff_trees(expected, describe_tree(mnt / "extracted"))
    assert not problems, problems
    # a tarball made from the mounted copy, extracted outside, is the same tree again
    sh(["tar", *TAR_FLAGS, "-czf", str(mnt / "again.tar.gz"), "-C", str(mnt / "extracted"), "."])
    module_fs.remount(module_mount, clear_cache=True)
    (tmp_path / "out").mkdir()
    sh(["tar", *TAR_FLAGS, "-xzf", str(mnt / "again.tar.gz"), "-C", str(tmp_path / "out")])
    problems = diff_trees(expected, describe_tree(tmp_path / "out"))
    assert not problems, problems
    sh(["tar", "--compare", "-f", str(mnt / "source.tar"), "-C", str(mnt / "extracted")])


GIT_ENV = {"GIT_AUTHOR_NAME": "Walrus", "GIT_AUTHOR_EMAIL": "w@example.org", "GIT_COMMITTER_NAME": "Walrus",
           "GIT_COMMITTER_EMAIL": "w@example.org", "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"}


def git(repo: Path, *args: str) -> str:
    return sh(["git", "-c", "init.defaultBranch=main", "-c", "safe.directory=*", *args], cwd=repo, **GIT_ENV)


def test_git_init_commit_log_inside_the_mount(module_fs: Filesystem, module_mount: Path, mnt: Path,
                                              tmp_path: Path) -> None:
    repo = mnt / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    for i in range(12):
        (repo / f"file{i % 4}.txt").write_text(f"version {i}\n" * (i + 1))
        (repo / "sub").mkdir(exist_ok=True)
        (repo / "sub" / f"n{i}").write_bytes(os.urandom(3000 * i))
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"commit {i}")
    git(repo, "mv", "file0.txt", "renamed.txt")
    git(repo, "commit", "-q", "-m", "rename")
    git(repo, "gc", "-q")  # packs objects: temp files, renames, fsync
    log = git(repo, "log", "--format=%s").splitlines()
    assert log == ["rename", *[f"commit {i}" for i in reversed(range(12))]]
    head = git(repo, "rev-parse", "HEAD").strip()
    module_fs.remount(module_mount, clear_cache=True)
    git(repo, "fsck", "--full", "--strict")
    assert git(repo, "rev-parse", "HEAD").strip() == head
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "log", "--format=%s").splitlines() == log
    sh(["git", "clone", "-q", str(repo), str(tmp_path / "clone")], **GIT_ENV)
    assert (tmp_path / "clone" / "renamed.txt").read_text() == "version 8\n" * 9
    assert git(tmp_path / "clone", "rev-parse", "HEAD").strip() == head


def test_sqlite_database_inside_the_mount(module_fs: Filesystem, module_mount: Path, mnt: Path) -> None:
    """Rollback-journal transactions (each commit fsyncs the journal and the database), then WAL mode
    with many more; the database passes integrity_check after a remount.

    12 journal commits (40 before) go through the journal's whole cycle, created, fsync'd, deleted,
    again and again: each waits for its certificates, which made them most of this test's time."""
    journal_commits = 12
    path = mnt / "db.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, v BLOB)")
    for i in range(journal_commits):  # each a durable commit: journal + database fsync'd, waiting for certificates
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (f"journal-{i}", os.urandom(2000)))
        conn.execute("UPDATE t SET v = ? WHERE id = ?", (os.urandom(100), i // 2 + 1))
        conn.execute("COMMIT")
    assert conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    conn.execute("PRAGMA synchronous=NORMAL")
    for i in range(2000):
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (f"wal-{i}", os.urandom(i % 5000)))
        if i % 7 == 0:
            conn.execute("DELETE FROM t WHERE k = ?", (f"wal-{i - 3}",))
        conn.execute("COMMIT")
    conn.execute("CREATE INDEX t_v ON t(length(v))")
    expected = conn.execute("SELECT k, v FROM t ORDER BY id").fetchall()
    conn.close()
    module_fs.remount(module_mount, clear_cache=True)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT k, v FROM t ORDER BY id").fetchall() == expected
        assert len(expected) == journal_commits + 2000 - len(range(0, 2000, 7)) + 1  # wal--3 never existed
    finally:
        conn.close()
