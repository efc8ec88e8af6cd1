"""Sharing a filesystem read-only with a capability (docs/encryption.md): one string lets another
machine, holding only the committee file, mount and read every byte, and nothing more."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from fs_harness import WALRUSFS, Filesystem, mounted, run, tree_snapshot
from network import LocalNetwork

pytestmark = pytest.mark.usefixtures("shared_network")


def share(fs: Filesystem, *extra: str) -> str:
    return run([WALRUSFS, "share", fs.name, *extra], fs.env).stdout.strip()


def reader(network: LocalNetwork, capability: str, home: Path) -> Filesystem:
    """Another machine: its own home with no key of the filesystem and no writer key."""
    return Filesystem(capability, home, network)


def populate(root: Path) -> None:
    (root / "docs").mkdir()
    (root / "docs" / "report.txt").write_bytes(b"findings\n" * 1000)
    (root / "data.bin").write_bytes(os.urandom(1_500_000))
    (root / "link").symlink_to("docs/report.txt")


def test_a_capability_mounts_the_filesystem_read_only_anywhere(make_fs, shared_network: LocalNetwork,
                                                               tmp_path: Path) -> None:
    owner = make_fs(shared_network, "owned")
    with mounted(owner, tmp_path / "owner") as mnt:
        populate(mnt)
        expected = tree_snapshot(mnt)
    capability = share(owner)
    assert capability.startswith("walrusfs-ro1:")

    other = reader(shared_network, capability, tmp_path / "elsewhere")
    committee = ("--committee", str(shared_network.committee_path))
    with mounted(other, tmp_path / "shared", *committee) as mnt:
        assert tree_snapshot(mnt) == expected
        for attempt in (lambda: (mnt / "new").write_bytes(b"x"), lambda: (mnt / "data.bin").unlink(),
                        lambda: (mnt / "docs" / "report.txt").open("ab")):
            with pytest.raises(OSError) as raised:
                attempt()
            assert raised.value.errno == errno.EROFS
        mounts = Path("/proc/mounts").read_text()
        assert capability not in mounts and capability[13:40] not in mounts  # the secret is not published
    # The reader's machine holds no key of the filesystem and no writer key, only the capability.
    held = [p.name for p in (tmp_path / "elsewhere").rglob("*") if p.is_file()]
    assert "fs.key" not in held and "writer.key" not in held and "read.cap" in held

    # The owner writes on; the next mount of the capability sees the newest snapshot.
    with mounted(owner, tmp_path / "owner") as mnt:
        (mnt / "later.txt").write_bytes(b"written after sharing")
    with mounted(other, tmp_path / "shared", *committee) as mnt:
        assert (mnt / "later.txt").read_bytes() == b"written after sharing"


def test_a_capability_can_pin_one_snapshot(make_fs, shared_network: LocalNetwork, tmp_path: Path) -> None:
    owner = make_fs(shared_network, "pinned")
    with mounted(owner, tmp_path / "owner") as mnt:
        (mnt / "v").write_bytes(b"version one")
    first = json.loads(run([WALRUSFS, "snapshots", owner.name, "--json"], owner.env).stdout)[-1]["seq"]
    pinned = share(owner, "--snapshot", str(first))
    with mounted(owner, tmp_path / "owner") as mnt:
        (mnt / "v").write_bytes(b"version two")
    other = reader(shared_network, pinned, tmp_path / "elsewhere")
    with mounted(other, tmp_path / "shared", "--committee", str(shared_network.committee_path)) as mnt:
        assert (mnt / "v").read_bytes() == b"version one"


@pytest.mark.parametrize(("damage", "complaint"), [
    (lambda cap: cap[:-4], "truncated"),
    (lambda cap: cap[:-2] + ("a" if cap[-2] != "a" else "b") + cap[-1], "checksum"),
])
def test_a_wrong_capability_is_refused_before_anything_is_mounted(make_fs, shared_network: LocalNetwork,
                                                                  tmp_path: Path, damage, complaint: str) -> None:
    owner = make_fs(shared_network, "refused")
    capability = damage(share(owner))
    mountpoint = tmp_path / "shared"
    mountpoint.mkdir()
    result = run([WALRUSFS, "mount", capability, str(mountpoint), "--committee", str(shared_network.committee_path)],
                 owner.env, check=False)
    assert result.returncode != 0
    assert complaint in result.stderr
    assert not os.path.ismount(mountpoint)
