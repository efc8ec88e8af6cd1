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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from walrusfs.keys import public_key_text
from walrusfs.protocol import AUTH_SCHEME, AuthError, Confirmation, ReplayGuard, SignedRequest, routes, verify_request
from walrusfs.protocol.committee import Committee
from walrusfs.redstuff import BlobId, BlobMetadata, EncodingGeometry, SliverKind

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


class NodeCore:
    def __init__(self, config: NodeConfig, committee: Committee, key: Ed25519PrivateKey,
                 store: BlobStore, workers: int = 8) -> None:
        self.config = config
        self.committee = committee
        self.key = key
        self.public_key = public_key_text(key)
        self.node_id = config.node_id
        self.store = store
        self.geometry = committee.geometry
        self.shards = committee.shards_of(config.node_id)
        self.metrics = Metrics()
        self.replay = ReplayGuard()
        self.expansions = ExpansionCache()
        # The foreground pool (requests), and the one that serves peers' recovery symbols: repairing
        # peers wait for the second, never for the first.
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="node-worker")
        self.serve_executor = ThreadPoolExecutor(config.repair.serve_workers, thread_name_prefix="node-symbols")
        self.journal = NonceJournal(store.root)
        self.journal.open()
        self._metadata_cache: OrderedDict[BlobId, BlobMetadata] = OrderedDict()
        # Told of each blob an object of which failed its checksum (repair re-queues it if certified).
        self.on_quarantine: Callable[[BlobId], None] = lambda blob_id: None

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
        try:
            signed = verify_request(request.headers.get("authorization"), request.method, request.target,
                                    self.committee, self.node_id, body_bound=body_bound,
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
        shard = self.geometry.shard_of_pair(pair, blob_id.raw)
        if shard not in self.shards:
            holder = self.committee.node_for_shard(shard)
            raise HTTPError(421, "shard_not_held",
                            f"pair {pair} of this blob belongs to shard {shard}, held by {holder.id!r} "
                            f"({holder.url}), not by this node", shard=shard, node=holder.id)
        return shard

    def pairs(self, blob_id: BlobId) -> list[tuple[int, int]]:
        """(shard, pair) for each shard of this node, for one blob."""
        return [(shard, self.geometry.pair_of_shard(shard, blob_id.raw)) for shard in self.shards]

    def missing(self, blob_id: BlobId) -> list[str]:
        """This node's slivers of the blob that it does not store (for messages)."""
        return [f"pair {pair} {kind.name.lower()}" for _, pair in self.pairs(blob_id) for kind in SliverKind
                if not self.store.has(blob_id, sliver_name(pair, kind))]

    def confirmation(self, blob_id: BlobId) -> Confirmation:
        unsigned = Confirmation(self.committee.epoch, blob_id, self.node_id, self.shards)
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
