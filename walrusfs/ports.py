"""The kernel's ephemeral port range: where a listening port can be taken by an outgoing connection.

An outgoing TCP connection gets a local port from ``net.ipv4.ip_local_port_range`` (32768-60999 by
default on Linux), skipping ``net.ipv4.ip_local_reserved_ports``. A server whose port lies in that
range and is not reserved can find it taken, by any connection of any process on the host, at the
moment it binds ("address already in use"); a client probing it before the server binds can even
connect to itself. Servers the project starts by default listen below the range.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_PROC = Path("/proc/sys/net/ipv4")
_DEFAULT_RANGE = (32768, 60999)


def ephemeral_range() -> tuple[int, int]:
    """(low, high) of the kernel's ephemeral port range; Linux's default where it cannot be read."""
    try:
        low, high = (int(part) for part in (_PROC / "ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return _DEFAULT_RANGE
    return low, high


def reserved_ports() -> set[int]:
    """Ports excluded from the ephemeral range (``ip_local_reserved_ports``: "8080,9000-9010")."""
    try:
        text = (_PROC / "ip_local_reserved_ports").read_text().strip()
    except OSError:
        return set()
    ports: set[int] = set()
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        try:
            ports.update(range(int(first), int(last or first) + 1))
        except ValueError:
            continue
    return ports


def in_ephemeral_range(port: int) -> bool:
    """Whether an outgoing connection may take ``port`` as its local port."""
    low, high = ephemeral_range()
    return low <= port <= high and port not in reserved_ports()


def exposed_ports(ports: range) -> list[int]:
    """Those of ``ports`` that lie in the ephemeral range and are not reserved."""
    low, high = ephemeral_range()
    candidates = [port for port in ports if low <= port <= high]
    if not candidates:
        return []
    reserved = reserved_ports()
    return [port for port in candidates if port not in reserved]


def free_port_range(count: int = 1, host: str = "127.0.0.1", lowest: int = 20000) -> int:
    """The first of ``count`` consecutive ports free on ``host`` now, drawn at random below the
    ephemeral range (where ``bind(0)`` would hand one out), for local test and benchmark networks."""
    rng = random.SystemRandom()
    top = ephemeral_range()[0] - count
    for _ in range(200):
        base = rng.randrange(lowest, max(top, lowest + 1))
        try:
            for port in range(base, base + count):
                with socket.socket() as probe:
                    probe.bind((host, port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports on {host} below {top + count}")
