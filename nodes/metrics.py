"""The node's counters and gauges, served at ``/metrics`` in the Prometheus text format.

Counting stays a dict increment on the request path (the event loop is single-threaded); the
figures become prometheus_client metric families only when scraped (walrusfs.prometheus renders them).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from walrusfs.prometheus import CONTENT_TYPE, Sample, metric_family, render


class Metrics:
    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, str, int], int] = defaultdict(int)
        self.bytes_in = 0
        self.bytes_out = 0
        self.verification_failures: defaultdict[str, int] = defaultdict(int)  # by object kind
        self.checksum_failures = 0
        self.disk_full = 0

    def request(self, route: str, method: str, status: int, received: int, sent: int) -> None:
        self.requests[(route, method, status)] += 1
        self.bytes_in += received
        self.bytes_out += sent

    def render(self, gauges: dict[str, tuple[str, float]], info: dict[str, str],
               extra: list[str] | None = None) -> str:
        lines: list[str] = []
        family(lines, "walrusfs_node_info", "gauge", "Constant 1, labelled with the node's identity.", [(info, 1)])
        family(lines, "walrusfs_node_http_requests_total", "counter", "HTTP requests by route, method and status.",
               [({"route": r, "method": m, "status": str(s)}, v)
                for (r, m, s), v in sorted(self.requests.items())])
        family(lines, "walrusfs_node_received_bytes_total", "counter", "Request body bytes received.",
               [({}, self.bytes_in)])
        family(lines, "walrusfs_node_sent_bytes_total", "counter", "Response body bytes sent.",
               [({}, self.bytes_out)])
        family(lines, "walrusfs_node_verification_failures_total", "counter",
               "Uploaded objects refused because they do not verify against the blob ID.",
               [({"object": k}, v) for k, v in sorted(self.verification_failures.items())]
               or [({"object": "sliver"}, 0)])
        family(lines, "walrusfs_node_checksum_failures_total", "counter",
               "Stored files that failed their checksum on read and were quarantined.",
               [({}, self.checksum_failures)])
        family(lines, "walrusfs_node_disk_full_total", "counter", "Writes refused because the disk was full.",
               [({}, self.disk_full)])
        for name, (help_text, value) in gauges.items():
            family(lines, name, "gauge", help_text, [({}, value)])
        return "".join(lines + (extra or []))


def family(lines: list[str], name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
    """Append one metric family (its HELP, TYPE and sample lines, rendered) to ``lines``."""
    lines.append(render([metric_family(name, kind, help_text, samples)]))


__all__ = ["CONTENT_TYPE", "Metrics", "family"]
