"""``walrusfs bench node``: one storage node, one httpx client, over loopback.

Starts a real node process on 127.0.0.1 (a fresh one-node cluster in a temporary directory), then
measures PUT and GET of ~1 MiB primary slivers (MB/s, 1 MB = 10^6 bytes; PUT includes the node's
verification against the metadata, its checksum and fsync) and small metadata GETs (requests/s).
The client keeps ``--concurrency`` requests in flight (trio + httpx.AsyncClient).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from nodes.server import SERVERS, require_server

from ..cluster import init_cluster, load_cluster, wait_process_healthy
from ..keys import load_key
from ..ports import free_port_range
from ..protocol import routes, sign_request
from ..protocol.committee import NodeInfo
from ..redstuff import EncodedBlob, SliverKind, encode
from .report import emit, mb_per_s, progress

N_SHARDS = 7


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("node", help="storage node PUT/GET throughput over loopback")
    parser.add_argument("--slivers", type=int, default=128, help="1 MiB slivers to PUT (default 128)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--metadata-reads", type=int, default=3000,
                        help="small metadata GETs to time (default 3000)")
    parser.add_argument("--server", choices=SERVERS, default="httpd",
                        help="HTTP server the node runs on (default httpd, its own)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def _blobs(count_slivers: int) -> list[EncodedBlob]:
    """Blobs whose primary slivers are ~1 MiB at n=7 (n_s = 5 symbols of ~205 KiB)."""
    geometry_blob = 3 * 5 * ((1 << 20) // 5 // 64 * 64)
    return [encode(os.urandom(geometry_blob), N_SHARDS) for _ in range(-(-count_slivers // N_SHARDS))]


async def _run_all(jobs: list, concurrency: int, work: Any) -> None:
    send, receive = trio.open_memory_channel(0)

    async def worker() -> None:
        async for job in receive:
            await work(job)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
        async with send:
            for job in jobs:
                await send.send(job)


async def _measure(node: NodeInfo, key: Any, blobs: list[EncodedBlob], slivers: int, concurrency: int,
                   metadata_reads: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=node.url, timeout=60, limits=limits) as http:
        async def put(path: str, body: bytes) -> None:
            # Slivers unbound, as the client sends them (they certify themselves); metadata signed with its body.
            signed_body = None if "/slivers/" in path else body
            response = await http.put(path, content=body,
                                      headers={"Authorization": sign_request(key, "PUT", path, node, signed_body)})
            if response.status_code not in (200, 201):
                raise RuntimeError(f"PUT {path}: {response.status_code} {response.text}")

        for blob in blobs:
            await put(routes.metadata(blob.blob_id), blob.metadata.to_bytes())
        jobs = [(routes.sliver(blob.blob_id, pair, SliverKind.PRIMARY), blob.primary_sliver(pair).to_bytes())
                for blob in blobs for pair in range(N_SHARDS)][:slivers]
        total = sum(len(body) for _, body in jobs)

        progress(f"  PUT {len(jobs)} slivers of {len(jobs[0][1]) / 2**20:.2f} MiB, {concurrency} in flight")
        start = time.perf_counter()
        await _run_all(jobs, concurrency, lambda job: put(*job))
        put_seconds = time.perf_counter() - start

        async def get(path: str) -> None:
            response = await http.get(path)
            if response.status_code != 200:
                raise RuntimeError(f"GET {path}: {response.status_code}")

        progress(f"  GET them back, twice over, {concurrency} in flight")
        paths = [path for path, _ in jobs] * 2
        start = time.perf_counter()
        await _run_all(paths, concurrency, get)
        get_seconds = time.perf_counter() - start

        progress(f"  {metadata_reads} metadata GETs")
        metadata_paths = [routes.metadata(blobs[i % len(blobs)].blob_id) for i in range(metadata_reads)]
        start = time.perf_counter()
        await _run_all(metadata_paths, concurrency, get)
        metadata_seconds = time.perf_counter() - start
    return {
        "sliver_bytes": len(jobs[0][1]), "slivers": len(jobs), "concurrency": concurrency,
        "put_mb_s": mb_per_s(total, put_seconds),
        "get_mb_s": mb_per_s(2 * total, get_seconds),
        "metadata_get_per_s": metadata_reads / metadata_seconds,
    }


def measure(slivers: int, concurrency: int, metadata_reads: int, server: str) -> dict[str, Any]:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a log line per request would be measured too
    with tempfile.TemporaryDirectory(prefix="walrusfs-bench-node-") as temp:
        root = Path(temp)
        init_cluster(root, nodes=1, shards=N_SHARDS, base_port=free_port_range())
        _, [node] = load_cluster(root)
        progress(f"bench node: {server} node on {node.info.url}, data in {root}")
        blobs = _blobs(slivers)
        with open(node.log, "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "nodes", "--config", str(node.config),
                                        "--server", server], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_process_healthy(node.info, process, node.log, time.monotonic() + 30)
            results = trio.run(_measure, node.info, load_key(root / "writer.key"), blobs, slivers,
                               concurrency, metadata_reads)
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return {"server": server, **results}


def run(args: argparse.Namespace) -> int:
    require_server(args.server)  # before any node starts: a missing extra is a message, not a node's log
    results = measure(args.slivers, args.concurrency, args.metadata_reads, args.server)
    emit(results, args.json, [
        ("server", results["server"]),
        ("sliver size", f"{results['sliver_bytes'] / 2**20:.2f} MiB x {results['slivers']}"),
        ("concurrency", str(results["concurrency"])),
        ("PUT sliver", f"{results['put_mb_s']:.0f} MB/s"),
        ("GET sliver", f"{results['get_mb_s']:.0f} MB/s"),
        ("GET metadata", f"{results['metadata_get_per_s']:.0f} requests/s"),
    ])
    return 0
