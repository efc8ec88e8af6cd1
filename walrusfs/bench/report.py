"""Shared helpers for benchmarks: timing, medians, and printing results."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any


def process_cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds the given processes (all their threads) have used so far; a process
    gone meanwhile counts nothing."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def median_seconds(run: Callable[[], object], repeat: int, warmup: int = 1,
                   clock: Callable[[], float] = time.perf_counter) -> float:
    """The median of ``repeat`` runs by ``clock``: wall time, or ``time.process_time`` for the CPU
    seconds of this process (all its threads), which other processes on a loaded machine barely move."""
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(repeat):
        start = clock()
        run()
        samples.append(clock() - start)
    return statistics.median(samples)


def mb_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6 if seconds > 0 else float("inf")


def emit(results: dict[str, Any], as_json: bool, rows: list[tuple[str, str]]) -> None:
    """Print ``rows`` (label, value) as a table, or ``results`` as one JSON object."""
    if as_json:
        json.dump(results, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def progress(message: str) -> None:
    """One line of progress on stderr (keeps stdout clean for --json)."""
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def scratch_dir(name: str, keep: bool) -> Iterator[Path]:
    """A temporary directory for one benchmark run (nodes, state, mounts): removed afterwards, or,
    with ``keep`` (--keep), left in place and named on stderr, for its logs."""
    root = Path(tempfile.mkdtemp(prefix=f"walrusfs-bench-{name}-"))
    try:
        yield root
    finally:
        if keep:
            progress(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
