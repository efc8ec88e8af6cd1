"""Shared helpers for benchmarks: timing, medians, and printing results."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def median_seconds(run: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
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
