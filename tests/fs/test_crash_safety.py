"""Crash safety: kill -9 of the mount daemon at any instant, then mount again.

Everything fsync returned for is intact (and, the machine having stayed up, everything close()
returned for); staged data not yet uploaded is found and uploaded; nothing half-written is visible
as other data; the mount point the dead daemon left is detached by the next ``walrusfs mount``; and
``walrusfs fsck`` finds nothing to repair after the remount's own check. The crash states and what
repairs each: docs/crash-safety.md.

The kill comes at a random instant of a running workload (crash_writer.py, a process of its own);
the seed is in every failure message, and CRASH_SEED=<n> replays a run.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from crash_writer import (
    RENAME_BATCH,
    RENAME_FILES,
    apply_rename,
    copy_file,
    rename_content,
    rename_ops,
    rename_setup,
)
from fs_harness import WALRUSFS, Filesystem, is_mounted, mounted, run, status, wait_gone

MiB = 1 << 20
WRITER = str(Path(__file__).with_name("crash_writer.py"))
SEED = int(os.environ.get("CRASH_SEED", time.time_ns() % 1_000_000))


class Workload:
    """crash_writer.py running on a mount, its output lines collected as they come."""

    def __init__(self, mode: str, directory: Path, seed: int) -> None:
        self.process = subprocess.Popen([sys.executable, WRITER, mode, str(directory), str(seed)],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.first_line = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            self.first_line.set()
        self.first_line.set()

    def finish(self, timeout: float = 30.0) -> list[str]:
        """Wait for the writer to notice the dead daemon and exit (killed by its pid if it hangs)."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"the writer did not stop within {timeout:.0f} s of the daemon's death") from None
        finally:
            self.reader.join(10)
        return self.lines


def kill_daemon(fs: Filesystem, mountpoint: Path) -> int:
    pid = int(status(mountpoint)["pid"])
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid, 10), f"mount daemon {pid} survived SIGKILL"
    fs.mounts.pop(mountpoint.resolve(), None)
    return pid


def staged_blocks(fs: Filesystem) -> int:
    with fs.db() as db:
        return db.execute("SELECT COUNT(*) FROM blocks WHERE blob IS NULL").fetchone()[0]


def remount_after_crash(fs: Filesystem, mountpoint: Path) -> None:
    """The dead daemon's mount point answers ENOTCONN; ``walrusfs mount`` detaches it, runs fsck
    (the daemon's marker says the last mount did not end cleanly) and serves again."""
    with pytest.raises(OSError) as dead:
        os.statvfs(mountpoint)  # a stat() may still be answered from the kernel's attribute cache
    assert dead.value.errno == 107  # ENOTCONN
    log_before = len((fs.state / "mount.log").read_bytes())
    # Not fs.mount(): its mkdir would stat the dead mount point first.
    result = run([WALRUSFS, "mount", fs.name, str(mountpoint)], fs.env, timeout=120, check=False)
    if is_mounted(mountpoint):
        fs.mounts[mountpoint] = int(status(mountpoint)["pid"])
    assert result.returncode == 0, f"{result.stderr}\n{fs.log_tail()}"
    assert "detached" in result.stderr, f"walrusfs mount did not detach the dead mount point: {result.stderr}"
    assert len([e for e in Path("/proc/self/mountinfo").read_text().splitlines()
                if e.split()[4] == str(mountpoint)]) == 1, "the new mount is stacked over the dead one"
    log = (fs.state / "mount.log").read_bytes()[log_before:].decode(errors="replace")
    assert "did not end cleanly" in log, log


def fsck_json(fs: Filesystem, *args: str) -> tuple[int, dict]:
    result = run([WALRUSFS, "fsck", fs.name, "--json", *args], fs.env, check=False, timeout=180)
    try:
        report = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"fsck printed no JSON report ({result.returncode}): {result.stdout}\n"
                             f"{result.stderr}") from None
    return result.returncode, report


def umount_and_check(fs: Filesystem, mountpoint: Path, context: str) -> None:
    """``walrusfs umount`` uploads whatever is staged (what the crash left too); fsck is clean."""
    fs.umount(mountpoint)
    assert staged_blocks(fs) == 0, f"{context}: blocks still staged after walrusfs umount"
    assert not any(fs.staging_dir.iterdir()), f"{context}: staging files left after walrusfs umount"
    code, report = fsck_json(fs)
    assert code == 0 and report["clean"], f"{context}: fsck after the remount is not clean: {report}"


def in_flight_file_is_no_lie(data: bytes, expected: bytes, context: str) -> None:
    """The file being written when the daemon died: each page holds its own bytes or zeros (a hole),
    never other bytes, and the file is not longer than it was going to be."""
    assert len(data) <= len(expected), f"{context}: {len(data)} bytes, more than the {len(expected)} written"
    for start in range(0, len(data), 4096):
        page = data[start : start + 4096]
        assert page == expected[start : start + len(page)] or not any(page), \
            f"{context}: bytes at {start} are neither the written ones nor a hole"


# --- (a), (c): a large copy --------------------------------------------------------------------------


def test_kill_9_during_a_large_copy_loses_nothing_fsync_returned_for(shared_network, make_fs,
                                                                     tmp_path: Path) -> None:
    fs = make_fs(shared_network, blob_size_mib=4)
    mp = (tmp_path / "mnt").resolve()
    rng = random.Random(SEED)
    kept: dict[str, bytes] = {}  # every file whose fsync (or close) returned, in every round so far
    with mounted(fs, mp):
        for round_no in range(3):
            context = f"round {round_no} (CRASH_SEED={SEED})"
            seed = SEED * 10 + round_no
            directory = mp / f"copy{round_no}"
            directory.mkdir()
            workload = Workload("copy", directory, seed)
            assert workload.first_line.wait(60), f"{context}: the writer wrote nothing in 60 s"
            delay = rng.uniform(0.3, 3.0)
            time.sleep(delay)
            kill_daemon(fs, mp)
            staged_at_kill = staged_blocks(fs)
            lines = workload.finish()
            done = [line.split(" ", 1) for line in lines if line.startswith(("fsynced ", "closed "))]
            assert done, f"{context}: nothing was written before the kill: {lines}"
            assert any(kind == "fsynced" for kind, _ in done), context

            remount_after_crash(fs, mp)
            for index, (kind, name) in enumerate(done):
                expected_name, content, sync = copy_file(seed, index)
                assert (name, kind) == (expected_name, "fsynced" if sync else "closed")
                kept[f"copy{round_no}/{name}"] = content
            for name, content in kept.items():
                assert (mp / name).read_bytes() == content, f"{context}: {name} is not intact after kill -9"
            # The file being written at the kill (if it was created), and nothing past it.
            in_flight, content, _ = copy_file(seed, len(done))
            if (directory / in_flight).exists():
                in_flight_file_is_no_lie((directory / in_flight).read_bytes(), content, context)
            present = {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}
            assert present <= {name for _, name in done} | {in_flight}, f"{context}: files never written"

            umount_and_check(fs, mp, f"{context}, {staged_at_kill} blocks staged at the kill after "
                             f"{delay:.2f} s")
            fs.clear_cache()  # what follows reads from the network
            fs.mount(mp)
        for name, content in kept.items():
            assert (mp / name).read_bytes() == content, f"{name} not intact read back from the network"


# --- (b), (c): a rename storm ------------------------------------------------------------------------


def observe(root: Path) -> dict[str, str]:
    """path -> identity of every file under ``root``, each checked to hold its own content."""
    tree = {}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            ident = data.split(b"\n", 1)[0].decode(errors="replace")
            assert data == rename_content(ident), f"{path} does not hold the content of {ident!r}"
            tree[str(path.relative_to(root))] = ident
    return tree


def test_kill_9_during_a_rename_storm_leaves_a_state_the_storm_went_through(shared_network, make_fs,
                                                                           tmp_path: Path) -> None:
    """Each rename is one transaction: after the crash the tree is exactly the tree after the first
    k renames, for a k no smaller than the last batch whose directory fsync returned."""
    fs = make_fs(shared_network, blob_size_mib=4)
    mp = (tmp_path / "mnt").resolve()
    rng = random.Random(SEED + 1)
    with mounted(fs, mp):
        storm = mp / "storm"
        tree = rename_setup(storm)
        os.setxattr(mp, "walrusfs.flush", b"1")  # the starting tree is certified
        for round_no in range(2):
            context = f"round {round_no} (CRASH_SEED={SEED})"
            seed = SEED * 10 + round_no
            workload = Workload("rename", storm, seed)
            assert workload.first_line.wait(60), f"{context}: no rename batch done in 60 s"
            time.sleep(rng.uniform(0.2, 2.0))
            kill_daemon(fs, mp)
            lines = workload.finish()
            synced = [int(line.split()[1]) for line in lines if line.startswith("synced ")]
            assert synced, f"{context}: {lines}"

            remount_after_crash(fs, mp)
            observed = observe(storm)
            lives = sorted(ident for ident in observed.values() if ident.startswith("live"))
            assert lives == sorted(f"live{i}" for i in range(RENAME_FILES)), \
                f"{context}: a file is missing or has two names: {lives}"
            model = dict(tree)
            ops = rename_ops(seed, tree)
            matches = [0] if model == observed else []
            for k in range(1, synced[-1] + RENAME_BATCH + 1):
                apply_rename(model, next(ops))
                if model == observed:
                    matches.append(k)
            assert matches, f"{context}: the tree after the crash is no state the storm went through"
            assert matches[-1] >= synced[-1], \
                f"{context}: renames {matches[-1]}..{synced[-1]} were fsynced but are lost"
            tree = observed

            umount_and_check(fs, mp, context)
            fs.mount(mp)
        assert observe(storm) == tree


# --- a crash state that is not handled yet ----------------------------------------------------------


def write_back(fd: int) -> None:
    """Hand a file's dirty pages to the daemon without fsync (what the kernel's writeback does on its
    own after ~30 s or under memory pressure)."""
    libc = ctypes.CDLL(None, use_errno=True)
    sync_file_range = libc.sync_file_range
    sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    if sync_file_range(fd, 0, 0, 1 | 2 | 4) != 0:  # WAIT_BEFORE | WRITE | WAIT_AFTER
        raise OSError(ctypes.get_errno(), "sync_file_range")


def test_a_file_cut_short_by_a_crash_never_claims_bytes_it_lost(shared_network, make_fs, tmp_path: Path) -> None:
    """Not fsynced, so not all of it need survive; but what the file shows after the crash must be
    what was written: a prefix of it, not its full length with zeros where the data was."""
    fs = make_fs(shared_network, blob_size_mib=4)
    mp = (tmp_path / "mnt").resolve()
    data = random.Random(5).randbytes(2 * MiB + MiB // 2)
    with mounted(fs, mp):
        fd = os.open(mp / "f", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            write_back(fd)  # two full blocks staged, the last half block still in the daemon's memory
            assert status(mp)["dirty_bytes"] > 0
            kill_daemon(fs, mp)
        finally:
            with contextlib.suppress(OSError):  # ENOTCONN: the daemon is gone
                os.close(fd)
        remount_after_crash(fs, mp)
        shown = (mp / "f").read_bytes()
        assert shown == data[: len(shown)], (f"the file shows {len(shown)} bytes after the crash, of which "
                                             f"{len(shown) - len(shown.rstrip(bytes(1)))} trailing zero bytes "
                                             "were never written")
