"""The mount daemon's status is one typed record (walrusfs.fs.mount_status.MountStatus): the daemon
produces it, ``walrusfs status``, the metrics, the systemd line and ``umount`` read its attributes, and
on the wire it keeps today's JSON shape exactly."""

from __future__ import annotations

import json
import subprocess
import sys

from walrusfs.fs.mount_status import MountStatus, NodeHealth, SnapshotStatus

# What a writable mount's daemon reports (getfattr -n walrusfs.status), every field.
DAEMON_JSON = {
    "pid": 4242, "fs_id": "ab" * 16, "state": "/home/u/.local/share/walrusfs/fs/docs", "mounted_since": 1700000000.5,
    "staged_bytes": 3 << 20, "dirty_bytes": 4096, "uploads_in_flight": 1, "uploaded_blobs": 7,
    "uploaded_bytes": 112 << 20, "upload_failures": 2, "last_error": "only 4 of 7 shards confirmed",
    "upload_permanent_error": None,
    "last_error_at": 1700000100.0, "last_upload_at": 1700000200.0, "cache_capacity": 2 << 30,
    "cache_bytes": 16 << 20, "cache_hits": 10, "cache_misses": 3,
    "nodes": {"node-0": {"latency_ms": 1.25, "failure_score": 0.0, "failures": 0, "successes": 40, "lies": 0,
                         "last_error": None},
              "node-1": {"latency_ms": None, "failure_score": 2.5, "failures": 6, "successes": 1, "lies": 1,
                         "last_error": "connection refused"}},
    "read_only": False,
    "snapshot": {"seq": 3, "created_ns": 1700000150 * 10**9, "manifest": "m" * 64, "db_bytes": 1 << 20,
                 "uploaded_bytes": 65536, "last_error": None, "next_due_s": 12.5},
    "lease": {"holder": "h" * 32, "label": "host-a", "generation": 2, "held": True, "valid_for_s": 21.5,
              "term_s": 30.0, "deposed_by": None, "last_error": None, "message": None},
    "epoch": 3,
    "encryption": "aes-256-gcm-v1",
    "renewal": {"term_s": 31536000.0, "blobs": 12, "last_success": 1700000100.0, "expires": 1731536100.0,
                "last_error": None, "last_error_at": None},
    "over_quota": None,
}


def test_the_json_shape_round_trips_exactly() -> None:
    status = MountStatus.from_json(json.loads(json.dumps(DAEMON_JSON)))
    assert status.to_json() == DAEMON_JSON
    assert status.pending_bytes == (3 << 20) + 4096
    assert status.nodes["node-1"] == NodeHealth(None, 2.5, 1, 6, 1, "connection refused")
    assert status.snapshot is not None and status.snapshot.seq == 3 and not status.snapshot_failing
    assert not status.uploads_failing  # the last upload succeeded after the last failure
    assert status.lease is not None and status.lease.generation == 2 and not status.lease_lost
    deposed = dict(DAEMON_JSON["lease"], held=False, deposed_by={"holder": "x", "label": "host-b", "generation": 3},
                   message="another writer took over")
    assert MountStatus.from_json(dict(DAEMON_JSON, lease=deposed)).lease_lost
    assert MountStatus.from_json(dict(DAEMON_JSON, lease=None)).to_json()["lease"] is None  # a read-only mount


def test_older_and_newer_daemons_fields_are_kept_as_reported() -> None:
    # A read-only mount of an old snapshot reports only its seq; a newer daemon may report more.
    reported = {"pid": 1, "staged_bytes": 0, "snapshot": {"seq": 2}, "something_new": {"x": 1}}
    status = MountStatus.from_json(reported)
    assert status.to_json() == reported
    assert status.dirty_bytes is None and status.snapshot == SnapshotStatus(seq=2)
    assert MountStatus.from_json({}).snapshot is None


def test_the_daemon_side_record_serialises_to_the_same_keys() -> None:
    status = MountStatus(**{key: value for key, value in MountStatus.from_json(DAEMON_JSON).__dict__.items()
                            if key not in ("reported", "extra")})
    assert json.loads(json.dumps(status.to_json())) == DAEMON_JSON
    read_only = MountStatus(snapshot=SnapshotStatus(seq=5, reported=frozenset({"seq"})))
    assert read_only.to_json()["snapshot"] == {"seq": 5}


def test_uploads_failing_needs_a_failure_after_the_last_upload_and_data_waiting() -> None:
    failing = dict(DAEMON_JSON, last_error_at=300.0, last_upload_at=200.0)
    assert MountStatus.from_json(failing).uploads_failing
    assert not MountStatus.from_json(dict(failing, staged_bytes=0, dirty_bytes=0)).uploads_failing
    assert MountStatus.from_json({k: v for k, v in failing.items() if k != "last_upload_at"}).uploads_failing


def test_renewal_failing_and_over_quota_are_read_from_the_daemons_record() -> None:
    assert not MountStatus.from_json(DAEMON_JSON).renewal_failing
    failing = dict(DAEMON_JSON, renewal=dict(DAEMON_JSON["renewal"], last_error="node-1: HTTP 503",
                                             last_error_at=1700000200.0))
    assert MountStatus.from_json(failing).renewal_failing
    assert MountStatus.from_json(failing).renewal.last_success == 1700000100.0
    older = {k: v for k, v in DAEMON_JSON.items() if k not in ("renewal", "over_quota")}  # a daemon before claims
    assert MountStatus.from_json(older).renewal is None and not MountStatus.from_json(older).renewal_failing
    assert MountStatus.from_json(dict(DAEMON_JSON, over_quota="node-0: HTTP 403: over_quota")).over_quota


def test_status_does_not_import_the_mount_commands() -> None:
    """fs/status.py imported fs/cli.py for read_status (a circle through fs/cli's imports)."""
    code = "import sys, walrusfs.fs.status; print('walrusfs.fs.cli' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "False"


def test_the_report_warns_of_failing_renewal_with_its_last_success_and_of_quota_refusals() -> None:
    from walrusfs.fs.status import format_status

    failing = dict(DAEMON_JSON, renewal=dict(DAEMON_JSON["renewal"], last_error="node-1: HTTP 503: busy",
                                             last_error_at=1700000200.0),
                   over_quota="node-0: HTTP 403: over_quota: writer key K has 10 bytes claimed")
    report = format_status(failing, now=1700000400.0)
    assert "RENEWAL FAILING (last success: 5 min ago; kept until" in report
    assert "node-1: HTTP 503: busy" in report
    assert "OVER QUOTA" in report and "writer key K has 10 bytes claimed" in report
    healthy = format_status(DAEMON_JSON, now=1700000400.0)
    assert "RENEWAL FAILING" not in healthy and "OVER QUOTA" not in healthy


def test_renewal_and_quota_are_exported_as_mount_metrics() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from walrusfs.fs.metrics import render_metrics

    def parse_metrics(text: str) -> dict[str, float]:
        return {sample.name: sample.value for family in text_string_to_metric_families(text)
                for sample in family.samples if not sample.labels}

    healthy = parse_metrics(render_metrics(DAEMON_JSON))
    assert healthy["walrusfs_mount_renewal_failing"] == 0 and healthy["walrusfs_mount_over_quota"] == 0
    assert healthy["walrusfs_mount_renewal_last_success_seconds"] == 1700000100.0
    failing = dict(DAEMON_JSON, renewal=dict(DAEMON_JSON["renewal"], last_error="node-1: HTTP 503"),
                   over_quota="node-0: HTTP 403: over_quota")
    metrics = parse_metrics(render_metrics(failing))
    assert metrics["walrusfs_mount_renewal_failing"] == 1 and metrics["walrusfs_mount_over_quota"] == 1
