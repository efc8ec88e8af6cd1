"""Encryption through a real mount on real nodes: nodes store nothing that reveals a file's content
or name; tampered ciphertext is an EIO, never wrong bytes; identical files are still stored once;
filesystems made before encryption, or with --no-encryption, keep working (docs/encryption.md)."""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

import pytest
from fs_harness import WALRUSFS, mounted, run, status
from network import LocalNetwork, down

from walrusfs.fs.encryption import HEADER_SIZE

pytestmark = pytest.mark.usefixtures("shared_network")


@pytest.fixture(scope="module")
def shared_network(module_network: LocalNetwork) -> LocalNetwork:
    """A network of this module's own: a test greps every file on the nodes' disks, and the session's
    network would make that a read of everything every module before stored."""
    return module_network


def files_containing(root: Path, needle: bytes) -> list[Path]:
    """Every file under ``root`` whose bytes contain ``needle`` (what `grep -r` of a node's disk finds)."""
    found = []
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            try:
                if needle in path.read_bytes():
                    found.append(path)
            except OSError:
                continue
    return found


def test_nodes_hold_neither_the_content_nor_the_names(make_fs, shared_network: LocalNetwork, tmp_path: Path) -> None:
    marker = f"a-sentence-only-this-test-wrote-{secrets.token_hex(8)}".encode()
    name = f"secret-report-{secrets.token_hex(6)}.txt"
    fs = make_fs(shared_network, "sealed")
    with mounted(fs, tmp_path / "mnt") as mnt:
        assert status(mnt)["encryption"] == "aes-256-gcm-v1"
        (mnt / name).write_bytes(b"intro\n" + marker * 50 + b"\n" + os.urandom(200_000))
        (mnt / f"dir-{name}").mkdir()
    # Unmounted: the blocks are certified and the metadata snapshot (names, sizes) is on the nodes.
    assert files_containing(shared_network.root, marker) == []
    assert files_containing(shared_network.root, name.encode()) == []
    # The same on a filesystem made with --no-encryption: the check above can see a plaintext.
    plain = make_fs(shared_network, "public", mkfs_args=("--no-encryption",))
    with mounted(plain, tmp_path / "plain") as mnt:
        assert status(mnt)["encryption"] == "none"
        (mnt / "public.txt").write_bytes(marker * 50)
    assert files_containing(shared_network.root, marker) != []


def test_tampered_ciphertext_is_an_eio_never_wrong_bytes(make_fs, shared_network: LocalNetwork,
                                                          tmp_path: Path) -> None:
    """A cached blob whose ciphertext was changed is refused and dropped. While the nodes cannot
    serve it again the read is an EIO (never the wrong bytes); once they can, it reads right."""
    fs = make_fs(shared_network, "tamper")
    data = os.urandom(300_000)
    with mounted(fs, tmp_path / "mnt") as mnt:
        (mnt / "file").write_bytes(data)
    (blob_id, offset), = fs.db().execute(
        "SELECT b.blob_id, k.offset FROM blocks k JOIN blobs b ON b.id = k.blob").fetchall()
    cached = fs.cache_dir / blob_id
    assert cached.exists()  # kept after its upload (cache_after_upload)
    with open(cached, "r+b") as handle:  # flip one ciphertext byte of the block
        handle.seek(offset + HEADER_SIZE + 1000)
        byte = handle.read(1)
        handle.seek(offset + HEADER_SIZE + 1000)
        handle.write(bytes([byte[0] ^ 0x40]))
    with mounted(fs, tmp_path / "mnt") as mnt:
        with down(shared_network, *shared_network.node_ids[:5]):  # too few left to read a blob
            with pytest.raises(OSError) as raised:
                (mnt / "file").read_bytes()
            assert raised.value.errno == errno.EIO
        assert f"from cached blob {blob_id}: sealed block does not authenticate" in fs.log_tail()
        assert not cached.exists()  # dropped: the next read fetches a verified copy
        assert (mnt / "file").read_bytes() == data


def test_identical_files_are_still_stored_once(make_fs, shared_network: LocalNetwork, tmp_path: Path) -> None:
    fs = make_fs(shared_network, "dedup")
    data = os.urandom(3 << 20)  # three 1 MiB blocks
    with mounted(fs, tmp_path / "mnt") as mnt:
        (mnt / "a").write_bytes(data)
        (mnt / "b").write_bytes(data)
        os.sync()
    blocks, references = fs.db().execute("SELECT COUNT(*), SUM(refcount) FROM blocks").fetchone()
    assert (blocks, references) == (3, 6)


def test_a_filesystem_made_before_encryption_still_mounts_reads_writes_and_restores(
        make_fs, shared_network: LocalNetwork, tmp_path: Path) -> None:
    """Its fs.toml has no `encryption` line (the old code did not write one), its blocks are stored as
    they are, and its snapshots are plain: the unencrypted path is byte for byte what the old code did."""
    fs = make_fs(shared_network, "old", mkfs_args=("--no-encryption",))
    settings = fs.state / "fs.toml"
    old_text = "".join(line for line in settings.read_text().splitlines(keepends=True)
                       if not line.startswith("encryption"))
    settings.write_text(old_text)
    first, second = os.urandom(100_000), os.urandom(50_000)
    with mounted(fs, tmp_path / "mnt") as mnt:
        assert status(mnt)["encryption"] == "none"
        (mnt / "first").write_bytes(first)
    with mounted(fs, tmp_path / "mnt") as mnt:
        assert (mnt / "first").read_bytes() == first
        (mnt / "second").write_bytes(second)
    key = tmp_path / "fs.key"
    key.write_bytes((fs.state / "fs.key").read_bytes())
    restored = make_fs(shared_network, "old-restored", mkfs=False)
    run([WALRUSFS, "restore", restored.name, "--key", str(key), "--committee", str(shared_network.committee_path),
         "--writer-key", str(shared_network.writer_key_path)], restored.env)
    with mounted(restored, tmp_path / "restored") as mnt:
        assert (mnt / "first").read_bytes() == first
        assert (mnt / "second").read_bytes() == second
