"""``walrusfs umount``: wait until everything staged is certified, publish a metadata snapshot, unmount,
and wait for the mount daemon to exit."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import trio

from ..errors import UserError
from ..progress import Progress
from .mount_status import CONTROL_PREFIX, SnapshotStatus, read_status


def run(args: argparse.Namespace) -> int:
    mountpoint = args.mountpoint.resolve()
    status = read_status(mountpoint)
    pid = status.pid
    if _mounted_read_only(mountpoint):
        # Nothing can be written through it; the daemon still uploads what an earlier writable
        # mount left staged before it exits, and keeps the rest for the next mount.
        if _unmount(mountpoint, args.lazy, certified=False):
            _wait_gone(pid)
        print(f"unmounted {mountpoint} (read-only)", file=sys.stderr)
        return 0
    error: list[BaseException] = []

    async def flush_with_progress() -> None:
        async def flush() -> None:
            try:
                await trio.to_thread.run_sync(os.setxattr, mountpoint, CONTROL_PREFIX + b"flush", b"1")
            except OSError as failure:
                error.append(failure)
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flush)
            started = time.monotonic()
            # Uploaded since the wait began, of that plus what is still pending (writes may add to it).
            baseline = status.uploaded_bytes or 0
            with Progress("waiting for uploads", None) as progress:
                while True:
                    current = await trio.to_thread.run_sync(read_status, mountpoint)
                    done = max(0, (current.uploaded_bytes or 0) - baseline)
                    progress.update(done, done + current.pending_bytes,
                                    note=f"{current.uploads_in_flight or 0} blobs in flight")
                    if args.timeout and time.monotonic() - started > args.timeout:
                        error.append(TimeoutError(f"uploads not finished after {args.timeout:.0f} s"))
                        nursery.cancel_scope.cancel()
                    await trio.sleep(0.5)

    trio.run(flush_with_progress)
    _refuse_if_not_writer(mountpoint, pid, args.lazy)
    if error:
        current = read_status(mountpoint)
        if current.upload_permanent_error:  # retrying cannot help: say what must change
            raise UserError(f"not unmounted: the nodes refuse the staged data ({current.upload_permanent_error}). "
                            "It stays staged, not retried until asked; fix what they say (is the filesystem's "
                            "writer key one of the committee's writers? are the clocks right?) and run 'walrusfs "
                            "umount' again (a plain umount keeps it staged for the next mount).")
        last = current.last_error
        raise UserError(f"not unmounted: staged data could not be certified ({error[0]}; last upload "
                        f"error: {last}). It stays staged and keeps being retried; bring the nodes back "
                        "and run 'walrusfs umount' again (a plain umount keeps it staged for the next mount).")
    print("publishing the metadata snapshot ...", end="", file=sys.stderr, flush=True)
    try:
        os.setxattr(mountpoint, CONTROL_PREFIX + b"snapshot", b"1")
        seq = _snapshot(mountpoint).seq
        print(f" snapshot {seq} is on the network", file=sys.stderr)
    except OSError:
        _refuse_if_not_writer(mountpoint, pid, args.lazy)
        reason = _snapshot(mountpoint).last_error
        print(f" failed: {reason}. Unmounting anyway: every byte is certified and the local metadata is "
              "intact; the next mount publishes a snapshot.", file=sys.stderr)
    if _unmount(mountpoint, args.lazy, certified=True):
        _wait_gone(pid)
    print(f"unmounted {mountpoint}: every byte is certified", file=sys.stderr)
    return 0


def _refuse_if_not_writer(mountpoint: Path, pid: int | None, lazy: bool) -> None:
    """A mount that lost the writer lease can never make its data durable: unmount it (what it holds
    stays in its state directory) and fail, saying so, rather than claim success."""
    from .writer_lease import deposed_message

    message = deposed_message(read_status(mountpoint).to_json())
    if message is None:
        return
    if _unmount(mountpoint, lazy, certified=False):
        _wait_gone(pid)
    raise UserError(f"unmounted {mountpoint}, but NOT durable: {message}")


def _snapshot(mountpoint: Path) -> SnapshotStatus:
    return read_status(mountpoint).snapshot or SnapshotStatus()


def _unmount(mountpoint: Path, lazy: bool, certified: bool) -> bool:
    """fusermount3 -u; True once unmounted, False if detached lazily (files still open, the daemon
    serves them until they close). A busy mount raises UserError naming what holds it."""
    result = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True)
    if result.returncode == 0:
        return True
    busy = "busy" in result.stderr.lower()
    if busy and lazy:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, text=True, check=False)
        print(f"{mountpoint} is busy: detached it; its daemon ends when the last file in it is closed",
              file=sys.stderr)
        return False
    if not busy:
        said = result.stderr.strip() or f"fusermount3 exited {result.returncode}"
        raise UserError(f"cannot unmount {mountpoint}: {said}")
    holders = holders_of(mountpoint)
    held = "; ".join(holders[:10]) + (f"; and {len(holders) - 10} more" if len(holders) > 10 else "")
    done = "every byte is certified, but it" if certified else "it"
    raise UserError(f"{mountpoint} is busy: {done} is still mounted, because "
                    f"{held or 'a process (not visible to this user) uses it'}. Close those files (or leave "
                    f"the directory) and run 'walrusfs umount {mountpoint}' again, or 'walrusfs umount --lazy "
                    f"{mountpoint}' to detach it now (the daemon ends when they close).")


def holders_of(mountpoint: Path) -> list[str]:
    """Which processes keep ``mountpoint`` busy: their open files, working directories and roots in it,
    from /proc's links (reading a link does not ask the mount's daemon)."""
    inside = str(mountpoint).rstrip("/") + "/"
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        uses = []
        links = [("working directory", proc / "cwd"), ("root", proc / "root")]
        with contextlib.suppress(OSError):
            links += [("open", fd) for fd in (proc / "fd").iterdir()]
        for what, link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if target == str(mountpoint) or target.startswith(inside):
                uses.append(f"{what} {target}" if what == "open" else f"its {what} {target}")
        if uses:
            try:
                command = (proc / "comm").read_text().strip()
            except OSError:
                command = "?"
            found.append(f"pid {proc.name} ({command}) has {', '.join(sorted(set(uses)))}")
    return found


def _mounted_read_only(mountpoint: Path) -> bool:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == str(mountpoint) and fields[2].startswith("fuse"):
            return "ro" in fields[3].split(",")
    return False


def _wait_gone(pid: int | None, timeout: float = 60.0) -> None:
    if pid is None:  # a daemon that does not say which process it is: nothing to wait for
        return
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status_path = Path(f"/proc/{pid}/stat")
    try:
        return status_path.read_text().split()[2] != "Z"
    except OSError:
        return False
