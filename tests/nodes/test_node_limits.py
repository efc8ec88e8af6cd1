"""A node on a hostile network: what connections cost it, the caps on them, memory after a burst.

Real node processes; clients open thousands of sockets from several loopback addresses (127.0.0.0/8
is all loopback on Linux) so that per-address and total caps can be told apart. The bounds
asserted are the ones docs/node-api.md ("Memory") states.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from node_harness import Node, NodeProcess, make_cluster, node_process
from raw_http import connect, parse_head

from nodes.httpd import ConnectionStats
from nodes.memory import MemoryKeeper
from walrusfs.redstuff import SliverKind, encode

KiB, MiB = 1 << 10, 1 << 20
IDLE_CONNECTION = 8 * KiB  # the most an idle connection may cost (docs/node-api.md)
HEAD_CONNECTION = 16 * KiB  # ... one that has sent part of a small request head


def rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * KiB
    raise AssertionError(f"no {field} for pid {pid}")


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name)] in " {")


def start_node(root: Path, max_connections: int, per_peer: int, open_files: int | None = None) -> NodeProcess:
    """A one-node network's node with these caps (and, given ``open_files``, that RLIMIT_NOFILE)."""
    make_cluster(root, nodes=1, shards=4)
    node = node_process(root)
    with open(node.config, "a") as config:
        config.write(f"\n[http]\nmax_connections = {max_connections}\nmax_connections_per_peer = {per_peer}\n")
    if open_files is None:
        node.start()
    else:
        node.start(preexec=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files)))
    return node


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Client sockets a test opens; all closed at its end. RLIMIT_NOFILE raised for thousands."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8000 if hard == resource.RLIM_INFINITY else min(hard, 8000)
    if wanted < 3500:
        pytest.skip(f"the open-file hard limit ({hard}) does not allow 3,000 connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.2)


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Everything the node sends until it closes: status, headers, body."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return (*parse_head(head), body)


def test_thousands_of_idle_and_slow_connections_cost_little_and_memory_returns(
        tmp_path: Path, sockets: list[socket.socket]) -> None:
    """3,000 idle connections, then a slowloris on all of them (part of a request head each): the
    node's resident memory grows by at most 8 KiB and 16 KiB per connection, and falls back once they
    close. (With a 256 KiB buffer allocated per connection it grew by 760 MiB and stayed there.)"""
    count, sources = 3000, [f"127.0.0.{i}" for i in range(2, 10)]  # 375 per address
    node = start_node(tmp_path / "cluster", max_connections=4096, per_peer=512)
    pid = node.process.pid  # type: ignore[union-attr]
    try:
        for _ in range(50):  # warm up what every request touches
            httpx.get(f"{node.url}/metrics", timeout=10)
        base = rss(pid)
        for i in range(count):
            connect(node.url, sources[i % len(sources)], sockets)
        wait_for(lambda: metric(node.url, "walrusfs_node_http_connections") >= count, 60,
                 f"the node holding {count} connections")
        idle = rss(pid) - base
        assert idle <= count * IDLE_CONNECTION, f"{count} idle connections cost {idle / MiB:.1f} MiB"

        for sock in sockets:  # a slowloris: a head begun, never finished
            sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: node\r\nX-Slow: ")
        time.sleep(2)
        slow = rss(pid) - base
        assert slow <= count * HEAD_CONNECTION, f"{count} slow heads cost {slow / MiB:.1f} MiB"
        assert rss(pid, "VmHWM") - base <= count * HEAD_CONNECTION

        for sock in sockets:
            sock.close()
        sockets.clear()
        wait_for(lambda: metric(node.url, "walrusfs_node_http_connections") <= 1, 30, "the connections closed")
        # Back to the baseline, give or take what Python's allocator keeps (far less than the burst).
        wait_for(lambda: rss(pid) - base <= max(slow // 2, 4 * MiB), 30,
                 f"memory returned after the burst (peak +{slow / MiB:.1f} MiB, now "
                 f"+{(rss(pid) - base) / MiB:.1f} MiB)")
        assert metric(node.url, "walrusfs_node_memory_trims_total") >= 1
    finally:
        node.stop()
    assert "Traceback" not in node.log.read_text()


def test_connections_over_a_cap_are_answered_503_and_other_clients_are_served(
        tmp_path: Path, sockets: list[socket.socket]) -> None:
    node = start_node(tmp_path / "cluster", max_connections=24, per_peer=8)
    try:
        def hold(source: str, count: int) -> list[socket.socket]:
            held = [connect(node.url, source, sockets) for _ in range(count)]
            for sock in held:  # a request answered on each: the node has admitted it
                sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: node\r\n\r\n")
                sock.settimeout(10)
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            return held

        first = hold("127.0.0.2", 8)
        # One more from the same address: refused at once, with a reason, before it sends anything.
        status, headers, body = read_response(connect(node.url, "127.0.0.2", sockets))
        assert status == 503 and headers["connection"] == "close" and headers["retry-after"] == "1"
        answer = httpx.Response(503, content=body).json()
        assert answer["error"] == "too_many_connections" and "from one address (127.0.0.2)" in answer["message"]
        # A client that sends its request at once reads the same answer (not a reset connection).
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=10) as client:
            refused = client.get(f"{node.url}/v1/health")
            assert refused.status_code == 503 and refused.json()["error"] == "too_many_connections"
        # Another address is not starved by the first.
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3"), timeout=10) as client:
            assert client.get(f"{node.url}/v1/health").status_code == 200

        hold("127.0.0.3", 8)
        hold("127.0.0.4", 8)  # 24: the total cap
        status, _, body = read_response(connect(node.url, "127.0.0.5", sockets))
        assert status == 503 and "at most 24 connections at once" in httpx.Response(503, content=body).text

        for sock in first:  # room again
            sock.close()
        wait_for(lambda: httpx.get(f"{node.url}/v1/health", timeout=10).status_code == 200, 10,
                 "a connection admitted after others closed")
        text = httpx.get(f"{node.url}/metrics", timeout=10).text
        assert 'walrusfs_node_http_refused_connections_total{cap="peer"} 2' in text
        assert 'walrusfs_node_http_refused_connections_total{cap="total"} 1' in text
    finally:
        node.stop()
    log = node.log.read_text()
    assert "refusing connections" in log and "Traceback" not in log


def test_a_node_lowers_its_cap_to_fit_the_open_file_limit(tmp_path: Path, sockets: list[socket.socket]) -> None:
    """With too few file descriptors for max_connections (+ 1,280 for refusals, store and peers) the
    node says so and refuses (503) what it cannot hold, instead of failing to accept."""
    node = start_node(tmp_path / "cluster", max_connections=2048, per_peer=2048, open_files=1300)
    try:
        held = [connect(node.url, "127.0.0.2", sockets) for _ in range(20)]  # 1300 - 1280 = 20 fit
        for sock in held:
            sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: node\r\n\r\n")
            sock.settimeout(10)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        status, _, body = read_response(connect(node.url, "127.0.0.3", sockets))
        assert status == 503 and "at most 20 connections at once" in body.decode()
    finally:
        node.stop()
    assert "the open-file limit (1300) holds only 20 client connections, not max_connections = 2048" in \
        node.log.read_text()


STUFFED_CONNECTION = 72 * KiB  # the most a connection may cost: a 64 KiB head arriving (docs/node-api.md)


def test_a_burst_of_hostile_requests_and_stores_stays_within_the_stated_bound(
        node: Node, sockets: list[socket.socket]) -> None:
    """docs/node-api.md, "What bounds a node's resident memory": under 500 connections each feeding a
    60 KiB head that never ends, 200 unauthorised sliver PUTs with 1 MiB bodies, and a writer storing
    and reading back blobs meanwhile, the node grows by at most the connections' bound plus what the
    stores move; after the burst it returns to near its start."""
    pid = node.process.process.pid  # type: ignore[union-attr]
    blobs = [encode(os.urandom(2_000_000), 7) for _ in range(6)]
    node.store(blobs[0])  # warm up the store path and the buffer pool
    base = rss(pid)

    stuffers = [connect(node.process.url, f"127.0.0.{2 + i % 2}", sockets) for i in range(500)]
    pad = b"GET /v1/health HTTP/1.1\r\nHost: node\r\nX-Pad: " + b"a" * (60 * KiB)
    for sock in stuffers:
        sock.sendall(pad)
    path = f"/v1/blobs/{blobs[0].blob_id}/slivers/{node.pairs(blobs[0])[0]}/primary"
    unauthorised = []
    for i in range(200):
        sock = connect(node.process.url, f"127.0.0.{4 + i % 2}", sockets)
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # as much as the socket takes; the node answers 401
            sock.send(f"PUT {path} HTTP/1.1\r\nHost: node\r\nContent-Length: {1 << 20}\r\n\r\n".encode()
                      + bytes(1 << 20))
        unauthorised.append(sock)
    for blob in blobs[1:]:  # a writer's ordinary work goes on meanwhile
        node.store(blob)
        for pair in node.pairs(blob):
            assert node.http.get(f"/v1/blobs/{blob.blob_id}/slivers/{pair}/primary").status_code == 200
    # Accepted in order: once a later connection is answered, the node holds all of the burst's.
    assert httpx.get(f"{node.process.url}/v1/health", timeout=30).status_code == 200
    time.sleep(1)

    moved = sum(len(node.sliver(blob, pair, kind).to_bytes()) for blob in blobs for pair in node.pairs(blob)
                for kind in SliverKind)
    allowance = 700 * STUFFED_CONNECTION + 2 * moved + 16 * MiB  # interpreter slack: objects, logs
    peak = rss(pid, "VmHWM") - base
    assert peak <= allowance, f"peak +{peak / MiB:.1f} MiB over +{allowance / MiB:.1f} MiB"

    for sock in sockets:
        sock.close()
    sockets.clear()
    wait_for(lambda: rss(pid) - base <= 24 * MiB, 30,
             f"memory returned after the burst (peak +{peak / MiB:.1f} MiB, now +{(rss(pid) - base) / MiB:.1f})")
    for blob in blobs:  # and everything stored is intact
        pair = node.pairs(blob)[0]
        body = node.http.get(f"/v1/blobs/{blob.blob_id}/slivers/{pair}/secondary").content
        assert body == node.sliver(blob, pair, SliverKind.SECONDARY).to_bytes()


def test_memory_keeper_trims_when_a_burst_ends_and_when_freed_heap_passes_its_budget() -> None:
    """nodes.memory's policy, on a mock clock and a fake heap (the real trim is exercised above)."""
    stats = ConnectionStats(open=10, peak=10)
    free, now, trims = [0], [100.0], []
    keeper = MemoryKeeper(stats, free_budget=64 * MiB, free_heap=lambda: free[0],
                          trim=lambda: trims.append(now[0]) or True, clock=lambda: now[0])
    assert keeper.due() is None
    stats.peak, stats.open = 300, 200  # 100 fewer than the peak: not a burst's end
    assert keeper.due() is None
    stats.open = 40
    assert "a burst of 300 connections ended (40 open)" in str(keeper.due())
    asyncio.run(keeper.check())
    assert trims == [100.0] and stats.peak == 40 and keeper.due() is None

    free[0] = 65 * MiB  # over the budget, but trimmed less than 10 s ago
    now[0] += 5
    assert keeper.due() is None
    now[0] += 5
    assert "65 MiB of freed heap, over the 64 MiB kept for reuse" in str(keeper.due())
    asyncio.run(keeper.check())
    assert trims == [100.0, 110.0] and keeper.trims == 2
