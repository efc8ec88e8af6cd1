"""Keeping a filesystem's blobs on the nodes: releasing them (gc) and renewing their claims.

(The top of this module, release_blob and ReleaseOutcome, belongs to the gc branch; renew_blobs is
at the end. docs/node-api.md, "Claims", says what the nodes do with either.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from ..redstuff import BlobId
from .client import BlobClient
from .transport import NodeError

# --- renewal (lifecycle-nodes) ----------------------------------------------------------------------

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
