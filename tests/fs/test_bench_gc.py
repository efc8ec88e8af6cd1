"""``walrusfs bench gc`` run small, so that it cannot rot: its own network and mount, real deletes,
a real gc, and the figures it reports add up."""

from __future__ import annotations

import json
import os
import subprocess

from fs_harness import WALRUSFS


def test_bench_gc_frees_what_was_deleted_and_reports_it() -> None:
    result = subprocess.run([WALRUSFS, "bench", "gc", "--size-mib", "12", "--files", "150", "--blob-size", "1",
                             "--json"], capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["written_bytes"] == 12 << 20
    assert report["deleted_bytes"] >= 0.7 * report["written_bytes"] > report["live_bytes"] > 0
    assert report["node_bytes_after"] < report["node_bytes_before"]
    assert report["released_blobs"] > 0 and report["pending_blobs"] == 0
    assert report["compaction_rewritten_bytes"] > 0
    assert report["after_over_live_expanded"] <= report["target_ratio"], report
    assert report["status_space"]["network_bytes"] > 0
