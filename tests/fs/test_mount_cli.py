"""Mounting as a new user meets it (issue 12): where state lives whoever runs mkfs or mount(8), mount -a
twice, non-empty mount points, allow_other, a busy umount, a mount without /dev/fuse, -v and --version."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fs_harness import WALRUSFS, installed_helper, is_mounted, mounted, mountinfo_entry, run, status, wait_gone

from walrusfs.fs.config import fs_home


def helper_env(**extra: str) -> dict[str, str]:
    """What mount(8) leaves a helper: no HOME, no PATH (PYTHONPATH survives, so this branch's code runs)."""
    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    env.update(extra)
    return env


def mount_options(mountpoint: Path) -> set[str]:
    fields = mountinfo_entry(mountpoint)
    assert fields is not None, f"{mountpoint} is not mounted"
    separator = fields.index("-")
    return set(fields[5].split(",")) | set(fields[separator + 3].split(","))


# --- 7: one name, one directory, whoever resolves it ------------------------------------------------------


def test_state_location_does_not_follow_home(monkeypatch) -> None:
    """mount(8) drops HOME before running mount.walrusfs: a name resolved from $HOME in mkfs would
    be another directory (another filesystem) under mount -t walrusfs."""
    monkeypatch.delenv("WALRUSFS_HOME", raising=False)
    monkeypatch.setenv("HOME", "/tmp/someone-else")
    expected = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".local/share/walrusfs/fs"
    assert fs_home() == expected
    monkeypatch.delenv("HOME")
    assert fs_home() == expected
    monkeypatch.setenv("WALRUSFS_HOME", "/srv/walrusfs")
    assert fs_home() == Path("/srv/walrusfs/fs")


def test_helper_finds_the_filesystem_mkfs_made_with_no_environment(shared_network, make_fs, tmp_path: Path) -> None:
    """mkfs --home DIR, then the helper as mount(8) runs it (empty environment) with -o home=DIR."""
    fs = make_fs(shared_network, mkfs=False)
    home = tmp_path / "elsewhere"
    made = run([WALRUSFS, "--home", str(home), "mkfs", fs.name, "--committee", str(shared_network.committee_path),
                "--writer-key", str(shared_network.writer_key_path)], helper_env(HOME="/nonexistent"))
    assert str(home / "fs" / fs.name) in made.stdout
    fs.home = home  # the harness cleans up what it mounts from here on
    mp = (tmp_path / "mnt").resolve()
    mp.mkdir()
    result = run([WALRUSFS, "mount", fs.name, str(mp), "-o", f"rw,home={home}"], helper_env(), check=False)
    if is_mounted(mp):
        fs.mounts[mp] = status(mp)["pid"]
    assert result.returncode == 0, result.stderr
    assert status(mp)["state"] == str(home / "fs" / fs.name)
    fs.umount(mp)


# --- 8: mount -a twice --------------------------------------------------------------------------------------


@pytest.fixture
def helper() -> Iterator[Path]:
    """/usr/sbin/mount.walrusfs, as install-helper writes it (restored afterwards)."""
    with installed_helper() as path:
        yield path


def test_mount_a_from_fstab_is_idempotent(shared_network, make_fs, tmp_path: Path, helper: Path) -> None:
    fs = make_fs(shared_network)
    mp = (tmp_path / "mnt").resolve()
    mp.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{fs.name}  {mp}  walrusfs  _netdev  0 0\n")
    env = helper_env(WALRUSFS_HOME=str(fs.home))  # passes through mount(8), as -o home= would
    first = subprocess.run(["mount", "-a", "-T", str(fstab)], env=env, capture_output=True, text=True, timeout=60)
    if is_mounted(mp):
        fs.mounts[mp] = status(mp)["pid"]
    assert first.returncode == 0, first.stderr
    pid = status(mp)["pid"]
    assert mountinfo_entry(mp)[mountinfo_entry(mp).index("-") + 2] == fs.name  # the source fstab names
    again = subprocess.run(["mount", "-a", "-T", str(fstab)], env=env, capture_output=True, text=True, timeout=60)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    # The helper itself, asked for what is already there (a restarted unit, a repeated mount): quiet too.
    repeated = run([WALRUSFS, "mount", fs.name, str(mp)], fs.env)
    assert (repeated.stdout, repeated.stderr) == ("", "")
    assert status(mp)["pid"] == pid
    other = make_fs(shared_network, name="otherfs")
    refused = run([WALRUSFS, "mount", other.name, str(mp)], other.env, check=False)
    assert refused.returncode != 0 and "already has a walrusfs mount" in refused.stderr
    fs.umount(mp)


# --- 9: non-empty mount points, allow_other -------------------------------------------------------------------


def test_non_empty_mount_point_is_refused_unless_asked(shared_network, make_fs, tmp_path: Path) -> None:
    fs = make_fs(shared_network)
    mp = (tmp_path / "mnt").resolve()
    mp.mkdir()
    (mp / "precious").write_text("do not hide me")
    refused = fs.mount(mp, check=False)
    assert refused.returncode != 0 and not is_mounted(mp)
    assert "not empty" in refused.stderr and "'precious'" in refused.stderr and "-o nonempty" in refused.stderr
    with mounted(fs, mp, "-o", "nonempty"):
        assert not (mp / "precious").exists()
    assert (mp / "precious").read_text() == "do not hide me"


def test_allow_other_is_an_option_off_by_default(shared_network, make_fs, tmp_path: Path) -> None:
    fs = make_fs(shared_network)
    mp = tmp_path / "mnt"
    with mounted(fs, mp):
        assert "allow_other" not in mount_options(mp.resolve())
    with mounted(fs, mp, "-o", "allow_other"):
        assert "allow_other" in mount_options(mp.resolve())


# --- 10: umount while a file is open -----------------------------------------------------------------------


def test_umount_of_a_busy_mount_names_the_holder(shared_network, make_fs, tmp_path: Path) -> None:
    fs = make_fs(shared_network)
    mp = (tmp_path / "mnt").resolve()
    with mounted(fs, mp):
        (mp / "open-file").write_text("held")
        with open(mp / "open-file") as held:
            busy = run([WALRUSFS, "umount", str(mp)], fs.env, check=False)
            assert busy.returncode == 1 and "Traceback" not in busy.stderr
            assert f"{mp} is busy" in busy.stderr and f"pid {os.getpid()}" in busy.stderr
            assert f"{mp}/open-file" in busy.stderr and "--lazy" in busy.stderr
            assert is_mounted(mp) and held.read() == "held"
        # Closed: the same command now succeeds (the harness's umount checks the daemon ends).


def test_lazy_umount_detaches_a_busy_mount(shared_network, make_fs, tmp_path: Path) -> None:
    fs = make_fs(shared_network)
    mp = (tmp_path / "mnt").resolve()
    fs.mount(mp)
    pid = status(mp)["pid"]
    held = open(mp / "open-file", "w")  # noqa: SIM115 (held across the unmount on purpose)
    try:
        lazy = run([WALRUSFS, "umount", "--lazy", str(mp)], fs.env, check=False)
        assert lazy.returncode == 0, lazy.stderr
        assert "detached" in lazy.stderr and not is_mounted(mp)
    finally:
        held.close()
    assert wait_gone(pid, 60), "the daemon did not end once its last file was closed"
    fs.mounts.pop(mp, None)


# --- 11: a user who may not use /dev/fuse -------------------------------------------------------------------


@pytest.fixture
def nobody_dir(shared_network) -> Iterator[Path]:
    """A directory uid 65534 can use (pytest's tmp dirs are root's, mode 0700)."""
    root = Path(tempfile.mkdtemp(prefix="walrusfs-nobody-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_mount_without_access_to_dev_fuse_says_so(shared_network, nobody_dir: Path) -> None:
    if os.stat("/dev/fuse").st_mode & 0o006 == 0o006:
        pytest.skip("/dev/fuse is open to every user here")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv")
    shutil.copy(shared_network.committee_path, nobody_dir / "committee.toml")
    shutil.copy(shared_network.writer_key_path, nobody_dir / "writer.key")
    env = dict(os.environ, WALRUSFS_HOME=str(nobody_dir / "home"))
    run([WALRUSFS, "mkfs", "fs", "--committee", str(nobody_dir / "committee.toml"),
         "--writer-key", str(nobody_dir / "writer.key")], env)
    (nobody_dir / "mnt").mkdir()
    for path in [nobody_dir, *nobody_dir.rglob("*")]:
        os.chown(path, 65534, 65534)
    result = run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", WALRUSFS, "mount", "fs",
                  str(nobody_dir / "mnt")], env, check=False)
    assert result.returncode != 0 and not is_mounted(nobody_dir / "mnt")
    assert "/dev/fuse" in result.stderr and "Permission denied" in result.stderr, result.stderr
    assert not (nobody_dir / "home" / "fs" / "fs" / "mounted").exists(), "a crash marker for a mount that never was"
    lock = nobody_dir / "home" / "fs" / "fs" / "lock"
    if lock.exists():  # the daemon that failed has exited
        pid = int(lock.read_text().strip() or 0)
        assert pid == 0 or wait_gone(pid, 30)


# --- 12: --version, -v reaching the daemon ---------------------------------------------------------------------


def test_version_comes_from_the_package_metadata() -> None:
    from importlib.metadata import version

    result = run([WALRUSFS, "--version"], dict(os.environ))
    assert result.stdout.strip() == f"walrusfs {version('walrusfs')}"


def test_verbose_reaches_the_mount_daemon(shared_network, make_fs, tmp_path: Path) -> None:
    fs = make_fs(shared_network)
    mp = (tmp_path / "mnt").resolve()
    mp.mkdir()
    result = run([WALRUSFS, "-v", "mount", fs.name, str(mp)], fs.env, check=False)
    if is_mounted(mp):
        fs.mounts[mp] = status(mp)["pid"]
    assert result.returncode == 0, result.stderr
    fs.umount(mp)
    # (httpx's debug lines got through before: -v set that logger's own level, not the daemon's.)
    assert re.search(r" DEBUG walrusfs\.", fs.log_tail(200_000)), "walrusfs -v mount: the daemon logged no debug"


# --- 13: messages -------------------------------------------------------------------------------------------


def test_missing_mount_point_says_it_does_not_exist(shared_network, make_fs, tmp_path: Path) -> None:
    fs = make_fs(shared_network)
    result = run([WALRUSFS, "mount", fs.name, str(tmp_path / "nonexistent")], fs.env, check=False)
    assert result.returncode != 0
    assert "does not exist" in result.stderr and "mkdir -p" in result.stderr


def test_mount_help_lists_every_option() -> None:
    text = run([WALRUSFS, "mount", "--help"], dict(os.environ)).stdout
    for option in ("ro", "allow_other", "nonempty", "home=DIR", "snapshot=N", "key=PATH", "committee=PATH",
                   "writer_key=PATH", "metrics=HOST:PORT", "metrics_textfile=PATH", "debug", "_netdev"):
        assert f"\n  {option}" in text, f"mount --help does not list {option}"


def test_writer_key_is_described_alike_everywhere() -> None:
    import argparse

    from walrusfs.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices

    def described(command: str) -> str:
        action = next(a for a in commands[command]._actions if "--writer-key" in a.option_strings)
        return action.help.removeprefix("with --key: ")

    assert described("mkfs") == described("restore") == described("mount")


def test_fsck_with_the_nodes_down_says_it_once_and_suggests_offline(shared_network, make_fs) -> None:
    fs = make_fs(shared_network, mkfs=False)
    dead = {}
    for node in shared_network.committee.nodes:
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            dead[node.id] = f"http://127.0.0.1:{probe.getsockname()[1]}"
    run([WALRUSFS, "mkfs", fs.name, "--committee", str(shared_network.client_committee(dead)),
         "--writer-key", str(shared_network.writer_key_path)], fs.env)
    result = run([WALRUSFS, "fsck", fs.name], fs.env, check=False)
    assert result.returncode == 4
    said = result.stdout + result.stderr
    assert said.count("cannot find the root record") == 1, said
    assert f"walrusfs fsck {fs.name} --offline" in result.stderr and "did not answer" in result.stderr
    offline = run([WALRUSFS, "fsck", fs.name, "--offline"], fs.env, check=False)
    assert offline.returncode == 0 and "clean" in offline.stdout
