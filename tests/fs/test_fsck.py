"""``walrusfs fsck``: one check per invariant of schema.py. Each test damages an unmounted filesystem
the way a crash or a bug would (sqlite3 on metadata.db, files in staging/, the nodes' data) and
asserts that fsck names the problem, repairs what it safely can (exit 1) and reports the rest (exit
4), that a second run is clean (exit 0), and that the filesystem then mounts and reads correctly.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from fs_harness import WALRUSFS, Filesystem, mounted, run

from walrusfs.fs.config import FsState
from walrusfs.fs.encryption import Purpose, contents_of
from walrusfs.keys import load_key
from walrusfs.roots import fs_id_of_key

MiB = 1 << 20
ROOT = 1


def contents() -> dict[str, bytes]:
    rng = random.Random(11)
    return {
        "big.bin": rng.randbytes(2 * MiB + 300_000),  # three blocks
        "docs/a.txt": b"alpha\n" * 100,
        "docs/b.txt": rng.randbytes(5000),
        "dir/sub/c.bin": rng.randbytes(MiB + 17),
    }


def populated(make_fs: Callable[..., Filesystem], network, tmp_path: Path) -> tuple[Filesystem, Path]:
    """A filesystem with a few files, unmounted with everything certified and a snapshot published."""
    fs = make_fs(network, blob_size_mib=4)
    mp = (tmp_path / "mnt").resolve()
    with mounted(fs, mp):
        for name, data in contents().items():
            (mp / name).parent.mkdir(parents=True, exist_ok=True)
            (mp / name).write_bytes(data)
    return fs, mp


def fsck(fs: Filesystem, *args: str) -> tuple[int, dict]:
    result = run([WALRUSFS, "fsck", fs.name, "--json", *args], fs.env, check=False, timeout=180)
    try:
        return result.returncode, json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"no JSON report ({result.returncode}): {result.stdout}\n{result.stderr}") from None


def damage(fs: Filesystem, *statements: tuple[str, tuple]) -> None:
    conn = sqlite3.connect(fs.db_path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for sql, params in statements:
            conn.execute(sql, params)
        conn.execute("COMMIT")
    finally:
        conn.close()


def query(fs: Filesystem, sql: str, params: tuple = ()) -> list[tuple]:
    with fs.db() as db:
        return db.execute(sql, params).fetchall()


def inode_of(fs: Filesystem, path: str) -> int:
    inode = ROOT
    for part in path.split("/"):
        [(inode,)] = query(fs, "SELECT inode FROM dirents WHERE parent=? AND name=?", (inode, part.encode()))
    return inode


def blocks_of(fs: Filesystem, path: str) -> list[int]:
    return [b for (b,) in query(fs, "SELECT block FROM inode_blocks WHERE inode=? ORDER BY blockno",
                                (inode_of(fs, path),))]


def snapshot_seq(fs: Filesystem) -> int:
    return json.loads((fs.state / "snapshot.json").read_text())["seq"]


def findings(report: dict, check: str) -> list[dict]:
    return [f for f in report["findings"] if f["check"] == check]


def assert_finding(report: dict, check: str, *fragments: str, repaired: bool = True) -> None:
    matching = [f for f in findings(report, check) if all(x in f["message"] for x in fragments)]
    assert matching, f"no {check} finding mentioning {fragments}: {report['findings']}"
    assert all(f["repaired"] == repaired for f in matching), matching


def assert_clean_and_mounts(fs: Filesystem, mp: Path, expected: dict[str, bytes]) -> None:
    """A second fsck is clean; the filesystem mounts and reads ``expected`` from the network; the
    repaired metadata is in the snapshot the next unmount publishes."""
    code, report = fsck(fs)
    assert code == 0 and report["clean"], f"second fsck not clean: {report}"
    seq = snapshot_seq(fs)
    fs.clear_cache()
    with mounted(fs, mp):
        found = {str(p.relative_to(mp)): p.read_bytes() for p in mp.rglob("*") if p.is_file()}
        assert found.keys() == expected.keys()
        for name, data in expected.items():
            assert found[name] == data, f"{name} does not read back correctly"
    assert snapshot_seq(fs) > seq, "the unmount after a repair published no snapshot of the repaired metadata"


# --- the local invariants ----------------------------------------------------------------------------


def test_wrong_link_count_is_corrected(shared_network, make_fs, tmp_path: Path) -> None:
    fs, mp = populated(make_fs, shared_network, tmp_path)
    damage(fs, ("UPDATE inodes SET refcount=4 WHERE id=?", (inode_of(fs, "docs/a.txt"),)))
    code, report = fsck(fs)
    assert code == 1
    assert_finding(report, "I1", "/docs/a.txt", "has 1 names", "said 4")
    assert_clean_and_mounts(fs, mp, contents())
    assert query(fs, "SELECT refcount FROM inodes WHERE id=?", (inode_of(fs, "docs/a.txt"),)) == [(1,)]


def test_an_entry_naming_a_missing_inode_is_removed(shared_network, make_fs, tmp_path: Path) -> None:
    fs, mp = populated(make_fs, shared_network, tmp_path)
    damage(fs, ("INSERT INTO dirents (parent, name, inode) VALUES (?, ?, 999999)", (inode_of(fs, "docs"), b"ghost")))
    code, report = fsck(fs)
    assert code == 1
    assert_finding(report, "I2", "ghost", "999999", "removed")
    assert_clean_and_mounts(fs, mp, contents())


def test_an_inode_no_directory_names_is_deleted_with_its_blocks(shared_network, make_fs, tmp_path: Path) -> None:
    """What a file unlinked while open leaves when the daemon dies: refcount 0, blocks still mapped."""
    fs, mp = populated(make_fs, shared_network, tmp_path)
    inode, blocks = inode_of(fs, "dir/sub/c.bin"), blocks_of(fs, "dir/sub/c.bin")
    damage(fs, ("DELETE FROM dirents WHERE inode=?", (inode,)), ("UPDATE inodes SET refcount=0 WHERE id=?", (inode,)))
    code, report = fsck(fs)
    assert code == 1
    assert_finding(report, "I1", "1 inodes no directory names", "deleted")
    assert_finding(report, "I3", "used by no file")  # its blocks are released too
    assert query(fs, "SELECT COUNT(*) FROM inodes WHERE id=?", (inode,)) == [(0,)]
    assert query(fs, f"SELECT COUNT(*) FROM blocks WHERE id IN ({','.join('?' * len(blocks))})",
                 tuple(blocks)) == [(0,)]
    expected = contents()
    del expected["dir/sub/c.bin"]
    assert_clean_and_mounts(fs, mp, expected)


def test_a_block_mapped_past_the_end_of_its_file_is_released(shared_network, make_fs, tmp_path: Path) -> None:
    fs, mp = populated(make_fs, shared_network, tmp_path)
    stray = blocks_of(fs, "big.bin")[1]
    damage(fs, ("INSERT INTO inode_blocks (inode, blockno, block) VALUES (?, 7, ?)",
                (inode_of(fs, "docs/b.txt"), stray)),
           ("UPDATE blocks SET refcount=refcount+1 WHERE id=?", (stray,)))
    code, report = fsck(fs)
    assert code == 1
    assert_finding(report, "I7", "1 blocks lie past the end", "released")
    assert query(fs, "SELECT refcount FROM blocks WHERE id=?", (stray,)) == [(1,)]
    assert_clean_and_mounts(fs, mp, contents())


def test_a_wrong_block_reference_count_is_corrected(shared_network, make_fs, tmp_path: Path) -> None:
    """Too high, a block would never be freed: corrected, deleting its file frees it."""
    fs, mp = populated(make_fs, shared_network, tmp_path)
    block = blocks_of(fs, "big.bin")[2]
    damage(fs, ("UPDATE blocks SET refcount=3 WHERE id=?", (block,)))
    code, report = fsck(fs)
    assert code == 1
    assert_finding(report, "I3", f"block {block} is used 1 times, its count said 3")
    assert_clean_and_mounts(fs, mp, contents())
    with mounted(fs, mp):
        (mp / "big.bin").unlink()
    assert query(fs, "SELECT COUNT(*) FROM blocks WHERE id=?", (block,)) == [(0,)]


def test_a_wrong_blob_reference_count_is_corrected(shared_network, make_fs, tmp_path: Path) -> None:
    fs, mp = populated(make_fs, shared_network, tmp_path)
    [(blob, blob_id, count)] = query(fs, "SELECT id, blob_id, refcount FROM blobs WHERE refcount > 0 LIMIT 1")
    damage(fs, ("UPDATE blobs SET refcount=refcount+5 WHERE id=?", (blob,)))
    code, report = fsck(fs)
    assert code == 1
    assert_finding(report, "I6", blob_id, f"holds {count} live blocks")
    assert_clean_and_mounts(fs, mp, contents())


# --- staged blocks and the staging directory ---------------------------------------------------------


def unstage_to(fs: Filesystem, block: int, data: bytes) -> None:
    """Turn a certified block back into the state of a staged one (blob NULL, its bytes, as the
    filesystem stores them, in staging/<id>): what a crash before its upload leaves."""
    [(blob,)] = query(fs, "SELECT blob FROM blocks WHERE id=?", (block,))
    damage(fs, ("UPDATE blocks SET blob=NULL, offset=NULL WHERE id=?", (block,)),
           ("UPDATE blobs SET refcount=refcount-1 WHERE id=?", (blob,)))
    settings = FsState(fs.state).load_settings()
    contents = contents_of(settings.encryption, load_key(fs.state / "fs.key"))
    (fs.staging_dir / str(block)).write_bytes(contents.seal(data, Purpose.BLOCK))


@pytest.mark.parametrize("how", ["missing", "corrupt"])
def test_a_staged_block_without_its_bytes_is_named_and_becomes_a_hole(shared_network, make_fs, tmp_path: Path,
                                                                      how: str) -> None:
    fs, mp = populated(make_fs, shared_network, tmp_path)
    data = contents()["big.bin"]
    block = blocks_of(fs, "big.bin")[1]
    unstage_to(fs, block, data[MiB : 2 * MiB])
    code, report = fsck(fs, "--offline", "--dry-run")
    assert code == 0, f"a staged block with its file is a consistent state: {report}"
    staging = fs.staging_dir / str(block)
    if how == "missing":
        staging.unlink()  # a power loss before the file reached the disk
    else:
        staging.write_bytes(bytes(MiB))  # torn or rotted
    code, report = fsck(fs)
    assert code == 1
    assert_finding(report, "I4", f"block {block}", "/big.bin", "reads as zeros",
                   "staging file is gone" if how == "missing" else "does not match its hash")
    assert not staging.exists()
    expected = contents()
    expected["big.bin"] = data[:MiB] + bytes(MiB) + data[2 * MiB :]
    assert_clean_and_mounts(fs, mp, expected)


def test_a_staging_file_no_block_owns_is_removed(shared_network, make_fs, tmp_path: Path) -> None:
    """Written just before a crash, its transaction never committed (or left after its blob was
    certified)."""
    fs, mp = populated(make_fs, shared_network, tmp_path)
    orphan = fs.staging_dir / "987654"
    orphan.write_bytes(os.urandom(70_000))
    code, report = fsck(fs)
    assert code == 1
    assert_finding(report, "I4", "1 files in staging/ belong to no staged block", "removed")
    assert not orphan.exists()
    assert_clean_and_mounts(fs, mp, contents())


# --- with the nodes: certificates and the root record -----------------------------------------------


def test_a_tampered_certificate_is_renewed_from_the_nodes_or_reported_offline(shared_network, make_fs,
                                                                              tmp_path: Path) -> None:
    fs, mp = populated(make_fs, shared_network, tmp_path)
    [(blob, blob_id, certificate)] = query(
        fs, "SELECT id, blob_id, certificate FROM blobs WHERE refcount > 0 ORDER BY id LIMIT 1")
    tampered = json.loads(certificate)
    tampered["confirmations"] = tampered["confirmations"][:2]  # below n - f = 5 signatures
    damage(fs, ("UPDATE blobs SET certificate=? WHERE id=?", (json.dumps(tampered), blob)))

    code, report = fsck(fs, "--offline")
    assert code == 4
    assert_finding(report, "I5", blob_id, "no valid availability certificate", repaired=False)
    assert query(fs, "SELECT certificate FROM blobs WHERE id=?", (blob,)) == [(json.dumps(tampered),)]

    code, report = fsck(fs)
    assert code == 1
    assert_finding(report, "I5", blob_id, "certificate renewed from 7 node confirmations")
    assert len(json.loads(query(fs, "SELECT certificate FROM blobs WHERE id=?", (blob,))[0][0])["confirmations"]) == 7
    assert_clean_and_mounts(fs, mp, contents())


def node_root_files(fs: Filesystem) -> list[Path]:
    fs_id = fs_id_of_key(load_key(fs.state / "fs.key"))
    return [Path(fs.network.root) / node / "data" / "roots" / f"{fs_id}.json" for node in fs.network.node_ids]


def test_a_root_record_missing_on_the_network_is_published_again(shared_network, make_fs, tmp_path: Path) -> None:
    fs, mp = populated(make_fs, shared_network, tmp_path)
    records = node_root_files(fs)
    assert all(path.exists() for path in records)
    for path in records:  # every node lost it (wiped disks, a new committee...)
        path.unlink()
    code, report = fsck(fs)
    assert code == 1
    assert_finding(report, "snapshots", f"missing on the network, this machine published {snapshot_seq(fs)}",
                   "published again")
    assert sum(path.exists() for path in records) >= 5
    assert_clean_and_mounts(fs, mp, contents())


def test_a_first_snapshot_cut_short_after_publishing_is_not_another_machine(shared_network, make_fs,
                                                                            tmp_path: Path) -> None:
    """The first snapshot's root record reached the nodes, then the daemon died before writing down
    that it was published: snapshot.json still says 'none published, 1 attempted'. That is this
    machine's own record, not another writer's."""
    fs, mp = populated(make_fs, shared_network, tmp_path)
    assert snapshot_seq(fs) == 1
    state = json.loads((fs.state / "snapshot.json").read_text())
    (fs.state / "snapshot.json").write_text(json.dumps({**state, "seq": None, "created_ns": None, "manifest": None,
                                                        "attempted": 1, "up_to_date": False}))
    code, report = fsck(fs)
    assert code == 0, report
    with mounted(fs, mp):
        assert (mp / "docs" / "a.txt").read_bytes() == contents()["docs/a.txt"]
        (mp / "new").write_bytes(b"after the crash")
    assert snapshot_seq(fs) == 2
    code, report = fsck(fs)
    assert code == 0, report


# --- how fsck runs -----------------------------------------------------------------------------------


def test_dry_run_reports_and_changes_nothing(shared_network, make_fs, tmp_path: Path) -> None:
    fs, _ = populated(make_fs, shared_network, tmp_path)
    damage(fs, ("UPDATE inodes SET refcount=9 WHERE id=?", (inode_of(fs, "big.bin"),)),
           ("UPDATE blobs SET refcount=refcount+1", ()))
    (fs.staging_dir / "4242").write_bytes(b"left over")

    def everything() -> tuple:
        with fs.db() as db:
            dump = list(db.iterdump())
        return dump, sorted(os.listdir(fs.staging_dir)), (fs.state / "snapshot.json").read_bytes()

    before = everything()
    code, report = fsck(fs, "--dry-run")
    assert code == 4  # found, not repaired
    assert {f["check"] for f in report["findings"]} >= {"I1", "I6", "I4"}
    assert not any(f["repaired"] for f in report["findings"])
    assert everything() == before
    code, report = fsck(fs)
    assert code == 1
    code, report = fsck(fs)
    assert code == 0, report


def test_fsck_refuses_a_mounted_filesystem(shared_network, make_fs, tmp_path: Path) -> None:
    fs = make_fs(shared_network)
    with mounted(fs, tmp_path / "mnt") as mp:
        (mp / "f").write_bytes(b"x")
        result = run([WALRUSFS, "fsck", fs.name, "--json"], fs.env, check=False)
        assert result.returncode != 0 and not result.stdout, result
        assert "is mounted" in result.stderr and "unmount it first" in result.stderr
        assert (mp / "f").read_bytes() == b"x"


def sliver_files(fs: Filesystem, blob_id: str) -> dict[str, list[Path]]:
    out = {}
    for node in fs.network.node_ids:
        directory = Path(fs.network.root) / node / "data" / "blobs" / blob_id[:2] / blob_id
        out[node] = [p for p in directory.glob("p*.*") if p.suffix in (".primary", ".secondary")]
    return out


def test_deep_reads_every_blob_and_reports_one_that_cannot_be_read(shared_network, make_fs, tmp_path: Path) -> None:
    fs, _ = populated(make_fs, shared_network, tmp_path)
    blobs = [b for (b,) in query(fs, "SELECT blob_id FROM blobs WHERE refcount > 0")]
    manifest = json.loads((fs.state / "snapshot.json").read_text())["manifest"]
    result = run([WALRUSFS, "fsck", fs.name, "--deep"], fs.env, check=False, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checked: deep: every referenced blob readable and verified" in result.stdout
    total = int(result.stderr.rsplit("verifying blobs: ", 1)[1].split()[2])
    assert total >= len(blobs) + 1  # the data blobs, the snapshot's manifest and its segments
    assert manifest

    victim = blobs[0]
    slivers = sliver_files(fs, victim)
    assert all(slivers.values()), "every node should hold slivers of the blob"
    for node in fs.network.node_ids[:5]:  # only 2 of 7 nodes keep theirs: not enough to decode
        for path in slivers[node]:
            path.unlink()
    code, report = fsck(fs)
    assert code == 0, "without --deep, no blob is read"
    code, report = fsck(fs, "--deep")
    assert code == 4
    assert_finding(report, "deep", victim, "cannot be read back", repaired=False)
    assert [f["message"] for f in findings(report, "deep") if victim not in f["message"]] == []
    assert report["checks"][-1] == "deep: every referenced blob readable and verified"


def test_fsck_of_a_missing_filesystem_is_an_error(make_fs, shared_network) -> None:
    fs = make_fs(shared_network, name="nothing-here", mkfs=False)
    result = subprocess.run([WALRUSFS, "fsck", fs.name], env=fs.env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "not a walrusfs filesystem" in result.stderr


def test_a_wrong_directory_link_count_is_corrected(shared_network, make_fs, tmp_path: Path) -> None:
    fs, mp = populated(make_fs, shared_network, tmp_path)
    damage(fs, ("UPDATE inodes SET subdirs=7 WHERE id=?", (inode_of(fs, "dir"),)),
           ("UPDATE inodes SET subdirs=0 WHERE id=?", (ROOT,)))
    code, report = fsck(fs)
    assert code == 1
    assert_finding(report, "I10", "/dir", "holds 1 subdirectories", "said 7")
    assert_finding(report, "I10", "holds 2 subdirectories", "said 0")
    assert_clean_and_mounts(fs, mp, contents())
    assert query(fs, "SELECT subdirs FROM inodes WHERE id IN (?, ?) ORDER BY id", (ROOT, inode_of(fs, "dir"))) == [
        (2,), (1,)]


def test_acls_out_of_step_with_the_mode_are_repaired(shared_network, make_fs, tmp_path: Path) -> None:
    import struct

    def acl(*entries: tuple[int, int, int]) -> bytes:
        return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)

    undef = 0xFFFFFFFF
    fs, mp = populated(make_fs, shared_network, tmp_path)
    a, b, big, docs = (inode_of(fs, p) for p in ("docs/a.txt", "docs/b.txt", "big.bin", "docs"))
    extended = acl((1, 7, undef), (2, 4, 65534), (4, 4, undef), (0x10, 4, undef), (0x20, 0, undef))  # says 0740
    damage(fs, ("INSERT INTO xattrs (inode, name, value) VALUES (?, ?, ?)", (a, b"system.posix_acl_access", extended)),
           ("INSERT INTO xattrs (inode, name, value) VALUES (?, ?, ?)",
            (b, b"system.posix_acl_access", acl((1, 6, undef), (4, 4, undef), (0x20, 4, undef)))),
           ("INSERT INTO xattrs (inode, name, value) VALUES (?, ?, ?)", (big, b"system.posix_acl_access", b"junk")),
           ("INSERT INTO xattrs (inode, name, value) VALUES (?, ?, ?)", (big, b"system.posix_acl_default", extended)),
           ("INSERT INTO xattrs (inode, name, value) VALUES (?, ?, ?)", (docs, b"system.posix_acl_default", extended)))
    code, report = fsck(fs)
    assert code == 1
    assert_finding(report, "I11", "/docs/a.txt", "grants 740", "the mode 644", "in line with the mode")
    assert_finding(report, "I11", "/docs/b.txt", "says only what the mode says")
    assert_finding(report, "I11", "/big.bin", "not a valid ACL")
    assert_finding(report, "I11", "/big.bin", "default ACL on a non-directory")
    assert_clean_and_mounts(fs, mp, contents())
    stored = dict(query(fs, "SELECT inode || ':' || name, value FROM xattrs"))
    assert stored == {f"{a}:system.posix_acl_access": acl((1, 6, undef), (2, 4, 65534), (4, 4, undef),
                                                          (0x10, 4, undef), (0x20, 4, undef)),
                      f"{docs}:system.posix_acl_default": extended}
