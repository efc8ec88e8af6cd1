"""``walrusfs bench blob``: the blob client against a bundled 7-node network on 127.0.0.1.

Starts its own network (a fresh cluster in a temporary directory, nodes as separate processes,
stopped by their recorded pids at the end, also on error or Ctrl-C), then measures, with one client:

- put: ``BlobClient.store`` of ``--size`` MiB blobs, each a new blob (MB/s of blob, 1 MB = 10^6 B,
  median of ``--repeat``), timed to the certificate (what the caller waits for) and, separately, to
  every node served (leaving the client waits for the slow ones);
- get: ``BlobClient.read`` of a whole blob, every byte verified (median);
- get with 2 nodes down: the two holding systematic rows of the blob are stopped, so the read
  decodes from parity rows (the expensive path; median).

Each figure also reports the CPU seconds the client (this process, every thread) and the nodes
(from /proc) spent per operation, to tell which side limits it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

from ..client import BlobClient, ReadReport
from ..cluster import cluster_status, init_cluster, start_cluster, stop_cluster
from ..keys import load_key
from ..malloc import keep_freed_buffers
from ..ports import free_port_range
from ..protocol.committee import Committee
from .report import emit, mb_per_s, process_cpu_seconds, progress

N_NODES = 7


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("blob", help="blob client put/get over a bundled local 7-node network")
    parser.add_argument("--size", type=float, default=32, help="blob size in MiB (default 32)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (median; default 5)")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="write a cProfile of the client (put and get phases) to FILE")
    parser.add_argument("--transport", choices=("http", "https", "both"), default="http",
                        help="plain HTTP, TLS with pinned certificates, or both one after the other on fresh "
                        "networks (default http)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


@contextlib.contextmanager
def bundled_network(root: Path, tls: bool = False) -> Iterator[Committee]:
    """A running 7-node cluster under ``root``; every node is stopped (by pid) when leaving."""
    committee = init_cluster(root, nodes=N_NODES, base_port=free_port_range(N_NODES), tls=tls)

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        progress(f"bench blob: starting {N_NODES} nodes in {root}")
        start_cluster(root)
        yield committee
    finally:
        progress("bench blob: stopping the nodes")
        stop_cluster(root)
        signal.signal(signal.SIGTERM, previous)


def _stop_nodes(root: Path, node_ids: list[str]) -> None:
    """SIGTERM the given nodes by the pids ``cluster up`` recorded, and wait until they are gone."""
    for state in cluster_status(root, probe=False):
        if state.node.info.id in node_ids and state.pid:
            os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if not any(s.pid for s in cluster_status(root, probe=False) if s.node.info.id in node_ids):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nodes {node_ids} did not stop")


def _node_cpu(root: Path) -> float:
    """CPU seconds (user + system) used so far by the running nodes of the cluster."""
    return process_cpu_seconds(state.pid for state in cluster_status(root, probe=False) if state.pid)


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _CpuMeter:
    """CPU seconds of the client (this process, all threads) and of the nodes over a phase."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.client = self.nodes = 0.0

    def __enter__(self) -> _CpuMeter:
        self._client, self._nodes = _client_cpu(), _node_cpu(self.root)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.client += _client_cpu() - self._client
        self.nodes += _node_cpu(self.root) - self._nodes


async def _measure(root: Path, committee: Committee, size: int, repeat: int) -> dict[str, Any]:
    writer = load_key(root / "writer.key")
    results: dict[str, Any] = {"nodes": N_NODES, "blob_bytes": size, "repeat": repeat}
    blobs = [os.urandom(size) for _ in range(repeat + 1)]  # +1 warm-up; each put is a new blob

    progress(f"  put: {repeat} blobs of {size / 2**20:.1f} MiB (+1 warm-up)")
    to_certificate, to_all = [], []
    stored = None
    put_cpu = _CpuMeter(root)
    for i, data in enumerate(blobs):
        with contextlib.ExitStack() as stack:
            if i:
                stack.enter_context(put_cpu)
            start = time.perf_counter()
            async with BlobClient(committee, writer_key=writer) as client:
                stored = await client.store(data)
                certified = time.perf_counter()
            done = time.perf_counter()
        if i:
            to_certificate.append(certified - start)
            to_all.append(done - start)
        progress(f"    put {i}: certificate {mb_per_s(size, certified - start):.0f} MB/s, "
                 f"all nodes {mb_per_s(size, done - start):.0f} MB/s" + ("" if i else " (warm-up)"))
    assert stored is not None
    results["put_mb_s"] = mb_per_s(size, statistics.median(to_certificate))
    results["put_all_nodes_mb_s"] = mb_per_s(size, statistics.median(to_all))
    results["put_runs_mb_s"] = [round(mb_per_s(size, s), 1) for s in to_certificate]
    results["put_client_cpu_s"] = put_cpu.client / repeat
    results["put_nodes_cpu_s"] = put_cpu.nodes / repeat
    results["put_wall_s"] = statistics.median(to_all)

    async def timed_reads(label: str) -> tuple[float, str]:
        samples, path = [], ""
        meter = _CpuMeter(root)
        async with BlobClient(committee) as client:
            for i in range(repeat + 1):
                report = ReadReport()
                with contextlib.ExitStack() as stack:
                    if i:
                        stack.enter_context(meter)
                    start = time.perf_counter()
                    data = await client.read(stored.blob_id, report=report)
                    seconds = time.perf_counter() - start
                if bytes(data) != blobs[-1]:  # memoryview == bytes compares byte by byte in Python's slow path
                    raise RuntimeError(f"{label}: the blob read back differs from the one stored")
                path = report.path
                if i:
                    samples.append(seconds)
                progress(f"    {label} {i}: {mb_per_s(size, seconds):.0f} MB/s ({report.path})"
                         + ("" if i else " (warm-up)"))
        key = label.replace(", ", "_").replace(" ", "_")
        results[f"{key}_client_cpu_s"] = meter.client / repeat
        results[f"{key}_nodes_cpu_s"] = meter.nodes / repeat
        results[f"{key}_wall_s"] = statistics.median(samples)
        return mb_per_s(size, statistics.median(samples)), path

    progress(f"  get: {repeat} reads of the last blob (+1 warm-up)")
    results["get_mb_s"], results["get_path"] = await timed_reads("get")

    geometry = committee.geometry
    down = [committee.node_for_shard(geometry.shard_of_pair(pair, stored.blob_id.raw)).id for pair in (0, 1)]
    progress(f"  get with {', '.join(down)} (systematic rows) stopped")
    _stop_nodes(root, down)
    results["get_2_down_mb_s"], results["get_2_down_path"] = await timed_reads("get, 2 down")
    results["nodes_down"] = down
    return results


def run(args: argparse.Namespace) -> int:
    keep_freed_buffers()  # as the blob commands do
    size = int(args.size * 2**20)
    if size <= 0 or args.repeat < 1:
        raise SystemExit("--size and --repeat must be positive")
    transports = ["http", "https"] if args.transport == "both" else [args.transport]
    measured = {transport: _run_one(args, size, transport == "https") for transport in transports}
    if len(measured) == 1:
        emit({"transport": transports[0], **measured[transports[0]]}, args.json,
             _rows(measured[transports[0]], size, args.repeat, transports[0]))
    else:
        emit(measured, args.json, [row for transport, results in measured.items()
                                   for row in _rows(results, size, args.repeat, transport)])
    return 0


def _run_one(args: argparse.Namespace, size: int, tls: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="walrusfs-bench-blob-") as tmp:
        root = Path(tmp) / "cluster"
        with bundled_network(root, tls) as committee:
            if args.profile:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
                try:
                    return trio.run(_measure, root, committee, size, args.repeat)
                finally:
                    profiler.disable()
                    profiler.dump_stats(args.profile)
                    progress(f"  client profile written to {args.profile}")
            return trio.run(_measure, root, committee, size, args.repeat)


def _rows(results: dict[str, Any], size: int, repeat: int, transport: str) -> list[tuple[str, str]]:

    def cpu(key: str) -> str:
        wall, client, nodes = (results[f"{key}_{what}"] * 1e3 for what in ("wall_s", "client_cpu_s", "nodes_cpu_s"))
        return f"wall {wall:.0f} ms; CPU client {client:.0f} ms, nodes {nodes:.0f} ms"

    return [
        ("network", f"{N_NODES} nodes on 127.0.0.1 (n=7, f=2) over {transport}, blob {size / 2**20:.1f} MiB, "
                    f"median of {repeat}"),
        ("put (to certificate)", f"{results['put_mb_s']:8.0f} MB/s  (runs: {results['put_runs_mb_s']})"),
        ("put (all 7 nodes served)", f"{results['put_all_nodes_mb_s']:8.0f} MB/s  ({cpu('put')})"),
        ("get", f"{results['get_mb_s']:8.0f} MB/s  ({results['get_path']}; {cpu('get')})"),
        ("get, 2 nodes down", f"{results['get_2_down_mb_s']:8.0f} MB/s  ({results['get_2_down_path']}; "
                              f"stopped {', '.join(results['nodes_down'])}; {cpu('get_2_down')})"),
    ]
