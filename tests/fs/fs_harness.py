"""Real FUSE mounts of walrusfs for the filesystem tests (the networks come from tests/support).

Every mount daemon is stopped by the pid in its status xattr or lock file. A mount that will not go
away is lazily unmounted and its FUSE connection aborted, so a failing test never leaves a hung
mount point behind.

(Not a package: ``tests/fs`` is on sys.path while its tests run.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from network import LocalNetwork

WALRUSFS = str(Path(sys.executable).with_name("walrusfs"))
HELPER = Path("/usr/sbin/mount.walrusfs")
# Held while a test has replaced the machine-wide helper: tests in parallel processes (pytest -n)
# or other checkouts' runs take turns instead of restoring it under each other's mount(8).
HELPER_LOCK = Path("/tmp/walrusfs-tests-mount-helper.lock")


# --- mounts ------------------------------------------------------------------------------------------


def run(args: list[str], env: dict[str, str], timeout: float = 120.0, check: bool = True,
        **kwargs: object) -> subprocess.CompletedProcess:
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}\nstdout: {result.stdout}\n"
                             f"stderr: {result.stderr}")
    return result


def mountinfo_entry(mountpoint: Path) -> list[str] | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(mountpoint):
            return fields
    return None


def is_mounted(mountpoint: Path) -> bool:
    return mountinfo_entry(mountpoint) is not None


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


@dataclass
class Filesystem:
    """One walrusfs filesystem (its local state under ``home``) on a network."""

    name: str
    home: Path
    network: LocalNetwork
    blob_size_mib: int | None = None
    mkfs_args: tuple[str, ...] = ()  # more `walrusfs mkfs` options, e.g. ("--no-encryption",)
    mounts: dict[Path, int] = field(default_factory=dict)  # mount point -> daemon pid

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["WALRUSFS_HOME"] = str(self.home)
        return env

    @property
    def state(self) -> Path:
        return self.home / "fs" / self.name

    @property
    def db_path(self) -> Path:
        return self.state / "metadata.db"

    @property
    def cache_dir(self) -> Path:
        return self.state / "cache"

    @property
    def staging_dir(self) -> Path:
        return self.state / "staging"

    def mkfs(self) -> None:
        args = [WALRUSFS, "mkfs", self.name, "--committee", str(self.network.committee_path),
                "--writer-key", str(self.network.writer_key_path)]
        if self.blob_size_mib:
            args += ["--blob-size", str(self.blob_size_mib)]
        run([*args, *self.mkfs_args], self.env)

    def lock_pid(self) -> int | None:
        try:
            return int((self.state / "lock").read_text().strip())
        except (OSError, ValueError):
            return None

    def mount(self, mountpoint: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
        mountpoint = mountpoint.resolve()
        mountpoint.mkdir(parents=True, exist_ok=True)
        result = run([WALRUSFS, "mount", self.name, str(mountpoint), *extra], self.env, timeout=60, check=False)
        if is_mounted(mountpoint):
            pid = self.daemon_pid(mountpoint)
            if pid is not None:
                self.mounts[mountpoint] = pid
        if check and result.returncode != 0:
            raise AssertionError(f"mount failed ({result.returncode}): {result.stderr}\n{self.log_tail()}")
        return result

    def daemon_pid(self, mountpoint: Path) -> int | None:
        try:
            return int(status(mountpoint)["pid"])
        except (OSError, KeyError, ValueError):
            return self.lock_pid()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return (self.state / "mount.log").read_text(errors="replace")[-chars:]
        except OSError:
            return "(no mount.log)"

    def umount(self, mountpoint: Path, timeout: float = 180.0) -> subprocess.CompletedProcess:
        """``walrusfs umount``: waits until everything is certified, then unmounts. On timeout the
        FUSE connection is aborted first (a request stuck in the daemon would keep the killed
        command from ever being reaped), then the command is killed."""
        mountpoint = mountpoint.resolve()
        pid = self.mounts.get(mountpoint) or self.daemon_pid(mountpoint)
        args = [WALRUSFS, "umount", str(mountpoint)]
        process = subprocess.Popen(args, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            force_unmount(mountpoint)
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.communicate(timeout=30)
            raise AssertionError(f"walrusfs umount did not finish within {timeout:.0f} s\n{self.log_tail()}") from None
        if process.returncode != 0:
            raise AssertionError(f"walrusfs umount exited {process.returncode}\nstderr: {stderr}")
        assert not is_mounted(mountpoint), f"{mountpoint} still mounted after walrusfs umount"
        if pid is not None:
            assert wait_gone(pid, 60), f"mount daemon {pid} still running after walrusfs umount"
        self.mounts.pop(mountpoint, None)
        return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)

    def plain_umount(self, mountpoint: Path, wait: bool = True) -> None:
        """``fusermount3 -u``, as a user or the desktop would do it."""
        mountpoint = mountpoint.resolve()
        pid = self.mounts.get(mountpoint) or self.daemon_pid(mountpoint)
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=True, timeout=60)
        if wait and pid is not None:
            assert wait_gone(pid, 90), f"mount daemon {pid} still running 90 s after fusermount3 -u"
        self.mounts.pop(mountpoint, None)

    def cleanup(self) -> None:
        """Whatever state the test left: no mount, no daemon."""
        for mountpoint, pid in list(self.mounts.items()):
            force_unmount(mountpoint)
            stop_pid(pid)
            self.mounts.pop(mountpoint, None)
        pid = self.lock_pid()
        if pid is not None and pid_alive(pid) and _is_walrusfs(pid):
            stop_pid(pid)

    def remount(self, mountpoint: Path, clear_cache: bool = True) -> None:
        self.umount(mountpoint)
        if clear_cache:
            self.clear_cache()
        self.mount(mountpoint)

    def clear_cache(self) -> None:
        if self.cache_dir.exists():
            for entry in self.cache_dir.iterdir():
                entry.unlink()

    def db(self) -> sqlite3.Connection:
        """A read-only look at the metadata database (WAL: safe while mounted)."""
        return sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)


def _is_walrusfs(pid: int) -> bool:
    try:
        return b"walrusfs" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def status(mountpoint: Path) -> dict:
    return json.loads(os.getxattr(mountpoint, "walrusfs.status"))


def force_unmount(mountpoint: Path) -> None:
    if not is_mounted(mountpoint):
        return
    fields = mountinfo_entry(mountpoint)
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, timeout=30)
    if is_mounted(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, timeout=30)
    if fields is not None:
        minor = fields[2].split(":")[1]
        abort = Path(f"/sys/fs/fuse/connections/{minor}/abort")
        with contextlib.suppress(OSError):
            abort.write_text("1")


def stop_pid(pid: int, timeout: float = 20.0) -> None:
    if not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_gone(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_gone(pid, 10)


@contextlib.contextmanager
def installed_helper():
    """/usr/sbin/mount.walrusfs as ``walrusfs install-helper`` writes it for this code, for the
    duration (one test at a time on this machine); whatever was there before is put back."""
    with open(HELPER_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        saved = HELPER.read_bytes() if HELPER.exists() else None
        result = subprocess.run([WALRUSFS, "install-helper"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        try:
            yield HELPER
        finally:
            if saved is None:
                HELPER.unlink(missing_ok=True)
            else:
                HELPER.write_bytes(saved)


@contextlib.contextmanager
def mounted(fs: Filesystem, mountpoint: Path, *extra: str):
    """A mount for the duration of a with block: unmounted with ``walrusfs umount`` when the block
    ends normally, forcibly (abort, daemon stopped by pid) when it raises."""
    fs.mount(mountpoint, *extra)
    try:
        yield mountpoint.resolve()
    except BaseException:
        fs.cleanup()
        raise
    try:
        if is_mounted(mountpoint.resolve()):
            fs.umount(mountpoint, timeout=120)
    finally:
        fs.cleanup()


def tree_snapshot(root: Path, content: bool = True) -> dict[str, tuple]:
    """path -> (kind, size, content hash) or (link, target) for everything under ``root``."""
    import hashlib

    out: dict[str, tuple] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            rel = str(path.relative_to(root))
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir",)
            else:
                digest = hashlib.blake2b(path.read_bytes()).hexdigest() if content else None
                out[rel] = ("file", path.lstat().st_size, digest)
    return out
