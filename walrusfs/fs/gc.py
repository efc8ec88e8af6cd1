"""Garbage collection: releasing from the nodes the blobs a filesystem can no longer reach (docs/gc.md).

One pass, in the mount (every ``gc_interval`` seconds, and on ``walrusfs gc``) or on an unmounted
filesystem (``walrusfs gc``):

1. Compact (compaction.py): blobs mostly dead have their live blocks repacked into new blobs, the
   block map moved in one transaction; the old blobs are then garbage like any other.
2. Collect, holding the snapshot publisher's lock (so no snapshot is being copied meanwhile):
   compute what is reachable (reachable.py); every blob not reachable that the database knows of
   goes on the to-release list (gc_release) in one transaction: data blobs without live blocks, and
   the segment and manifest blobs of snapshots that aged out. Aged-out snapshot records go in the
   same transaction, so nothing is ever forgotten between the two.
3. Release each listed blob on every node (walrusfs.client.lifecycle.release_blob). Only when every
   node of the committee has released it do its list entry and its blobs row go, in one transaction.
   An incomplete release stays listed and is retried by the next pass.

Crash safety: the list is written before any node hears of a release, and emptied only after every
node has; a crash in between repeats releases, which nodes answer with 404 (released). A blob is
listed only while nothing reaches it, and it leaves the list if a store makes it again
(Catalog.record_certified).
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ..client import BlobClient
from ..client.lifecycle import release_blob
from ..errors import UserError
from ..redstuff import BlobId
from .cache import BlobCache
from .catalog import Catalog
from .compaction import Compactor
from .config import FsSettings, FsState
from .db import Database
from .reachable import Reachability, blobs_of_database_file, blobs_of_snapshot, compute, record_snapshot

log = logging.getLogger(__name__)

PARALLEL_RELEASES = 8
Progress = Callable[[str, int, int], None]  # (step, done, total)


class GcError(UserError):
    """gc could not run safely: the message says why and what to do; nothing was deleted."""


@dataclass
class GcReport:
    dry_run: bool = False
    garbage_blobs: int = 0  # found unreachable by this pass (listed for release)
    garbage_bytes: int = 0
    released_blobs: int = 0  # released on every node by this pass
    released_bytes: int = 0
    pending_blobs: int = 0  # still listed: some node has not released them yet
    pending_bytes: int = 0
    referenced_blobs: int = 0  # reachable: kept
    referenced_bytes: int = 0
    compacted_blobs: int = 0  # repacked by compaction (their old blobs listed for release)
    rewritten_bytes: int = 0  # live bytes compaction stored again
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GcReport:
        known = {name: value for name, value in data.items() if name in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class Candidate:
    blob_id: str
    length: int


def find_garbage(db: Database, reach: Reachability) -> list[Candidate]:
    """Every blob the database knows of that nothing reaches and that is not listed yet."""
    listed = {blob_id for (blob_id,) in db.execute("SELECT blob_id FROM gc_release")}
    found: dict[str, int] = {}
    for blob_id, length in db.execute("SELECT blob_id, length FROM blobs WHERE refcount = 0"):
        if blob_id not in reach and blob_id not in listed:
            found[blob_id] = int(length)
    live_rows = {blob_id for (blob_id,) in db.execute("SELECT blob_id FROM blobs WHERE refcount > 0")}
    for blob_id, length in db.execute(
            "SELECT b.blob_id, MAX(b.length) FROM snapshot_blobs b JOIN snapshots s ON s.seq = b.seq "
            "WHERE s.retained = 0 GROUP BY b.blob_id"):
        if blob_id not in reach and blob_id not in listed and blob_id not in live_rows:
            found.setdefault(blob_id, int(length))
    return [Candidate(blob_id, length) for blob_id, length in found.items()]


def list_for_release(db: Database, garbage: list[Candidate]) -> None:
    """Put ``garbage`` on the to-release list and drop the aged-out snapshot records, in one
    transaction: every blob they needed is now listed, still needed by a retained one, or live."""
    now = time.time_ns()
    with db.transaction():
        db.conn.executemany("INSERT OR IGNORE INTO gc_release (blob_id, length, queued_ns) VALUES (?, ?, ?)",
                            [(c.blob_id, c.length, now) for c in garbage])
        db.execute("DELETE FROM snapshot_blobs WHERE seq IN (SELECT seq FROM snapshots WHERE retained = 0)")
        db.execute("DELETE FROM snapshots WHERE retained = 0")


def still_garbage(db: Database, blob_id: str) -> bool:
    """Checked (without awaiting) right before a release: listed, and used by no live block."""
    if db.get_val("SELECT 1 FROM gc_release WHERE blob_id=?", (blob_id,)) is None:
        return False
    return not db.get_val("SELECT refcount FROM blobs WHERE blob_id=?", (blob_id,))


class GarbageCollector:
    """One filesystem's gc. ``lock``: the snapshot publisher's (a mount's), held while collecting;
    ``own_changes``: the publisher's, so that gc's bookkeeping does not make a snapshot due."""

    def __init__(self, db: Database, state: FsState, client: BlobClient, owner: str, *,
                 catalog: Catalog | None = None, cache: BlobCache | None = None,
                 lock: AbstractAsyncContextManager[Any] | None = None,
                 own_changes: Callable[[], Any] | None = None, read_key: bytes | None = None,
                 compact_below: float = 0.0, blob_size: int = 32 << 20,
                 guard: Callable[[], Awaitable[None]] | None = None) -> None:
        """``guard``: raises unless this process still holds the filesystem's writer lease. Another
        writer works from its own copy of the tree: what is garbage here may be live there."""
        self.db = db
        self.state = state
        self.client = client
        self.owner = owner
        self.catalog = catalog or Catalog(db)
        self.cache = cache
        self.lock = lock
        self.own_changes = own_changes or nullcontext
        self.read_key = read_key
        self.compact_below = compact_below
        self.blob_size = blob_size
        self.guard = guard
        self.last: GcReport | None = None
        self.running: GcReport | None = None
        self.progress: tuple[str, int, int] | None = None  # what the running pass is doing
        self._one = trio.Lock()

    @classmethod
    def for_mount(cls, db: Database, state: FsState, client: BlobClient, settings: FsSettings, catalog: Catalog,
                  cache: BlobCache, publisher: Any, lease: Any, read_key: bytes, blob_size: int) -> GarbageCollector:
        """A writable mount's: collecting under its publisher's lock, only while it holds the lease."""
        return cls(db, state, client, settings.fs_id, catalog=catalog, cache=cache, lock=publisher.lock,
                   own_changes=publisher.own_changes, read_key=read_key, compact_below=settings.compact_below,
                   blob_size=blob_size, guard=None if lease is None else lease.ensure_held)

    async def run(self, dry_run: bool = False, progress: Progress | None = None) -> GcReport:
        """One pass; returns what it did (``dry_run``: what it would delete, and deletes nothing)."""
        async with self._one:
            report = self.running = GcReport(dry_run=dry_run)
            started = time.monotonic()

            def step(what: str, done: int, total: int) -> None:
                self.progress = (what, done, total)
                if progress is not None:
                    progress(what, done, total)

            try:
                await self._check_guard()
                reach = await self._reachability()
                if self.compact_below > 0:
                    compacted = await Compactor(self, reach).run(dry_run, step)
                    report.compacted_blobs, report.rewritten_bytes = compacted.blobs, compacted.rewritten_bytes
                await self._check_guard()
                async with self.lock or nullcontext():
                    # Again, holding the publisher's lock: no snapshot is being copied meanwhile, and
                    # every one copied before is recorded (I12). Compacted blobs are garbage now.
                    reach = compute(self.db, self.state)
                    if reach.unrecorded:
                        raise GcError(f"snapshots {reach.unrecorded} appeared unrecorded; nothing was deleted: "
                                      "run walrusfs gc again")
                    garbage = find_garbage(self.db, reach)
                    if not dry_run:  # no await since the reachability: nothing changed meanwhile
                        with self.own_changes():
                            list_for_release(self.db, garbage)
                report.garbage_blobs, report.garbage_bytes = len(garbage), sum(c.length for c in garbage)
                referenced = self._referenced_lengths(reach)
                report.referenced_blobs, report.referenced_bytes = len(referenced), sum(referenced.values())
                if dry_run:
                    listed = self.db.execute("SELECT COUNT(*), COALESCE(SUM(length), 0) FROM gc_release").fetchone()
                    report.pending_blobs, report.pending_bytes = int(listed[0]), int(listed[1])
                else:
                    await self._release_listed(report, step)
            finally:
                report.seconds = round(time.monotonic() - started, 3)
                self.last, self.running, self.progress = report, None, None
            log.info("gc%s: %d blobs (%d bytes) garbage, %d (%d bytes) released, %d (%d bytes) pending, "
                     "%d blobs compacted (%d bytes rewritten), %d blobs (%d bytes) referenced, %.1f s",
                     " (dry run)" if dry_run else "", report.garbage_blobs, report.garbage_bytes,
                     report.released_blobs, report.released_bytes, report.pending_blobs, report.pending_bytes,
                     report.compacted_blobs, report.rewritten_bytes, report.referenced_blobs,
                     report.referenced_bytes, report.seconds)
            return report

    async def _check_guard(self) -> None:
        if self.guard is None:
            return
        try:
            await self.guard()
        except OSError as error:
            raise GcError(f"gc stopped, nothing more deleted: {error.strerror or error}") from None

    def _referenced_lengths(self, reach: Reachability) -> dict[str, int]:
        lengths = {blob_id: int(length) for blob_id, length in self.db.execute("SELECT blob_id, length FROM blobs")}
        for blob_id, length in self.db.execute("SELECT blob_id, MAX(length) FROM snapshot_blobs GROUP BY blob_id"):
            lengths.setdefault(blob_id, int(length))
        return {blob_id: lengths.get(blob_id, 0) for blob_id in reach.all}

    async def _reachability(self) -> Reachability:
        """What is reachable, with every retained snapshot recorded: one published before schema 3
        has its database read from the network first. If that fails, gc stops (GcError)."""
        reach = compute(self.db, self.state)
        if reach.unrecorded:
            await self._record_from_network(reach.unrecorded)
            reach = compute(self.db, self.state)
        if reach.unrecorded:
            raise GcError(f"snapshots {reach.unrecorded} are retained but gc could not learn which blobs they "
                          "need; nothing was deleted. Check that the nodes are up (walrusfs cluster status) and "
                          "run walrusfs gc again.")
        return reach

    async def _record_from_network(self, seqs: list[int]) -> None:
        from .restore import find_chain_of, manifest_in, restore_db_file

        try:
            chain = await find_chain_of(self.client, self.owner, self.read_key)
        except UserError as error:
            log.warning("gc: cannot read the snapshot chain: %s", error)
            return
        known = {ref.seq: ref for ref in chain.all}
        for seq in seqs:
            if seq not in known:
                continue  # no longer on the network: nothing to keep for it
            try:
                manifest, manifest_id = await manifest_in(self.client, self.owner, self.read_key, chain, seq)
                sealed = await self.client.read(BlobId.parse(manifest_id))
                scratch = self.state.root / f"gc-snapshot-{seq}.db"
                try:
                    await restore_db_file(self.client, manifest, scratch, quiet=True, read_key=self.read_key)
                    data = await trio.to_thread.run_sync(blobs_of_database_file, scratch)
                finally:
                    for suffix in ("", "-wal", "-shm"):
                        Path(f"{scratch}{suffix}").unlink(missing_ok=True)
            except (UserError, OSError, Exception) as error:  # a read that failed: that snapshot stays unknown
                log.warning("gc: snapshot %d: cannot read its database: %s", seq, error)
                continue
            with self.own_changes():
                record_snapshot(self.db, seq, manifest.created_ns, manifest_id,
                                blobs_of_snapshot(data, manifest, manifest_id, len(sealed)))
            log.info("gc: snapshot %d (published before gc kept records) recorded: %d blobs", seq, len(data))

    async def _release_listed(self, report: GcReport, step: Callable[[str, int, int], None]) -> None:
        listed = [(blob_id, int(length)) for blob_id, length in
                  self.db.execute("SELECT blob_id, length FROM gc_release ORDER BY queued_ns, blob_id").fetchall()]
        limiter = trio.CapacityLimiter(PARALLEL_RELEASES)
        done = 0
        step("releasing", 0, len(listed))

        async def one(blob_id: str, length: int) -> None:
            nonlocal done
            async with limiter:
                await self._release_one(blob_id, length, report)
            done += 1
            step("releasing", done, len(listed))

        async with trio.open_nursery() as nursery:
            for blob_id, length in listed:
                nursery.start_soon(one, blob_id, length)

    async def _release_one(self, blob_id: str, length: int, report: GcReport) -> None:
        if not still_garbage(self.db, blob_id):
            # Made again by a store since it was listed (which took it off the list): live. A list
            # written by an older pass that missed that is mended here.
            with self.own_changes():
                self.db.execute("DELETE FROM gc_release WHERE blob_id=? AND EXISTS "
                                "(SELECT 1 FROM blobs WHERE blob_id=? AND refcount > 0)", (blob_id, blob_id))
            return
        self.catalog.begin_release(blob_id)
        try:
            outcome = await release_blob(self.client, BlobId.parse(blob_id), self.owner)
        except BaseException:
            self.catalog.end_release(blob_id)
            raise
        with self.own_changes(), self.db.transaction():
            if outcome.complete:
                self.db.execute("DELETE FROM gc_release WHERE blob_id=?", (blob_id,))
                self.db.execute("DELETE FROM blobs WHERE blob_id=? AND refcount = 0", (blob_id,))
            else:
                self.db.execute("UPDATE gc_release SET attempts = attempts + 1, last_error = ? WHERE blob_id=?",
                                (outcome.describe(), blob_id))
        self.catalog.end_release(blob_id)
        if outcome.complete:
            report.released_blobs += 1
            report.released_bytes += length
            if self.cache is not None:
                self.cache.drop(blob_id)
        else:
            report.pending_blobs += 1
            report.pending_bytes += length
            if len(report.errors) < 10:
                report.errors.append(outcome.describe())

    def controls(self) -> dict[bytes, Callable[[], Awaitable[None]]]:
        """The mount's control xattrs (walrusfs.gc, walrusfs.gc-dry-run): ``walrusfs gc`` on a mounted
        filesystem. The report goes into the mount's status (gc_status)."""

        async def asked(dry_run: bool) -> None:
            try:
                await self.run(dry_run=dry_run)
            except GcError as error:
                log.error("gc: %s", error)
                raise OSError(errno.EAGAIN, str(error)) from error

        return {b"gc": partial(asked, False), b"gc-dry-run": partial(asked, True)}

    async def run_periodically(self, interval: float) -> None:
        """The mount's background gc: a pass every ``interval`` seconds (0: never)."""
        if interval <= 0:
            return
        while True:
            await trio.sleep(interval)
            try:
                await self.run()
            except GcError as error:
                log.error("background gc: %s", error)
            except Exception:  # a bug here must not take the mount down: the next pass tries again
                log.exception("background gc failed")


def gc_status(collector: GarbageCollector) -> dict[str, Any]:
    """The mount's status entry: the last pass's report, and the running one's progress."""
    out: dict[str, Any] = {"last": None if collector.last is None else collector.last.to_json()}
    if collector.progress is not None:
        what, done, total = collector.progress
        out["running"] = {"step": what, "done": done, "total": total}
    elif collector.running is not None:
        out["running"] = {"step": "collecting", "done": 0, "total": 0}
    return out
