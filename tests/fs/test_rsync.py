"""``rsync -aHAX`` of a realistic tree into the mount: afterwards, and after a remount that has to
read everything back from the network, rsync finds nothing to do and every byte and attribute is
the same."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from fs_harness import mounted, status
from tree_maker import describe_tree, diff_trees, make_source_tree

RSYNC = ["rsync", "-aHAX"]


def rsync_differences(source: Path, target: Path) -> list[str]:
    """What ``rsync -anciHAX`` (dry run, checksums, itemized) would still change."""
    result = subprocess.run([*RSYNC, "-nci", "--delete", f"{source}/", f"{target}/"],
                            capture_output=True, timeout=600)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return [line for line in result.stdout.decode(errors="backslashreplace").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, dict]:
    source = tmp_path_factory.mktemp("rsync-source") / "tree"
    total = make_source_tree(source, seed=42)
    return source, total, describe_tree(source)


@pytest.mark.slow
def test_rsync_tree_in_remount_and_compare(shared_network, make_fs, tmp_path: Path, source_tree) -> None:
    source, total, expected = source_tree
    files = sum(1 for e in expected.values() if "size" in e)
    assert files >= 2000 and 100 << 20 <= total <= 200 << 20
    fs = make_fs(shared_network)
    with mounted(fs, tmp_path / "mnt") as mp:
        target = mp / "copy"
        started = time.monotonic()
        result = subprocess.run([*RSYNC, f"{source}/", f"{target}/"], capture_output=True, timeout=600)
        copy_seconds = time.monotonic() - started
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        assert rsync_differences(source, target) == []
        problems = diff_trees(expected, describe_tree(target))
        assert not problems, problems

        started = time.monotonic()
        fs.umount(mp)
        umount_seconds = time.monotonic() - started
        fs.clear_cache()
        fs.mount(mp)
        assert status(mp)["cache_bytes"] == 0
        problems = diff_trees(expected, describe_tree(target))
        assert not problems, problems
        assert status(mp)["cache_misses"] > 0
        assert rsync_differences(source, target) == []
        # rsync again for real: nothing to transfer
        result = subprocess.run([*RSYNC, "--stats", f"{source}/", f"{target}/"], capture_output=True, timeout=600)
        assert result.returncode == 0
        assert b"Number of regular files transferred: 0" in result.stdout
    print(f"rsync of {files} files, {total / 2**20:.0f} MiB: {copy_seconds:.1f} s; umount {umount_seconds:.1f} s")
