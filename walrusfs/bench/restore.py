"""``walrusfs bench restore``: how long a filesystem takes to come back from the network alone.

Starts its own 7-node network and a mount (as ``bench mount`` does), creates ``--files`` small files
through the mount (100 per directory), unmounts (every block certified, the metadata snapshot
published), then deletes the whole local state except a copy of the filesystem's key and measures:

- the metadata snapshot: database bytes, and bytes stored on the network (compressed segments
  plus the manifest);
- ``walrusfs restore``: root record from a quorum, manifest, segments, every hash checked, fsck;
- the first mount after it, and a walk that stats every file (``os.walk`` + ``lstat``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..fs.snapshot import Manifest
from .mount import Bench
from .report import emit, progress, scratch_dir


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("restore", help="restore a filesystem of many files from the network alone")
    parser.add_argument("--files", type=int, default=100_000, help="files to create (default 100000)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def create_files(root: Path, count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        directory = root / f"d{i // 100:05d}"
        if i % 100 == 0:
            directory.mkdir()
        (directory / f"file-{i:07d}.txt").write_bytes(f"file {i}\n".encode() * 8)
        if i and i % 5000 == 0:
            rate = i / (time.perf_counter() - started)
            progress(f"  created {i} of {count} files ({rate:.0f}/s)")
    return time.perf_counter() - started


def walk(root: Path) -> int:
    count = 0
    for directory, _, files in os.walk(root):
        for name in files:
            os.lstat(os.path.join(directory, name))
            count += 1
    return count


def run(args: argparse.Namespace) -> int:
    with scratch_dir("restore", args.keep) as root:
        bench = Bench(root, None)
        results: dict[str, Any] = {"files": args.files}
        try:
            progress(f"starting a {7}-node network and a mount in {root}")
            bench.start_network()
            bench.mkfs()
            bench.mount()
            progress(f"creating {args.files} files through the mount")
            results["create_seconds"] = create_files(bench.mountpoint, args.files)
            progress("unmounting: uploads certified, metadata snapshot published")
            started = time.perf_counter()
            bench.umount()
            results["umount_seconds"] = time.perf_counter() - started
            manifest_bytes = (bench.state / "snapshot.manifest").read_bytes()
            manifest = Manifest.from_bytes(manifest_bytes)
            results["snapshot_seq"] = manifest.seq
            results["db_bytes"] = manifest.db_size
            results["snapshot_bytes"] = manifest.stored_bytes() + len(manifest_bytes)
            results["segments"] = len(manifest.segments)

            key = root / "fs.key"
            shutil.copy(bench.state / "fs.key", key)
            shutil.rmtree(bench.state)
            progress("local state deleted; restoring from the network with only the key")
            started = time.perf_counter()
            bench._cli("restore", "bench", "--key", str(key), "--committee", str(root / "net" / "committee.toml"),
                       "--writer-key", str(root / "net" / "writer.key"), timeout=3600)
            results["restore_seconds"] = time.perf_counter() - started
            started = time.perf_counter()
            bench.mount()
            results["mount_seconds"] = time.perf_counter() - started
            started = time.perf_counter()
            found = walk(bench.mountpoint)
            results["walk_seconds"] = time.perf_counter() - started
            if found != args.files:
                raise RuntimeError(f"restored tree has {found} files, {args.files} were created")
            results["files_found"] = found
            bench.umount()
        finally:
            bench.cleanup()
    r = results
    emit(r, args.json, [
        ("files", f"{r['files']}"),
        ("metadata database", f"{r['db_bytes'] / 2**20:.1f} MiB"),
        ("snapshot on the network", f"{r['snapshot_bytes'] / 2**20:.1f} MiB in {r['segments']} segments "
                                    "(compressed, before erasure coding)"),
        ("create through the mount", f"{r['create_seconds']:.1f} s ({r['files'] / r['create_seconds']:.0f} files/s)"),
        ("umount (uploads + snapshot)", f"{r['umount_seconds']:.1f} s"),
        ("restore from the network", f"{r['restore_seconds']:.1f} s"),
        ("first mount after restore", f"{r['mount_seconds']:.1f} s"),
        ("stat every file", f"{r['walk_seconds']:.1f} s"),
    ])
    return 0
