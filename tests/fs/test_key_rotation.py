"""Rotating an encrypted filesystem's data key (walrusfs rotate-key, docs/encryption.md): new blocks
are sealed with the new key, old blocks keep theirs and still read back, on the writer's machine
after emptying its cache and through a read capability on another machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fs_harness import WALRUSFS, Filesystem, mounted, run
from network import LocalNetwork

pytestmark = pytest.mark.usefixtures("shared_network")


def key_ids(fs: Filesystem, name: bytes) -> set[int]:
    """The data key ids in the sealed headers of a file's blocks, read from the blobs as cached after
    upload (the bytes the nodes hold)."""
    with fs.db() as db:
        rows = db.execute("SELECT b.blob_id, k.offset FROM dirents d JOIN inode_blocks i ON i.inode = d.inode "
                          "JOIN blocks k ON k.id = i.block JOIN blobs b ON b.id = k.blob WHERE d.name = ?",
                          (name,)).fetchall()
    assert rows, f"{name!r} has no certified blocks"
    ids = set()
    for blob_id, offset in rows:
        with open(fs.cache_dir / blob_id, "rb") as blob:
            blob.seek(offset)
            header = blob.read(22)
        assert header[:4] == b"WFSE"
        ids.add(int.from_bytes(header[6:10], "little"))
    return ids


def test_after_rotation_new_blocks_use_the_new_key_and_old_ones_still_read(
        make_fs, shared_network: LocalNetwork, tmp_path: Path) -> None:
    fs = make_fs(shared_network, "rotated")
    old, new = os.urandom(700_000), os.urandom(900_000)
    with mounted(fs, tmp_path / "mnt") as mnt:
        (mnt / "old.bin").write_bytes(old)
        refused = run([WALRUSFS, "rotate-key", fs.name], fs.env, check=False)
        assert refused.returncode != 0 and "already mounted" in refused.stderr  # the mount holds its key
    assert key_ids(fs, b"old.bin") == {0}

    rotated = run([WALRUSFS, "rotate-key", fs.name], fs.env)
    assert "data key 1 added" in rotated.stderr and "nothing is re-encrypted" in rotated.stderr

    with mounted(fs, tmp_path / "mnt") as mnt:
        (mnt / "new.bin").write_bytes(new)
    assert key_ids(fs, b"new.bin") == {1}
    assert key_ids(fs, b"old.bin") == {0}

    fs.clear_cache()  # every block below comes from the nodes
    with mounted(fs, tmp_path / "mnt") as mnt:
        assert (mnt / "old.bin").read_bytes() == old
        assert (mnt / "new.bin").read_bytes() == new

    # Another machine with a read capability only: the snapshot carries the new key.
    capability = run([WALRUSFS, "share", fs.name], fs.env).stdout.strip()
    reader = Filesystem(capability, tmp_path / "elsewhere", shared_network)
    with mounted(reader, tmp_path / "shared", "--committee", str(shared_network.committee_path)) as mnt:
        assert (mnt / "old.bin").read_bytes() == old
        assert (mnt / "new.bin").read_bytes() == new
