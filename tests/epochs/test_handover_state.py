"""The handover's progress file (DATA/epochs/handover.json): read back at start, and a damaged one
stops the node with what to do. One layer, in process: the node's app over a fresh data directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from network import free_port_range

from nodes.app import NodeApp
from nodes.config import NodeConfig
from nodes.store import BlobStore
from walrusfs.cluster import init_cluster
from walrusfs.errors import UserError
from walrusfs.protocol.handover import GainedShard, HandedOffShard, HandoverStatus


def app_of(root: Path) -> NodeApp:
    config = NodeConfig.load(root / "node-0" / "config.toml")
    committee, key = config.load_identity()
    store = BlobStore(config.data_dir)
    store.open()
    return NodeApp(config, committee, key, store)


def close(app: NodeApp) -> None:
    app.core.close()
    app.executor.shutdown()


def test_progress_on_disk_is_taken_up_at_start(tmp_path: Path) -> None:
    init_cluster(tmp_path, nodes=4, shards=4, base_port=free_port_range(4))
    path = tmp_path / "node-0" / "data" / "epochs" / "handover.json"
    path.parent.mkdir(parents=True)
    status = HandoverStatus("node-0", 2, {1: GainedShard(1, "node-1", 2, bytes_to_move=10)},
                            {0: HandedOffShard(0, "node-3", 2)})
    path.write_text(status.to_json())
    app = app_of(tmp_path)
    try:
        assert app.handover.status == status
        assert not app.core.handover_complete()  # shard 1 is not synced: no signature for epoch 3 yet
        assert app.core.serving_shards >= {0}  # shard 0 is served until its new holder has it
        assert app.core.receiving == {1}  # and repair leaves shard 1 to the handover
    finally:
        close(app)


@pytest.mark.parametrize("text", ["{", '{"version": 7}', '{"version": 1, "node_id": "node-0"}'])
def test_a_damaged_progress_file_stops_the_node_and_says_what_to_do(tmp_path: Path, text: str) -> None:
    init_cluster(tmp_path, nodes=4, shards=4, base_port=free_port_range(4))
    path = tmp_path / "node-0" / "data" / "epochs" / "handover.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(UserError, match=r"handover\.json.*delete it and start the node again"):
        app_of(tmp_path)
    assert path.read_text() == text  # left as it was, for whoever looks into it


def test_how_long_a_handover_waits_for_an_answer_is_the_handover_tables_request_timeout(tmp_path: Path) -> None:
    init_cluster(tmp_path, nodes=4, shards=4, base_port=free_port_range(4))
    path = tmp_path / "node-0" / "config.toml"
    written = path.read_text()
    assert NodeConfig.load(path).handover.request_timeout == 20.0  # no table: the default
    path.write_text(written + "\n[handover]\nrequest_timeout = 2.5\n")
    assert NodeConfig.load(path).handover.request_timeout == 2.5
    for table, complaint in (("request_timeout = 0.1", "request_timeout must be a number of seconds in [0.5, 3600]"),
                             ("request_timeout = 'soon'", "request_timeout must be a number of seconds"),
                             ("timeout = 5", "[handover]: unknown settings timeout")):
        path.write_text(written + f"\n[handover]\n{table}\n")
        with pytest.raises(UserError) as refused:
            NodeConfig.load(path)
        assert complaint in str(refused.value) and str(path) in str(refused.value)
