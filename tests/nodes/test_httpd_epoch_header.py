"""Every answer of a node names its epoch (``walrusfs-epoch``, docs/epochs.md), the ones its HTTP
server gives by itself too: 503 to a connection over a cap, 431 to a head over 64 KiB. A client that
meets a refusal from a node of a newer epoch learns of the epoch from it as from any other answer.

A real node process; clients bind distinct loopback addresses so that the per-address cap is reached
by one of them only.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_harness import NodeProcess, make_cluster, node_process
from raw_http import connect, parse_head


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    make_cluster(tmp_path / "cluster", nodes=1, shards=4)
    process = node_process(tmp_path / "cluster")
    with open(process.config, "a") as config:
        config.write("\n[http]\nmax_connections = 8\nmax_connections_per_peer = 1\n")
    process.start()
    try:
        yield process
    finally:
        process.stop()


def head_of(sock: socket.socket) -> tuple[int, dict[str, str]]:
    """The status and headers of the next answer on ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return parse_head(data.partition(b"\r\n\r\n")[0])


def test_the_servers_own_refusals_name_the_epoch_like_every_other_answer(node: NodeProcess) -> None:
    opened: list[socket.socket] = []
    try:
        first = connect(node.url, "127.0.0.2", opened, timeout=10)
        first.sendall(b"GET /v1/health HTTP/1.1\r\nHost: node\r\n\r\n")
        status, headers = head_of(first)
        assert status == 200 and headers["walrusfs-epoch"] == "1"

        # A second connection from the same address is over the per-address cap of 1: 503 at once.
        status, headers = head_of(connect(node.url, "127.0.0.2", opened, timeout=10))
        assert status == 503 and headers["walrusfs-epoch"] == "1", headers

        # A request head over 64 KiB: 431, and the connection ends.
        big = connect(node.url, "127.0.0.3", opened, timeout=10)
        big.sendall(b"GET /v1/health HTTP/1.1\r\nHost: node\r\nx-padding: " + b"a" * (65 * 1024) + b"\r\n\r\n")
        status, headers = head_of(big)
        assert status == 431 and headers["walrusfs-epoch"] == "1", headers
    finally:
        for sock in opened:
            sock.close()
