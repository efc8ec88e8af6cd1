"""``walrusfs fsck | restore | snapshots | snapshot``: looking after a filesystem's metadata."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import trio

from ..cluster import COMMITTEE_FILE, WRITER_KEY_FILE, bundled_file
from ..errors import UserError
from ..keys import load_key
from ..progress import Progress
from ..protocol.committee import Committee
from .capability import ReadCapability
from .chain import fs_chain, fs_client
from .cli import WRITER_KEY_HELP
from .config import resolve_source
from .data_keys import add_data_key
from .db import Database
from .encryption import NO_ENCRYPTION, read_key_of
from .fsck import Fsck
from .mount import acquire_lock
from .mount_status import CONTROL_PREFIX, SnapshotStatus, read_status
from .restore import find_chain, restore_state
from .snapshot import describe

FSCK_OPERATIONAL_ERROR = 8  # as fsck(8): fsck could not run at all


def register(commands: argparse._SubParsersAction) -> None:
    fsck = commands.add_parser("fsck", help="check a filesystem's metadata against its invariants and repair it")
    fsck.add_argument("source", help="filesystem name or state directory (not mounted)")
    fsck.add_argument("--deep", action="store_true", help="also read back and verify every referenced blob")
    fsck.add_argument("--dry-run", "-n", action="store_true", help="report only, change nothing")
    fsck.add_argument("--offline", action="store_true", help="do not contact the nodes")
    fsck.add_argument("--json", action="store_true", help="machine-readable report")
    fsck.set_defaults(func=_fsck)

    restore = commands.add_parser("restore", help="rebuild a filesystem's local state from the network")
    restore.add_argument("name", help="filesystem name (or a state directory path) to restore into")
    restore.add_argument("--key", type=Path, required=True, help="the filesystem's key (fs.key)")
    restore.add_argument("--committee", type=Path, help="committee file (default: the bundled network's)")
    restore.add_argument("--writer-key", type=Path, help=WRITER_KEY_HELP)
    restore.add_argument("--force", action="store_true", help="replace existing local state")
    restore.set_defaults(func=_restore)

    snapshots = commands.add_parser("snapshots", help="list a filesystem's metadata snapshots on the network")
    snapshots.add_argument("source", help="filesystem name or state directory")
    snapshots.add_argument("--json", action="store_true")
    snapshots.set_defaults(func=_snapshots)

    snapshot = commands.add_parser("snapshot", help="publish a metadata snapshot of a mounted filesystem now")
    snapshot.add_argument("mountpoint", type=Path)
    snapshot.set_defaults(func=_snapshot)

    share = commands.add_parser("share", help="print a read capability: mounts the filesystem read-only anywhere")
    share.add_argument("source", help="filesystem name or state directory (holding its key)")
    share.add_argument("--snapshot", type=int, metavar="N",
                       help="pin snapshot N (default: the latest at each mount)")
    share.set_defaults(func=_share)

    rotate = commands.add_parser("rotate-key", help="seal new blocks with a new data key (old ones keep theirs)")
    rotate.add_argument("source", help="filesystem name or state directory (holding its key; not mounted)")
    rotate.set_defaults(func=_rotate_key)


class _Steps:
    """fsck_network's progress callback, ``(what, done, total)``: one Progress display per step."""

    def __init__(self) -> None:
        self.current: Progress | None = None

    def __call__(self, what: str, done: int, total: int) -> None:
        if self.current is None or self.current.description != what:
            self.close()
            self.current = Progress(what, total, unit="blob")
        self.current.update(done, total)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None


def _fsck(args: argparse.Namespace) -> int:
    from .fsck_network import check_snapshots, renew_certificates, verify_blobs

    state = resolve_source(args.source)
    try:
        settings = state.load_settings()
    except UserError as error:
        raise UserError(str(error), exit_code=FSCK_OPERATIONAL_ERROR) from None
    try:
        lock = acquire_lock(state)
    except UserError:  # the daemon owns the database while mounted
        raise UserError(f"{state.root} is mounted: unmount it first (walrusfs umount DIR), then run fsck",
                        exit_code=FSCK_OPERATIONAL_ERROR) from None
    silent: list[str] = []  # nodes that never answered the network checks
    try:
        committee = Committee.load(settings.committee)
        db = Database(state.db_path)
        try:
            fsck = Fsck(db, state, settings, fs_chain(state, committee), repair=not args.dry_run)
            # The report below prints every finding: logging them as well said each one twice.
            logging.getLogger("walrusfs.fs.fsck").setLevel(logging.CRITICAL)
            fsck.run_local()
            if not args.offline:
                key = load_key(Path(settings.writer_key))
                fs_key = load_key(Path(settings.fs_key or state.fs_key_path))

                async def network() -> None:
                    async with fs_client(state, committee, key) as client:
                        await client.refresh_chain("fsck")
                        fsck.committee = client.chain  # certificates of every epoch up to now
                        await renew_certificates(fsck, client)
                        await check_snapshots(fsck, client, fs_key)
                        if args.deep:
                            steps = None if args.json else _Steps()
                            try:
                                await verify_blobs(fsck, client, steps)
                            finally:
                                if steps is not None:
                                    steps.close()
                        silent.extend(node for node, health in client.health.snapshot().items()
                                      if health["failures"] and not health["successes"])

                trio.run(network)
        finally:
            db.close()
    finally:
        os.close(lock)
    report = fsck.report
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        for check in report.checks:
            print(f"  checked: {check}")
        for finding in report.findings:
            print(f"{'repaired' if finding.repaired else 'PROBLEM '}  [{finding.check}] {finding.message}")
        print("clean" if not report.findings else
              f"{len(report.repaired)} repaired, {len(report.unrepaired)} left unrepaired")
    if not args.offline and silent and report.unrepaired:
        print(f"{len(silent)} of {len(committee.nodes)} nodes did not answer ({', '.join(silent)}): start them "
              "(walrusfs cluster up, for the bundled network) and run fsck again, or check only the local "
              f"metadata now with: walrusfs fsck {args.source} --offline", file=sys.stderr)
    return report.exit_code


def _restore(args: argparse.Namespace) -> int:
    state = resolve_source(args.name)
    committee_path = bundled_file(args.committee, COMMITTEE_FILE)
    writer_key_path = bundled_file(args.writer_key, WRITER_KEY_FILE)
    committee = Committee.load(committee_path)
    report = trio.run(lambda: restore_state(state, committee_path, committee, writer_key_path,
                                            load_key(writer_key_path), load_key(args.key), force=args.force))
    for finding in report.findings:
        print(f"fsck after restore: {finding.message}", file=sys.stderr)
    print(f"mount it with: walrusfs mount {args.name} DIR")
    return 0


def _snapshots(args: argparse.Namespace) -> int:
    state = resolve_source(args.source)
    settings = state.load_settings()
    committee = Committee.load(settings.committee)
    fs_key = load_key(Path(settings.fs_key or state.fs_key_path))

    async def chain():
        async with fs_client(state, committee) as client:
            await client.refresh_chain("snapshots")
            return await find_chain(client, fs_key)

    found = trio.run(chain)
    if args.json:
        print(json.dumps([{"seq": r.seq, "created_ns": r.created_ns, "manifest": r.manifest} for r in found.all],
                         indent=1))
        return 0
    print(f"snapshots of filesystem {settings.fs_id} kept on the network (newest last):")
    for ref in found.all:
        print(f"  {describe(ref)}  manifest {ref.manifest}")
    print(f"mount an older one read-only with: walrusfs mount {args.source} DIR -o snapshot=N")
    return 0


def _snapshot(args: argparse.Namespace) -> int:
    mountpoint = args.mountpoint.resolve()
    read_status(mountpoint)  # a clear error if it is not a walrusfs mount
    started = time.monotonic()
    try:
        os.setxattr(mountpoint, CONTROL_PREFIX + b"snapshot", b"1")
    except OSError as error:
        reason = (read_status(mountpoint).snapshot or SnapshotStatus()).last_error or error.strerror
        raise UserError(f"no snapshot published: {reason}") from None
    status = read_status(mountpoint).snapshot or SnapshotStatus()
    print(f"snapshot {status.seq} published ({(status.db_bytes or 0) / 2**20:.1f} MiB of metadata, "
          f"{(status.uploaded_bytes or 0) / 2**20:.2f} MiB new) in {time.monotonic() - started:.1f} s")
    return 0


def _share(args: argparse.Namespace) -> int:
    state = resolve_source(args.source)
    settings = state.load_settings()
    fs_key_path = Path(settings.fs_key or state.fs_key_path)
    if not fs_key_path.exists():
        raise UserError(f"{state.root} holds no key of its filesystem (it was made from a read capability): "
                        "only the holder of the filesystem's key can share it")
    fs_key = load_key(fs_key_path)
    capability = ReadCapability(settings.fs_id, read_key_of(fs_key), args.snapshot)
    print(capability.to_text())
    which = "the latest snapshot at each mount" if args.snapshot is None else f"snapshot {args.snapshot}"
    print(f"anyone holding this string and the committee file can read every file of {settings.fs_id} "
          f"({which}); it cannot write or publish. Mount it with: mount -t walrusfs CAPABILITY DIR. Treat it as "
          "a secret: it decrypts the data.", file=sys.stderr)
    return 0


def _rotate_key(args: argparse.Namespace) -> int:
    state = resolve_source(args.source)
    settings = state.load_settings()
    if settings.encryption == NO_ENCRYPTION:
        raise UserError(f"{settings.fs_id} is not encrypted (mkfs --no-encryption): it has no data key to rotate")
    if not Path(settings.fs_key or state.fs_key_path).exists():
        raise UserError(f"{state.root} holds no key of its filesystem (it was made from a read capability): "
                        "only its writer can rotate its data key")
    lock = acquire_lock(state)  # refused while it is mounted: the mount seals with the key it loaded
    try:
        db = Database(state.db_path)
        try:
            key_id = add_data_key(db)
        finally:
            db.close()
    finally:
        os.close(lock)
    print(f"data key {key_id} added to {settings.fs_id}: blocks written from its next mount on are sealed with it. "
          "Blocks written before keep their key and stay readable; nothing is re-encrypted. Read capabilities keep "
          "reading everything (the snapshots carry every data key). fs.key stays the one thing to back up.",
          file=sys.stderr)
    return 0


__all__ = ["register"]
