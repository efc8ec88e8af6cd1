"""Self-healing: the node keeps every sliver of its shards of every certified blob, with no client.

It learns certified blobs from the writer (``PUT .../certificate``) and from its peers' certified
feeds (``nodes.feed``), fetches metadata it lacks from peers, and rebuilds each missing sliver
from recovery symbols of other nodes' slivers: n_s symbols for a primary sliver, n_p for a
secondary one, each checked against its Merkle proof, so a lost sliver costs about its own size in
traffic, never the blob. A rebuilt sliver that does not match its root proves the writer encoded
the blob inconsistently: the blob is marked invalid with that proof and never served again.

Pacing (docs/repair.md): at most ``concurrency`` blobs at once, symbol bytes paced by a token
bucket, exactly k sources asked per sliver (more only on failure), random source order, per-peer
jittered backoff (a 429 from a busy holder is honoured), and a grace period while the writer is
still sending a blob, so that repair never races an upload.

Length: one service whose parts (the queue and its retries, source choice, symbol fetching, the
rebuilt slivers kept across a full disk) all read and write the same per-blob state (missing,
partial, rebuilt, backoff); the next cut is to move the disk-full keeping into its own class.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from walrusfs.protocol.certificates import Certificate, CertificateError
from walrusfs.protocol.committee import Committee
from walrusfs.protocol.wire import RepairStatus
from walrusfs.redstuff import (
    BlobId,
    BlobMetadata,
    FormatError,
    InconsistencyProof,
    InconsistentBlobError,
    NotEnoughSliversError,
    RecoverySymbol,
    Sliver,
    SliverExpansion,
    SliverKind,
    recover_sliver,
    verify_inconsistency_proof,
)

from .core import NodeCore, committee_of_certificate
from .feed import Feed
from .http import HTTPError
from .lifecycle_api import parse_claims
from .peers import PeerError, Peers, peer_nodes
from .ratelimit import Backoff, TokenBucket
from .scrub import Scrubber
from .store import (
    CERTIFICATE,
    INCONSISTENCY,
    METADATA,
    CorruptObjectError,
    MissingMetadataError,
    StoreFullError,
    sliver_name,
)

log = logging.getLogger("nodes.repair")
T = TypeVar("T")

# Rebuilt slivers that could not be stored (a full disk) are kept in memory up to this many bytes,
# so that a retry stores them without fetching their symbols again.
KEEP_REBUILT_BYTES = 256 << 20
# Free bytes the data directory must have beyond a sliver's size before repair fetches symbols for
# it while the disk is known full (files, temporary copies and directory entries take some more).
DISK_FULL_MARGIN = 1 << 20


@dataclass
class RepairStats:
    missing_found: int = 0  # slivers found missing (or rotted) since start
    recovered: int = 0
    failed: int = 0  # recovery attempts that failed (retried later)
    bytes_fetched: int = 0  # recovery symbols and metadata received from peers
    bytes_lost: int = 0  # sizes of the slivers found missing
    bytes_recovered: int = 0
    metadata_fetched: int = 0
    certificates_learned: int = 0
    invalid_found: int = 0  # blobs this node proved inconsistent
    invalid_learned: int = 0  # proofs received from peers and verified
    disk_full: int = 0  # attempts that found the node's disk full (also counted in ``failed``)


MAX_RETRY_DELAY = 60.0


def retry_backoff(first: float, attempts: int) -> float:
    """Seconds until the next attempt at a blob that failed ``attempts`` times before: ``first``
    doubled per attempt, capped at MAX_RETRY_DELAY, jittered by x0.5-1.5 so that nodes that failed
    together do not retry together."""
    return random.uniform(0.5, 1.5) * min(MAX_RETRY_DELAY, first * 2.0 ** attempts)


class RepairService:
    def __init__(self, core: NodeCore) -> None:
        self.core = core
        self.config = core.config.repair
        self.store = core.store
        self.geometry = core.geometry
        self.node_id = core.node_id
        self.stats = RepairStats()
        # Decoding, verification and disk I/O of repair and scrubbing: never the foreground pool.
        self.executor = ThreadPoolExecutor(2, thread_name_prefix="node-repair")
        self.feed = Feed(self)
        self.scrubber = Scrubber(self)
        self.peers: Peers | None = None
        self.backoff = Backoff()
        self.bucket = TokenBucket(self.config.rate)
        self.pending_certificates: dict[str, str] = {}  # learned from peers, stored with the metadata
        self.invalid_hints: dict[str, str] = {}  # blob -> peer that says it has a proof
        self.missing: dict[tuple[str, int, SliverKind], int] = {}  # known missing sliver -> size
        self._touched: dict[str, float] = {}  # blob -> when the writer last sent a part of it
        self._queue: asyncio.Queue[str] | None = None
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._again: set[str] = set()  # asked for while being healed: healed once more afterwards
        self._retry: dict[str, tuple[float, int]] = {}  # blob -> (when, attempts)
        self._tasks: list[asyncio.Task[None]] = []
        self._partial: dict[tuple[str, int, SliverKind], list[RecoverySymbol]] = {}
        # Slivers rebuilt but not stored because the disk was full: stored by the next attempt.
        self._rebuilt: dict[tuple[str, int, SliverKind], bytes] = {}
        self.disk_full_since: float | None = None  # wall-clock time of the ENOSPC not yet followed by a write

    @property
    def committee(self) -> Committee:
        """The current committee: repair and scrubbing work on the current assignment."""
        return self.core.committee

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        core = self.core
        self.peers = Peers(peer_nodes(core.chain), self.node_id,
                           on_epoch=lambda peer, epoch: core.on_peer_epoch(peer, epoch))
        self.core.add_epoch_listener(self._epoch_changed)
        if not self.config.enabled:
            return
        self._queue = asyncio.Queue()
        for blob in sorted(self.store.certified - self.store.invalid - self.store.tombstones):
            self.enqueue(blob)
        self._tasks = [asyncio.create_task(self.feed.sync_forever(), name="repair-sync"),
                       asyncio.create_task(self._retry_forever(), name="repair-retry")]
        self._tasks += [asyncio.create_task(self._work_forever(), name=f"repair-{i}")
                        for i in range(self.config.concurrency)]
        if self.config.scrub_interval > 0:
            self._tasks.append(asyncio.create_task(self.scrubber.run_forever(), name="scrub"))
        log.info("repair started: %d certified blobs to check, %d peers", self._queue.qsize(),
                 len(self.peers.nodes))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.peers is not None:
            await self.peers.close()
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def in_worker(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    async def _epoch_changed(self, previous: Committee, current: Committee) -> None:
        """Peers follow the committee. (Slivers of the shards gained come by handover, nodes.handover,
        not by rebuilding every blob here: repair is its safety net, through the feed and scrubbing.)"""
        if self.peers is not None:
            self.peers.set_nodes(peer_nodes(self.core.chain))

    # --- what triggers repair ------------------------------------------------------------------------

    def touch(self, blob_id: BlobId) -> None:
        """The writer just sent a part of this blob: leave it alone for the grace period."""
        self._touched[str(blob_id)] = time.monotonic()
        if len(self._touched) > 100_000:
            cutoff = time.monotonic() - self.config.grace
            self._touched = {b: t for b, t in self._touched.items() if t > cutoff}

    def knows_certified(self, blob: str) -> bool:
        return blob in self.store.certified or blob in self.pending_certificates

    def enqueue(self, blob: str, delay: float = 0.0) -> None:
        if self._queue is None or blob in self.store.tombstones:
            return
        if delay > 0:
            _, attempts = self._retry.get(blob, (0.0, 0))
            self._retry[blob] = (time.monotonic() + delay, attempts)
            return
        if blob in self._active:
            self._again.add(blob)
        elif blob not in self._queued:
            self._queued.add(blob)
            self._queue.put_nowait(blob)

    async def _retry_forever(self) -> None:
        # Checked at half the shortest delay (at most every 0.5 s), so a short retry_delay is kept.
        tick = min(0.5, self.config.retry_delay / 2)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for blob, (when, _) in list(self._retry.items()):
                if when <= now and blob not in self._queued and blob not in self._active:
                    self._queued.add(blob)
                    assert self._queue is not None
                    self._queue.put_nowait(blob)

    def _failed(self, blob: str) -> None:
        _, attempts = self._retry.get(blob, (0.0, 0))
        self._retry[blob] = (time.monotonic() + retry_backoff(self.config.retry_delay, attempts), attempts + 1)

    async def _work_forever(self) -> None:
        assert self._queue is not None
        while True:
            blob = await self._queue.get()
            self._queued.discard(blob)
            self._active.add(blob)
            try:
                outcome = await self.heal(BlobId.parse(blob))
                if outcome is True:
                    self._retry.pop(blob, None)
                elif outcome is False:
                    self._failed(blob)
            except asyncio.CancelledError:
                raise
            except StoreFullError:  # storing its metadata or certificate: no traceback, just wait
                self._disk_full(f"storing what blob {blob} needs")
                self._failed(blob)
            except Exception:
                log.exception("repair of blob %s failed; will retry", blob)
                self._failed(blob)
            finally:
                self._active.discard(blob)
                if blob in self._again:
                    self._again.discard(blob)
                    self.enqueue(blob)

    # --- healing one blob ----------------------------------------------------------------------------

    async def heal(self, blob_id: BlobId) -> bool | None:
        """Make this node whole for one certified blob. False if something failed and is retried
        with backoff; None if it was put off (the writer is still sending it)."""
        blob = str(blob_id)
        if blob in self.store.tombstones:
            self._forget_buried(blob)
            return True
        metadata = await self._local_metadata(blob_id) or await self._fetch_metadata(blob_id)
        if metadata is None:
            return False
        if blob not in self.store.certified and not await self._store_certificate(blob_id):
            return False
        if blob in self.store.tombstones:
            # Buried while the metadata or certificate was being fetched (a handover takes the epoch
            # before's tombstones, nodes.handover_records, and deletes any copy it finds then): what
            # was stored after that copy is deleted here. Checked after the writes, so that one of
            # the two deletions sees the other's result, whatever the order.
            await self.in_worker(self.store.delete_blob, blob_id)
            self.core.forget_cached(blob_id)
            self._forget_buried(blob)
            return True
        hint = self.invalid_hints.pop(blob, None)
        if hint is not None and blob not in self.store.invalid:
            await self._check_proof_from(hint, blob_id, metadata)
        if blob in self.store.invalid:
            self._forget_missing(blob)
            return True  # an invalid blob is never served: nothing to rebuild
        quiet_since = time.monotonic() - self._touched.get(blob, -1e9)
        if quiet_since < self.config.grace:
            self.enqueue(blob, delay=self.config.grace - quiet_since + 0.1)
            return None
        todo = []
        for shard in set(self.core.shards) - self.core.receiving:  # the handover's until it is synced
            pair = self.geometry.pair_of_shard(shard, blob_id.raw)
            for kind in SliverKind:
                if not self.store.has(blob_id, sliver_name(pair, kind)):
                    todo.append((pair, kind))
                    self._note_missing(blob, pair, kind, metadata)
        # Slivers noted missing that are here now (the writer's late delivery brought them) are
        # no longer missing: only a recovery used to clear them, and status said "repairing" forever.
        self._forget_missing(blob, keep={(blob, pair, kind) for pair, kind in todo})
        results = await asyncio.gather(*(self._recover(metadata, pair, kind) for pair, kind in todo))
        return all(results)

    def _note_missing(self, blob: str, pair: int, kind: SliverKind, metadata: BlobMetadata) -> None:
        key = (blob, pair, kind)
        if key not in self.missing:
            size = metadata.layout.sliver_size(kind is SliverKind.PRIMARY)
            self.missing[key] = size
            self.stats.missing_found += 1
            self.stats.bytes_lost += size

    def _forget_buried(self, blob: str) -> None:
        """A deleted blob leaves nothing behind that keeps repair busy: a certificate a peer's feed
        brought before the tombstone (else status would never be idle), a hint, missing slivers."""
        self.pending_certificates.pop(blob, None)
        self.invalid_hints.pop(blob, None)
        self._forget_missing(blob)

    def _forget_missing(self, blob: str, keep: set[tuple[str, int, SliverKind]] | None = None) -> None:
        keys = {k for k in (*self.missing, *self._partial, *self._rebuilt) if k[0] == blob}
        for key in keys - (keep or set()):
            self.missing.pop(key, None)
            self._partial.pop(key, None)
            self._rebuilt.pop(key, None)

    # --- a full disk ---------------------------------------------------------------------------------

    def _disk_full(self, what: str) -> None:
        """Count an attempt that found the disk full; the blob is retried with jittered backoff."""
        self.stats.failed += 1
        self.stats.disk_full += 1
        if self.disk_full_since is None:
            self.disk_full_since = time.time()
            log.error("the node's disk is full (%s): repair keeps what it rebuilt and retries with backoff; "
                      "free space on %s", what, self.store.root)
        else:
            log.warning("the node's disk is still full (%s); will retry", what)

    def _room_for(self, size: int) -> bool:
        """While the disk is known full, fetch symbols only once the data directory has room for
        what they rebuild: a rebuilt sliver that cannot be stored is fetched in vain."""
        if self.disk_full_since is None:
            return True
        try:
            stat = os.statvfs(self.store.root)
        except OSError:
            return True
        return stat.f_bavail * stat.f_frsize >= size + DISK_FULL_MARGIN

    def _keep_rebuilt(self, key: tuple[str, int, SliverKind], payload: bytes) -> None:
        if sum(map(len, self._rebuilt.values())) + len(payload) <= KEEP_REBUILT_BYTES:
            self._rebuilt[key] = payload

    async def _local_metadata(self, blob_id: BlobId) -> BlobMetadata | None:
        try:
            payload = await self.in_worker(self.store.get, blob_id, METADATA)
        except CorruptObjectError:
            self.core.forget_cached(blob_id)
            return None
        return None if payload is None else BlobMetadata.from_bytes(payload)

    def _peer_order(self) -> list[str]:
        assert self.peers is not None
        peers = list(self.peers.nodes)
        random.shuffle(peers)  # spread the load over the holders
        return sorted(peers, key=lambda peer: not self.backoff.ready(peer))

    async def _from_peers(self, what: str, fetch: Callable[[str], Any], check: Callable[[bytes], T]) -> T | None:
        """The first answer from a peer that passes ``check`` (run in a worker), or None."""
        for peer in self._peer_order():
            try:
                body = await fetch(peer)
            except PeerError as error:
                self._peer_failed(error)
                continue
            if body is None:
                continue
            self.stats.bytes_fetched += len(body)
            try:
                return await self.in_worker(check, body)
            except (FormatError, CertificateError, ValueError) as error:
                log.warning("peer %s sent a bad %s: %s", peer, what, error)
                self.backoff.failed(peer)
        return None

    async def _fetch_metadata(self, blob_id: BlobId) -> BlobMetadata | None:
        assert self.peers is not None

        def check(body: bytes) -> BlobMetadata:
            metadata = BlobMetadata.from_bytes(body)
            metadata.verify(blob_id)  # self-certifying: it must hash to the blob ID
            if metadata.n_shards != self.geometry.n_shards:
                raise FormatError(f"metadata for n={metadata.n_shards}")
            self.store.put_metadata(blob_id, metadata.to_bytes())
            return metadata

        peers = self.peers
        metadata = await self._from_peers("metadata", lambda peer: peers.metadata(peer, blob_id), check)
        if metadata is None:
            log.warning("no peer gave valid metadata of certified blob %s; will retry", blob_id)
        else:
            self.stats.metadata_fetched += 1
            # The owners' claims come with it (without them the blob gets the default claim at the next sweep).
            await self._from_peers("claims", lambda peer: peers.claims(peer, blob_id),
                                   lambda body: self.core.claims.adopt(blob_id, parse_claims(body)))
        return metadata

    def verify_certificate(self, blob_id: BlobId, text: str | bytes) -> str:
        """The certificate as stored, if it proves ``blob_id`` available in this committee's epoch."""
        certificate = Certificate.from_json(text)
        if certificate.blob_id != blob_id:
            raise CertificateError(f"certificate is for {certificate.blob_id}, not {blob_id}")
        certificate.verify(committee_of_certificate(self.core, certificate))
        return certificate.to_json()

    async def _store_certificate(self, blob_id: BlobId) -> bool:
        blob = str(blob_id)
        text = self.pending_certificates.get(blob)
        if text is None:
            assert self.peers is not None
            peers = self.peers
            text = await self._from_peers("certificate", lambda peer: peers.certificate(peer, blob_id),
                                          lambda body: self.verify_certificate(blob_id, body))
            if text is None:
                return False
        await self.in_worker(self.store.put_object, blob_id, CERTIFICATE, text.encode())
        self.pending_certificates.pop(blob, None)
        self.stats.certificates_learned += 1
        self.feed.append(blob)
        return True

    def _peer_failed(self, error: PeerError) -> None:
        log.debug("%s", error)
        self.backoff.failed(error.peer, at_least=error.retry_after)

    # --- recovering one sliver -----------------------------------------------------------------------

    def _sources(self, blob_id: BlobId, target_kind: SliverKind) -> list[tuple[str | None, int, int]]:
        """(holder, pair, source index) for every sliver of the other kind: None for this node's own
        (used first: free), then peers in random order, those not backing off first."""
        source_kind = target_kind.other
        local, remote = [], []
        for index in range(self.geometry.n_shards):
            pair = self.geometry.pair_of_sliver(index, source_kind)
            holder = self.committee.node_for_shard(self.geometry.shard_of_pair(pair, blob_id.raw)).id
            if holder == self.node_id:
                if self.store.has(blob_id, sliver_name(pair, source_kind)):
                    local.append((None, pair, index))
            else:
                remote.append((holder, pair, index))
        random.shuffle(remote)
        remote.sort(key=lambda source: not self.backoff.ready(source[0]))  # type: ignore[arg-type]
        return local + remote

    async def _symbol(self, metadata: BlobMetadata, source: tuple[str | None, int, int],
                      target_kind: SliverKind, target: int) -> RecoverySymbol | None:
        holder, pair, index = source
        blob_id = metadata.blob_id
        if holder is None:
            try:
                expansion = await self.expansion(blob_id, pair, target_kind.other, self.executor)
            except HTTPError:  # gone or quarantined since the sources were chosen
                return None
            return expansion.symbol_for(target)
        assert self.peers is not None
        await self.bucket.take(metadata.layout.symbol_size)
        for attempt in range(4):
            try:
                body = await self.peers.symbol(holder, blob_id, pair, target_kind.other, target)
                break
            except PeerError as error:
                if error.status != 429 or attempt == 3:
                    self._peer_failed(error)
                    return None
                # The holder is busy serving others: wait (jittered) rather than give up on a source
                # that may be one of only just enough.
                await asyncio.sleep(max(error.retry_after, 0.2) * random.uniform(0.5, 1.5) * (attempt + 1))
        self.stats.bytes_fetched += len(body)

        def check() -> RecoverySymbol | None:
            symbol = RecoverySymbol.from_bytes(body)
            ok = (symbol.target_kind is target_kind and symbol.target_index == target
                  and symbol.source_index == index and symbol.is_valid_for(metadata))
            return symbol if ok else None

        try:
            symbol = await self.in_worker(check)
        except FormatError:
            symbol = None
        if symbol is None:
            log.warning("peer %s served a recovery symbol of blob %s that fails its proof", holder, blob_id)
            self.backoff.failed(holder)
        else:
            self.backoff.succeeded(holder)
        return symbol

    async def _recover(self, metadata: BlobMetadata, pair: int, kind: SliverKind) -> bool:
        blob_id = metadata.blob_id
        blob = str(blob_id)
        target = self.geometry.sliver_of_pair(pair, kind)
        needed = self.geometry.n_secondary if kind is SliverKind.PRIMARY else self.geometry.n_primary
        key = (blob, pair, kind)
        what = f"{kind.name.lower()} sliver {target} (pair {pair}) of blob {blob}"
        kept = self._rebuilt.pop(key, None)
        if kept is not None:  # rebuilt by an earlier attempt that found the disk full
            return await self._store_rebuilt(blob_id, pair, kind, kept, what, needed)
        if not self._room_for(metadata.layout.sliver_size(kind is SliverKind.PRIMARY)):
            self._disk_full(f"no room for {what}")
            return False
        # Symbols of an earlier attempt that fell short are kept: a retry fetches only what it lacks.
        symbols = self._partial.pop(key, [])
        have = {symbol.source_index for symbol in symbols}
        sources = [source for source in self._sources(blob_id, kind) if source[2] not in have]
        running: set[asyncio.Task[RecoverySymbol | None]] = set()
        try:
            # Ask exactly as many sources as are needed; each failure brings in one more.
            while len(symbols) < needed and (sources or running):
                while sources and len(running) + len(symbols) < needed:
                    running.add(asyncio.create_task(self._symbol(metadata, sources.pop(0), kind, target)))
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                symbols += [s for task in done if (s := task.result()) is not None]
        finally:
            for task in running:
                task.cancel()
        if len(symbols) < needed:
            log.warning("cannot recover %s yet: %d of %d symbols", what, len(symbols), needed)
            self.stats.failed += 1
            self._partial[key] = symbols
            return False
        try:
            sliver = await self.in_worker(recover_sliver, metadata, kind, target, symbols[:needed])
        except InconsistentBlobError as error:
            await self.mark_invalid(blob_id, error.proof)  # type: ignore[arg-type]
            return True
        except NotEnoughSliversError:
            self.stats.failed += 1
            return False
        return await self._store_rebuilt(blob_id, pair, kind, sliver.to_bytes(), what, needed)

    async def _store_rebuilt(self, blob_id: BlobId, pair: int, kind: SliverKind, payload: bytes, what: str,
                             needed: int) -> bool:
        key = (str(blob_id), pair, kind)
        try:
            await self.in_worker(self.store.put_sliver, blob_id, pair, kind, payload)
        except MissingMetadataError:
            return True  # deleted meanwhile
        except StoreFullError:
            # Keep the rebuilt sliver (its symbols cost about its size to fetch): the retry, after
            # a jittered backoff, only writes it.
            self._keep_rebuilt(key, payload)
            self._disk_full(f"storing {what}")
            return False
        self.disk_full_since = None
        size = self.missing.pop(key, 0)
        self.stats.recovered += 1
        self.stats.bytes_recovered += size
        log.info("recovered %s from %d symbols", what, needed)
        return True

    async def expansion(self, blob_id: BlobId, pair: int, kind: SliverKind,
                        executor: ThreadPoolExecutor) -> SliverExpansion:
        """This node's sliver extended to its full line (cached: repair asks one sliver for many
        targets), read and expanded in ``executor``."""
        loop = asyncio.get_running_loop()

        async def build() -> SliverExpansion:
            payload = await self.core.read_object(blob_id, sliver_name(pair, kind), executor)
            if payload is None:
                raise HTTPError(404, "not_found", f"pair {pair} {kind.name.lower()} of blob {blob_id} is not stored")
            return await loop.run_in_executor(executor, lambda: SliverExpansion(Sliver.from_bytes(payload)))

        return await self.core.expansions.get((blob_id, pair, kind), build)

    # --- inconsistent blobs --------------------------------------------------------------------------

    async def mark_invalid(self, blob_id: BlobId, proof: InconsistencyProof, learned_from: str = "") -> None:
        blob = str(blob_id)
        if blob in self.store.invalid:
            return
        await self.in_worker(self.store.put_object, blob_id, INCONSISTENCY, proof.to_bytes())
        self.core.forget_cached(blob_id)
        self._forget_missing(blob)
        self.feed.append(blob)
        if learned_from:
            self.stats.invalid_learned += 1
            log.error("blob %s is inconsistently encoded (proof from %s verified): marked invalid",
                      blob, learned_from)
        else:
            self.stats.invalid_found += 1
            log.error("blob %s is inconsistently encoded: recovering %s sliver %d gave a sliver that does "
                      "not match its root; marked invalid, proof kept", blob,
                      proof.target_kind.name.lower(), proof.target_index)

    async def verified_proof(self, metadata: BlobMetadata, body: bytes) -> InconsistencyProof | None:
        """The inconsistency proof in ``body`` if it proves ``metadata``'s blob invalid (checked in a
        worker: it re-decodes), else None (malformed, or a proof of nothing)."""

        def check() -> InconsistencyProof | None:
            proof = InconsistencyProof.from_bytes(body)
            return proof if verify_inconsistency_proof(metadata, proof) else None

        try:
            return await self.in_worker(check)
        except FormatError:
            return None

    async def _check_proof_from(self, peer: str, blob_id: BlobId, metadata: BlobMetadata) -> None:
        assert self.peers is not None
        try:
            body = await self.peers.inconsistency(peer, blob_id)
        except PeerError as error:
            self._peer_failed(error)
            return
        if body is None:
            return
        proof = await self.verified_proof(metadata, body)
        if proof is None:
            log.warning("peer %s claims blob %s is invalid, but its proof does not verify", peer, blob_id)
            return
        await self.mark_invalid(blob_id, proof, learned_from=peer)

    # --- status --------------------------------------------------------------------------------------

    def status(self) -> RepairStatus:
        s = self.stats
        busy = len(self._queued) + len(self._active) + len(self._retry) + len(self.pending_certificates)
        synced = self.feed.synced_peers()
        peers = len(self.peers.nodes) if self.peers else 0
        return RepairStatus(
            node_id=self.node_id, enabled=self.config.enabled,
            certified_blobs=len(self.store.certified), invalid_blobs=len(self.store.invalid),
            queued_blobs=len(self._queued), active_blobs=len(self._active), retrying_blobs=len(self._retry),
            missing_slivers=len(self.missing), missing_found=s.missing_found,
            recovered_slivers=s.recovered, failed_attempts=s.failed,
            bytes_fetched=s.bytes_fetched, bytes_lost=s.bytes_lost, bytes_recovered=s.bytes_recovered,
            feed_bytes=self.feed.bytes_received,
            metadata_fetched=s.metadata_fetched, certificates_learned=s.certificates_learned,
            invalid_found=s.invalid_found, invalid_learned=s.invalid_learned,
            disk_full=self.disk_full_since is not None, disk_full_since=self.disk_full_since,
            disk_full_attempts=s.disk_full, rebuilt_waiting_bytes=sum(map(len, self._rebuilt.values())),
            peers=peers, synced_peers=synced,
            idle=self.config.enabled and busy == 0 and not self.missing and synced == peers,
            scrub=self.scrubber.status(),
        )
