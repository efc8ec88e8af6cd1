"""Every URL path of the node API (docs/node-api.md), built and matched here and nowhere else.

The builders are what clients (walrusfs.client.transport) and nodes asking their peers
(nodes.peers) request; ``match`` is how a node (nodes.app) tells which route a request is for. A
route's template (``BLOB_SLIVER`` and so on) is also its name in the node's metrics. Path parameters
come back as text: what makes a valid blob ID or index is the node's to check, with its own errors.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..redstuff import BlobId, SliverKind

HEALTH = "/v1/health"
METRICS = "/metrics"
INVENTORY = "/v1/inventory"
CERTIFIED = "/v1/certified"  # query: since, limit
REPAIR_STATUS = "/v1/repair/status"
ROOT = "/v1/roots/{fs_id}"
LEASE = "/v1/leases/{fs_id}"
OWNER_RENEWALS = "/v1/owners/{fs_id}/renewals"  # POST: extend a filesystem's claims (docs/node-api.md)
BLOB = "/v1/blobs/{id}"
BLOB_METADATA = "/v1/blobs/{id}/metadata"
BLOB_CERTIFICATE = "/v1/blobs/{id}/certificate"
BLOB_INCONSISTENCY = "/v1/blobs/{id}/inconsistency"
BLOB_STATUS = "/v1/blobs/{id}/status"
BLOB_CLAIMS = "/v1/blobs/{id}/claims"  # who keeps the blob until when (public; the handover copies it)
BLOB_CONFIRMATION = "/v1/blobs/{id}/confirmation"
BLOB_SLIVER = "/v1/blobs/{id}/slivers/{pair}/{kind}"
BLOB_RECOVERY = "/v1/blobs/{id}/slivers/{pair}/{kind}/recovery/{target}"
# The handover of shards at an epoch change (docs/epochs.md).
HANDOVER = "/v1/handover"
SHARD_BLOBS = "/v1/shards/{shard}/blobs"  # query: after, limit
SHARD_SYNCED = "/v1/shards/{shard}/synced"
HANDOVER_ROOTS = "/v1/handover/roots"  # query: after, limit: filesystems whose root records a node holds
HANDOVER_TOMBSTONES = "/v1/handover/tombstones"  # query: after, limit: blobs a writer deleted on a node
HANDOVER_LEASES = "/v1/handover/leases"  # query: after, limit: filesystems a node holds a writer lease of
COMMITTEE_CHAIN = "/v1/committee/chain"  # query: after (docs/epochs.md)
COMMITTEE_PROPOSALS = "/v1/committee/proposals"
COMMITTEE_NEXT = "/v1/committee/next"

# Every node response carries the node's current epoch in this header (docs/epochs.md).
EPOCH_HEADER = "walrusfs-epoch"

# Sent by a node with the symbol requests of its repair: the holder serves them from its bounded recovery
# pool (and may answer 429), while the same route without it is a client's foreground range read.
REPAIR_HEADER = "x-walrusfs-repair"

# The routes without parameters, by their segments.
_FIXED = {tuple(path.strip("/").split("/")): path for path in (HEALTH, METRICS, INVENTORY, CERTIFIED, REPAIR_STATUS,
                                                                COMMITTEE_CHAIN, COMMITTEE_PROPOSALS, COMMITTEE_NEXT)}
_FIXED[("v1", "handover")] = HANDOVER
_FIXED[("v1", "handover", "roots")] = HANDOVER_ROOTS
_FIXED[("v1", "handover", "tombstones")] = HANDOVER_TOMBSTONES
_FIXED[("v1", "handover", "leases")] = HANDOVER_LEASES
# The routes under /v1/shards/{shard}/, by their last segment.
_SHARD_OBJECTS = {"blobs": SHARD_BLOBS, "synced": SHARD_SYNCED}
# The one-word routes under /v1/blobs/{id}/.
_BLOB_OBJECTS = {"metadata": BLOB_METADATA, "certificate": BLOB_CERTIFICATE, "inconsistency": BLOB_INCONSISTENCY,
                 "status": BLOB_STATUS, "confirmation": BLOB_CONFIRMATION, "claims": BLOB_CLAIMS}


def root(fs_id: str) -> str:
    return f"/v1/roots/{fs_id}"


def lease(fs_id: str) -> str:
    return f"/v1/leases/{fs_id}"


def owner_renewals(fs_id: str) -> str:
    return f"/v1/owners/{fs_id}/renewals"


def blob(blob_id: BlobId) -> str:
    return f"/v1/blobs/{blob_id}"


def metadata(blob_id: BlobId) -> str:
    return f"/v1/blobs/{blob_id}/metadata"


def certificate(blob_id: BlobId) -> str:
    return f"/v1/blobs/{blob_id}/certificate"


def inconsistency(blob_id: BlobId) -> str:
    return f"/v1/blobs/{blob_id}/inconsistency"


def status(blob_id: BlobId) -> str:
    return f"/v1/blobs/{blob_id}/status"


def claims(blob_id: BlobId) -> str:
    return f"/v1/blobs/{blob_id}/claims"


def confirmation(blob_id: BlobId) -> str:
    return f"/v1/blobs/{blob_id}/confirmation"


def sliver(blob_id: BlobId, pair: int, kind: SliverKind) -> str:
    return f"/v1/blobs/{blob_id}/slivers/{pair}/{kind.name.lower()}"


def recovery_symbol(blob_id: BlobId, pair: int, kind: SliverKind, target: int) -> str:
    return f"{sliver(blob_id, pair, kind)}/recovery/{target}"


def shard_blobs(shard: int) -> str:
    return f"/v1/shards/{shard}/blobs"


def shard_synced(shard: int) -> str:
    return f"/v1/shards/{shard}/synced"


@dataclass(frozen=True)
class Match:
    """A request path matched to a route: its template and its parameters (as text)."""

    route: str
    params: dict[str, str]


def match(segments: list[str]) -> Match | None:
    """The route of a request path split at '/' (percent-decoded, empty segments dropped), or None."""
    fixed = _FIXED.get(tuple(segments))
    if fixed is not None:
        return Match(fixed, {})
    if len(segments) == 3 and segments[:2] == ["v1", "roots"]:
        return Match(ROOT, {"fs_id": segments[2]})
    if len(segments) == 3 and segments[:2] == ["v1", "leases"]:
        return Match(LEASE, {"fs_id": segments[2]})
    if len(segments) == 4 and segments[:2] == ["v1", "owners"] and segments[3] == "renewals":
        return Match(OWNER_RENEWALS, {"fs_id": segments[2]})
    if len(segments) == 4 and segments[:2] == ["v1", "shards"] and segments[3] in _SHARD_OBJECTS:
        return Match(_SHARD_OBJECTS[segments[3]], {"shard": segments[2]})
    if len(segments) < 3 or segments[:2] != ["v1", "blobs"]:
        return None
    params = {"id": segments[2]}
    rest = segments[3:]
    if not rest:
        return Match(BLOB, params)
    if len(rest) == 1 and rest[0] in _BLOB_OBJECTS:
        return Match(_BLOB_OBJECTS[rest[0]], params)
    if len(rest) == 3 and rest[0] == "slivers":
        return Match(BLOB_SLIVER, {**params, "pair": rest[1], "kind": rest[2]})
    if len(rest) == 5 and rest[0] == "slivers" and rest[3] == "recovery":
        return Match(BLOB_RECOVERY, {**params, "pair": rest[1], "kind": rest[2], "target": rest[4]})
    return None
