"""Garbage collection end to end (docs/gc.md): real node processes, real mounts, ``walrusfs gc``.

What a filesystem no longer reaches leaves every node's disk; what a retained snapshot or a
read-only mount of one still shows stays readable until it ages out, and goes after.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest
import tomli_w
from fs_harness import WALRUSFS, Filesystem, mounted, run, status
from network import LocalNetwork

MiB = 1 << 20


@pytest.fixture(scope="module")
def shared_network(module_network: LocalNetwork) -> LocalNetwork:
    """A network of this module's own: a test compares the bytes on every node's disk before and after
    gc, which nothing else may change meanwhile (such as repair finishing another module's blobs)."""
    return module_network


def configure(fs: Filesystem, **settings: object) -> None:
    """Change fs.toml settings of an unmounted filesystem (as an operator would, with an editor)."""
    path = fs.state / "fs.toml"
    data = tomllib.loads(path.read_text())
    data.update(settings)
    path.write_text(tomli_w.dumps(data))


def node_blob_dirs(network: LocalNetwork) -> dict[str, Path]:
    return {node: network.root / node / "data" / "blobs" for node in network.node_ids}


def stored_on(network: LocalNetwork, blob_id: str) -> list[str]:
    """The nodes whose disk holds anything of ``blob_id``."""
    return [node for node, blobs in node_blob_dirs(network).items() if (blobs / blob_id[:2] / blob_id).exists()]


def disk_bytes(network: LocalNetwork) -> dict[str, int]:
    out = {}
    for node, blobs in node_blob_dirs(network).items():
        out[node] = sum(entry.stat().st_size for entry in blobs.rglob("*") if entry.is_file())
    return out


def blobs_of(fs: Filesystem, name: bytes) -> set[str]:
    with fs.db() as db:
        return {blob_id for (blob_id,) in db.execute(
            "SELECT DISTINCT o.blob_id FROM dirents d JOIN inode_blocks i ON i.inode = d.inode "
            "JOIN blocks b ON b.id = i.block JOIN blobs o ON o.id = b.blob WHERE d.name = ?", (name,))}


def gc(fs: Filesystem, *args: str, exit_code: int = 0) -> dict:
    """``walrusfs gc NAME --json``: exit 0 when everything listed is released on every node, 1 when
    some node has not yet."""
    result = run([WALRUSFS, "gc", fs.name, "--json", *args], fs.env, timeout=180, check=False)
    assert result.returncode == exit_code, f"{result.returncode}: {result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


def write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def test_deleted_files_leave_every_node_disk_through_a_mounted_and_an_unmounted_gc(
        shared_network: LocalNetwork, make_fs, tmp_path: Path) -> None:
    fs = make_fs(shared_network, blob_size_mib=1, mkfs_args=("--no-encryption",))
    configure(fs, gc_interval=0.0, snapshot_interval=0.0, compact_below=0.0)
    files = {f"f{i}": os.urandom(3 * MiB // 2) for i in range(4)}
    with mounted(fs, tmp_path / "mnt") as mnt:
        for name, data in files.items():
            write_synced(mnt / name, data)
        doomed = blobs_of(fs, b"f0") | blobs_of(fs, b"f1")
        kept = blobs_of(fs, b"f2") | blobs_of(fs, b"f3")
        assert doomed and kept and not doomed & kept  # 1 MiB blobs: files do not share them here
        assert all(len(stored_on(shared_network, blob)) == len(shared_network.node_ids) for blob in doomed)
        before = disk_bytes(shared_network)
        used_before = os.statvfs(mnt)
        (mnt / "f0").unlink()
        (mnt / "f1").unlink()
        dry = gc(fs, "--dry-run")  # mounted: the daemon runs it
        assert dry["dry_run"] and dry["garbage_blobs"] == len(doomed) and dry["released_blobs"] == 0
        assert all(stored_on(shared_network, blob) for blob in doomed)
        report = gc(fs)
        assert report["released_blobs"] == len(doomed) and report["pending_blobs"] == 0
        assert report["released_bytes"] >= 3 * MiB and report["referenced_bytes"] >= 3 * MiB
        for blob in doomed:
            assert stored_on(shared_network, blob) == [], f"blob {blob} still on a node's disk"
        after = disk_bytes(shared_network)
        assert all(after[node] < before[node] for node in before), (before, after)
        used_after = os.statvfs(mnt)
        # df: the bytes on the network after encoding went down with them.
        assert (used_after.f_blocks - used_after.f_bfree) < (used_before.f_blocks - used_before.f_bfree)
        space = status(mnt)["space"]
        assert space["network_bytes"] > space["blob_bytes"] >= space["logical_bytes"] >= 3 * MiB
        (mnt / "f2").unlink()
    report = gc(fs)  # unmounted: gc runs in the command itself
    assert report["released_blobs"] >= 1 and report["pending_blobs"] == 0
    with fs.db() as db:
        assert db.execute("SELECT COUNT(*) FROM gc_release").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM blobs WHERE refcount = 0").fetchone()[0] == 0
    code = run([WALRUSFS, "fsck", fs.name, "--json"], fs.env, check=False)
    assert json.loads(code.stdout)["clean"], code.stdout
    fs.clear_cache()
    with mounted(fs, tmp_path / "mnt") as mnt:
        assert (mnt / "f3").read_bytes() == files["f3"]  # from the nodes: what is reachable is intact
        assert sorted(p.name for p in mnt.iterdir()) == ["f3"]


def test_a_file_in_a_retained_snapshot_stays_readable_from_it_until_it_ages_out_then_its_space_is_freed(
        shared_network: LocalNetwork, make_fs, tmp_path: Path) -> None:
    fs = make_fs(shared_network, blob_size_mib=1, mkfs_args=("--no-encryption",))
    configure(fs, gc_interval=0.0, snapshot_interval=0.0, compact_below=0.0,
              snapshot_keep_last=1, snapshot_keep_daily=0, snapshot_keep_monthly=0)
    data = os.urandom(MiB + 12345)
    with mounted(fs, tmp_path / "mnt") as mnt:
        write_synced(mnt / "old", data)
        blobs = blobs_of(fs, b"old")
        run([WALRUSFS, "snapshot", str(mnt)], fs.env)
        first = status(mnt)["snapshot"]["seq"]
        (mnt / "old").unlink()
        (mnt / "new").write_bytes(b"after the first snapshot")
        run([WALRUSFS, "snapshot", str(mnt)], fs.env)  # keeps the first: the newest older one
        report = gc(fs)
        assert report["released_blobs"] == 0 and all(stored_on(shared_network, b) for b in blobs)
        old = (tmp_path / "ro").resolve()
        fs.mount(old, "-o", f"snapshot={first}")  # not mounted(): its cleanup would end every mount of fs
        (mnt / "newer").write_bytes(b"a third snapshot retires the first")
        run([WALRUSFS, "snapshot", str(mnt)], fs.env)
        report = gc(fs)
        # Aged out, but a read-only mount shows it: kept while that mount runs.
        assert all(stored_on(shared_network, b) for b in blobs), report
        assert (old / "old").read_bytes() == data
        fs.umount(old)
        report = gc(fs)
        assert report["released_blobs"] >= len(blobs)
        assert all(stored_on(shared_network, b) == [] for b in blobs)
        assert (mnt / "new").read_bytes() == b"after the first snapshot"


def test_a_release_a_node_missed_stays_listed_and_completes_once_the_node_is_back(
        shared_network: LocalNetwork, make_fs, tmp_path: Path) -> None:
    fs = make_fs(shared_network, blob_size_mib=1, mkfs_args=("--no-encryption",))
    configure(fs, gc_interval=0.0, snapshot_interval=0.0, compact_below=0.0)
    with mounted(fs, tmp_path / "mnt") as mnt:
        write_synced(mnt / "f", os.urandom(3 * MiB // 2))
        doomed = blobs_of(fs, b"f")
        (mnt / "f").unlink()
        absent = shared_network.node_ids[0]
        shared_network.stop(absent)
        try:
            report = gc(fs, exit_code=1)
            assert (report["released_blobs"], report["pending_blobs"]) == (0, len(doomed)), report
            assert absent in report["errors"][0]
            for blob in doomed:  # released everywhere else; kept listed, and its row kept, for the absent node
                assert stored_on(shared_network, blob) == [absent]
            with fs.db() as db:
                listed = {b for (b,) in db.execute("SELECT blob_id FROM gc_release WHERE attempts = 1")}
                rows = {b for (b,) in db.execute("SELECT blob_id FROM blobs")}
            assert listed == doomed and doomed <= rows
            assert "not yet released on every node" in run([WALRUSFS, "status", str(mnt)], fs.env).stdout
        finally:
            shared_network.start(absent)
        report = gc(fs)
        assert (report["released_blobs"], report["pending_blobs"]) == (len(doomed), 0), report
        assert all(stored_on(shared_network, blob) == [] for blob in doomed)
