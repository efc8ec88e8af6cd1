"""Counters and gauges in the Prometheus text exposition format (version 0.0.4).

Written by hand: a handful of metrics does not need a client library, and incrementing a dict entry
is as cheap as it gets on the request path (the event loop is single-threaded).
"""

from __future__ import annotations

from collections import defaultdict

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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
        return "\n".join(lines + (extra or [])) + "\n"


def family(lines: list[str], name: str, kind: str, help_text: str,
           samples: list[tuple[dict[str, str], float]]) -> None:
    """Append one metric family (HELP, TYPE and its samples) to ``lines``."""
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        lines.append(f"{name}{_labels(labels)} {_number(value)}")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
