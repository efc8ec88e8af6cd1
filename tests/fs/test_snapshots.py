"""Metadata on the network: a filesystem restored from nothing but its key and the committee file.

Real mounts over a real 7-node network. The metadata snapshot is published at unmount (and when
asked); its root record lives on the nodes; a restore on a machine with no local state rebuilds the
tree bit for bit, and older snapshots can be mounted read-only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import httpx
from fs_harness import WALRUSFS, Filesystem, mounted, run, status

from walrusfs.keys import load_key
from walrusfs.roots import RootRecord, fs_id_of_key


def full_tree(root: Path) -> dict[str, tuple]:
    """Everything a restore must bring back: names, kinds, modes, owners, sizes, times, link counts,
    extended attributes, symlink targets and contents."""
    out: dict[str, tuple] = {}
    for directory, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(directory, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            xattrs = tuple(sorted((a, os.getxattr(path, a, follow_symlinks=False))
                                  for a in os.listxattr(path, follow_symlinks=False)))
            common = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, xattrs)
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path), *common)
            elif path.is_dir():
                out[rel] = ("dir", *common)
            else:
                out[rel] = ("file", st.st_size, st.st_nlink, hashlib.blake2b(path.read_bytes()).hexdigest(), *common)
    return out


def build_tree(root: Path) -> None:
    (root / "docs" / "deep" / "er").mkdir(parents=True)
    for i in range(40):
        (root / "docs" / f"note-{i}.txt").write_text(f"note {i}\n" * (i + 1))
    (root / "docs" / "deep" / "er" / "big.bin").write_bytes(os.urandom(3 << 20) + b"tail")
    (root / "empty").write_bytes(b"")
    sparse = root / "sparse"
    with open(sparse, "wb") as handle:
        handle.seek(5 << 20)
        handle.write(b"end")
    os.link(root / "docs" / "note-1.txt", root / "hardlink")
    os.symlink("docs/note-2.txt", root / "symlink")
    os.setxattr(root / "docs" / "note-3.txt", "user.origin", b"restored?")
    os.chmod(root / "docs" / "note-4.txt", 0o600)
    os.chown(root / "docs" / "note-5.txt", 1234, 5678)
    os.utime(root / "docs" / "note-6.txt", ns=(1_000_000_000_123, 1_500_000_000_456))


def wipe_local_state(fs: Filesystem, keep_key_at: Path) -> None:
    shutil.copy(fs.state / "fs.key", keep_key_at)
    shutil.rmtree(fs.state)


def restore_args(fs: Filesystem, key: Path) -> list[str]:
    return ["--key", str(key), "--committee", str(fs.network.committee_path),
            "--writer-key", str(fs.network.writer_key_path)]


def test_a_filesystem_comes_back_from_the_network_with_only_its_key(shared_network, make_fs, tmp_path):
    fs = make_fs(shared_network, blob_size_mib=4)
    with mounted(fs, tmp_path / "mnt") as mnt:
        build_tree(mnt)
        before = full_tree(mnt)
    wipe_local_state(fs, tmp_path / "fs.key")
    assert not fs.state.exists()

    result = fs.mount(tmp_path / "mnt", *restore_args(fs, tmp_path / "fs.key"))
    try:
        assert "restoring it from the network" in result.stderr
        assert full_tree(tmp_path / "mnt") == before
    finally:
        fs.umount(tmp_path / "mnt")
    fsck = run([WALRUSFS, "fsck", fs.name, "--json"], fs.env, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_restore_refuses_a_key_the_network_has_no_snapshot_for(shared_network, make_fs, tmp_path):
    fs = make_fs(shared_network, mkfs=False)
    (tmp_path / "stranger.key").write_text((Path(shared_network.writer_key_path)).read_text())
    result = run([WALRUSFS, "restore", fs.name, *restore_args(fs, tmp_path / "stranger.key")], fs.env, check=False)
    assert result.returncode != 0
    assert "hold no snapshot" in result.stderr
    assert not (fs.state / "fs.toml").exists()


def node_root_file(network, node: int, fs_id: str) -> Path:
    return Path(network.root) / f"node-{node}" / "data" / "roots" / f"{fs_id}.json"


def test_a_stale_or_corrupted_root_record_on_some_nodes_does_not_win(shared_network, make_fs, tmp_path):
    fs = make_fs(shared_network, blob_size_mib=4)
    fs_id = fs_id_of_key(load_key(fs.state / "fs.key"))
    with mounted(fs, tmp_path / "mnt") as mnt:
        (mnt / "first").write_text("one")
        run([WALRUSFS, "snapshot", str(mnt)], fs.env)
        stale = node_root_file(shared_network, 0, fs_id).read_bytes()
        assert RootRecord.from_json(stale).seq == status(mnt)["snapshot"]["seq"]
        (mnt / "second").write_text("two")
    latest = RootRecord.from_json(node_root_file(shared_network, 0, fs_id).read_bytes())
    assert latest.seq > RootRecord.from_json(stale).seq

    # Two nodes roll back to the old (validly signed) record; a third holds a forged newer one.
    node_root_file(shared_network, 1, fs_id).write_bytes(stale)
    node_root_file(shared_network, 2, fs_id).write_bytes(stale)
    forged = json.loads(stale)
    forged["seq"] = latest.seq + 100
    node_root_file(shared_network, 3, fs_id).write_bytes(json.dumps(forged).encode())
    answer = httpx.get(f"{shared_network.url(3)}/v1/roots/{fs_id}")
    assert answer.status_code == 404  # the node checks the signature of what it serves

    wipe_local_state(fs, tmp_path / "fs.key")
    fs.mount(tmp_path / "mnt", *restore_args(fs, tmp_path / "fs.key"))
    try:
        assert (tmp_path / "mnt" / "second").read_text() == "two"
    finally:
        fs.umount(tmp_path / "mnt")


def test_nodes_refuse_root_records_that_would_roll_back_or_are_not_signed_by_the_filesystem(
        shared_network, make_fs, tmp_path):
    from walrusfs.keys import generate_key
    from walrusfs.protocol import sign_request
    from walrusfs.redstuff import BlobId

    key, other = generate_key(), generate_key()
    fs_id = fs_id_of_key(key)
    url = f"{shared_network.url(0)}/v1/roots/{fs_id}"
    path = f"/v1/roots/{fs_id}"

    def put(record: RootRecord | bytes, signed: bool = True) -> httpx.Response:
        body = record if isinstance(record, bytes) else record.to_json()
        headers = ({"Authorization": sign_request(shared_network.writer_key, "PUT", path, shared_network.info(0),
                                                  body)} if signed else {})
        return httpx.put(url, content=body, headers=headers)

    blob = BlobId(bytes(32))
    assert httpx.get(url).status_code == 404
    assert put(RootRecord.create(key, 5, blob, 1), signed=False).status_code == 401
    assert put(RootRecord.create(key, 5, blob, 1)).status_code == 201
    assert put(RootRecord.create(key, 5, blob, 1)).status_code == 200  # the same again: idempotent
    assert put(RootRecord.create(key, 4, blob, 2)).status_code == 409  # a rollback
    assert put(RootRecord.create(key, 5, blob, 3)).status_code == 409  # same number, other content
    assert put(RootRecord.create(other, 9, blob, 1)).status_code == 422  # another key's record
    assert put(b"{not json").status_code == 422
    assert put(RootRecord.create(key, 6, blob, 4)).status_code == 201
    assert RootRecord.from_json(httpx.get(url).content).seq == 6


def test_an_older_snapshot_mounts_read_only_with_the_older_tree(shared_network, make_fs, tmp_path):
    fs = make_fs(shared_network, blob_size_mib=4)
    with mounted(fs, tmp_path / "mnt") as mnt:
        (mnt / "kept.txt").write_text("version one")
        (mnt / "deleted-by-mistake.txt").write_bytes(b"precious" * 1000)
        run([WALRUSFS, "snapshot", str(mnt)], fs.env)
        old_seq = status(mnt)["snapshot"]["seq"]
        (mnt / "kept.txt").write_text("version two")
        (mnt / "deleted-by-mistake.txt").unlink()
        (mnt / "new.txt").write_text("later")
    listing = run([WALRUSFS, "snapshots", fs.name, "--json"], fs.env)
    seqs = [entry["seq"] for entry in json.loads(listing.stdout)]
    assert old_seq in seqs and max(seqs) > old_seq

    old = tmp_path / "old"
    with mounted(fs, old, "-o", f"snapshot={old_seq}"):
        assert sorted(p.name for p in old.iterdir()) == ["deleted-by-mistake.txt", "kept.txt"]
        assert (old / "kept.txt").read_text() == "version one"
        assert (old / "deleted-by-mistake.txt").read_bytes() == b"precious" * 1000
        try:
            (old / "kept.txt").write_text("no")
            raise AssertionError("an old snapshot must be read-only")
        except OSError:
            pass
    with mounted(fs, tmp_path / "mnt") as mnt:  # the live tree is untouched by all this
        assert (mnt / "kept.txt").read_text() == "version two"
        assert not (mnt / "deleted-by-mistake.txt").exists()


def test_snapshots_are_incremental_and_skipped_when_nothing_changed(shared_network, make_fs, tmp_path):
    fs = make_fs(shared_network, blob_size_mib=4)
    with mounted(fs, tmp_path / "mnt") as mnt:
        for i in range(300):  # a database of a few MiB: metadata of 300 files with 8 KiB attributes
            (mnt / f"f{i:05d}").write_bytes(b"x")
            os.setxattr(mnt / f"f{i:05d}", "user.bulk", os.urandom(8192))
        run([WALRUSFS, "snapshot", str(mnt)], fs.env)
        first = status(mnt)["snapshot"]
        (mnt / "one-more").write_bytes(b"y")
        run([WALRUSFS, "snapshot", str(mnt)], fs.env)
        second = status(mnt)["snapshot"]
    assert second["seq"] == first["seq"] + 1
    # Only the segments that changed are stored again.
    assert second["uploaded_bytes"] < first["uploaded_bytes"] / 2, (first, second)
    seq_after_unmount = json.loads((fs.state / "snapshot.json").read_text())["seq"]
    with mounted(fs, tmp_path / "mnt"):
        pass  # mounted and unmounted without a change
    assert json.loads((fs.state / "snapshot.json").read_text())["seq"] == seq_after_unmount


def test_snapshots_are_taken_periodically_while_the_tree_changes(shared_network, make_fs, tmp_path):
    fs = make_fs(shared_network, mkfs=False)
    run([WALRUSFS, "mkfs", fs.name, "--committee", str(shared_network.committee_path), "--writer-key",
         str(shared_network.writer_key_path), "--snapshot-interval", "1"], fs.env)
    with mounted(fs, tmp_path / "mnt") as mnt:
        (mnt / "a").write_text("periodic")
        deadline = time.monotonic() + 60
        while status(mnt)["snapshot"]["seq"] is None and time.monotonic() < deadline:
            time.sleep(0.2)
        first = status(mnt)["snapshot"]["seq"]
        assert first is not None, "no periodic snapshot within 60 s"
        time.sleep(3)  # nothing changes: no new snapshot
        assert status(mnt)["snapshot"]["seq"] == first
        (mnt / "b").write_text("more")
        while status(mnt)["snapshot"]["seq"] == first and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status(mnt)["snapshot"]["seq"] == first + 1


def test_a_snapshot_without_a_quorum_fails_loudly_and_the_next_one_catches_up(shared_network, make_fs, tmp_path):
    fs = make_fs(shared_network, blob_size_mib=4)
    mnt = tmp_path / "mnt"
    with mounted(fs, mnt):
        (mnt / "data").write_bytes(os.urandom(100_000))
        os.sync()
        run([WALRUSFS, "snapshot", str(mnt)], fs.env)
        before = status(mnt)["snapshot"]["seq"]
        shared_network.stop(0, 1, 2)  # 4 of 7 nodes left: no certificate, no root record quorum
        try:
            (mnt / "made-while-down").mkdir()
            failed = run([WALRUSFS, "snapshot", str(mnt)], fs.env, check=False, timeout=300)
            assert failed.returncode != 0
            assert "no snapshot published" in failed.stderr
            assert status(mnt)["snapshot"]["seq"] == before
            assert status(mnt)["snapshot"]["last_error"]
            result = fs.umount(mnt, timeout=300)  # the data is certified: unmounting still works, with a warning
            assert "failed" in result.stderr and "Unmounting anyway" in result.stderr
        finally:
            shared_network.start(0, 1, 2)  # the network is shared: whatever happened, every node runs again
    with mounted(fs, mnt):
        assert (mnt / "made-while-down").is_dir()
    assert json.loads((fs.state / "snapshot.json").read_text())["seq"] > before
    wipe_local_state(fs, tmp_path / "fs.key")
    fs.mount(mnt, *restore_args(fs, tmp_path / "fs.key"))
    try:
        assert (mnt / "made-while-down").is_dir()
    finally:
        fs.umount(mnt)
