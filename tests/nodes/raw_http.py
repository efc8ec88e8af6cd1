"""Raw sockets to a node, for tests of what its HTTP server does below any HTTP client: connections
from chosen loopback source addresses, and answers parsed by hand."""

from __future__ import annotations

import socket


def connect(url: str, source: str, opened: list[socket.socket], timeout: float | None = None) -> socket.socket:
    """A connection to the node at ``url`` from loopback address ``source``, added to ``opened`` (the
    test closes those)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    opened.append(sock)
    sock.bind((source, 0))
    sock.connect((host, int(port)))
    if timeout is not None:
        sock.settimeout(timeout)
    return sock


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """The status and headers (names lower-cased) of an answer's head, without its blank line."""
    status_line, *lines = head.decode("latin-1").split("\r\n")
    return int(status_line.split()[1]), {name.lower(): value.strip()
                                         for name, _, value in (line.partition(":") for line in lines)}
