"""``walrusfs bench repair``: how fast a wiped node heals, and what it fetches to do so.

Starts a bundled 7-node network (a fresh cluster in a temporary directory, nodes stopped by their
pids at the end), stores ``--size`` GiB as blobs of ``--blob-size`` MiB, waits until every node
knows every blob certified, then stops one node, deletes its data directory (a new disk) and starts
it again. No client is present while it heals: the node learns the certified blobs from its peers
and rebuilds its slivers from recovery symbols. Reported: the time from the restart until the node
says it is whole (every sliver back, verified), and the bytes it fetched divided by the bytes of
sliver it lost. The node's default ``[repair]`` settings apply.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from ..client import BlobClient
from ..cluster import repair_status, start_cluster
from ..keys import load_key
from ..protocol import routes
from ..protocol.committee import Committee
from ..redstuff import BlobId
from .blob import N_NODES, _stop_nodes, bundled_network
from .report import emit, mb_per_s, progress

GLUSTER_FULL_HEAL_S = 10.0  # GlusterFS 4+2 dispersed volume, 1 GiB, replaced brick, this machine


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("repair", help="wipe one node of a bundled 7-node network and time its healing")
    parser.add_argument("--size", type=float, default=1.0, help="GiB stored before the wipe (default 1)")
    parser.add_argument("--blob-size", type=float, default=32, help="blob size in MiB (default 32)")
    parser.add_argument("--node", default="node-3", help="the node to wipe (default node-3)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for healing (default 600)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


async def _store_all(root: Path, committee: Committee, total: int, blob_size: int) -> int:
    writer = load_key(root / "writer.key")
    count = -(-total // blob_size)
    start = time.perf_counter()
    async with BlobClient(committee, writer_key=writer) as client:
        for i in range(count):
            await client.store(os.urandom(min(blob_size, total - i * blob_size)))
            if i % 8 == 7 or i == count - 1:
                rate = mb_per_s((i + 1) * blob_size, time.perf_counter() - start)
                progress(f"  stored {i + 1}/{count} blobs ({rate:.0f} MB/s)")
    return count


def _wait(what: str, condition: Any, timeout: float) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"bench repair: {what} not reached within {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - start


def _one_status(url: str) -> dict[str, Any]:
    try:
        return httpx.get(url + routes.REPAIR_STATUS, timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return {}


def measure(size: float, blob_size: float, node: str, timeout: float) -> dict[str, Any]:
    total, per_blob = int(size * 2**30), int(blob_size * 2**20)
    with tempfile.TemporaryDirectory(prefix="walrusfs-bench-repair-") as tmp:
        root = Path(tmp) / "cluster"
        with bundled_network(root) as committee:
            url = committee.node(node).url
            progress(f"bench repair: storing {size:g} GiB as {blob_size:g} MiB blobs")
            count = trio.run(_store_all, root, committee, total, per_blob)
            _wait("every node knows every blob certified", lambda: all(
                s.get("certified_blobs") == count for s in repair_status(root).values()), timeout)
            layout = committee.geometry.layout(per_blob)
            shards = len(committee.shards_of(node))
            data_dir = root / node / "data"
            on_disk = sum(p.stat().st_size for p in data_dir.rglob("*") if p.is_file())
            progress(f"  wiping {node} ({on_disk / 1e6:.0f} MB on disk) and starting it again")
            _stop_nodes(root, [node])
            shutil.rmtree(data_dir)
            started = time.monotonic()
            start_cluster(root)
            healthy = time.monotonic() - started

            def whole() -> bool:
                status = _one_status(url)
                return bool(status.get("idle")) and status.get("missing_slivers") == 0 \
                    and status.get("recovered_slivers", 0) >= 2 * shards * count

            seconds = healthy + _wait(f"{node} whole again", whole, timeout)
            status = _one_status(url)
            complete = sum(httpx.get(url + routes.status(BlobId.parse(blob)), timeout=5).json()["complete"]
                           for blob in httpx.get(url + routes.INVENTORY, timeout=5).json()["blob_ids"])
    lost = count * shards * (layout.primary_sliver_size + layout.secondary_sliver_size)
    return {
        "nodes": N_NODES, "stored_bytes": total, "blobs": count, "blob_bytes": per_blob, "node": node,
        "heal_seconds": seconds, "start_seconds": healthy, "bytes_lost": lost,
        "node_reported_bytes_lost": status["bytes_lost"], "bytes_fetched": status["bytes_fetched"],
        "feed_bytes": status["feed_bytes"], "fetched_over_lost": status["bytes_fetched"] / lost,
        "total_fetched_over_lost": (status["bytes_fetched"] + status["feed_bytes"]) / lost,
        "slivers_recovered": status["recovered_slivers"], "failed_attempts": status["failed_attempts"],
        "blobs_complete": complete, "heal_mb_s": mb_per_s(lost, seconds),
        "gluster_full_heal_reference_s": GLUSTER_FULL_HEAL_S,
    }


def run(args: argparse.Namespace) -> int:
    if args.size <= 0 or args.blob_size <= 0:
        raise SystemExit("--size and --blob-size must be positive")
    r = measure(args.size, args.blob_size, args.node, args.timeout)
    emit(r, args.json, [
        ("network", f"{r['nodes']} nodes on 127.0.0.1 (n=7, f=2); {r['stored_bytes'] / 2**30:g} GiB in "
                    f"{r['blobs']} blobs of {r['blob_bytes'] / 2**20:g} MiB"),
        ("wiped", f"{r['node']}: lost {r['bytes_lost'] / 1e6:.0f} MB of slivers"),
        ("time to whole", f"{r['heal_seconds']:.1f} s (process start to healthy {r['start_seconds']:.1f} s; "
                          f"{r['heal_mb_s']:.0f} MB/s of slivers; GlusterFS full heal ~{GLUSTER_FULL_HEAL_S:.0f} s)"),
        ("fetched / lost", f"{r['fetched_over_lost']:.3f} (symbols + metadata {r['bytes_fetched'] / 1e6:.0f} MB; "
                           f"with the certified feeds {r['total_fetched_over_lost']:.3f})"),
        ("slivers", f"{r['slivers_recovered']} recovered, {r['failed_attempts']} failed attempts, "
                    f"{r['blobs_complete']}/{r['blobs']} blobs complete"),
    ])
    return 0
