"""A read capability's mount of the latest snapshot follows new ones while it stays mounted.

Every ``follow_interval`` seconds (a mount option) the mount reads the filesystem's root record. When
the writer has published a newer snapshot, its database is restored beside the one in use
(``metadata.next.db``: every segment opened and checked as at mount), checked with fsck, and then
put in place of the one in use in one step of the event loop, so no request sees half of each.
The kernel is then told to forget what it cached of the names and inodes that changed.

What a process sees at the switch (docs/encryption.md, "Following new snapshots"):
- new files appear, changed files read their new content and size;
- an open file that the new snapshot no longer has reads as ESTALE (operations.py), with a log
  line: its blocks may be gone from the nodes once the writer's garbage is collected, so reading on
  from the old snapshot would fail some time later anyway, and a clear error now is better;
- a read that was under way when the switch came finishes from the old snapshot; the next read
  of the file sees the new one.

A failed check (nodes unreachable, a damaged snapshot) leaves the mount on the snapshot it shows,
logs why, and is tried again at the next interval. A mount of a pinned snapshot (``share --snapshot N``)
never follows.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from ..client import BlobClient
from ..client.roots import find_root
from ..durable import replace_durably
from ..errors import UserError
from .config import FsSettings, FsState
from .data_keys import data_keys_in
from .db import Database
from .encryption import Contents, contents_for
from .fsck import Fsck
from .mount_status import SnapshotStatus
from .namespace import ROOT
from .operations import WalrusOperations
from .publisher import LocalSnapshotState
from .restore import read_manifest, restore_db_file
from .snapshot import Manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Changes:
    """What differs between the database in use and the next one, for the kernel to forget."""

    entries: list[tuple[int, bytes]]  # (parent, name) removed or pointing elsewhere
    inodes: list[int]  # inodes whose attributes, data or target changed or that are gone


def changes_between(current: Path, following: Path) -> Changes:
    """The names and inodes of ``current`` that ``following`` no longer has as they are (its own
    connections: safe in a worker thread while the mount reads ``current``)."""
    conn = sqlite3.connect(f"file:{current}?mode=ro", uri=True)
    try:
        conn.execute("ATTACH DATABASE ? AS next", (f"file:{following}?mode=ro",))
        entries = conn.execute("SELECT parent, name FROM main.dirents d WHERE NOT EXISTS (SELECT 1 FROM "
                               "next.dirents n WHERE n.parent = d.parent AND n.name = d.name AND n.inode = d.inode)"
                               ).fetchall()
        # Rows of the tables that describe an inode, changed or gone: (table, its inode column).
        parts = [f"SELECT {column} FROM (SELECT * FROM main.{table} EXCEPT SELECT * FROM next.{table})"
                 for table, column in (("inodes", "id"), ("inode_blocks", "inode"), ("symlinks", "inode"),
                                       ("xattrs", "inode"))]
        inodes = conn.execute(" UNION ".join(parts)).fetchall()
    finally:
        conn.close()
    return Changes([(parent, bytes(name)) for parent, name in entries], [inode for (inode,) in inodes])


class SnapshotFollower:
    """Switches a read-only mount of a read capability to each newer snapshot (module docstring)."""

    def __init__(self, state: FsState, settings: FsSettings, read_key: bytes, client: BlobClient, db: Database,
                 operations: WalrusOperations, interval: float) -> None:
        self.state = state
        self.settings = settings
        self.read_key = read_key
        self.client = client
        self.db = db
        self.operations = operations
        self.interval = interval
        local = LocalSnapshotState.load(state)
        self.seq = local.seq
        self.created_ns = local.created_ns
        self.manifest = local.manifest
        self.last_error: str | None = None
        self.next_path = state.root / "metadata.next.db"

    def status(self) -> SnapshotStatus:
        return SnapshotStatus(seq=self.seq, created_ns=self.created_ns, manifest=self.manifest, following=True,
                              reported=frozenset({"seq", "created_ns", "manifest", "following"}))

    async def run(self) -> None:
        while True:
            await trio.sleep(self.interval)
            try:
                await self.check()
                self.last_error = None
            except Exception as error:  # whatever it was, the mount goes on showing the snapshot it has
                self.last_error = str(error)
                log.warning("could not follow filesystem %s to a newer snapshot (this mount stays on snapshot %s; "
                            "tried again in %.0f s): %s", self.settings.fs_id, self.seq, self.interval, error)

    async def check(self) -> bool:
        """Switch to the newest snapshot if it is newer than the one shown. Returns whether it switched."""
        root = await find_root(self.client.connections, self.client.committee, self.settings.fs_id)
        if root is None or (self.seq is not None and root.seq <= self.seq):
            return False
        manifest = await read_manifest(self.client, str(root.snapshot), self.settings.fs_id, self.read_key)
        if manifest.seq != root.seq:
            raise UserError(f"root record {root.seq} points at a manifest of snapshot {manifest.seq}")
        self.next_path.unlink(missing_ok=True)
        await restore_db_file(self.client, manifest, self.next_path, quiet=True, read_key=self.read_key)
        contents = await trio.to_thread.run_sync(self._check_next, manifest)
        changes = await trio.to_thread.run_sync(changes_between, self.db.path, self.next_path)
        self._switch(manifest, str(root.snapshot), contents)
        await trio.to_thread.run_sync(self._invalidate, changes)
        # Reported only now: whoever waits for it (walrusfs status) finds the kernel's caches current.
        log.info("now showing snapshot %d of filesystem %s (was %s)", manifest.seq, self.settings.fs_id, self.seq)
        self.seq, self.created_ns, self.manifest = manifest.seq, manifest.created_ns, str(root.snapshot)
        return True

    def _check_next(self, manifest: Manifest) -> Contents:
        """fsck of the restored database, as at mount: blocks the writer had staged, not certified,
        when it took the snapshot are holes, reported here. Returns how its blocks open: the writer
        may have rotated its data key since, and new blocks be sealed with a key only it lists."""
        db = Database(self.next_path)
        try:
            contents = contents_for(self.settings.encryption, self.read_key, data_keys_in(db))
            report = Fsck(db, self.state, self.settings, self.client.chain, contents=contents).run_local()
        finally:
            db.close()
        for finding in report.findings:
            log.warning("snapshot %d: %s", manifest.seq, finding.message)
        return contents

    def _switch(self, manifest: Manifest, manifest_id: str, contents: Contents) -> None:
        """Put the next database in place of the one in use: no await, so no request sees both."""
        self.db.conn.close()
        try:
            for suffix in ("-wal", "-shm"):  # a read-only mount's: nothing in them is kept
                Path(f"{self.db.path}{suffix}").unlink(missing_ok=True)
            self.next_path.replace(self.db.path)
            for suffix in ("-wal", "-shm"):  # left by fsck's connection, empty
                Path(f"{self.next_path}{suffix}").unlink(missing_ok=True)
        finally:
            self.db.reopen()  # the next database, or the one in use if it could not be replaced
        self.operations.blocks.contents = contents
        replace_durably(self.state.snapshot_manifest, manifest.to_bytes())
        LocalSnapshotState(manifest.seq, manifest.created_ns, manifest_id, manifest.seq, True).save(self.state)

    def _invalidate(self, changes: Changes) -> None:
        """Tell the kernel to forget cached names and attributes that changed (in a worker thread:
        these calls block until the kernel is done, which may need the event loop to answer)."""
        known = set(self.operations.lookup_count) | set(self.operations.open_count) | {ROOT}
        for parent, name in changes.entries:
            if parent in known:
                with contextlib.suppress(OSError):  # the kernel has already forgotten it
                    pyfuse3.invalidate_entry(parent, name)
        for inode in changes.inodes:
            if inode in known:
                with contextlib.suppress(OSError):
                    pyfuse3.invalidate_inode(inode)
