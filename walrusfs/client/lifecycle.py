"""A filesystem's claims on the blobs the nodes store: releasing them (gc) and renewing them.

A blob on a node may be claimed by several owners, each a filesystem ID (docs/node-api.md): one
filesystem releasing a blob never destroys it for another that stores the same bytes. The node
deletes a blob, tombstoned so that repair and peer sync never bring it back, once no claim is left.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import httpx
import trio

from ..protocol import routes
from ..redstuff import BlobId
from .client import BlobClient
from .transport import NodeConnection, NodeError

log = logging.getLogger(__name__)


@dataclass
class ReleaseOutcome:
    """What each node answered to one release: ``released`` (200 or 404: it no longer holds the
    claim), ``failed`` (node -> why). ``deleted``: nodes that said the blob is gone from their disk."""

    blob_id: BlobId
    released: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    required: frozenset[str] = frozenset()  # the current committee's nodes: all must have released

    @property
    def complete(self) -> bool:
        return self.required <= self.released

    def describe(self) -> str:
        if self.complete:
            return f"blob {self.blob_id} released on all {len(self.required)} nodes"
        missing = sorted(self.required - self.released)
        reasons = "; ".join(f"{node}: {self.failed.get(node, 'no answer')}" for node in missing)
        return (f"blob {self.blob_id} is not yet released on {len(missing)} of {len(self.required)} nodes "
                f"({reasons}); it stays on the to-release list and is retried at the next gc")


async def _release_on(connection: NodeConnection, blob_id: BlobId, owner: str) -> tuple[bool, bool]:
    """(released, deleted) on one node; NodeError if it did not answer 200 or 404."""
    target = f"{routes.blob(blob_id)}?owner={owner}"  # the query is part of the signed target

    def parse(response: httpx.Response) -> tuple[bool, bool]:
        if response.status_code == 404:
            return True, True  # not stored there (never was, or deleted before): nothing to release
        body = response.json()
        return True, bool(body.get("deleted", True))

    return await connection._call(  # the transport's one request path (health, errors)
        f"release blob {blob_id}", lambda: connection.http.delete(
            connection.base + target, headers=connection._auth("DELETE", target)),
        parse, ok=(200, 404))


async def release_blob(client: BlobClient, blob_id: BlobId, owner: str) -> ReleaseOutcome:
    """Release ``owner``'s claim on ``blob_id`` on every node of the current committee, and (while an
    epoch change may still be handing shards over) on the previous committee's nodes too. Only the
    current committee's answers decide ``complete``: a node that left may be gone for good, and the
    new holders refuse a tombstoned blob handed to them."""
    current = dict(client.connections)
    outcome = ReleaseOutcome(blob_id, required=frozenset(current))
    targets: dict[str, NodeConnection] = dict(current)
    committees = client.chain.committees()
    if len(committees) > 1:
        for node in committees[-2].nodes:
            if node.id not in targets:
                targets[node.id] = client._connection_to(node)

    async def one(node_id: str, connection: NodeConnection) -> None:
        try:
            released, deleted = await _release_on(connection, blob_id, owner)
        except NodeError as error:
            outcome.failed[node_id] = error.reason
            return
        if released:
            outcome.released.add(node_id)
        if deleted:
            outcome.deleted.add(node_id)

    async with trio.open_nursery() as nursery:
        for node_id, connection in targets.items():
            nursery.start_soon(one, node_id, connection)
    if not outcome.complete:
        log.info("%s", outcome.describe())
    return outcome


# --- renewal ----------------------------------------------------------------------

RENEWAL_BATCH = 1000  # blob IDs per request: the nodes' limit


@dataclass
class RenewalOutcome:
    """What each node of the committee said to a renewal: the expiry it granted (the earliest over
    the batches) or why it failed, and the blobs it does not store."""

    granted: dict[str, int] = field(default_factory=dict)  # node id -> unix seconds
    failed: dict[str, str] = field(default_factory=dict)  # node id -> reason
    unknown: dict[str, set[str]] = field(default_factory=dict)  # node id -> blob ids it does not store

    @property
    def complete(self) -> bool:
        """Every node granted every batch."""
        return not self.failed

    @property
    def expires(self) -> int | None:
        """The earliest expiry any node granted (None if none did)."""
        return min(self.granted.values(), default=None)


async def renew_blobs(client: BlobClient, owner: str, blob_ids: list[BlobId] | set[BlobId],
                      expires: int) -> RenewalOutcome:
    """Ask every node of the current committee to keep these blobs for ``owner`` until ``expires``
    (unix seconds), in batches of RENEWAL_BATCH. A node that fails one batch is reported failed (the
    caller retries it all later); a blob a node does not store is reported, not an error: that node
    does not hold its shards (or lost them, which repair heals)."""
    ordered = sorted(blob_ids, key=str)
    outcome = RenewalOutcome()

    async def one(node_id: str) -> None:
        connection = client.connections[node_id]
        for start in range(0, len(ordered), RENEWAL_BATCH):
            batch = ordered[start:start + RENEWAL_BATCH]
            try:
                answer = await connection.renew(owner, batch, expires)
            except NodeError as error:
                outcome.failed[node_id] = error.reason
                outcome.granted.pop(node_id, None)
                return
            granted = int(answer["granted"])
            outcome.granted[node_id] = min(granted, outcome.granted.get(node_id, granted))
            if answer["unknown"]:
                outcome.unknown.setdefault(node_id, set()).update(str(b) for b in answer["unknown"])

    async with trio.open_nursery() as nursery:
        for node_id in list(client.connections):
            nursery.start_soon(one, node_id)
    return outcome
