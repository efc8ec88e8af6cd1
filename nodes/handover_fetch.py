"""The handover's HTTP client: what a shard's new holder asks its old holder and the other nodes.

Nothing an answer carries is trusted: metadata is checked against the blob ID, certificates against
the committee of their epoch, slivers against the metadata, inconsistency proofs by re-decoding.
Every body byte received is counted (the handover's bytes moved).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import httpx

from walrusfs.protocol import routes
from walrusfs.protocol.committee import NodeInfo
from walrusfs.protocol.handover import BlobListing, ShardSynced
from walrusfs.protocol.transport import node_mounts, tls_context
from walrusfs.redstuff import BlobId, SliverKind

log = logging.getLogger("nodes.handover")
LISTING_PAGE = 200


@dataclass
class Meter:
    """Body bytes received for one piece of work (a blob, a page): the handover's bytes moved are
    counted per shard, while the client serves every shard at once."""

    bytes: int = 0


class FetchError(Exception):
    """A node did not answer, or answered with an error (``status`` None: no answer at all)."""

    def __init__(self, node: str, what: str, reason: str, status: int | None = None, code: str = "") -> None:
        super().__init__(f"node {node}: {what}: {reason}")
        self.node = node
        self.status = status
        self.code = code  # the node's error code ("unknown_epoch", ...), if it answered one


class HandoverClient:
    """One httpx client for every node the handover may ask (those of the committees it spans)."""

    def __init__(self, nodes: list[NodeInfo], own_id: str, timeout: float = 20.0) -> None:
        self.nodes = {node.id: node for node in nodes if node.id != own_id}
        self.bytes_received = 0
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=16)
        self._http = httpx.AsyncClient(verify=tls_context(), timeout=httpx.Timeout(timeout, connect=3.0),
                                       limits=limits, headers={routes.REPAIR_HEADER: own_id},
                                       mounts=node_mounts(self.nodes.values(), limits=limits))

    async def close(self) -> None:
        await self._http.aclose()

    async def _request(self, node: str, what: str, method: str, path: str, meter: Meter, *,
                       params: dict[str, Any] | None = None, body: bytes | None = None,
                       missing_ok: bool = False) -> bytes | None:
        info = self.nodes.get(node)
        if info is None:
            raise FetchError(node, what, "not a node of the committees this handover spans")
        try:
            response = await self._http.request(method, info.url + path, params=params, content=body)
        except httpx.HTTPError as error:
            raise FetchError(node, what, f"{type(error).__name__}: {error}") from error
        self.bytes_received += len(response.content)
        meter.bytes += len(response.content)
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code not in (200, 201):
            raise FetchError(node, what, f"HTTP {response.status_code} {response.text[:300]}", response.status_code,
                             _error_code(response.content))
        return response.content

    async def listing(self, node: str, shard: int, after: str | None, meter: Meter) -> BlobListing:
        params: dict[str, Any] = {"limit": LISTING_PAGE}
        if after is not None:
            params["after"] = after
        body = await self._request(node, f"blobs of shard {shard}", "GET", routes.shard_blobs(shard), meter,
                                   params=params)
        assert body is not None
        return BlobListing.from_json(body)

    async def inventory(self, node: str, after: str | None, meter: Meter) -> tuple[list[str], str | None]:
        """A page of every blob ``node`` stores (the fallback when a shard's old holder is gone)."""
        return await self._id_page(node, "inventory", routes.INVENTORY, "blob_ids", after, meter)

    async def root_ids(self, node: str, after: str | None, meter: Meter) -> tuple[list[str], str | None]:
        """A page of the filesystems whose root record ``node`` holds."""
        return await self._id_page(node, "root records held", routes.HANDOVER_ROOTS, "fs_ids", after, meter)

    async def tombstones(self, node: str, after: str | None, meter: Meter) -> tuple[list[str], str | None]:
        """A page of the blobs ``node`` holds a tombstone of (deleted by their writer)."""
        return await self._id_page(node, "tombstones", routes.HANDOVER_TOMBSTONES, "blob_ids", after, meter)

    async def lease_ids(self, node: str, after: str | None, meter: Meter) -> tuple[list[str], str | None]:
        """A page of the filesystems ``node`` holds a writer lease of."""
        return await self._id_page(node, "writer leases held", routes.HANDOVER_LEASES, "fs_ids", after, meter)

    async def lease(self, node: str, fs_id: str, meter: Meter) -> bytes | None:
        return await self._request(node, f"writer lease of {fs_id}", "GET", routes.lease(fs_id), meter,
                                   missing_ok=True)

    async def _id_page(self, node: str, what: str, route: str, field: str, after: str | None,
                       meter: Meter) -> tuple[list[str], str | None]:
        """One page of a paged ID listing: ``{field: [...], "next": ...}``, from ``after`` on."""
        params: dict[str, Any] = {"limit": 1000}
        if after is not None:
            params["after"] = after
        body = await self._request(node, what, "GET", route, meter, params=params)
        assert body is not None
        data = json.loads(body)
        return [str(entry) for entry in data[field]], data["next"]

    async def root(self, node: str, fs_id: str, meter: Meter) -> bytes | None:
        return await self._request(node, f"root record of {fs_id}", "GET", routes.root(fs_id), meter,
                                   missing_ok=True)

    async def metadata(self, node: str, blob_id: BlobId, meter: Meter) -> bytes | None:
        return await self._request(node, "metadata", "GET", routes.metadata(blob_id), meter, missing_ok=True)

    async def claims(self, node: str, blob_id: BlobId, meter: Meter) -> bytes | None:
        return await self._request(node, "claims", "GET", routes.claims(blob_id), meter, missing_ok=True)

    async def certificate(self, node: str, blob_id: BlobId, meter: Meter) -> bytes | None:
        return await self._request(node, "certificate", "GET", routes.certificate(blob_id), meter, missing_ok=True)

    async def inconsistency(self, node: str, blob_id: BlobId, meter: Meter) -> bytes | None:
        return await self._request(node, "inconsistency proof", "GET", routes.inconsistency(blob_id), meter,
                                   missing_ok=True)

    async def sliver(self, node: str, blob_id: BlobId, pair: int, kind: SliverKind,
                     meter: Meter) -> bytes | None:
        return await self._request(node, f"pair {pair} {kind.name.lower()} of {blob_id}", "GET",
                                   routes.sliver(blob_id, pair, kind), meter, missing_ok=True)

    async def links(self, node: str, links: list[dict[str, Any]], meter: Meter) -> None:
        """Committee links a node lacks (the body certifies itself: no request signature)."""
        body = json.dumps({"version": 1, "links": links}).encode()
        await self._request(node, "committee links", "POST", routes.COMMITTEE_NEXT, meter, body=body)

    async def synced(self, node: str, statement: ShardSynced, meter: Meter) -> None:
        await self._request(node, f"synced statement for shard {statement.shard}", "POST",
                            routes.shard_synced(statement.shard), meter, body=statement.to_json().encode())


def _error_code(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", ""))
    except (ValueError, AttributeError):
        return ""
