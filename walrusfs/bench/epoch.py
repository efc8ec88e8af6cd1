"""``walrusfs bench epoch``: an epoch change under load, on a bundled network (docs/epochs.md).

Starts its own bundled network (``cluster init``: 7 nodes, 14 shards; node processes recorded by pid
as ``cluster up`` does) and a mount in a temporary directory, then:

1. stores ``--size-mib`` MiB through the mount in files of ``--file-mib`` MiB (each fsync'ed: every
   block certified), unmounts, empties the read cache and mounts again, so that reads go to the nodes;
2. while a reader streams those files (1 MiB reads, each checked) and a writer adds files of 1 MiB
   (write + fsync each), adds 3 nodes and retires 2 in ONE epoch change (``cluster change``),
   measuring the time until the handover is complete, and the bytes the new holders received against
   the bytes of the slivers they had to get;
3. deletes the retired nodes' directories, unmounts, empties the cache, mounts and reads every file
   back (the writer's too), runs ``walrusfs fsck --deep`` and ``walrusfs audit`` on every blob.

Targets (issue 14): bytes moved / bytes to move <= 1.1, handover of 1 GiB under 60 s, 0 errors for the
reader and the writer. Exit 0 when every check passes (the targets are reported, not enforced: the
machine's load decides the seconds). Everything started is stopped by its pid, and the temporary
directory removed (``--keep`` keeps it: node and mount logs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ports import free_port_range
from .mount import Bench
from .report import emit, mb_per_s, progress, scratch_dir

MiB = 1 << 20
N_NODES, ADDED, RETIRED = 7, 3, ("node-1", "node-4")
TARGETS = {"ratio": 1.1, "handover_seconds_per_gib": 60.0}


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("epoch", help="add 3 nodes and retire 2 in one epoch change while a mount reads "
                              "and writes: handover time, bytes moved, errors, and everything read back")
    parser.add_argument("--size-mib", type=int, default=1024, help="data stored before the change (default 1024)")
    parser.add_argument("--file-mib", type=int, default=64, help="size of each file stored first (default 64)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds the change may take (default 1800)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def block(seed: bytes, index: int) -> bytes:
    """MiB ``index`` of a file: distinct for every file and block (no deduplication), and recomputable."""
    head = hashlib.blake2b(seed + index.to_bytes(8, "little"), digest_size=64).digest()
    return (head * (MiB // 64))[:MiB]


def write_file(path: Path, seed: bytes, mib: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for index in range(mib):
            os.write(fd, block(seed, index))
        os.fsync(fd)
    finally:
        os.close(fd)


def check_file(path: Path, seed: bytes, mib: int, on_read: Any = None) -> None:
    """Read ``path`` with 1 MiB reads and compare each with what was written; raise on a difference."""
    fd = os.open(path, os.O_RDONLY)
    try:
        for index in range(mib + 1):
            started = time.perf_counter()
            chunk = os.read(fd, MiB)
            if on_read is not None:
                on_read(time.perf_counter() - started)
            if index == mib:
                if chunk:
                    raise RuntimeError(f"{path} is longer than the {mib} MiB written")
                return
            if chunk != block(seed, index):
                raise RuntimeError(f"{path}: MiB {index} read back wrong ({len(chunk)} bytes)")
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@dataclass
class Load:
    """The reader or the writer during the change: what it did, its errors and its slowest operation."""

    name: str
    operations: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)
    slowest: float = 0.0
    done: list[tuple[str, bytes, int]] = field(default_factory=list)  # the writer's fsync'ed files

    def timed(self, seconds: float) -> None:
        self.operations += 1
        self.slowest = max(self.slowest, seconds)

    def to_dict(self) -> dict[str, Any]:
        return {"operations": self.operations, "bytes": self.bytes, "errors": len(self.errors),
                "first_errors": self.errors[:5], "slowest_operation_seconds": round(self.slowest, 3)}


def reader(mountpoint: Path, files: list[tuple[str, bytes, int]], stop: threading.Event, load: Load) -> None:
    while not stop.is_set():
        for name, seed, mib in files:
            if stop.is_set():
                return
            try:
                check_file(mountpoint / name, seed, mib, on_read=load.timed)
                load.bytes += mib * MiB
            except (OSError, RuntimeError) as error:
                load.errors.append(f"{name}: {error}")


def writer(mountpoint: Path, stop: threading.Event, load: Load) -> None:
    (mountpoint / "during").mkdir(exist_ok=True)
    index = 0
    while not stop.is_set():
        name, seed = f"during/w{index:05d}", f"during-{index}".encode()
        started = time.perf_counter()
        try:
            write_file(mountpoint / name, seed, 1)
            load.timed(time.perf_counter() - started)
            load.bytes += MiB
            load.done.append((name, seed, 1))
        except OSError as error:
            load.errors.append(f"{name}: {error}")
        index += 1


class TimedStream:
    """Where ``cluster change`` writes its messages (passed on to stderr): notes when the new
    committee is signed, from which on the handover runs."""

    def __init__(self) -> None:
        self.signed_at: float | None = None
        self.signed = threading.Event()

    def write(self, text: str) -> int:
        if self.signed_at is None and "the committee is signed by" in text:
            self.signed_at = time.perf_counter()
            self.signed.set()
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return False


def watch_handover(net: Path, stream: TimedStream, stop: threading.Event, synced: list[float]) -> None:
    """When every shard that moved is synced on its new holder (``cluster change`` itself returns only
    once the old holders released them too): polled every 0.2 s from the moment the link is signed."""
    from ..cluster_epochs import load_chain
    from ..epoch_change import handover_progress

    while not stream.signed.wait(0.2):
        if stop.is_set():
            return
    chain = load_chain(net)  # saved before the link is sent to the nodes
    previous, current = chain.committee_at(chain.current.epoch - 1), chain.current
    while not stop.is_set():
        if handover_progress(previous, current).complete:
            synced.append(time.perf_counter())
            return
        time.sleep(0.2)


def run(args: argparse.Namespace) -> int:
    if args.size_mib < 1 or args.file_mib < 1:
        raise SystemExit("--size-mib and --file-mib must be at least 1")
    results: dict[str, Any] = {"size_mib": args.size_mib, "nodes_before": N_NODES, "added": ADDED,
                               "retired": list(RETIRED)}
    with scratch_dir("epoch", args.keep) as root:
        net = root / "net"
        bench = Bench(root, None)
        try:
            results.update(_run(args, root, net, bench))
        finally:
            bench.cleanup()
            _stop_every_node(net)
    results["load_average"] = os.getloadavg()
    r = results
    emit(r, args.json, [
        ("data stored before the change", f"{r['size_mib']} MiB in {r['files']} files "
                                          f"({r['store_mb_s']:.0f} MB/s through the mount)"),
        ("change", f"epoch {r['epoch_before']} -> {r['epoch_after']}: {ADDED} nodes added, "
                   f"{', '.join(RETIRED)} retired, {r['shards_moved']} of {r['n_shards']} shards moved"),
        ("handover complete after", f"{r['handover_seconds']:.1f} s from the signed link to every shard synced "
                                    f"(target < {TARGETS['handover_seconds_per_gib'] * r['size_mib'] / 1024:.0f} s); "
                                    f"released {r['released_seconds']:.1f} s; "
                                    f"whole command {r['change_seconds']:.1f} s"),
        ("bytes moved / to move", f"{r['bytes_moved']} / {r['bytes_to_move']} = {r['ratio']:.4f} "
                                  f"(target <= {TARGETS['ratio']})"),
        ("reader during the change", f"{r['reader']['bytes'] / MiB:.0f} MiB, {r['reader']['errors']} errors, "
                                     f"slowest read {r['reader']['slowest_operation_seconds']:.2f} s"),
        ("writer during the change", f"{r['writer']['operations']} files of 1 MiB, {r['writer']['errors']} errors, "
                                     f"slowest write+fsync {r['writer']['slowest_operation_seconds']:.2f} s"),
        ("retired nodes' directories", "deleted"),
        ("read back, cold cache", f"{r['read_back_files']} files exact ({r['read_back_mb_s']:.0f} MB/s)"),
        ("fsck --deep", "clean" if r["fsck_clean"] else "PROBLEMS"),
        ("audit", f"{r['audit_blobs']} blobs, " + ("all nodes pass" if not r["audit_failed"]
                                                   else f"FAILED: {', '.join(r['audit_failed'])}")),
        ("load average", " ".join(f"{x:.2f}" for x in r["load_average"])),
    ])
    return 0 if r["passed"] else 1


def _run(args: argparse.Namespace, root: Path, net: Path, bench: Bench) -> dict[str, Any]:
    from ..cluster import default_shards, init_cluster, start_cluster
    from ..cluster_epochs import Change, change_committee
    from ..epoch_change import handover_progress
    from ..protocol.rebalance import shard_moves

    shards = default_shards(N_NODES)
    progress(f"starting a {N_NODES}-node network ({shards} shards) and a mount in {root}")
    init_cluster(net, nodes=N_NODES, shards=shards, base_port=free_port_range(N_NODES + ADDED + 4))
    start_cluster(net)
    bench.mkfs()
    bench.mount()
    files = []
    (bench.mountpoint / "data").mkdir()
    left, index = args.size_mib, 0
    progress(f"storing {args.size_mib} MiB through the mount")
    started = time.perf_counter()
    while left > 0:
        mib = min(args.file_mib, left)
        name, seed = f"data/f{index:04d}", f"data-{index}".encode()
        write_file(bench.mountpoint / name, seed, mib)
        files.append((name, seed, mib))
        left, index = left - mib, index + 1
    out: dict[str, Any] = {"files": len(files),
                           "store_mb_s": mb_per_s(args.size_mib * MiB, time.perf_counter() - started)}
    bench.umount()  # every block certified and the snapshot published; then reads come from the nodes
    bench.clear_cache()
    bench.mount()

    progress(f"adding {ADDED} nodes and retiring {', '.join(RETIRED)} in one epoch change, while a reader "
             "streams the data and a writer adds files")
    stop = threading.Event()
    read_load, write_load = Load("reader"), Load("writer")
    threads = [threading.Thread(target=reader, args=(bench.mountpoint, files, stop, read_load), daemon=True),
               threading.Thread(target=writer, args=(bench.mountpoint, stop, write_load), daemon=True)]
    for thread in threads:
        thread.start()
    stream = TimedStream()
    synced: list[float] = []
    watcher = threading.Thread(target=watch_handover, args=(net, stream, stop, synced), daemon=True)
    watcher.start()
    started = time.perf_counter()
    try:
        previous, current = change_committee(net, Change("change", count=ADDED, node_ids=RETIRED),
                                             timeout=args.timeout, stream=stream)
        ended = time.perf_counter()
        moved = handover_progress(previous, current)
    finally:
        stop.set()
        for thread in [*threads, watcher]:
            thread.join(120)
    out.update(epoch_before=previous.epoch, epoch_after=current.epoch, n_shards=current.n_shards,
               shards_moved=len(shard_moves(previous, current)), change_seconds=ended - started,
               handover_seconds=(synced[0] if synced else ended) - (stream.signed_at or started),
               released_seconds=ended - (stream.signed_at or started), bytes_moved=moved.bytes_moved,
               bytes_to_move=moved.bytes_to_move, ratio=moved.bytes_moved / max(1, moved.bytes_to_move),
               reader=read_load.to_dict(), writer=write_load.to_dict())

    for node_id in RETIRED:  # stopped by the change: the network no longer needs anything they held
        shutil.rmtree(net / node_id)
    bench.umount()
    bench.clear_cache()
    bench.mount()
    progress("reading every file back with a cold cache")
    every = files + write_load.done
    started = time.perf_counter()
    for name, seed, mib in every:
        check_file(bench.mountpoint / name, seed, mib)
    total = sum(mib for _, _, mib in every) * MiB
    out.update(read_back_files=len(every), read_back_mb_s=mb_per_s(total, time.perf_counter() - started))
    bench.umount()

    progress("fsck --deep and audit")
    report = _json_of(bench, "fsck", bench.name, "--deep", "--json")
    out["fsck_clean"] = bool(report["clean"])
    out["fsck_findings"] = report["findings"]
    audit = _audit(bench, net)
    out.update(audit_blobs=len(audit["blobs"]), audit_failed=audit["failed"])
    out["passed"] = (out["reader"]["errors"] == 0 and out["writer"]["errors"] == 0 and out["fsck_clean"]
                     and not out["audit_failed"] and out["audit_blobs"] > 0)
    return out


def _audit(bench: Bench, net: Path) -> dict[str, Any]:
    """``walrusfs audit`` of every certified blob."""
    return _json_of(bench, "audit", "--committee", str(net / "committee.toml"), "--sample", "100000", "--json")


def _json_of(bench: Bench, *args: str) -> dict[str, Any]:
    """A walrusfs command's JSON report; its exit status says only whether it found problems, which
    the report holds, so it is not an error here unless there is no report."""
    result = subprocess.run([bench.walrusfs, *args], env=bench.env, capture_output=True, text=True, timeout=3600)
    try:
        return json.loads(result.stdout)
    except ValueError:
        raise RuntimeError(f"walrusfs {' '.join(args)} exited {result.returncode} without a report: "
                           f"{result.stderr.strip()[-2000:]}") from None


def _stop_every_node(net: Path) -> None:
    """Every node this bench started, by the pid each recorded (retired ones were stopped already)."""
    from ..cluster import ClusterNode, stop_nodes
    from ..cluster_epochs import load_chain

    if not (net / "committee.toml").exists():
        return
    try:
        chain = load_chain(net)
    except Exception:  # cleaning up: stop what can be found from the committee file
        from ..protocol.committee import Committee

        committees = [Committee.load(net / "committee.toml")]
    else:
        committees = list(chain.committees())
    infos = {node.id: node for committee in committees for node in committee.nodes}
    stop_nodes([ClusterNode(info, net / node_id) for node_id, info in infos.items() if (net / node_id).exists()])
