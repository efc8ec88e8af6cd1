"""The node's /metrics and the mount's metrics are written by one renderer (prometheus_client), so
both write special values and escape labels the one standard way."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from nodes.metrics import Metrics, family
from walrusfs.fs.metrics import render_metrics


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(name, sorted labels) -> value, parsed by prometheus_client's own parser (which checks the format)."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for metric in text_string_to_metric_families(text) for sample in metric.samples}


def test_infinity_is_written_the_standard_way_by_node_and_mount() -> None:
    lines: list[str] = []
    family(lines, "walrusfs_node_test_seconds", "gauge", "A gauge.", [({}, math.inf), ({}, -math.inf)])
    node_text = Metrics().render({"walrusfs_node_stored_blobs": ("Blobs.", 2)}, {"node_id": "n"}, lines)
    mount_text = render_metrics({"staged_bytes": 0, "snapshot": {"next_due_s": math.inf}})
    assert "walrusfs_node_test_seconds +Inf\n" in node_text
    assert "walrusfs_node_test_seconds -Inf\n" in node_text
    assert "walrusfs_mount_snapshot_next_due_seconds +Inf\n" in mount_text
    assert " inf" not in node_text + mount_text
    assert samples(mount_text)[("walrusfs_mount_snapshot_next_due_seconds", ())] == math.inf


def test_node_metrics_keep_their_names_labels_and_values() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.request("/v1/health", "GET", 200, 0, 10)
    metrics.request("/v1/blobs/{id}", "PUT", 400, 7, 0)
    metrics.verification_failures["metadata"] += 1
    text = metrics.render({"walrusfs_node_stored_bytes": ("Bytes.", 5 << 30)}, {"node_id": 'no"de\\0', "epoch": "4"})
    got = samples(text)
    assert got[("walrusfs_node_info", (("epoch", "4"), ("node_id", 'no"de\\0')))] == 1
    assert got[("walrusfs_node_http_requests_total",
                (("method", "GET"), ("route", "/v1/health"), ("status", "200")))] == 3
    assert got[("walrusfs_node_http_requests_total",
                (("method", "PUT"), ("route", "/v1/blobs/{id}"), ("status", "400")))] == 1
    assert got[("walrusfs_node_received_bytes_total", ())] == 7
    assert got[("walrusfs_node_sent_bytes_total", ())] == 30
    assert got[("walrusfs_node_verification_failures_total", (("object", "metadata"),))] == 1
    assert got[("walrusfs_node_stored_bytes", ())] == 5 << 30
    assert "# TYPE walrusfs_node_http_requests_total counter\n" in text
    assert not any(name.endswith("_created") for name, _ in got)  # no extra series beyond today's
