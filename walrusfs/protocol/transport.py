"""How a client or a node connects to committee nodes over HTTP: which TLS context verifies each
node (its pinned certificate, or the CA bundle), and per-node transports for one shared httpx client.
Used by the blob client (walrusfs.client.transport) and by nodes talking to their peers (nodes.peers).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpx

from .committee import NodeInfo
from .tls import client_context, pinned_context


def tls_context(node: NodeInfo | None = None) -> ssl.SSLContext:
    """How to verify ``node``: exactly its certificate if the committee pins one, else the CA bundle
    (one context per process either way)."""
    return client_context(None if node is None else node.tls_cert)


def node_mounts(nodes: Iterable[NodeInfo], **options: Any) -> dict[str, httpx.AsyncHTTPTransport]:
    """For one httpx client shared by several nodes: a transport per node with a pinned certificate,
    so that each is held to its own (a single context trusting all would let one pose as another)."""
    return {f"all://{urlsplit(node.url).netloc}": httpx.AsyncHTTPTransport(verify=pinned_context(node.tls_cert),
                                                                            **options)
            for node in nodes if node.tls_cert is not None}
