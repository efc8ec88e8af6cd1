"""``walrusfs mkfs | mount | umount | install-helper``."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import trio

from ..errors import UserError
from .config import FsSettings, resolve_source
from .db import Database
from .operations import CONTROL_PREFIX, make_root
from .schema import DDL, SCHEMA_VERSION

HELPER_PATH = Path("/usr/sbin/mount.walrusfs")
# One wording for the one key wherever a command takes it (mkfs, mount, restore).
WRITER_KEY_HELP = ("a writer key the committee accepts: signs every write to the nodes "
                   "(default: the bundled network's writer.key)")


def register(commands: argparse._SubParsersAction) -> None:
    mkfs = commands.add_parser("mkfs", help="create a filesystem on a committee")
    mkfs.add_argument("name", help="filesystem name (or a state directory path)")
    mkfs.add_argument("--committee", type=Path, help="committee file (default: the bundled network's)")
    mkfs.add_argument("--writer-key", type=Path, help=WRITER_KEY_HELP)
    mkfs.add_argument("--block-size", type=int, default=1024, help="KiB (default 1024)")
    mkfs.add_argument("--blob-size", type=int, default=16, help="target blob size, MiB (default 16)")
    mkfs.add_argument("--cache-size", type=int, default=2048, help="read cache, MiB (default 2048)")
    mkfs.add_argument("--snapshot-interval", type=float, default=900,
                      help="seconds between metadata snapshots on the network while the tree changes "
                           "(default 900; 0: only at unmount)")
    mkfs.add_argument("--force", action="store_true", help="replace an existing filesystem's local state")
    mkfs.set_defaults(func=_mkfs)

    from .mount import OPTION_HELP

    mount = commands.add_parser(
        "mount", help="mount a filesystem (what mount -t walrusfs runs)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="mount options (-o, comma-separated; the same in fstab):\n" + "\n".join(
            textwrap.fill(name, 78, initial_indent="  ", subsequent_indent="  ") + "\n"
            + textwrap.fill(text, 78, initial_indent=" " * 6, subsequent_indent=" " * 6)
            for name, text in OPTION_HELP.items()))
    mount.add_argument("source", help="filesystem name (its state is HOME/fs/NAME, see --home) or state directory")
    mount.add_argument("mountpoint", type=Path, help="an existing, empty directory (see -o nonempty)")
    mount.add_argument("-o", dest="options", metavar="OPTIONS", help="comma-separated mount options (below)")
    mount.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground")
    mount.add_argument("--key", type=Path, help="the filesystem's key: with no local state, restore it from the "
                       "network first (same as -o key=PATH)")
    mount.add_argument("--committee", type=Path, help="with --key: the committee file (default: the bundled network's)")
    mount.add_argument("--writer-key", type=Path, help=f"with --key: {WRITER_KEY_HELP}")
    mount.add_argument("--takeover", action="store_true",
                       help="take the filesystem's writer lease over from a writer that died (same as -o takeover)")
    for flag in ("-n", "-s"):  # passed by mount(8) to helpers; nothing to do for them
        mount.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    # mount -v passes -v to the helper: the daemon logs debug messages, as walrusfs -v mount does.
    mount.add_argument("-v", dest="mount_verbose", action="store_true", help=argparse.SUPPRESS)
    mount.set_defaults(func=_mount)

    umount = commands.add_parser("umount", help="upload everything staged, then unmount")
    umount.add_argument("mountpoint", type=Path)
    umount.add_argument("--timeout", type=float, default=0, help="give up after this many seconds (0: never)")
    umount.add_argument("--lazy", "-l", action="store_true",
                        help="if files in it are still open, detach it now anyway; the daemon ends when they close")
    umount.set_defaults(func=_umount)

    helper = commands.add_parser("install-helper", help=f"install {HELPER_PATH} for mount -t walrusfs")
    helper.set_defaults(func=lambda args: install_helper())


def _mkfs(args: argparse.Namespace) -> int:
    from ..cluster import COMMITTEE_FILE, WRITER_KEY_FILE, bundled_file
    from ..keys import generate_key, load_key, public_bytes, write_key
    from ..protocol.committee import Committee
    from ..protocol.roots import fs_id_of_key

    state = resolve_source(args.name)
    committee_path = bundled_file(args.committee, COMMITTEE_FILE)
    key_path = bundled_file(args.writer_key, WRITER_KEY_FILE)
    committee = Committee.load(committee_path)
    try:
        key = load_key(key_path)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load writer key {key_path}: {error}") from error
    if not committee.is_writer(public_bytes(key)):
        raise UserError(f"the key {key_path} is not one of the committee's writers: the nodes would "
                        f"refuse its writes. Add its public key to [writers] in {committee_path}.")
    if state.settings_path.exists():
        if not args.force:
            raise UserError(f"{state.root} already holds a filesystem; pass --force to replace it")
        shutil.rmtree(state.root)
    state.root.mkdir(parents=True, exist_ok=True)
    fs_key = generate_key()
    write_key(state.fs_key_path, fs_key)
    settings = FsSettings(
        fs_id=fs_id_of_key(fs_key), committee=str(committee_path), writer_key=str(key_path),
        block_size=args.block_size * 1024, blob_size=args.blob_size << 20, cache_size=args.cache_size << 20,
        fs_key=str(state.fs_key_path), snapshot_interval=args.snapshot_interval)
    db = Database(state.db_path)
    db.conn.executescript(DDL)
    db.execute("INSERT INTO settings (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    db.execute("INSERT INTO settings (key, value) VALUES ('fs_id', ?)", (settings.fs_id,))
    make_root(db)
    db.close()
    tmp = state.settings_path.with_suffix(".tmp")
    tmp.write_text(settings.dump())
    tmp.replace(state.settings_path)
    print(f"created filesystem {settings.fs_id} in {state.root} on {committee.n_shards} shards "
          f"(blocks {args.block_size} KiB, blobs {args.blob_size} MiB)")
    print(f"mount it with: mount -t walrusfs {args.name} DIR   (or: walrusfs mount {args.name} DIR)")
    print(f"back up {state.fs_key_path}: with it and the committee file, 'walrusfs mount --key' restores "
          "this filesystem from the network on any machine")
    return 0


def _mount(args: argparse.Namespace) -> int:
    from .mount import MountOptions, mount

    if args.mount_verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    options = MountOptions.parse(args.options)
    for name in ("key", "committee", "writer_key"):
        if getattr(args, name):
            setattr(options, name, str(getattr(args, name).resolve()))
    options.takeover = options.takeover or args.takeover
    options.fsname = args.source
    return mount(resolve_source(args.source, options.home), args.mountpoint.resolve(), options, args.foreground)


def read_status(mountpoint: Path) -> dict:
    try:
        return json.loads(os.getxattr(mountpoint, CONTROL_PREFIX + b"status"))
    except OSError as error:
        raise UserError(f"{mountpoint} is not a mounted walrusfs filesystem ({error.strerror})") from error


def _umount(args: argparse.Namespace) -> int:
    mountpoint = args.mountpoint.resolve()
    status = read_status(mountpoint)
    pid = status["pid"]
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
            while True:
                current = await trio.to_thread.run_sync(read_status, mountpoint)
                pending = current["staged_bytes"] + current["dirty_bytes"]
                print(f"\rwaiting for uploads: {pending / 2**20:8.1f} MiB staged, "
                      f"{current['uploads_in_flight']} blobs in flight", end="", file=sys.stderr, flush=True)
                if args.timeout and time.monotonic() - started > args.timeout:
                    error.append(TimeoutError(f"uploads not finished after {args.timeout:.0f} s"))
                    nursery.cancel_scope.cancel()
                await trio.sleep(0.5)

    trio.run(flush_with_progress)
    print(file=sys.stderr)
    _refuse_if_not_writer(mountpoint, pid, args.lazy)
    if error:
        current = read_status(mountpoint)
        if current.get("upload_permanent_error"):  # retrying cannot help: say what must change
            raise UserError(f"not unmounted: the nodes refuse the staged data ({current['upload_permanent_error']}). "
                            "It stays staged, not retried until asked; fix what they say (is the filesystem's "
                            "writer key one of the committee's writers? are the clocks right?) and run 'walrusfs "
                            "umount' again (a plain umount keeps it staged for the next mount).")
        last = current.get("last_error")
        raise UserError(f"not unmounted: staged data could not be certified ({error[0]}; last upload "
                        f"error: {last}). It stays staged and keeps being retried; bring the nodes back "
                        "and run 'walrusfs umount' again (a plain umount keeps it staged for the next mount).")
    print("publishing the metadata snapshot ...", end="", file=sys.stderr, flush=True)
    try:
        os.setxattr(mountpoint, CONTROL_PREFIX + b"snapshot", b"1")
        seq = read_status(mountpoint).get("snapshot", {}).get("seq")
        print(f" snapshot {seq} is on the network", file=sys.stderr)
    except OSError:
        _refuse_if_not_writer(mountpoint, pid, args.lazy)
        reason = read_status(mountpoint).get("snapshot", {}).get("last_error")
        print(f" failed: {reason}. Unmounting anyway: every byte is certified and the local metadata is "
              "intact; the next mount publishes a snapshot.", file=sys.stderr)
    if _unmount(mountpoint, args.lazy, certified=True):
        _wait_gone(pid)
    print(f"unmounted {mountpoint}: every byte is certified", file=sys.stderr)
    return 0


def _refuse_if_not_writer(mountpoint: Path, pid: int, lazy: bool) -> None:
    """A mount that lost the writer lease can never make its data durable: unmount it (what it holds
    stays in its state directory) and fail, saying so, rather than claim success."""
    from .writer_lease import deposed_message

    message = deposed_message(read_status(mountpoint))
    if message is None:
        return
    if _unmount(mountpoint, lazy, certified=False):
        _wait_gone(pid)
    raise UserError(f"unmounted {mountpoint}, but NOT durable: {message}")


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


def _wait_gone(pid: int, timeout: float = 60.0) -> None:
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


def install_helper() -> int:
    """Write /usr/sbin/mount.walrusfs, which mount(8) runs for 'mount -t walrusfs'."""
    walrusfs = Path(sys.argv[0]).resolve() if Path(sys.argv[0]).name == "walrusfs" else Path(
        shutil.which("walrusfs") or sys.executable).resolve()
    if walrusfs.name != "walrusfs":
        walrusfs = Path(sys.executable).with_name("walrusfs")
    script = ("#!/bin/sh\n# Installed by walrusfs install-helper: mount -t walrusfs SOURCE DIR [-o OPTIONS]\n"
              f'exec "{walrusfs}" mount "$@"\n')
    try:
        HELPER_PATH.write_text(script)
        HELPER_PATH.chmod(0o755)
    except OSError as error:
        raise UserError(f"cannot write {HELPER_PATH}: {error.strerror} (run as root)") from error
    print(f"installed {HELPER_PATH} -> {walrusfs}")
    return 0
