"""A dataset published in epoch 1 verifies after the committee changed, from a machine holding only the
epoch-1 committee file: the chain is walked forward, each certificate checked against its own epoch's
committee, each blob's holders asked in the epoch of now."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "epochs"))

from epoch_harness import EpochNetwork
from test_dataset_network import make_tree, publish, verify


def test_a_dataset_of_epoch_1_verifies_at_epoch_2_from_the_epoch_1_committee_file(tmp_path):
    with EpochNetwork(tmp_path / "network") as network:
        dataset = publish(network, make_tree(tmp_path / "tree", big=200_000))
        first = tmp_path / "fresh" / "committee.toml"
        first.parent.mkdir()
        shutil.copy(network.committee_path, first)  # epoch 1, and nothing beside it
        network.add_node("node-4")
        network.start("node-4")
        network.change_epoch(network.successor({"node-0": (0,), "node-1": (1, 5), "node-2": (2, 6),
                                                "node-3": (3,), "node-4": (4,)}))
        network.wait_handover(["node-4"])
        code, report = verify(first, dataset)
    assert code == 0, report
    assert report["epoch"] == 2 and report["files_checked"] == 5
    assert report["certificates_verified"] == report["blobs"] - 1  # all but the index's (it has none stored)
