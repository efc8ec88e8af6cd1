"""Storing a blob: encode off the trio thread, send every node its slivers, collect confirmations.

store() returns as soon as confirmations with valid signatures cover n - f shards; it never returns
a blob ID without them. Nodes still receiving slivers keep being served in the background (owned by
the client's nursery) until ``background_deadline``, holding the encoded blob's memory budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ..protocol import Confirmation, confirmed_shards, is_certified
from ..protocol.committee import Committee
from ..redstuff import BlobId, EncodedBlob, Sliver, SliverKind, encode
from ..retry import Backoff
from .certificate import Certificate
from .transport import NodeConnection, NodeError

log = logging.getLogger(__name__)

_RETRY = Backoff(first=0.2, cap=3.0)  # walrusfs.retry: full jitter, capped


def encode_for_upload(data: bytes | memoryview, n_shards: int) -> EncodedBlob:
    """Encode (in a worker thread: numpy and blake3 release the GIL)."""
    return encode(data, n_shards)


def secondary_slivers(encoded: EncodedBlob) -> dict[int, Sliver]:
    """Every secondary sliver, by pair index. Gathering those of the source columns is copying (a
    worker thread's job); it overlaps with the primary slivers (views, no copy) already flowing."""
    geometry = encoded.layout.geometry
    return {pair: encoded.secondary_sliver(geometry.secondary_of_pair(pair)) for pair in range(geometry.n_shards)}


async def _pause(delay: float, error: NodeError, closing: trio.Event | None) -> None:
    """The wait before a retry. For a node that could not be connected to, it ends early when the
    client closes: one last attempt then, and no waiting out the exit grace for a node not there."""
    with trio.move_on_after(delay):
        if closing is not None and error.unreachable:
            await closing.wait()
        else:
            await trio.sleep_forever()


def _gone(error: NodeError, closing: trio.Event | None) -> bool:
    """Give up on a node: it could not be connected to after the client began to close."""
    return error.unreachable and closing is not None and closing.is_set()


async def announce_certificate(connections: dict[str, NodeConnection], certificate: Certificate,
                               deadline: float = 10.0, closing: trio.Event | None = None) -> None:
    """Best effort, after store() returned: every node learns that the blob is certified, so that
    it keeps its slivers complete (repair). A node that misses this learns it from its peers."""
    text = certificate.to_json()

    async def one(connection: NodeConnection) -> None:
        attempt = 0
        while True:
            try:
                await connection.put_certificate(certificate.blob_id, text)
                return
            except NodeError as error:
                if not error.transient or _gone(error, closing):
                    log.debug("certificate of %s not taken by %s: %s", certificate.blob_id, connection.node_id, error)
                    return
                await _pause(_RETRY.delay(attempt), error, closing)
            attempt += 1

    with trio.move_on_after(deadline):
        async with trio.open_nursery() as nursery:
            for connection in connections.values():
                nursery.start_soon(one, connection)


class StoreError(Exception):
    """No availability certificate could be had; says which nodes failed and why."""

    def __init__(self, message: str, failures: dict[str, str], permanent: bool = False) -> None:
        super().__init__(message)
        self.failures = failures
        # The nodes that refused outright leave too few for a certificate: retrying the same store
        # cannot succeed until someone changes something (walrusfs.retry).
        self.permanent = permanent


@dataclass
class StoreProgress:
    bytes_total: int = 0
    bytes_sent: int = 0
    confirmed_shards: int = 0
    quorum: int = 0


@dataclass
class Sent:
    """What nodes have taken of one blob, kept across the deliveries of one store: when the network
    moves to a new epoch mid-store, the blob is delivered to the new committee without sending a
    node again what it already holds."""

    metadata: set[str] = field(default_factory=set)  # node ids
    slivers: dict[str, set[tuple[int, SliverKind]]] = field(default_factory=dict)  # node id -> (pair, kind)


@dataclass
class Delivery:
    """Sending one encoded blob to every node of the committee (of one epoch)."""

    committee: Committee
    encoded: EncodedBlob
    connections: dict[str, NodeConnection]
    progress: StoreProgress
    secondaries: dict[int, Sliver] = field(default_factory=dict)  # by pair, once gathered
    secondaries_ready: trio.Event = field(default_factory=trio.Event)
    confirmations: dict[str, Confirmation] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)  # nodes that answered a permanent refusal (4xx)
    pending: set[str] = field(default_factory=set)
    settled: trio.Event = field(default_factory=trio.Event)
    finished: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    closing: trio.Event | None = None  # set when the client closes: unreachable nodes are given up
    sent: Sent = field(default_factory=Sent)
    # A node answered that it moved on (421 shard_not_held, or a confirmation of a newer epoch): this
    # committee is no longer current, and the store goes on with the next one.
    moved: bool = False
    superseded: bool = False  # a delivery to a newer committee took over
    claim: tuple[str, int | None] = ("", None)  # (owner, expiry) asked for with the metadata
    @property
    def blob_id(self) -> BlobId:
        return self.encoded.blob_id

    def covered(self) -> set[int]:
        """The shards the confirmations taken so far cover. Each was checked (signer, epoch, blob,
        signature) as it arrived, in ``_deliver``, before it was taken: checking them all again at
        every arrival cost ~n^2 signature checks per store, milliseconds of a small blob's fsync."""
        return confirmed_shards(self.committee, self.confirmations.values())

    def certified(self) -> bool:
        return is_certified(self.committee, self.covered())

    def refused_for_good(self) -> bool:
        """The nodes that refused leave too few shards for a certificate however long it is retried."""
        others = {shard for node in self.committee.nodes if node.id not in self.refused
                  for shard in self.committee.shards_of(node.id)}
        return bool(self.refused) and not is_certified(self.committee, others)

    def certificate(self) -> Certificate:
        return Certificate(self.blob_id, self.committee.epoch, tuple(self.confirmations.values()))

    async def run(self, deadline: float, on_done: Callable[[], None]) -> None:
        """Deliver to every node until each is done, ``deadline`` (seconds) passes, or ``scope`` is
        cancelled (a failed store, or no memory left to keep serving slow nodes)."""
        self.pending = {node.id for node in self.committee.nodes}
        try:
            self.scope.deadline = trio.current_time() + deadline
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._gather_secondaries)
                    for node in self.committee.nodes:
                        nursery.start_soon(self._deliver, node.id)
            for node_id in self.pending:
                self.failures.setdefault(node_id, f"no confirmation within {deadline:.0f} s")
                if self.superseded:
                    continue  # the delivery to the newer committee serves the node
                log.warning("blob %s: node %s not served (%s); repair will heal it",
                            self.blob_id, node_id, "stopped" if self.scope.cancel_called
                            else f"not within {deadline:.0f} s")
        finally:
            self.settled.set()
            self.finished.set()
            on_done()

    async def _gather_secondaries(self) -> None:
        self.secondaries = await trio.to_thread.run_sync(secondary_slivers, self.encoded)
        self.secondaries_ready.set()

    async def _deliver(self, node_id: str) -> None:
        connection = self.connections[node_id]
        geometry = self.encoded.layout.geometry
        attempt = 0
        sent = self.sent.slivers.setdefault(node_id, set())
        while True:
            try:
                if node_id not in self.sent.metadata:
                    await connection.put_metadata(self.encoded.metadata, *self.claim)
                    self.sent.metadata.add(node_id)
                errors: list[NodeError] = []
                offered: list[Confirmation] = []  # come with the node's last sliver
                async with trio.open_nursery() as nursery:
                    for shard in self.committee.shards_of(node_id):
                        pair = geometry.pair_of_shard(shard, self.blob_id.raw)
                        for kind in SliverKind:
                            if (pair, kind) not in sent:
                                nursery.start_soon(self._send, connection, pair, kind, sent, errors, offered)
                if errors:  # a refusal (not worth retrying) before a transient error
                    raise min(errors, key=lambda error: error.transient and not error.moved)
                confirmation = offered[-1] if offered else await connection.get_confirmation(self.blob_id)
                if confirmation.epoch < self.committee.epoch and confirmation.node_id == node_id:
                    # It stored the slivers but has not adopted this epoch's committee yet: ask again.
                    raise NodeError(node_id, "confirmation", f"it confirms in epoch {confirmation.epoch}, this "
                                    f"store is for epoch {self.committee.epoch}", epoch=confirmation.epoch)
                break
            except NodeError as error:
                if error.moved and not error.behind(self.committee.epoch):
                    self._moved_on(node_id, error.reason)
                    return
                if not error.transient and not error.moved:
                    self.refused.add(node_id)
                    self._fail(node_id, error.reason)
                    return
                if _gone(error, self.closing):
                    log.info("blob %s: node %s cannot be reached (%s) and the client is closing; repair "
                             "will heal it", self.blob_id, node_id, error.reason)
                    self._fail(node_id, f"{error.reason} (unreachable when the client closed)")
                    return
                delay = _RETRY.delay(attempt)
                attempt += 1
                log.debug("blob %s: node %s: %s; retrying in %.1f s", self.blob_id, node_id, error, delay)
                self.failures[node_id] = error.reason
                await _pause(delay, error, self.closing)
        node = self.committee.node(node_id)
        if (confirmation.epoch > self.committee.epoch and confirmation.node_id == node_id
                and confirmation.blob_id == self.blob_id):
            self._moved_on(node_id, f"it confirms in epoch {confirmation.epoch}, this store is for epoch "
                                    f"{self.committee.epoch}")
            return
        if (confirmation.node_id != node_id or confirmation.blob_id != self.blob_id
                or confirmation.epoch != self.committee.epoch or not confirmation.verify(node.public_key)):
            connection.health.lie(node_id, "confirmation with an invalid signature")
            self._fail(node_id, "confirmation does not verify (wrong signer, blob or epoch)")
            return
        self.confirmations[node_id] = confirmation
        self.failures.pop(node_id, None)
        self.pending.discard(node_id)
        self.progress.confirmed_shards = len(self.covered())
        if self.certified():
            self.settled.set()

    async def _send(self, connection: NodeConnection, pair: int, kind: SliverKind,
                    sent: set[tuple[int, SliverKind]], errors: list[NodeError],
                    offered: list[Confirmation]) -> None:
        """Send one sliver; a failure goes to ``errors`` (raising it inside the nursery would reach
        the caller as an ExceptionGroup, past ``except NodeError``)."""
        if kind is SliverKind.PRIMARY:
            sliver = self.encoded.primary_sliver(pair)
        else:
            await self.secondaries_ready.wait()
            sliver = self.secondaries[pair]
        try:
            confirmation = await connection.put_sliver(pair, sliver)
        except NodeError as error:
            errors.append(error)
            return
        if confirmation is not None:
            offered.append(confirmation)
        sent.add((pair, kind))
        self.progress.bytes_sent += sliver.nbytes

    def _moved_on(self, node_id: str, reason: str) -> None:
        """The node is in a newer epoch than this delivery's committee: neither a refusal nor a lie."""
        log.info("blob %s: node %s has moved on to a newer committee (%s)", self.blob_id, node_id, reason)
        self.moved = True  # the store asks for the new committee (and, once verified, goes on with it)
        self._fail(node_id, f"moved to a newer epoch: {reason}")

    def _fail(self, node_id: str, reason: str) -> None:
        self.failures[node_id] = reason
        self.pending.discard(node_id)
        reachable = self.covered() | {s for n in self.pending for s in self.committee.shards_of(n)}
        if not is_certified(self.committee, reachable):  # a quorum can no longer be had
            self.settled.set()
