"""The handover of shards at an epoch change (docs/epochs.md, Handover): both sides of it.

New holder: a listener of the node's core (``core.add_epoch_listener``). For each shard it gained it
pages through the old holder's blobs of that shard (``GET /v1/shards/{shard}/blobs``) and moves
each blob's sliver pair (nodes.handover_move: fetched and verified, or rebuilt from recovery
symbols where the old holder is gone, slow or lying), a bounded number at once. When the old holder cannot
even list its blobs, the other nodes' inventories stand in for its listing, and only certified blobs
are rebuilt. Once every blob of the shard is done the shard is *synced*, and the node sends the old
holder its signed ``ShardSynced``, retried until it is acknowledged.

Old holder: it keeps serving the slivers of the shards it hands off (``core.set_handing_off``) until
the new holder's statement arrives and verifies; then it deletes exactly that shard's slivers and
stops serving it (``release``).

Progress (cursor, counters, states) is kept in ``DATA/epochs/handover.json`` (``HandoverStatus``
JSON, written durably after every page), so a node killed mid-handover resumes where it was; a page
done twice costs nothing, since stored slivers are skipped.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from walrusfs.durable import replace_durably
from walrusfs.errors import UserError
from walrusfs.protocol.committee import Committee
from walrusfs.protocol.handover import GainedShard, HandedOffShard, HandoverError, HandoverStatus, ShardSynced
from walrusfs.redstuff import BlobId, SliverKind

from .core import NodeCore
from .handover_fetch import FetchError, HandoverClient, Meter
from .handover_move import BlobMover
from .handover_records import RecordCopier
from .leases import LeaseStore
from .roots import RootStore
from .store import sliver_name

if TYPE_CHECKING:
    from .repair import RepairService

log = logging.getLogger("nodes.handover")
CONCURRENCY = 8  # blobs moved at once, over all shards gained
RECORDS_TASK = -1  # the key of the records' task (tombstones, root records, leases) among the shards' tasks
LISTING_ATTEMPTS = 4  # failed listings of the old holder before the other nodes' inventories stand in
MAX_BACKOFF = 60.0


class HandoverService:
    def __init__(self, core: NodeCore, repair: RepairService, roots: RootStore, leases: LeaseStore | None = None,
                 concurrency: int = CONCURRENCY) -> None:
        self.core = core
        self.repair = repair
        self.roots = roots
        self.leases = leases
        self.store = core.store
        self.path = core.store.root / "epochs" / "handover.json"
        self.status = self._load()
        self._save_lock = threading.Lock()
        self.concurrency = concurrency
        self._slots: asyncio.Semaphore | None = None
        self._client: HandoverClient | None = None
        self._mover: BlobMover | None = None
        self._records: RecordCopier | None = None  # this epoch's copy of tombstones, root records, leases
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._lock: asyncio.Lock | None = None  # one state change at a time (listener, release)
        self.register()

    # --- state ---------------------------------------------------------------------------------------

    def _load(self) -> HandoverStatus:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return HandoverStatus(self.core.node_id, self.core.committee.epoch)
        try:
            return HandoverStatus.from_json(text)
        except HandoverError as error:  # its progress is not guessed: the node stops and says what to do
            raise UserError(f"{self.path}: {error}: the handover's progress file is damaged; restore it, or "
                            f"delete it and start the node again: the handover of the current epoch then starts "
                            f"over, and the slivers already stored are kept, not fetched again") from None

    def _save(self) -> None:
        """Durably (walrusfs.durable). One writer at a time (the shards' tasks save from worker
        threads): the last state wins whole."""
        with self._save_lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            replace_durably(self.path, self.status.to_json().encode(), 0o644)

    async def save(self) -> None:
        await self.core.in_worker(self._save)

    def handover_complete(self) -> bool:
        """Every shard this node gained is synced (epoch-nodes asks before signing the next committee)."""
        return self.status.complete

    def handing_off(self) -> set[int]:
        return {s for s, entry in self.status.handing_off.items() if not entry.released}

    def receiving(self) -> frozenset[int]:
        """Shards gained and not synced yet: repair leaves them to the handover (which copies what
        recovery would rebuild at a cost) until they are."""
        return frozenset(s for s, entry in self.status.gaining.items() if entry.state != "synced")

    # --- lifecycle -----------------------------------------------------------------------------------

    def register(self) -> None:
        """Hook into the core: told of each new committee, asked before signing the next, and (from
        the progress on disk) serving what this node still hands off."""
        self.core.add_epoch_listener(self.on_epoch)
        self.core.handover_complete = self.handover_complete
        self.core.set_handing_off(self.handing_off())
        self.core.receiving = self.receiving()

    async def stop(self) -> None:
        await self._cancel_tasks()
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def on_epoch(self, previous: Committee, current: Committee) -> None:
        """Committee ``current`` was adopted after ``previous`` (or the node started with a handover
        into ``current`` unfinished): work out what moves, persist it, start moving in the background."""
        if self._lock is None:
            self._lock = asyncio.Lock()
            self._slots = asyncio.Semaphore(self.concurrency)
        # Before anything yields: the chain is current already, and a read of a shard handed off, or
        # a repair of one being received, must not find the core without its new lists.
        self._plan(previous, current)
        self.core.set_handing_off(self.handing_off())
        self.core.receiving = self.receiving()
        async with self._lock:
            await self._cancel_tasks()
            await self.save()
            if self._client is not None:
                await self._client.close()
            nodes = {node.id: node for committee in (previous, current) for node in committee.nodes}
            for entry in self.status.gaining.values():
                if entry.epoch != current.epoch:  # an older handover still releasing: its source too
                    nodes.update({n.id: n for n in self.core.committee_at(entry.epoch - 1).nodes})
            self._client = HandoverClient(list(nodes.values()), self.core.node_id,
                                          timeout=self.core.config.handover.request_timeout)
            self._mover = BlobMover(self.core, self.repair, self._client)
            self._records = None
            if any(entry.epoch == current.epoch for entry in self.status.gaining.values()):
                self._records = RecordCopier(self.core, self._client, self.roots, self.leases)
                self._tasks[RECORDS_TASK] = asyncio.create_task(self._records.copy(previous), name="handover-records")
            for shard, entry in self.status.gaining.items():
                if entry.state != "synced" or not entry.released:
                    self._tasks[shard] = asyncio.create_task(self._gain(entry), name=f"handover-{shard}")
        log.info("epoch %d: gaining shards %s, handing off %s", current.epoch,
                 sorted(s for s, e in self.status.gaining.items() if e.state != "synced"), sorted(self.handing_off()))

    def _plan(self, previous: Committee, current: Committee) -> None:
        me = self.core.node_id
        before = set(previous.shards_of(me)) if previous.has_node(me) else set()
        now = set(current.shards_of(me)) if current.has_node(me) else set()
        status = self.status
        status.epoch = current.epoch
        # Finished entries of earlier epochs are history; unfinished ones go on.
        status.gaining = {s: e for s, e in status.gaining.items()
                          if s in now and not (e.epoch < current.epoch and e.state == "synced" and e.released)}
        # A shard released in this epoch stays recorded as released: told of the epoch again at a
        # restart, the node must not take it for a shard it still hands off (and serve it, and wait
        # for a statement its new holder, which has its acknowledgement, will never send again).
        status.handing_off = {s: e for s, e in status.handing_off.items()
                              if s not in now and (not e.released or e.epoch == current.epoch)}
        for shard in sorted(before - now):
            if shard not in status.handing_off:
                status.handing_off[shard] = HandedOffShard(shard, current.node_for_shard(shard).id, current.epoch)
        for shard in sorted(now - before):
            entry = status.gaining.get(shard)
            if entry is None or entry.epoch != current.epoch:
                status.gaining[shard] = GainedShard(shard, previous.node_for_shard(shard).id, current.epoch)

    # --- the new holder ------------------------------------------------------------------------------

    async def _gain(self, entry: GainedShard) -> None:
        attempt = 0
        while True:
            try:
                await self._gain_once(entry)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                attempt += 1
                log.exception("handover of shard %d failed (attempt %d); retrying", entry.shard, attempt)
                await asyncio.sleep(_backoff(attempt))

    async def _gain_once(self, entry: GainedShard) -> None:
        if entry.state != "synced":
            if self._records is not None:
                # The tombstones first: the old holder may have missed a writer's DELETE and list the blob.
                await self._records.ready.wait()
            await self._copy(entry)
            entry.state = "synced"
            await self.save()
            self.core.receiving = self.receiving()
            # Repair's safety net: whatever the old holder did not list (certified after it was
            # listed, say) is rebuilt from recovery symbols now that the shard is repair's again.
            for blob in sorted(self.store.certified - self.store.invalid - self.store.tombstones):
                self.repair.enqueue(blob)
            log.info("shard %d synced: %d blobs, %d bytes moved for %d bytes of slivers, %d slivers rebuilt",
                     entry.shard, entry.blobs, entry.bytes_moved, entry.bytes_to_move, entry.rebuilt)
        await self._announce(entry)

    async def _copy(self, entry: GainedShard) -> None:
        """Every blob the old holder lists for the shard; its inventory-less fallback if it is gone."""
        failures = 0
        while True:
            assert self._client is not None
            meter = Meter()
            try:
                page = await self._client.listing(entry.source, entry.shard, entry.cursor, meter)
            except (FetchError, HandoverError) as error:
                failures += 1
                if failures >= LISTING_ATTEMPTS:
                    log.warning("old holder %s of shard %d cannot list its blobs (%s): rebuilding the shard from "
                                "recovery symbols of the certified blobs the other nodes hold", entry.source,
                                entry.shard, error)
                    await self._rebuild_all(entry)
                    return
                await asyncio.sleep(_backoff(failures))
                continue
            failures = 0
            entry.bytes_moved += meter.bytes
            await self._move_all(entry, list(page.blobs), from_source=True)
            entry.cursor = page.next
            await self.save()
            if page.next is None:
                return

    async def _rebuild_all(self, entry: GainedShard) -> None:
        """The old holder is gone: every blob some other node stores, certified, gets its pair rebuilt."""
        assert self._client is not None
        blobs: set[str] = set()
        meter = Meter()
        previous = self.core.committee_at(entry.epoch - 1)
        for node in previous.nodes:
            if node.id in (entry.source, self.core.node_id):
                continue
            after = None
            try:
                while True:
                    page, after = await self._client.inventory(node.id, after, meter)
                    blobs.update(page)
                    if after is None:
                        break
            except (FetchError, ValueError, KeyError) as error:
                log.warning("inventory of %s for the handover of shard %d: %s", node.id, entry.shard, error)
        entry.bytes_moved += meter.bytes
        todo = sorted(b for b in blobs if entry.cursor is None or b > entry.cursor)
        for start in range(0, len(todo), 200):
            chunk = todo[start:start + 200]
            await self._move_all(entry, [BlobId.parse(b) for b in chunk], from_source=False)
            entry.cursor = chunk[-1]
            await self.save()

    async def _move_all(self, entry: GainedShard, blobs: list[BlobId], from_source: bool) -> None:
        """Move every blob of a page; a blob that failed is retried with backoff until it is done
        (nothing is skipped silently: the shard is synced only when all are)."""
        attempt = 0
        while blobs:
            assert self._mover is not None
            mover = self._mover
            results = await asyncio.gather(*(self._bounded(mover.move(entry, b, from_source)) for b in blobs))
            blobs = [blob for blob, done in zip(blobs, results, strict=True) if not done]
            if blobs:
                attempt += 1
                log.warning("handover of shard %d: %d blobs not moved yet (attempt %d); retrying", entry.shard,
                            len(blobs), attempt)
                await asyncio.sleep(_backoff(attempt))

    async def _bounded(self, work: Awaitable[bool]) -> bool:
        assert self._slots is not None
        async with self._slots:
            return await work

    async def _announce(self, entry: GainedShard) -> None:
        """Send the old holder the signed synced statement until it acknowledges it."""
        statement = ShardSynced(self.core.node_id, entry.epoch, entry.shard).signed_by(self.core.key)
        attempt = 0
        while not entry.released:
            assert self._client is not None
            try:
                await self._client.synced(entry.source, statement, Meter())
            except FetchError as error:
                attempt += 1
                if error.code == "unknown_epoch" and await self._send_links(entry):
                    continue  # it was behind: it knows the epoch now
                # An old holder that is gone for good is asked forever, rarely: the shard is synced already.
                log.log(logging.WARNING if attempt <= 3 else logging.DEBUG,
                        "synced statement for shard %d not acknowledged yet: %s", entry.shard, error)
                await asyncio.sleep(_backoff(attempt))
                continue
            entry.released = True
            await self.save()
            log.info("old holder %s released shard %d", entry.source, entry.shard)

    async def _send_links(self, entry: GainedShard) -> bool:
        """Bring an old holder that missed the change up to this node's epoch (the links certify
        themselves), so that it can check the synced statement."""
        assert self._client is not None
        links = [link.to_dict() for link in self.core.chain.links]  # it skips those it has
        try:
            await self._client.links(entry.source, links, Meter())
        except FetchError as error:
            log.warning("could not send %s the committee links it lacks: %s", entry.source, error)
            return False
        return True

    # --- the old holder ------------------------------------------------------------------------------

    async def release(self, statement: ShardSynced) -> dict[str, Any]:
        """The new holder says the shard is synced (statement verified by the caller): stop serving
        it, delete this node's slivers of it, remember that it is released."""
        shard = statement.shard
        handing_off = self.handing_off() - {shard}
        self.core.set_handing_off(handing_off)  # readers go to the new holder from now on
        deleted, freed = await self.core.in_worker(self._delete_shard, shard)
        if self._lock is None:
            self._lock = asyncio.Lock()
            self._slots = asyncio.Semaphore(self.concurrency)
        async with self._lock:
            entry = self.status.handing_off.get(shard)
            if entry is not None:
                entry.released = True
            await self.save()
        log.info("shard %d released to %s (epoch %d): %d slivers deleted, %d bytes freed", shard, statement.node_id,
                 statement.epoch, deleted, freed)
        return {"shard": shard, "released": True, "deleted_slivers": deleted, "freed_bytes": freed}

    def _delete_shard(self, shard: int) -> tuple[int, int]:
        """Delete this node's slivers of ``shard`` for every blob, nothing else (runs in a worker)."""
        deleted = freed = 0
        after = None
        while True:
            blobs = self.store.list_blobs(after, 1000)
            for text in blobs:
                blob_id = BlobId.parse(text)
                pair = self.core.geometry.pair_of_shard(shard, blob_id.raw)
                for kind in SliverKind:
                    size = self.store.delete_object(blob_id, sliver_name(pair, kind))
                    if size:
                        deleted += 1
                        freed += size
                self.core.forget_cached(blob_id)
            if len(blobs) < 1000:
                return deleted, freed
            after = blobs[-1]

    def shard_blobs(self, shard: int, after: str | None, limit: int) -> tuple[list[BlobId], str | None]:
        """Blobs of which this node stores a sliver of ``shard``'s pair, or a certificate if it holds
        or hands off the shard, after ``after``; and the next cursor (None at the end). Scans at most
        20 x ``limit`` blobs per page, so a page is quick however sparse (runs in a worker)."""
        found: list[BlobId] = []
        budget, scanned, cursor = 20 * limit, 0, after
        # A certified blob lacking the pair is listed only by a node answerable for the shard (so that
        # its new holder rebuilds it), not by one that released the shard long ago.
        answerable = shard in self.core.serving_shards
        while scanned < budget:
            want = min(1000, budget - scanned)
            batch = self.store.list_blobs(cursor, want)
            for text in batch:
                cursor, scanned = text, scanned + 1
                blob_id = BlobId.parse(text)
                pair = self.core.geometry.pair_of_shard(shard, blob_id.raw)
                if (answerable and text in self.store.certified) or any(
                        self.store.has(blob_id, sliver_name(pair, kind)) for kind in SliverKind):
                    found.append(blob_id)
                    if len(found) == limit:
                        return found, cursor
            if len(batch) < want:
                return found, None
        return found, cursor



def _backoff(attempt: int) -> float:
    return random.uniform(0.5, 1.5) * min(MAX_BACKOFF, 0.5 * 2.0 ** attempt)

