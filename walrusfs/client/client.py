"""BlobClient: store and read blobs on a committee of storage nodes, under trio.

    async with BlobClient(committee, writer_key=key) as client:
        stored = await client.store(data)        # blob ID + availability certificate
        data = await client.read(stored.blob_id)

One pooled httpx client serves every request. The client owns a nursery for deliveries that go on
after store() returned (slow nodes), so leaving the ``async with`` waits for them, at most
``exit_grace`` seconds; nodes that cannot even be connected to (down) are not waited for: their
slivers and the certificate are left to the nodes' own repair at once.

The client follows the committee chain (walrusfs.client.epochs, docs/epochs.md): given a committee
or a CommitteeChain, it works with the newest committee verified, and when a node names a newer
epoch it fetches and verifies the links, opens connections to the new nodes and goes on: a store
in flight is delivered again to the new committee (slivers a node already took are not sent twice;
one certificate holds confirmations of one epoch), and a read retries with the new holders.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import trio

from ..protocol.chain import CommitteeChain
from ..protocol.committee import Committee, NodeInfo
from ..redstuff import BlobId, BlobMetadata
from .budget import ByteBudget
from .certificate import Certificate
from .epochs import EpochFollower
from .health import HealthBook
from .read import BlobInvalidError, BlobReader, ReadError, ReadReport
from .store import Delivery, Sent, StoreError, StoreProgress, announce_certificate, encode_for_upload
from .transport import NodeConnection, tls_context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredBlob:
    blob_id: BlobId
    metadata: BlobMetadata
    certificate: Certificate


@dataclass
class ClientSettings:
    hedge_after: float = 0.3  # seconds without an answer before asking one more node
    store_deadline: float = 60.0  # seconds to reach a certificate
    background_deadline: float = 300.0  # seconds slow nodes keep being served after that
    memory_budget: int = 1 << 30  # bytes of encoded blobs in flight (store waits beyond it)
    background_budget: int = 0  # bytes kept for slow nodes after certification (0: = memory_budget)
    exit_grace: float = 10.0  # seconds background deliveries may go on when the client closes
    connect_timeout: float = 3.0
    read_timeout: float = 30.0
    max_connections: int = 64  # over all nodes (each node gets its share, at least 4)
    # The claim each stored blob gets on the nodes (docs/node-api.md, "Claims"): the filesystem that
    # owns it and for how long (seconds from the store); "" and 0: the nodes' default claim.
    owner: str = ""
    blob_term: float = 0.0

    def claim(self) -> tuple[str, int | None]:
        """(owner, the expiry to ask for now)."""
        return self.owner, int(time.time() + self.blob_term) if self.blob_term else None


class BlobClient:
    def __init__(self, committee: Committee | CommitteeChain, writer_key: object | None = None,
                 settings: ClientSettings | None = None, *,
                 save_chain: Callable[[CommitteeChain], None] | None = None) -> None:
        """``committee``: the committee to start from, or a verified chain; ``save_chain`` keeps the
        chain whenever it grew (a filesystem's state directory: walrusfs.client.epochs.chain_saver)."""
        chain = committee if isinstance(committee, CommitteeChain) else CommitteeChain(committee)
        self.writer_key = writer_key
        self.settings = settings or ClientSettings()
        self.health = HealthBook()
        self._budget = ByteBudget(self.settings.memory_budget)
        self._background = ByteBudget(self.settings.background_budget or self.settings.memory_budget)
        self._http: list[httpx.AsyncClient] = []
        self._nursery: trio.Nursery | None = None
        self._nursery_manager = None
        self._closing = trio.Event()  # set on leaving: background work stops waiting for absent nodes
        self._refreshing = False
        self.epochs = EpochFollower(chain, self._connection_to, save_chain)
        self.epochs.add_listener(self._adopt)
        # Every node connected to, by identity: nodes of older committees still serve the shards
        # they hand off, and a node whose URL or key changed gets a connection of its own.
        self._pool: dict[NodeInfo, NodeConnection] = {}
        self.connections: dict[str, NodeConnection] = {}  # the current committee's nodes, by id

    @property
    def committee(self) -> Committee:
        """The newest committee verified (it changes when the network moves to a new epoch)."""
        return self.epochs.current

    @property
    def chain(self) -> CommitteeChain:
        return self.epochs.chain

    async def __aenter__(self) -> BlobClient:
        self.connections = {node.id: self._connection_to(node) for node in self.committee.nodes}
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        return self

    def _connection_to(self, node: NodeInfo) -> NodeConnection:
        connection = self._pool.get(node)
        if connection is not None:
            return connection
        s = self.settings
        # One connection pool per node: httpcore checks every pooled connection (a poll(2) each)
        # whenever a request starts or ends, which over one shared pool of all nodes' connections
        # cost 8% of the mount daemon's main thread during writes.
        per_node = max(4, s.max_connections // len(self.committee.nodes))
        http = httpx.AsyncClient(
            verify=tls_context(node),
            timeout=httpx.Timeout(s.read_timeout, connect=s.connect_timeout),
            limits=httpx.Limits(max_connections=per_node, max_keepalive_connections=per_node),
        )
        self._http.append(http)
        connection = self._pool[node] = NodeConnection(http, self.committee, node, self.health, self.writer_key)
        connection.on_epoch = self._saw
        return connection

    def _adopt(self, previous: Committee, current: Committee) -> None:
        """A newer committee was verified: from now on requests go to its nodes. A new dict, so that
        work in flight keeps the committee and connections it started with, consistent."""
        self.connections = {node.id: self._connection_to(node) for node in current.nodes}

    def _saw(self, node_id: str, epoch: int) -> None:
        self.epochs.saw(node_id, epoch)
        if self.epochs.behind and not self._refreshing and self._nursery is not None and not self._closing.is_set():
            self._refreshing = True
            self._nursery.start_soon(self._refresh_in_background, f"{node_id} is at epoch {epoch}")

    async def _refresh_in_background(self, reason: str) -> None:
        try:
            await self.epochs.refresh(reason)
        except Exception:  # a bug here must not take the client (a mount's daemon) down with it
            log.exception("refreshing the committee chain failed (%s); the next newer epoch seen tries again", reason)
        finally:
            self._refreshing = False

    async def refresh_chain(self, reason: str = "") -> bool:
        """Fetch and verify the committee links the nodes have after the current epoch (at start, say,
        or when a node says it has moved on); True if the committee changed."""
        return await self.epochs.refresh(reason)

    async def _catch_up(self, epoch: int) -> bool:
        """After a failure under committee ``epoch``: True if a newer committee is known now (found by
        a refresh if a node named a newer epoch), so the operation is worth going on with."""
        if self.committee.epoch > epoch:
            return True
        if self.epochs.behind:
            await self.epochs.refresh(f"a node is at epoch {self.epochs.seen_epoch}")
        return self.committee.epoch > epoch

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        """Wait for background deliveries (at most ``exit_grace`` seconds), unless leaving on an
        error: then stop them at once (the blobs already returned are certified) and let the
        caller's exception through as it is, not wrapped in a nursery's ExceptionGroup."""
        assert self._nursery_manager is not None and self._nursery is not None
        try:
            if exc is not None:
                self._nursery.cancel_scope.cancel()
            else:  # every returned blob is certified: slow nodes get a last chance, then repair
                self._nursery.cancel_scope.deadline = trio.current_time() + self.settings.exit_grace
                # Nodes that cannot be connected to are not waited for: the grace is for deliveries
                # to nodes that are there (a node that accepts connections but is silent may just be
                # slow, and keeps its grace).
                self._closing.set()
            await self._nursery_manager.__aexit__(None, None, None)
        finally:
            with trio.CancelScope(shield=True):
                for http in self._http:
                    await http.aclose()
                self._http.clear()

    def _reader(self) -> BlobReader:
        committee, follower = self.committee, self.epochs

        def previous(shard: int) -> list[NodeConnection]:
            return [self._connection_to(node) for node in follower.previous_holders(shard)]

        return BlobReader(self.connections, committee.n_shards, lambda shard: committee.node_for_shard(shard).id,
                          self.health.order_key, self.settings.hedge_after, self.health.avoided_for,
                          previous_holders=previous)

    async def store(self, data: bytes | memoryview,
                    on_progress: Callable[[StoreProgress], None] | None = None) -> StoredBlob:
        """Encode and store ``data``; returns only with a verified availability certificate."""
        assert self._nursery is not None, "use BlobClient inside 'async with'"
        await self._catch_up(self.committee.epoch)
        # Until every node is served the blob is held with all its slivers (its encoded length).
        layout = self.committee.geometry.layout(len(data))
        need = len(data) + layout.encoded_length
        delivery: Delivery | None = None
        deadline = trio.current_time() + self.settings.store_deadline
        with trio.move_on_at(deadline):
            taken = await self._budget.acquire(need)
            holder = [self._budget]  # which budget the delivery holds its memory in
            latest: list[Delivery | None] = [None]  # only the newest epoch's delivery gives the memory back

            def release() -> None:
                holder[0].release(taken)

            try:
                encoded = await trio.to_thread.run_sync(encode_for_upload, data, self.committee.n_shards)
            except BaseException:
                release()
                raise
            sent = Sent()  # what nodes took, over every epoch's delivery: nothing is sent twice
            while True:
                committee = self.committee
                progress = StoreProgress(bytes_total=encoded.layout.encoded_length, quorum=committee.geometry.quorum)
                superseded, delivery = delivery, Delivery(committee, encoded, self.connections, progress,
                                                          closing=self._closing, sent=sent,
                                                          claim=self.settings.claim())
                latest[0] = delivery

                def done(this: Delivery = delivery) -> None:
                    if latest[0] is this:
                        release()

                self._nursery.start_soon(delivery.run, deadline - trio.current_time()
                                         + self.settings.background_deadline, done)
                if superseded is not None:
                    superseded.superseded = True
                    superseded.scope.cancel()  # one certificate holds confirmations of one epoch
                while not delivery.settled.is_set() and self.committee.epoch == committee.epoch:
                    with trio.move_on_after(0.2):
                        await delivery.settled.wait()
                    if on_progress:
                        on_progress(progress)
                    if (delivery.moved or self.epochs.seen_epoch > committee.epoch) and self.epochs.behind:
                        await self.epochs.refresh(f"storing {encoded.blob_id}")
                if delivery.certified() or not await self._catch_up(committee.epoch):
                    break
                log.info("blob %s: the network moved to epoch %d during the store; delivering it to that "
                         "committee", encoded.blob_id, self.committee.epoch)
        if delivery is None:
            raise StoreError(f"no memory for another blob within {self.settings.store_deadline:.0f} s: "
                             f"{self._budget.used} bytes of earlier blobs are still being delivered", {})
        if on_progress:
            on_progress(progress)
        if delivery.certified():
            certificate = delivery.certificate()
            certificate.verify(delivery.committee)
            # Nodes down now learn it from their peers later: no longer than slow deliveries go on.
            self._nursery.start_soon(announce_certificate, self.connections, certificate,
                                     min(10.0, self.settings.background_deadline), self._closing)
            # Slow nodes keep being served from the background budget; if it is full they are
            # left to repair, so that memory held for them never blocks the next store.
            if not delivery.finished.is_set():
                moved = self._background.try_acquire(taken)
                if moved is None:
                    delivery.scope.cancel()
                else:
                    self._budget.release(taken)
                    holder[0] = self._background
            return StoredBlob(encoded.blob_id, encoded.metadata, certificate)
        delivery.scope.cancel()  # the caller retries the whole store; this attempt is over
        failures = dict(delivery.failures)
        for node_id in delivery.pending:
            failures.setdefault(node_id, "no confirmation yet")
        covered = len(delivery.covered())
        detail = describe_failures(failures)
        raise StoreError(
            f"blob {encoded.blob_id} is NOT stored: confirmations cover {covered} shards, a "
            f"certificate needs {delivery.committee.geometry.quorum} of {delivery.committee.n_shards} "
            f"(epoch {delivery.committee.epoch}) within {self.settings.store_deadline:.0f} s. Failed nodes: "
            f"{detail}. Act on what the "
            "nodes answered, check that they are up (walrusfs cluster status), and try again.",
            failures, permanent=delivery.refused_for_good(),
        )

    async def read(self, blob_id: BlobId, offset: int = 0, length: int | None = None,
                   report: ReadReport | None = None) -> bytes | memoryview:
        """The blob's bytes [offset, offset+length), every byte verified against ``blob_id``. A
        whole-blob read returns a view of the decoder's buffer rather than copying it. A read that
        fails while the network moves to a new epoch is tried again with the new committee."""
        if self.epochs.behind:
            await self._catch_up(self.committee.epoch)
        while True:
            epoch = self.committee.epoch
            try:
                return await self._reader().read(blob_id, offset, length, report)
            except BlobInvalidError:
                raise
            except ReadError:
                if not await self._catch_up(epoch):
                    raise
            log.info("read of %s: retrying with the committee of epoch %d", blob_id, self.committee.epoch)

    async def metadata(self, blob_id: BlobId) -> BlobMetadata:
        while True:
            epoch = self.committee.epoch
            try:
                return await self._reader().metadata(blob_id, ReadReport())
            except ReadError:
                if not await self._catch_up(epoch):
                    raise

    async def status(self, blob_id: BlobId) -> dict[str, dict]:
        """Each node's own account of which slivers of the blob it holds."""
        out: dict[str, dict] = {}

        async def one(node_id: str) -> None:
            try:
                out[node_id] = await self.connections[node_id].get_status(blob_id)
            except Exception as error:
                out[node_id] = {"error": str(error)}

        async with trio.open_nursery() as nursery:
            for node_id in self.connections:
                nursery.start_soon(one, node_id)
        return out


def describe_failures(failures: dict[str, str]) -> str:
    """Each distinct reason once, with the nodes that gave it ("node-1, node-4: ..."); what nodes
    answered (HTTP errors with their explanation) before connection failures and timeouts, so that
    it survives where the message is shortened (status lines, logs)."""
    by_reason: dict[str, list[str]] = {}
    for node, why in sorted(failures.items()):
        by_reason.setdefault(why, []).append(node)
    ordered = sorted(by_reason.items(), key=lambda item: not item[0].startswith("HTTP "))
    return "; ".join(f"{', '.join(nodes)}: {why}" for why, nodes in ordered)


__all__ = ["BlobClient", "ClientSettings", "StoreError", "StoredBlob"]
