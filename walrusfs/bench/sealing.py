"""``walrusfs bench sealing``: the CPU an encrypted filesystem's block path costs beyond a plain one's.

One process, no network, no FUSE: the mount daemon's own BlockStore stages ``--size-mib`` distinct
1 MiB blocks (hash, seal, staging file, catalog row), then opens each as a read from the cache does
(open_block: verify, decrypt), once with plain and once with sealed contents, ``--rounds`` times
alternating. Reported: CPU seconds per GiB (this process, all threads) of each, and the difference,
which is what encryption adds to the daemon. CPU time moves much less with the machine's load than
``bench mount``'s throughput does, so this separates encryption's cost from a busy machine's noise.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
from pathlib import Path
from typing import Any

from .report import emit, progress

MiB = 1 << 20


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("sealing", help="CPU per GiB that encryption adds to the mount daemon's block path")
    parser.add_argument("--size-mib", type=int, default=256, help="blocks of 1 MiB per measurement (default 256)")
    parser.add_argument("--rounds", type=int, default=5, help="measurements of each kind, alternating (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(contents: Any, blocks: int) -> tuple[float, float]:
    """CPU seconds per GiB to stage ``blocks`` distinct blocks, and to open them."""
    from ..fs.blocks import BlockStore, open_block
    from ..fs.cache import BlobCache
    from ..fs.db import Database
    from ..fs.schema import DDL

    async def no_fetch(blob_id: str) -> bytes:
        raise AssertionError("nothing is uploaded here")

    payload = bytearray(os.urandom(MiB))
    with tempfile.TemporaryDirectory(prefix="walrusfs-bench-sealing-") as directory:
        root = Path(directory)
        db = Database(root / "metadata.db")
        try:
            db.conn.executescript(DDL)
            store = BlockStore(db, root / "staging", BlobCache(root / "cache", 1 << 30, no_fetch),
                               memory_bytes=0, contents=contents)
            ids = []
            start = _cpu()
            for i in range(blocks):
                payload[:8] = i.to_bytes(8, "little")  # every block distinct: no deduplication
                with db.transaction():
                    ids.append(store.stage(bytes(payload)))
            staged = _cpu() - start
            rows = [db.get_row("SELECT hash, size FROM blocks WHERE id=?", (block,)) for block in ids]
            stored = [store.read_staged(block) for block in ids]
            start = _cpu()
            for (digest, size), data in zip(rows, stored, strict=True):
                open_block(contents, data, bytes(digest), size, "bench block")
            opened = _cpu() - start
        finally:
            db.close()
    per_gib = 1024 / blocks
    return staged * per_gib, opened * per_gib


def run(args: argparse.Namespace) -> int:
    from ..fs.encryption import PlainContents, SealedContents
    from ..malloc import keep_freed_buffers

    keep_freed_buffers(keep=128 << 20)  # as the mount daemon does
    runs: dict[str, list[tuple[float, float]]] = {"plain": [], "sealed": []}
    for round_ in range(args.rounds):
        progress(f"round {round_ + 1}/{args.rounds}")
        runs["plain"].append(measure(PlainContents(), args.size_mib))
        runs["sealed"].append(measure(SealedContents(os.urandom(32)), args.size_mib))
    results: dict[str, Any] = {"size_mib": args.size_mib, "rounds": args.rounds,
                               "load_average": os.getloadavg()[0]}
    for mode, measured in runs.items():
        results[f"{mode}_stage_cpu_s_per_gib"] = statistics.median(m[0] for m in measured)
        results[f"{mode}_open_cpu_s_per_gib"] = statistics.median(m[1] for m in measured)
    for phase in ("stage", "open"):
        results[f"sealed_extra_{phase}_cpu_s_per_gib"] = (results[f"sealed_{phase}_cpu_s_per_gib"]
                                                          - results[f"plain_{phase}_cpu_s_per_gib"])
    rows = []
    for phase in ("stage", "open"):
        plain, sealed = results[f"plain_{phase}_cpu_s_per_gib"], results[f"sealed_{phase}_cpu_s_per_gib"]
        rows.append((f"{phase} {args.size_mib} x 1 MiB (median of {args.rounds})",
                     f"plain {plain:5.2f}   sealed {sealed:5.2f}   encryption adds {sealed - plain:+5.2f} CPU-s/GiB"))
    rows.append(("load average", f"{results['load_average']:.1f}"))
    emit(results, args.json, rows)
    return 0
