"""The node's core: what every part of a storage node works on, and depends on nothing above it.

It holds the store, the metadata cache, the expansion cache, the thread pools and the writers'
authorisation. The HTTP routing (nodes.app), repair (nodes.repair, nodes.repair_api) and its feed
and scrubber (nodes.feed, nodes.scrub) are built on it and reach each other only through it or the
``Healer`` interface below, so that no module of the node imports one that imports it back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from walrusfs.keys import public_bytes, public_key_text
from walrusfs.protocol import AUTH_SCHEME, AuthError, Confirmation, ReplayGuard, SignedRequest, routes, verify_request
from walrusfs.protocol.certificates import Certificate, CertificateError
from walrusfs.protocol.chain import ChainError, CommitteeChain
from walrusfs.protocol.committee import Committee
from walrusfs.redstuff import BlobId, BlobMetadata, EncodingGeometry, SliverKind

from .claims import ClaimStore
from .config import NodeConfig, RepairConfig
from .expansions import ExpansionCache
from .http import HTTPError, Request
from .metrics import Metrics
from .nonces import JournalError, NonceJournal
from .peers import PeerError, Peers
from .ratelimit import Backoff
from .store import CERTIFICATE, INCONSISTENCY, METADATA, BlobStore, CorruptObjectError, sliver_name

log = logging.getLogger("nodes.app")  # the messages it logs were the app's: operators grep for them
T = TypeVar("T")
METADATA_CACHE_SIZE = 4096
# Told of each committee adopted (nodes.epochs), after it is persisted: (previous, current).
EpochListener = Callable[[Committee, Committee], Awaitable[None]]


class NodeCore:
    def __init__(self, config: NodeConfig, chain: CommitteeChain, key: Ed25519PrivateKey,
                 store: BlobStore, workers: int = 8) -> None:
        self.config = config
        # The committees this node trusts, from its anchor to the current one. Replaced only by
        # nodes.epochs, after the longer chain is on disk; everything else reads it when it acts.
        self.chain = chain
        self.key = key
        self.public_key = public_key_text(key)
        self.public_key_bytes = public_bytes(key)
        self.node_id = config.node_id
        self.store = store
        self.geometry = chain.current.geometry  # the shard count never changes along a chain
        self.metrics = Metrics()
        self.replay = ReplayGuard()
        self.expansions = ExpansionCache()
        # The foreground pool (requests), and the one that serves peers' recovery symbols: repairing
        # peers wait for the second, never for the first.
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="node-worker")
        self.serve_executor = ThreadPoolExecutor(config.repair.serve_workers, thread_name_prefix="node-symbols")
        self.journal = NonceJournal(store.root)
        self.journal.open()
        # Who keeps each blob until when (owners' claims), the expiry sweep and the writers' quotas.
        self.claims = ClaimStore(store, config.lifecycle, config.quotas)
        store.on_created = self.claims.noticed
        self.claims.open()
        self._metadata_cache: OrderedDict[BlobId, BlobMetadata] = OrderedDict()
        # Told of each blob an object of which failed its checksum (repair re-queues it if certified).
        self.on_quarantine: Callable[[BlobId], None] = lambda blob_id: None
        self.epoch_listeners: list[EpochListener] = []
        self._handing_off: frozenset[int] = frozenset()
        # Whether this node's own handover into the current epoch is complete (every shard it gained
        # is synced): it signs no successor before (docs/epochs.md). nodes.handover replaces it.
        self.handover_complete: Callable[[], bool] = lambda: True
        # Shards this node gained and is still receiving from their old holders (nodes.handover sets
        # it): repair leaves them to the handover, which copies what recovery would rebuild at a cost.
        self.receiving: frozenset[int] = frozenset()
        # Told of the epoch a peer's answer names (nodes.epochs fetches the links of a newer one).
        self.on_peer_epoch: Callable[[str, int], None] = lambda peer, epoch: None

    # --- the committee of the current epoch --------------------------------------------------------------

    @property
    def committee(self) -> Committee:
        return self.chain.current

    @property
    def shards(self) -> tuple[int, ...]:
        """This node's shards in the current committee; () in standby (in no committee, or named
        there with another key, which can only be a mistake: it could not sign for them)."""
        return shards_in(self.chain.current, self.node_id, self.public_key_bytes)

    @property
    def standby(self) -> bool:
        return not self.shards

    @property
    def serving_shards(self) -> frozenset[int]:
        """Shards whose slivers this node serves to readers: its current ones and those it still
        hands off (until their new holders have them, docs/epochs.md)."""
        return frozenset(self.shards) | self._handing_off

    def set_handing_off(self, shards: set[int] | frozenset[int]) -> None:
        self._handing_off = frozenset(shards)

    def committee_at(self, epoch: int) -> Committee:
        """The committee of ``epoch`` (ChainError if the chain does not reach it)."""
        return self.chain.committee_at(epoch)

    def add_epoch_listener(self, callback: EpochListener) -> None:
        """``await callback(previous, current)`` after each committee this node adopts is persisted,
        and at start for the last change (the listener finds out whether it has work left)."""
        self.epoch_listeners.append(callback)

    async def notify_epoch(self, previous: Committee, current: Committee) -> None:
        for listener in list(self.epoch_listeners):
            try:
                await listener(previous, current)
            except Exception:  # one part failing must not keep the others from the new epoch
                log.exception("a part of the node failed to take up epoch %d", current.epoch)

    # --- work off the event loop -----------------------------------------------------------------------

    async def in_worker(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    # --- authorisation ---------------------------------------------------------------------------------

    async def authorize(self, request: Request, *, body_bound: bool = True, durable: bool = False) -> SignedRequest:
        """Check the writer's signature (made for this node, within the clock window) and that its
        nonce is new. ``durable``: the write is dangerous to replay (docs/threat-model.md), so its
        nonce goes to the on-disk journal before the write takes effect and is refused after a
        restart too; otherwise it is remembered in memory. ``body_bound=False``: the route's body
        certifies itself, so the signature may leave it unbound."""
        committee = self.committee
        if not committee.has_node(self.node_id):
            raise HTTPError(421, "not_in_committee",
                            f"this node is in no committee of epoch {committee.epoch} (standby, or retired): "
                            f"write to the nodes of the current committee (GET {routes.COMMITTEE_CHAIN})",
                            epoch=committee.epoch)
        try:
            signed = verify_request(request.headers.get("authorization"), request.method, request.target,
                                    committee, self.node_id, body_bound=body_bound,
                                    replay=None if durable else self.replay)
        except AuthError as error:
            raise unauthorized(error) from None
        if durable:
            try:
                fresh = await self.in_worker(self.journal.remember, signed.nonce, signed.expiry)
            except JournalError as error:
                log.error("%s", error)
                raise HTTPError(503, "replay_journal", str(error), [("retry-after", "60")]) from None
            if not fresh:
                raise unauthorized(AuthError("Authorization nonce was already used (replayed request)"))
        return signed

    @staticmethod
    def check_body(signed: SignedRequest, body: bytes | bytearray | memoryview) -> None:
        try:
            signed.check_body(body)
        except AuthError as error:
            raise unauthorized(error) from None

    def disk_full(self) -> HTTPError:
        """The error for a write refused for lack of space (counted and logged)."""
        self.metrics.disk_full += 1
        log.error("disk full under %s: refusing writes", self.store.root)
        return HTTPError(507, "disk_full", "the node's disk is full; nothing was stored")

    # --- shards ----------------------------------------------------------------------------------------

    def check_shard(self, blob_id: BlobId, pair: int) -> int:
        """The shard of ``pair`` if this node holds it in the current epoch (writes); else 421."""
        shard = self.geometry.shard_of_pair(pair, blob_id.raw)
        if shard not in self.shards:
            raise self._not_held(pair, shard)
        return shard

    def check_serving(self, blob_id: BlobId, pair: int) -> int:
        """The shard of ``pair`` if this node serves it (reads: also a shard it still hands off)."""
        shard = self.geometry.shard_of_pair(pair, blob_id.raw)
        if shard not in self.serving_shards:
            raise self._not_held(pair, shard)
        return shard

    def _not_held(self, pair: int, shard: int) -> HTTPError:
        committee = self.committee
        holder = committee.node_for_shard(shard)
        return HTTPError(421, "shard_not_held",
                         f"pair {pair} of this blob belongs to shard {shard}, held by {holder.id!r} "
                         f"({holder.url}) in epoch {committee.epoch}, not by this node", [], shard=shard,
                         node=holder.id, epoch=committee.epoch)

    def pairs(self, blob_id: BlobId) -> list[tuple[int, int]]:
        """(shard, pair) for each shard of this node, for one blob."""
        return [(shard, self.geometry.pair_of_shard(shard, blob_id.raw)) for shard in self.shards]

    def missing(self, blob_id: BlobId) -> list[str]:
        """This node's slivers of the blob that it does not store (for messages)."""
        return [f"pair {pair} {kind.name.lower()}" for _, pair in self.pairs(blob_id) for kind in SliverKind
                if not self.store.has(blob_id, sliver_name(pair, kind))]

    def confirmation(self, blob_id: BlobId, shards: tuple[int, ...] | None = None) -> Confirmation:
        """Signed in the current epoch, for ``shards`` (default: the current ones), which must be this
        node's shards now: an epoch change between checking and signing is answered 421, not signed."""
        committee = self.committee
        held = shards_in(committee, self.node_id, self.public_key_bytes)
        if shards is None:
            shards = held
        if not held or set(shards) != set(held):
            raise HTTPError(421, "not_in_committee",
                            f"this node holds {'no shards' if not held else f'shards {list(held)}'} in epoch "
                            f"{committee.epoch}: ask the nodes of the current committee "
                            f"(GET {routes.COMMITTEE_CHAIN})", epoch=committee.epoch)
        # The node's promise: it keeps the blob at least until its latest claim expires.
        unsigned = Confirmation(committee.epoch, blob_id, self.node_id, shards,
                                expires=self.claims.keep_until(blob_id))
        return unsigned.signed_by(self.key)

    # --- stored objects --------------------------------------------------------------------------------

    def refuse_if_invalid(self, blob_id: BlobId) -> None:
        if str(blob_id) in self.store.invalid:
            raise HTTPError(410, "blob_invalid",
                            f"blob {blob_id} is inconsistently encoded: it has no content and is never "
                            f"served; GET {routes.inconsistency(blob_id)} for the proof",
                            proof=routes.inconsistency(blob_id))

    async def read_object(self, blob_id: BlobId, name: str, executor: ThreadPoolExecutor | None = None) -> bytes | None:
        """A stored object, checksum-verified in ``executor`` (default: the foreground pool). 410 for
        the slivers of a blob proven invalid; 404 ``quarantined`` (and repair told) for a bad checksum."""
        if name not in (METADATA, CERTIFICATE, INCONSISTENCY):
            self.refuse_if_invalid(blob_id)
        try:
            return await asyncio.get_running_loop().run_in_executor(executor or self.executor, self.store.get,
                                                                    blob_id, name)
        except CorruptObjectError as error:
            self.metrics.checksum_failures += 1
            self.forget_cached(blob_id)
            self.on_quarantine(blob_id)
            raise HTTPError(404, "quarantined", f"{error}; this node no longer holds it") from None

    def forget_cached(self, blob_id: BlobId) -> None:
        self._metadata_cache.pop(blob_id, None)
        self.expansions.invalidate(lambda key: key[0] == blob_id)

    async def metadata(self, blob_id: BlobId) -> BlobMetadata | None:
        cached = self._metadata_cache.get(blob_id)
        if cached is not None:
            self._metadata_cache.move_to_end(blob_id)
            return cached
        payload = await self.read_object(blob_id, METADATA)
        if payload is None:
            return None
        metadata = BlobMetadata.from_bytes(payload)  # verified before it was stored
        self._metadata_cache[blob_id] = metadata
        if len(self._metadata_cache) > METADATA_CACHE_SIZE:
            self._metadata_cache.popitem(last=False)
        return metadata

    async def require_metadata(self, blob_id: BlobId) -> BlobMetadata:
        metadata = await self.metadata(blob_id)
        if metadata is None:
            raise HTTPError(409, "metadata_missing",
                            f"this node has no metadata for blob {blob_id}: PUT its metadata first")
        return metadata

    def close(self) -> None:
        """Stop the symbol-serving pool (at shutdown, after repair; the foreground pool is the server's)."""
        self.serve_executor.shutdown(wait=True, cancel_futures=True)


def committee_of_certificate(core: NodeCore, certificate: Certificate) -> Committee:
    """The committee a certificate must be checked against: the one of its epoch, through the chain
    (a blob certified in epoch 1 stays certified in epoch 3). CertificateError if the chain lacks it."""
    try:
        return core.committee_at(certificate.epoch)
    except ChainError as error:
        raise CertificateError(f"certificate of epoch {certificate.epoch}: {error}") from None


def shards_in(committee: Committee, node_id: str, public_key: bytes) -> tuple[int, ...]:
    """The shards ``committee`` gives the node with this id and key; () if none."""
    if not committee.has_node(node_id):
        return ()
    node = committee.node(node_id)
    return node.shards if node.public_key == public_key else ()


def unauthorized(error: AuthError) -> HTTPError:
    status = 403 if error.forbidden else 401
    return HTTPError(status, "unauthorized" if status == 401 else "forbidden", str(error),
                     [("www-authenticate", AUTH_SCHEME)])


class Healer(Protocol):
    """What the certified feed (nodes.feed) and the scrubber (nodes.scrub) use of the repair service
    that drives them (nodes.repair.RepairService), so that they need not import it."""

    core: NodeCore
    config: RepairConfig
    store: BlobStore
    geometry: EncodingGeometry
    peers: Peers | None
    backoff: Backoff
    pending_certificates: dict[str, str]
    invalid_hints: dict[str, str]

    async def in_worker(self, function: Callable[..., T], *args: Any) -> T: ...

    def knows_certified(self, blob: str) -> bool: ...

    def enqueue(self, blob: str) -> None: ...

    def verify_certificate(self, blob_id: BlobId, text: str | bytes) -> str: ...

    def _peer_failed(self, error: PeerError) -> None: ...
