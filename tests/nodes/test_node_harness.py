"""The node harness cleans up after itself also when a node is slow to start: a node that does not
answer in time is stopped before the error is raised, so no test leaves a process running."""

from __future__ import annotations

from pathlib import Path

import pytest
from network import _LIVE
from node_harness import make_cluster, node_process


def test_a_node_not_healthy_in_time_is_stopped_before_the_error(tmp_path: Path) -> None:
    make_cluster(tmp_path / "cluster")
    node = node_process(tmp_path / "cluster")
    with pytest.raises(AssertionError, match="not healthy after"):
        node.start(timeout=0.0)  # no process answers before it was even asked
    assert node.process is not None
    assert node.process.poll() is not None, f"node pid {node.process.pid} left running"
    assert node.process.pid not in _LIVE
