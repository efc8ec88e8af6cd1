"""``walrusfs bench epoch`` at a small size, so that the command cannot rot: a real bundled network, a
real mount, 3 nodes added and 2 retired in one epoch change while the mount reads and writes, and
every check of the bench (docs/epochs.md, "What operators do"; issue 14's proof) must pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

if not Path("/dev/fuse").exists():
    pytest.skip("no /dev/fuse", allow_module_level=True)


def test_bench_epoch_adds_and_retires_in_one_change_with_no_error_and_everything_intact() -> None:
    walrusfs = Path(sys.executable).with_name("walrusfs")
    result = subprocess.run([str(walrusfs), "bench", "epoch", "--size-mib", "6", "--file-mib", "3", "--json",
                             "--timeout", "300"], capture_output=True, text=True, timeout=600, env=os.environ)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)
    assert (report["epoch_before"], report["epoch_after"]) == (1, 2)
    assert report["shards_moved"] == 4  # the two retired nodes' 2 shards each, to the 3 new nodes
    assert report["reader"]["errors"] == 0 and report["writer"]["errors"] == 0, report
    assert report["reader"]["operations"] > 0 and report["writer"]["operations"] > 0
    assert report["bytes_to_move"] > 0 and report["ratio"] <= 1.1, report
    assert report["read_back_files"] == report["files"] + report["writer"]["operations"]
    assert report["fsck_clean"] and report["audit_failed"] == [] and report["audit_blobs"] > 0
    assert report["passed"]
