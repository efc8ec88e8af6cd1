"""The node's own HTTP client for its peers: their certified-blob feeds, metadata, certificates,
recovery symbols and inconsistency proofs. Counts every body byte it receives.

Nothing a peer sends is trusted: callers verify metadata against the blob ID, certificates against
the committee, symbols against the metadata's Merkle roots and proofs by re-decoding them.

It shares with the blob client (walrusfs.client.transport) what both must agree on, from
walrusfs.protocol: the paths (routes), how each node is verified (transport: pinned TLS). It keeps
its own small request loop because what it wants of an answer differs: raw bytes to be verified
later, a byte count for repair's pacing, 429 with Retry-After honoured by backoff, and no health
book or writer signature (peers only read).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import httpx

from walrusfs.protocol import routes
from walrusfs.protocol.chain import CommitteeChain
from walrusfs.protocol.committee import NodeInfo
from walrusfs.protocol.transport import node_mounts, tls_context
from walrusfs.protocol.wire import ErrorBody
from walrusfs.redstuff import BlobId, SliverKind


class PeerError(Exception):
    def __init__(self, peer: str, what: str, reason: str, status: int | None = None,
                 retry_after: float = 0.0) -> None:
        super().__init__(f"peer {peer}: {what}: {reason}")
        self.peer = peer
        self.status = status
        self.retry_after = retry_after


def peer_nodes(chain: CommitteeChain) -> list[NodeInfo]:
    """Whom a node asks: the nodes of the current committee, then those of the one before that left
    it (they still hand their shards off, and know what was certified)."""
    current = chain.current
    nodes = list(current.nodes)
    if chain.links:
        previous = chain.committee_at(current.epoch - 1)
        nodes += [node for node in previous.nodes if not current.has_node(node.id)]
    return nodes


class Peers:
    def __init__(self, nodes: list[NodeInfo], own_id: str, timeout: float = 30.0,
                 on_epoch: Callable[[str, int], None] | None = None) -> None:
        self.own_id = own_id
        # Told of the epoch each answer names (routes.EPOCH_HEADER): a newer one means this node is behind.
        self.on_epoch = on_epoch
        self.timeout = timeout
        self.bytes_received = 0
        self._old: list[httpx.AsyncClient] = []
        self.nodes: dict[str, NodeInfo] = {}
        self._http = self._client(nodes)

    def _client(self, nodes: Iterable[NodeInfo]) -> httpx.AsyncClient:
        self.nodes = {node.id: node for node in nodes if node.id != self.own_id}
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        # Peers with a pinned certificate get a transport each that trusts only it (walrusfs.protocol.tls).
        return httpx.AsyncClient(verify=tls_context(), timeout=httpx.Timeout(self.timeout, connect=3.0),
                                 limits=limits, headers={routes.REPAIR_HEADER: self.own_id},
                                 mounts=node_mounts(self.nodes.values(), limits=limits))

    def set_nodes(self, nodes: list[NodeInfo]) -> None:
        """Ask these nodes from now on (a new epoch). Requests in flight finish on the old client,
        closed with this one."""
        if {node.id: node for node in nodes if node.id != self.own_id} == self.nodes:
            return
        self._old.append(self._http)
        self._http = self._client(nodes)

    async def close(self) -> None:
        for client in (*self._old, self._http):
            await client.aclose()

    async def _get(self, peer: str, what: str, path: str, params: dict[str, Any] | None = None,
                   missing_ok: bool = False) -> bytes | None:
        node = self.nodes.get(peer)
        if node is None:  # it left the committee since it was chosen
            raise PeerError(peer, what, "no longer a peer (the committee changed)")
        url = node.url + path
        try:
            response = await self._http.get(url, params=params)
        except httpx.HTTPError as error:
            raise PeerError(peer, what, f"{type(error).__name__}: {error}") from error
        self.bytes_received += len(response.content)
        epoch = response.headers.get(routes.EPOCH_HEADER, "")
        if self.on_epoch is not None and epoch.isdigit():
            self.on_epoch(peer, int(epoch))
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code != 200:
            retry = response.headers.get("retry-after", "")
            raise PeerError(peer, what, f"HTTP {response.status_code} {_said(response)}",
                            response.status_code, float(retry) if retry.isdigit() else 0.0)
        return response.content

    async def feed(self, peer: str, since: int, limit: int = 500) -> bytes:
        body = await self._get(peer, "certified feed", routes.CERTIFIED, {"since": since, "limit": limit})
        assert body is not None
        return body

    async def metadata(self, peer: str, blob_id: BlobId) -> bytes | None:
        return await self._get(peer, "metadata", routes.metadata(blob_id), missing_ok=True)

    async def claims(self, peer: str, blob_id: BlobId) -> bytes | None:
        return await self._get(peer, "claims", routes.claims(blob_id), missing_ok=True)

    async def certificate(self, peer: str, blob_id: BlobId) -> bytes | None:
        return await self._get(peer, "certificate", routes.certificate(blob_id), missing_ok=True)

    async def inconsistency(self, peer: str, blob_id: BlobId) -> bytes | None:
        return await self._get(peer, "inconsistency proof", routes.inconsistency(blob_id),
                               missing_ok=True)

    async def symbol(self, peer: str, blob_id: BlobId, pair: int, kind: SliverKind, target: int) -> bytes:
        path = routes.recovery_symbol(blob_id, pair, kind, target)
        body = await self._get(peer, f"recovery symbol {target} of pair {pair}", path)
        assert body is not None
        return body


def _said(response: httpx.Response) -> str:
    """The peer's error body as ``code: message``, else the start of whatever it sent."""
    try:
        error = ErrorBody.from_dict(response.json())
    except ValueError:  # not JSON, or JSON that is no error body (WireError)
        return response.text[:200]
    return f"{error.code}: {error.message}"[:300]
