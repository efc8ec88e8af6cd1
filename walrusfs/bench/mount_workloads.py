"""Workloads ``walrusfs bench mount`` runs in the mount besides its sequential file and its flat
small files: unpacking a source-like tree with ``tar -x``, and small sqlite transactions, each
commit one fsync.

The tree is generated from a seed, so every run (and every commit compared) unpacks the same bytes:
directories a few levels deep, mostly small files (sizes drawn from a log-normal distribution, as in
a source tree) and a few large ones. Contents are random: nothing deduplicates or compresses.
"""

from __future__ import annotations

import io
import math
import random
import sqlite3
import statistics
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

MiB = 1 << 20


def make_tree_tar(path: Path, files: int, total_bytes: int, seed: int = 19) -> tuple[int, int]:
    """Write a tar of ``files`` regular files in ~files/20 directories, about ``total_bytes`` in all,
    to ``path``. Returns (files, bytes) as written."""
    rng = random.Random(seed)
    # Log-normal sizes (median ~8 KiB, a long tail), scaled so that they add up to total_bytes.
    raw = [math.exp(rng.gauss(9.0, 1.6)) for _ in range(files)]
    scale = total_bytes / sum(raw)
    sizes = [max(1, min(int(size * scale), 16 * MiB)) for size in raw]
    directories = ["src"]
    for i in range(max(files // 20, 1) - 1):
        parent = rng.choice(directories) if len(directories) < 8 or rng.random() < 0.7 else "src"
        directories.append(f"{parent}/d{i:04d}")
    written = 0
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for directory in directories:
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
        for i, size in enumerate(sizes):
            info = tarfile.TarInfo(f"{rng.choice(directories)}/f{i:05d}.c")
            info.size, info.mode, info.mtime = size, 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(rng.randbytes(size)))
            written += size
    return len(sizes), written


def untar(tarball: Path, into: Path) -> float:
    """Seconds ``tar -x`` takes to unpack ``tarball`` into the (new) directory ``into``."""
    into.mkdir()
    start = time.perf_counter()
    result = subprocess.run(["tar", "-x", "-f", str(tarball), "-C", str(into)], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"tar -x into {into} failed: {result.stderr.strip()}")
    return seconds


def sqlite_commits(path: Path, commits: int, row_bytes: int = 200) -> dict[str, Any]:
    """``commits`` small transactions (one row each) in a new sqlite database at ``path``; returns the
    commit latencies' p50, p99 and max in milliseconds.

    The database is in WAL mode with synchronous=FULL and exclusive locking: each commit appends its
    pages to the WAL and fsyncs it once, which is what "a sqlite commit is an fsync" means (exclusive
    locking keeps the WAL index in the process's memory rather than in a shared-memory file)."""
    rng = random.Random(7)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, payload BLOB)")
        latencies = []
        for _ in range(commits):
            payload = rng.randbytes(row_bytes)
            start = time.perf_counter()
            conn.execute("BEGIN")
            conn.execute("INSERT INTO log (payload) VALUES (?)", (payload,))
            conn.execute("COMMIT")
            latencies.append(time.perf_counter() - start)
        rows = conn.execute("SELECT COUNT(*) FROM log").fetchone()[0]
    finally:
        conn.close()
    if rows != commits:
        raise RuntimeError(f"the sqlite database in the mount holds {rows} rows after {commits} commits")
    latencies.sort()
    return {"sqlite_commits": commits,
            "sqlite_commit_p50_ms": statistics.median(latencies) * 1000,
            "sqlite_commit_p99_ms": latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)] * 1000,
            "sqlite_commit_max_ms": latencies[-1] * 1000}
