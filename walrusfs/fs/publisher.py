"""The mount's side of metadata snapshots: when to take one, and publishing it under the root record.

Snapshots are taken every ``snapshot_interval`` seconds while the tree changed, when asked
(``walrusfs snapshot DIR``), and at unmount. Sequence numbers only grow, even across failed
attempts (the attempted number is written down before the root record goes out), so a half-
published record can never be contradicted by a different one with the same number. A root
record on the network with a number above ours means another machine wrote this filesystem: we
refuse to publish over it and say so.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..client import BlobClient
from ..client.roots import RootQuorumError, find_root, publish_root
from ..durable import replace_durably
from ..protocol.roots import RootRecord, fs_id_of_key
from ..redstuff import BlobId
from ..retry import Backoff, Retrier
from .config import FsSettings, FsState
from .db import Database
from .encryption import contents_of
from .mount_status import SnapshotStatus
from .reachable import blobs_of_database_file, blobs_of_snapshot, record_snapshot, retire_snapshots
from .snapshot import (
    Manifest,
    RetentionPolicy,
    SnapshotError,
    SnapshotRef,
    copy_database,
    plan_segments,
    seal_manifest,
    settings_for_manifest,
    store_segments,
)

log = logging.getLogger(__name__)

CERTIFY_WAIT = 120.0  # seconds a snapshot waits for staged data to be certified first


@dataclass
class LocalSnapshotState:
    """<state>/snapshot.json: the last snapshot this machine published, and the highest number
    it ever tried to publish."""

    seq: int | None = None
    created_ns: int | None = None
    manifest: str | None = None
    attempted: int = 0
    up_to_date: bool = False  # the database has not changed since snapshot ``seq``
    # The writer lease snapshot ``seq`` was published under (walrusfs.roots version 2); generation
    # 0: a version-1 record, published before writer leases. fsck republishes the record from these.
    generation: int = 0
    holder: str = ""
    attempted_generation: int = 0  # the lease generation ``attempted`` was tried under

    @property
    def newest(self) -> tuple[int, int]:
        """The highest (generation, seq) this state published or may have published: a root record
        above it on the network was published by another writer."""
        return max((self.generation, self.seq or 0), (self.attempted_generation, self.attempted))

    @classmethod
    def load(cls, state: FsState) -> LocalSnapshotState:
        try:
            return cls(**json.loads(state.snapshot_state.read_text()))
        except FileNotFoundError:
            return cls()
        except (ValueError, TypeError) as error:
            raise SnapshotError(f"{state.snapshot_state} is damaged ({error}); run 'walrusfs fsck'") from None

    def save(self, state: FsState) -> None:
        replace_durably(state.snapshot_state, json.dumps(self.__dict__).encode())

    @property
    def next_seq(self) -> int:
        return max(self.seq or 0, self.attempted) + 1


def retention_of(settings: FsSettings) -> RetentionPolicy:
    return RetentionPolicy(settings.snapshot_keep_last, settings.snapshot_keep_daily, settings.snapshot_keep_monthly)


class SnapshotPublisher:
    def __init__(self, state: FsState, settings: FsSettings, db: Database, client: BlobClient,
                 key: Ed25519PrivateKey, certify_staged: Callable[[], Awaitable[None]] | None = None) -> None:
        self.state = state
        self.settings = settings
        self.db = db
        self.client = client
        self.key = key
        # Called first (bounded in time): a snapshot that finds blocks certified records where they
        # are on the network; one that finds them staged can only record that they were staged.
        self.certify_staged = certify_staged
        self.fs_id = fs_id_of_key(key)
        self.contents = contents_of(settings.encryption, key)  # seals segments and the manifest
        self.local = LocalSnapshotState.load(state)
        self.last_error: str | None = None
        self.last_db_bytes = 0
        self.last_uploaded_bytes = 0
        self.lock = trio.Lock()  # one snapshot at a time; gc collects holding it too (gc.py)
        self._changes_seen: int | None = None  # db total_changes at the last snapshot
        self._own_changes = 0  # of them, bookkeeping (own_changes)
        self._next_due: float | None = None
        # The mount's WriterLease (writer_lease.py), set before the first snapshot: records carry its
        # fence, and none is published unless it is held.
        self.lease: Any = None

    def mark_mounted(self) -> None:
        """From now on the tree may change; a crash before the next snapshot leaves it changed."""
        if self.local.up_to_date and self.local.seq is not None:
            self._changes_seen = self.db.conn.total_changes
        self.local.up_to_date = False
        self.local.save(self.state)

    def mark_unmounted(self) -> None:
        if self._changes_seen is not None and not self.changed():
            self.local.up_to_date = True
            self.local.save(self.state)

    @contextmanager
    def own_changes(self) -> Iterator[None]:
        """Bookkeeping written inside (snapshot records, gc's lists) is no change of the tree: it
        must not make the next snapshot due. Call without awaiting inside."""
        before = self.db.conn.total_changes
        yield
        own = self.db.conn.total_changes - before
        self._own_changes += own
        if self._changes_seen is not None:
            self._changes_seen += own

    def changed(self) -> bool:
        return self._changes_seen is None or self.db.conn.total_changes != self._changes_seen

    def status(self) -> SnapshotStatus:
        return SnapshotStatus(
            seq=self.local.seq, created_ns=self.local.created_ns, manifest=self.local.manifest,
            db_bytes=self.last_db_bytes, uploaded_bytes=self.last_uploaded_bytes, last_error=self.last_error,
            next_due_s=None if self._next_due is None else max(0.0, self._next_due - trio.current_time()),
        )

    def previous_manifest(self) -> Manifest | None:
        if self.local.manifest is None:
            return None
        try:
            return Manifest.from_bytes(self.state.snapshot_manifest.read_bytes())
        except (OSError, SnapshotError) as error:
            log.warning("previous snapshot manifest unreadable (%s): the next snapshot stores every segment", error)
            return None

    async def snapshot(self, reason: str) -> SnapshotRef:
        """Take, store and publish a snapshot of the committed tree; returns it once the root
        record is on a quorum (or the last one, if nothing changed since). Raises SnapshotError
        (the message says why) otherwise."""
        async with self.lock:
            if not self.changed() and self.local.seq is not None and self.local.manifest is not None:
                return SnapshotRef(self.local.seq, self.local.created_ns or 0, self.local.manifest)
            if self.certify_staged is not None:
                with trio.move_on_after(CERTIFY_WAIT):
                    try:
                        await self.certify_staged()
                    except OSError as error:
                        log.warning("staged data not certified before the snapshot: %s", error)
            try:
                ref = await self._snapshot(reason)
            except (SnapshotError, RootQuorumError) as error:
                self.last_error = str(error)
                raise SnapshotError(str(error)) from None
            except Exception as error:  # a store that failed (StoreError), a full disk (OSError)
                self.last_error = f"{type(error).__name__}: {error}"
                raise SnapshotError(f"snapshot failed: {error}") from error
            self.last_error = None
            return ref

    async def _snapshot(self, reason: str) -> SnapshotRef:
        started = time.monotonic()
        changes, own_before = self.db.conn.total_changes, self._own_changes
        seq = self.local.next_seq
        await self._ensure_lease()
        network = await find_root(self.client.connections, self.client.committee, self.fs_id)
        if network is not None and self.lease is not None and network.generation < self.lease.generation:
            seq = max(seq, network.seq + 1)  # a predecessor's records (one it could not finish, too)
        elif network is not None and network.seq >= seq:
            raise SnapshotError(
                f"the network holds snapshot {network.seq} of this filesystem, newer than any this machine "
                f"published ({self.local.seq}): another machine has written it. Not publishing over it; "
                "unmount, and restore from the network to continue from that state.")
        copy = self.state.root / "snapshot.db.tmp"
        previous = self.previous_manifest()
        try:
            await trio.to_thread.run_sync(copy_database, self.db.path, copy)
            plan = await trio.to_thread.run_sync(plan_segments, copy, previous, self.contents)
            data_blobs = await trio.to_thread.run_sync(blobs_of_database_file, copy)
        finally:
            copy.unlink(missing_ok=True)

        async def store_blob(data: bytes) -> str:
            return str((await self.client.store(data)).blob_id)

        segments = await store_segments(plan, store_blob, self.settings.blob_size)
        created = time.time_ns()
        history: list[SnapshotRef] = []
        if previous is not None and self.local.manifest is not None:
            history = [*previous.history, SnapshotRef(previous.seq, previous.created_ns, self.local.manifest)]
            history = retention_of(self.settings).keep(history, created)
        manifest = Manifest(self.fs_id, seq, created, settings_for_manifest(self.settings), plan.db_size,
                            plan.db_hash, segments, history)
        manifest_bytes = manifest.to_bytes()
        sealed = seal_manifest(manifest_bytes, self.contents)
        manifest_id = await store_blob(sealed)
        # What it needs, recorded before any node sees its root record: gc keeps these (I12). The lock
        # held here is the one gc collects under, so gc never misses a snapshot being taken.
        with self.own_changes():
            record_snapshot(self.db, seq, created, manifest_id,
                            blobs_of_snapshot(data_blobs, manifest, manifest_id, len(sealed)))
        fence = None if self.lease is None else self.lease.fence
        self.local.attempted = seq
        self.local.attempted_generation = fence[1] if fence else 0
        self.local.save(self.state)  # before any node sees the number: never reused
        record = RootRecord.create(self.key, seq, BlobId.parse(manifest_id), created, fence)
        await self._ensure_lease()
        try:
            # Nodes that are down are retried until the deadline even once a quorum holds the record,
            # so it is the mount's store deadline (store_deadline=), like any other store's.
            await publish_root(self.client.connections, self.client.committee, record,
                               deadline=self.client.settings.store_deadline)
        except RootQuorumError:
            await self._ensure_lease()  # fenced out by a takeover? then say that, not "no quorum"
            raise
        replace_durably(self.state.snapshot_manifest, manifest_bytes)
        self.local.seq, self.local.created_ns, self.local.manifest = seq, created, manifest_id
        self.local.holder, self.local.generation = fence or ("", 0)
        self.local.save(self.state)
        with self.own_changes():
            retire_snapshots(self.db, seq, {seq, *(ref.seq for ref in history)})
        self._changes_seen = changes + self._own_changes - own_before
        self.last_db_bytes = plan.db_size
        self.last_uploaded_bytes = plan.new_bytes + len(manifest_bytes)
        log.info("snapshot %d (%s) published: database %d bytes, %d new bytes stored (%d of %d segments "
                 "new), %.1f s", seq, reason, plan.db_size, self.last_uploaded_bytes, len(plan.new),
                 len(segments), time.monotonic() - started)
        return SnapshotRef(seq, created, manifest_id)

    async def _ensure_lease(self) -> None:
        if self.lease is not None:
            try:
                await self.lease.ensure_held()
            except OSError as error:
                raise SnapshotError(f"no snapshot: {error.strerror}") from None

    async def run(self) -> None:
        """Periodic snapshots while the tree changes."""
        interval = self.settings.snapshot_interval
        if interval <= 0:
            return
        wait = interval
        # After a failure: sooner than the interval, jittered, longer each time (walrusfs.retry).
        retrier = Retrier(Backoff(first=min(interval, 15.0), cap=min(interval, 120.0)))
        while True:
            self._next_due = trio.current_time() + wait
            await trio.sleep_until(self._next_due)
            wait = interval
            if not self.changed():
                continue
            try:
                await self.snapshot("periodic")
                retrier.succeeded()
            except SnapshotError as error:
                delay = retrier.failed(error)
                wait = interval if delay is None else delay
                log.error("periodic snapshot failed, retrying in %.0f s: %s", wait, error)
