"""The TOML files walrusfs writes (fs.toml, committee.toml, a cluster node's config.toml) are written
by tomli_w: any string a user can put in them, such as a path with an apostrophe or a quote, reads back
as itself."""

from __future__ import annotations

import tomllib
from pathlib import Path

from walrusfs.cluster import init_cluster
from walrusfs.committee import Committee, NodeInfo
from walrusfs.fs.config import FsSettings, FsState
from walrusfs.keys import generate_key, load_key, public_bytes, public_key_text

AWKWARD = "/home/o'brien/my \"quoted\" dir\\with backslash/ünï"


def test_fs_settings_with_an_apostrophe_and_a_quote_in_a_path_round_trip(tmp_path: Path) -> None:
    settings = FsSettings(fs_id="ab" * 16, committee=f"{AWKWARD}/committee.toml", writer_key=f"{AWKWARD}/w.key",
                          fs_key=f"{AWKWARD}/fs.key", upload_delay=0.5)
    state = FsState(tmp_path)
    state.settings_path.write_text(settings.dump())
    assert state.load_settings() == settings


def test_committee_file_round_trips(tmp_path: Path) -> None:
    keys = [generate_key() for _ in range(2)]
    committee = Committee(epoch=3, n_shards=7, writer_keys=frozenset({public_bytes(keys[0])}), nodes=(
        NodeInfo("node-'0'", 'http://127.0.0.1:1/"x"', public_bytes(keys[0]), (0, 2, 4, 6)),
        NodeInfo("node-1", "http://127.0.0.1:2", public_bytes(keys[1]), (1, 3, 5))))
    committee.write(tmp_path / "committee.toml")
    assert Committee.load(tmp_path / "committee.toml") == committee


def test_cluster_node_config_is_valid_toml(tmp_path: Path) -> None:
    root = tmp_path / "it's a \"cluster\""
    init_cluster(root, nodes=2, shards=7, base_port=20000)
    config = tomllib.loads((root / "node-1" / "config.toml").read_text())
    operator = public_key_text(load_key(root / "operator.key"))
    assert config == {"node_id": "node-1", "listen": "127.0.0.1:20001", "data_dir": "data",
                      "signing_key": "node.key", "committee": "../committee.toml",
                      "epochs": {"proposers": [operator]}}
