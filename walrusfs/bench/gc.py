"""``walrusfs bench gc``: how much space deleting frees (docs/gc.md), over a bundled 7-node network.

Writes ``--size-mib`` MiB (default 1024) as ``--files`` files (default 10,000) of mixed sizes (a few
KiB to a few MiB, log-uniform, so most are small and most bytes are in larger ones), all certified;
deletes files in random order until 70% of the bytes are gone; runs ``walrusfs gc`` on the mounted
filesystem. Reports the bytes on the nodes' disks before and after gc, the ratio of the bytes after
to the live bytes times the encoding's expansion (target <= 1.25: what is left is what is live),
gc's time, and what compaction rewrote. Every surviving file is read back and checked.

The filesystem takes no snapshots (snapshot_interval 0), so the deleted files are in none: with
snapshots, the retention policy keeps what they show. Everything started is stopped by its pid.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from .mount import N_NODES, Bench
from .report import emit, progress, scratch_dir

MiB = 1 << 20
TARGET_RATIO = 1.25
DELETE_FRACTION = 0.7


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("gc", help="space on the nodes before and after deleting 70%% of the bytes and gc")
    parser.add_argument("--size-mib", type=int, default=1024, help="bytes to write, MiB (default 1024)")
    parser.add_argument("--files", type=int, default=10000, help="how many files (default 10000)")
    parser.add_argument("--blob-size", type=int, help="filesystem blob size, MiB (default: mkfs's)")
    parser.add_argument("--compact-below", type=float, default=0.5,
                        help="compaction threshold, live fraction (default 0.5, fs.toml's default)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def file_sizes(total: int, count: int, rng: random.Random) -> list[int]:
    """``count`` sizes, log-uniform between 1 KiB and 64x the mean, scaled to add up to ``total``."""
    mean = total / count
    low, high = math.log(1024), math.log(max(mean * 64, 4096))
    raw = [math.exp(rng.uniform(low, high)) for _ in range(count)]
    scale = total / sum(raw)
    sizes = [max(1, int(size * scale)) for size in raw]
    sizes[-1] += total - sum(sizes)
    return sizes


def disk_bytes(net: Path) -> int:
    """Bytes of blob data on every node's disk (slivers, metadata, certificates)."""
    total = 0
    for node in net.iterdir():
        blobs = node / "data" / "blobs"
        if blobs.is_dir():
            total += sum(entry.stat().st_size for entry in blobs.rglob("*") if entry.is_file())
    return total


def expansion(bench: Bench, blob_size: int) -> float:
    """The encoding's expansion for blobs of the filesystem's size: bytes on all nodes per blob byte."""
    from ..protocol.committee import Committee

    committee = Committee.load(bench.root / "net" / "committee.toml")
    return committee.geometry.layout(blob_size).encoded_length / blob_size


def configure(state: Path, **settings: Any) -> None:
    path = state / "fs.toml"
    data = tomllib.loads(path.read_text())
    data.update(settings)
    path.write_text(tomli_w.dumps(data))


def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    bench = Bench(root, args.blob_size)
    rng = random.Random(16)
    try:
        progress(f"bench gc: starting a {N_NODES}-node network in {root}")
        bench.start_network()
        bench.mkfs()
        configure(bench.state, gc_interval=0.0, snapshot_interval=0.0, compact_below=args.compact_below)
        blob_size = tomllib.loads((bench.state / "fs.toml").read_text())["blob_size"]
        bench.mount()
        total = args.size_mib * MiB
        sizes = file_sizes(total, args.files, rng)
        directory = bench.mountpoint / "data"
        directory.mkdir()
        progress(f"  write {args.files} files, {args.size_mib} MiB")
        seeds: dict[str, int] = {}
        start = time.perf_counter()
        for i, size in enumerate(sizes):
            name = f"f{i:05d}"
            seeds[name] = i
            (directory / name).write_bytes(content(i, size))
        os.setxattr(bench.mountpoint, "walrusfs.flush", b"1")  # everything certified
        written = time.perf_counter() - start
        before = disk_bytes(root / "net")
        progress(f"  delete {DELETE_FRACTION:.0%} of the bytes")
        order = list(zip(seeds, sizes, strict=True))
        rng.shuffle(order)
        deleted = 0
        survivors: dict[str, int] = {}
        for name, size in order:
            if deleted < DELETE_FRACTION * total:
                (directory / name).unlink()
                deleted += size
            else:
                survivors[name] = size
        progress("  walrusfs gc (through the mount)")
        start = time.perf_counter()
        result = subprocess.run([bench.walrusfs, "gc", bench.name, "--json"], env=bench.env, capture_output=True,
                                text=True, timeout=3600)
        gc_seconds = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"walrusfs gc failed: {result.stderr.strip()}")
        report = json.loads(result.stdout)
        after = disk_bytes(root / "net")
        live = sum(survivors.values())
        space = bench.status().get("space", {})
        progress(f"  read back {len(survivors)} surviving files")
        for name, size in survivors.items():
            if (directory / name).read_bytes() != content(seeds[name], size):
                raise RuntimeError(f"{name} read back wrong after gc")
        bench.umount()
        factor = expansion(bench, blob_size)
        ratio = after / (live * factor) if live else float("inf")
        return {
            "nodes": N_NODES, "files": args.files, "written_bytes": total, "write_seconds": written,
            "deleted_bytes": deleted, "live_bytes": live, "blob_size": blob_size, "expansion": factor,
            "node_bytes_before": before, "node_bytes_after": after,
            "after_over_live_expanded": ratio, "target_ratio": TARGET_RATIO, "missed": ratio > TARGET_RATIO,
            "gc_seconds": gc_seconds, "released_bytes": report["released_bytes"],
            "released_blobs": report["released_blobs"], "compacted_blobs": report["compacted_blobs"],
            "compaction_rewritten_bytes": report["rewritten_bytes"], "pending_blobs": report["pending_blobs"],
            "status_space": space, "loadavg": list(os.getloadavg()),
        }
    finally:
        bench.cleanup()


def content(seed: int, size: int) -> bytes:
    """A file's bytes, reproducible from its seed (checked after gc): distinct between files, and
    every 64 KiB of a file distinct too (no deduplication anywhere)."""
    chunk = 64 << 10
    block = random.Random(seed).randbytes(min(size, chunk))
    out = bytearray((block * (size // len(block) + 1))[:size]) if size else bytearray()
    for offset in range(0, max(size - 8, 0), chunk):
        out[offset : offset + 8] = (seed * 100003 + offset).to_bytes(8, "little")
    return bytes(out)


def run(args: argparse.Namespace) -> int:
    with scratch_dir("gc", args.keep) as root:
        r = measure(args, root)
    mib = 1 / MiB
    emit(r, args.json, [
        ("network", f"{N_NODES} local nodes, blobs of {r['blob_size'] * mib:.0f} MiB, expansion {r['expansion']:.2f}"),
        ("written", f"{r['files']} files, {r['written_bytes'] * mib:.0f} MiB in {r['write_seconds']:.1f} s"),
        ("deleted", f"{r['deleted_bytes'] * mib:.0f} MiB; live {r['live_bytes'] * mib:.0f} MiB"),
        ("bytes on the nodes", f"{r['node_bytes_before'] * mib:.0f} MiB before gc, {r['node_bytes_after'] * mib:.0f} "
                               "MiB after"),
        ("after / (live x expansion)", f"{r['after_over_live_expanded']:.3f}"
                                       f"{'  (MISSED target' if r['missed'] else '  (target'} <= {TARGET_RATIO})"),
        ("gc", f"{r['gc_seconds']:.1f} s: {r['released_blobs']} blobs released ({r['released_bytes'] * mib:.0f} MiB), "
               f"{r['compacted_blobs']} compacted ({r['compaction_rewritten_bytes'] * mib:.0f} MiB rewritten)"),
        ("load average", " ".join(f"{x:.2f}" for x in r["loadavg"])),
    ])
    return 0
