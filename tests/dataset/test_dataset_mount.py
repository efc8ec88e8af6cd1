"""Publishing from inside walrusfs mounts (real FUSE, real nodes): the ID depends on the tree, not on the
filesystem it sits in or how that packed and sealed its blocks. An encrypted filesystem publishes a
public dataset: its plaintext, readable and verifiable by anyone holding the ID."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fs"))

from fs_harness import Filesystem, mounted
from test_dataset_network import make_tree, only_committee, publish, verify, walrusfs

if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
    pytest.skip("the mount tests need /dev/fuse and fusermount3", allow_module_level=True)


def test_the_same_tree_in_an_encrypted_and_a_plain_mount_and_a_local_dir_gives_one_id(shared_network, tmp_path):
    net = shared_network
    local = make_tree(tmp_path / "local", big=300_000)
    expected = publish(net, local)
    sealed = Filesystem("sealed", tmp_path / "home", net)  # mkfs encrypts by default
    plain = Filesystem("plain", tmp_path / "home", net, mkfs_args=("--no-encryption",), blob_size_mib=1)
    ids = []
    try:
        for fs in (sealed, plain):
            fs.mkfs()
            mountpoint = tmp_path / f"mnt-{fs.name}"
            mountpoint.mkdir()
            with mounted(fs, mountpoint) as root:
                shutil.copytree(local, root / "shared", symlinks=True)
                os.sync()
                ids.append(publish(net, root / "shared"))
    finally:
        sealed.cleanup()
        plain.cleanup()
    assert ids == [expected, expected]
    code, report = verify(only_committee(net, tmp_path), expected)
    assert code == 0 and report["files_checked"] == 5, report
    out = tmp_path / "out"
    assert walrusfs("dataset", "get", expected, str(out), "--committee", str(net.committee_path)).returncode == 0
    assert (out / "data" / "big.bin").read_bytes() == (local / "data" / "big.bin").read_bytes()
