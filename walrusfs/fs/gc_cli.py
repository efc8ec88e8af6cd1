"""``walrusfs gc NAME [--dry-run] [--json]``: one garbage-collection pass now (docs/gc.md).

On a mounted filesystem the mount daemon runs it (a control xattr of the mount's root, as
``walrusfs snapshot`` does), since it owns the database; this command shows its progress from the
daemon's status. On an unmounted one it runs here, holding the state directory's lock and the
filesystem's writer lease, as a mount would.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from pathlib import Path

import trio

from ..errors import UserError
from ..keys import load_key
from ..progress import Progress
from ..protocol.committee import Committee
from .chain import fs_client
from .config import FsState, resolve_source
from .db import Database
from .encryption import read_key_of
from .gc import GarbageCollector, GcError, GcReport
from .mount import acquire_lock
from .mount_options import DEFAULT_TERM
from .mount_status import CONTROL_PREFIX
from .status import _mounts, format_bytes, read_status_within
from .writer_lease import acquire_for_mount


def register(commands: argparse._SubParsersAction) -> None:
    gc = commands.add_parser("gc", help="release what a filesystem no longer reaches from the nodes; "
                             "compact sparse blobs")
    gc.add_argument("source", help="filesystem name or state directory (mounted or not)")
    gc.add_argument("--dry-run", "-n", action="store_true", help="say what would be released, release nothing")
    gc.add_argument("--json", action="store_true", help="machine-readable report")
    gc.set_defaults(func=_gc)


def _gc(args: argparse.Namespace) -> int:
    state = resolve_source(args.source)
    settings = state.load_settings()
    try:
        lock = acquire_lock(state)
    except UserError:
        report = _through_mount(state, args.dry_run, quiet=args.json)
    else:
        try:
            report = _offline(state, args.dry_run, quiet=args.json, compact_below=settings.compact_below)
        finally:
            os.close(lock)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(describe(report))
    return 0 if not report.errors else 1


def describe(report: GcReport) -> str:
    verb = "would list" if report.dry_run else "found"
    lines = [
        f"gc{' (dry run)' if report.dry_run else ''}: {verb} {report.garbage_blobs} unreachable blobs "
        f"({format_bytes(report.garbage_bytes)})",
        f"  reclaimed:  {format_bytes(report.released_bytes)} in {report.released_blobs} blobs released on every node",
        f"  referenced: {format_bytes(report.referenced_bytes)} in {report.referenced_blobs} blobs (kept)",
    ]
    if report.compacted_blobs:
        lines.append(f"  compaction: {report.compacted_blobs} sparse blobs, "
                     f"{format_bytes(report.rewritten_bytes)} of live blocks "
                     f"{'to rewrite' if report.dry_run else 'rewritten'}")
    if report.pending_blobs:
        lines.append(f"  pending:    {format_bytes(report.pending_bytes)} in {report.pending_blobs} blobs not yet "
                     "released on every node (retried at the next gc)")
    lines += [f"  {error}" for error in report.errors]
    lines.append(f"  {report.seconds:.1f} s")
    return "\n".join(lines)


class _Steps:
    """One progress display per step of the pass."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.current: Progress | None = None

    def __call__(self, what: str, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.current is None or self.current.description != what:
            self.close()
            self.current = Progress(what, total, unit="B" if what == "compacting" else "blob")
        self.current.update(done, total)

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None


def _offline(state: FsState, dry_run: bool, quiet: bool, compact_below: float) -> GcReport:
    if state.mounted_marker.exists():
        raise UserError(f"the last mount of {state.root} did not end cleanly: mount it once (which checks it) "
                        f"or run 'walrusfs fsck {state.root}' first, then gc")
    settings = state.load_settings()
    committee = Committee.load(settings.committee)
    try:
        writer = load_key(Path(settings.writer_key))
        fs_key = load_key(Path(settings.fs_key or state.fs_key_path))
    except (OSError, ValueError) as error:
        raise UserError(f"gc releases blobs as the filesystem's writer, and needs its keys: {error}. A filesystem "
                        "made from a read capability is never collected from here; its writer collects it.") from None
    steps = _Steps(quiet)

    async def run() -> GcReport:
        db = Database(state.db_path)
        try:
            async with fs_client(state, committee, writer) as client:
                await client.refresh_chain("gc")
                # The writer lease, as a mount takes it: state behind the network (another machine wrote
                # the filesystem since) is refused, so gc never judges garbage from an old tree.
                lease = await acquire_for_mount(state, client, fs_key, takeover=False, term=DEFAULT_TERM)
                try:
                    collector = GarbageCollector(
                        db, state, client, settings.fs_id, read_key=read_key_of(fs_key), compact_below=compact_below,
                        blob_size=settings.blob_size, guard=lease.ensure_held)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(lease.run)
                        try:
                            return await collector.run(dry_run=dry_run, progress=steps)
                        finally:
                            nursery.cancel_scope.cancel()
                finally:
                    with trio.move_on_after(10):
                        await lease.release()
        finally:
            steps.close()
            db.sync()
            db.close()

    try:
        return trio.run(run)
    except GcError as error:
        raise UserError(str(error)) from None


def mountpoint_of(state: FsState) -> Path:
    """Where ``state`` is mounted writable (its lock is held): found by asking each walrusfs mount."""
    for point, fstype in _mounts():
        if fstype != "fuse.walrusfs":
            continue
        try:
            status = read_status_within(point, timeout=10.0)
        except UserError:
            continue
        if status.state and Path(status.state) == state.root and not status.read_only:
            return point
    raise UserError(f"{state.root} is locked by another process but not mounted writable here: wait for it to "
                    "finish (another walrusfs gc or fsck?) and try again")


def _through_mount(state: FsState, dry_run: bool, quiet: bool) -> GcReport:
    mountpoint = mountpoint_of(state)
    failure: list[OSError] = []

    def ask() -> None:
        try:
            os.setxattr(mountpoint, CONTROL_PREFIX + (b"gc-dry-run" if dry_run else b"gc"), b"1")
        except OSError as error:
            failure.append(error)

    thread = threading.Thread(target=ask, name="walrusfs-gc", daemon=True)
    thread.start()
    steps = _Steps(quiet)
    try:
        while thread.is_alive():
            thread.join(0.5)
            running = (read_status_within(mountpoint, timeout=30.0).extra.get("gc") or {}).get("running")
            if running and running.get("total"):
                steps(running["step"], running["done"], running["total"])
    finally:
        steps.close()
    last = (read_status_within(mountpoint, timeout=30.0).extra.get("gc") or {}).get("last")
    if failure:
        raise UserError(f"gc on {mountpoint} failed: {failure[0].strerror} (its log, <state>/mount.log, says why)")
    if not last:
        raise UserError(f"the mount daemon of {mountpoint} does not run gc: it runs an older walrusfs; unmount "
                        "and mount it again")
    return GcReport.from_json(last)
