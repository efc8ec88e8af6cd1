"""bench mount's workloads (walrusfs/bench/mount_workloads.py) on a local directory: the tar tree is
the same bytes every run and about the size asked, untar unpacks all of it, and the sqlite workload
commits every transaction and reports its latencies in order."""

from __future__ import annotations

import hashlib
import sqlite3
import tarfile
from pathlib import Path

from walrusfs.bench.mount_workloads import make_tree_tar, sqlite_commits, untar


def test_the_tree_is_deterministic_mostly_small_files_and_about_the_size_asked(tmp_path: Path) -> None:
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    files, total = make_tree_tar(first, 300, 3 << 20)
    assert make_tree_tar(second, 300, 3 << 20) == (files, total)
    assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()
    assert files == 300 and 0.9 * (3 << 20) <= total <= 1.1 * (3 << 20)
    with tarfile.open(first) as tar:
        sizes = sorted(member.size for member in tar.getmembers() if member.isfile())
        directories = [member for member in tar.getmembers() if member.isdir()]
    assert sizes[len(sizes) // 2] < 16 << 10  # the median file is small, as in a source tree
    assert len(directories) >= 10
    seconds = untar(first, tmp_path / "out")
    assert seconds > 0
    assert sum(1 for path in (tmp_path / "out").rglob("*") if path.is_file()) == 300


def test_sqlite_commits_are_all_there_and_their_percentiles_ordered(tmp_path: Path) -> None:
    result = sqlite_commits(tmp_path / "db.sqlite", 20)
    assert result["sqlite_commits"] == 20
    assert 0 < result["sqlite_commit_p50_ms"] <= result["sqlite_commit_p99_ms"] <= result["sqlite_commit_max_ms"]
    with sqlite3.connect(tmp_path / "db.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM log").fetchone()[0] == 20
