"""The node's own HTTP client for its peers: their certified-blob feeds, metadata, certificates,
recovery symbols and inconsistency proofs. Counts every body byte it receives.

Nothing a peer sends is trusted: callers verify metadata against the blob ID, certificates against
the committee, symbols against the metadata's Merkle roots and proofs by re-decoding them.
"""

from __future__ import annotations

from typing import Any

import httpx

from walrusfs.protocol.committee import NodeInfo
from walrusfs.protocol.transport import node_mounts, tls_context
from walrusfs.redstuff import BlobId, SliverKind

# Sent with the symbol requests of repair: the holder serves them from its bounded recovery pool
# (and may answer 429), while the same route without it is a client's foreground range read.
REPAIR_HEADER = "x-walrusfs-repair"


class PeerError(Exception):
    def __init__(self, peer: str, what: str, reason: str, status: int | None = None,
                 retry_after: float = 0.0) -> None:
        super().__init__(f"peer {peer}: {what}: {reason}")
        self.peer = peer
        self.status = status
        self.retry_after = retry_after


class Peers:
    def __init__(self, nodes: list[NodeInfo], own_id: str, timeout: float = 30.0) -> None:
        self.nodes = {node.id: node for node in nodes if node.id != own_id}
        self.own_id = own_id
        self.bytes_received = 0
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        # Peers with a pinned certificate get a transport each that trusts only it (walrusfs.tls).
        self._http = httpx.AsyncClient(verify=tls_context(), timeout=httpx.Timeout(timeout, connect=3.0),
                                       limits=limits, headers={REPAIR_HEADER: own_id},
                                       mounts=node_mounts(self.nodes.values(), limits=limits))

    async def close(self) -> None:
        await self._http.aclose()

    async def _get(self, peer: str, what: str, path: str, params: dict[str, Any] | None = None,
                   missing_ok: bool = False) -> bytes | None:
        url = self.nodes[peer].url + path
        try:
            response = await self._http.get(url, params=params)
        except httpx.HTTPError as error:
            raise PeerError(peer, what, f"{type(error).__name__}: {error}") from error
        self.bytes_received += len(response.content)
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code != 200:
            retry = response.headers.get("retry-after", "")
            raise PeerError(peer, what, f"HTTP {response.status_code} {response.text[:200]}",
                            response.status_code, float(retry) if retry.isdigit() else 0.0)
        return response.content

    async def feed(self, peer: str, since: int, limit: int = 500) -> bytes:
        body = await self._get(peer, "certified feed", "/v1/certified", {"since": since, "limit": limit})
        assert body is not None
        return body

    async def metadata(self, peer: str, blob_id: BlobId) -> bytes | None:
        return await self._get(peer, "metadata", f"/v1/blobs/{blob_id}/metadata", missing_ok=True)

    async def certificate(self, peer: str, blob_id: BlobId) -> bytes | None:
        return await self._get(peer, "certificate", f"/v1/blobs/{blob_id}/certificate", missing_ok=True)

    async def inconsistency(self, peer: str, blob_id: BlobId) -> bytes | None:
        return await self._get(peer, "inconsistency proof", f"/v1/blobs/{blob_id}/inconsistency",
                               missing_ok=True)

    async def symbol(self, peer: str, blob_id: BlobId, pair: int, kind: SliverKind, target: int) -> bytes:
        path = f"/v1/blobs/{blob_id}/slivers/{pair}/{kind.name.lower()}/recovery/{target}"
        body = await self._get(peer, f"recovery symbol {target} of pair {pair}", path)
        assert body is not None
        return body
