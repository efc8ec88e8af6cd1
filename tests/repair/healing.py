"""Helpers for the self-healing tests: a local network with short repair intervals, and waiting
(by polling, with generous deadlines) until nodes report what a test expects.

(Not a package: ``tests/repair`` is on sys.path while its tests run.)
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from network import LocalNetwork, polling_client

from walrusfs.redstuff import BlobId, EncodedBlob, SliverKind

FAST_REPAIR = {"sync_interval": 0.5, "grace": 1.0, "scrub_interval": 3600.0}


def repair_network(root: Path, **settings: Any) -> LocalNetwork:
    """A 7-node network (not started) whose nodes have a ``[repair]`` table of FAST_REPAIR + settings."""
    network = LocalNetwork(root)
    for node in network.node_ids:
        configure(network, node, **settings)
    return network


def configure(network: LocalNetwork, node: str, **settings: Any) -> None:
    """Rewrite a node's ``[repair]`` table (takes effect when it next starts)."""
    path = network.config(node)
    text = path.read_text().split("[repair]")[0].rstrip() + "\n\n[repair]\n"
    for name, value in {**FAST_REPAIR, **settings}.items():
        text += f"{name} = {str(value).lower() if isinstance(value, bool) else value}\n"
    path.write_text(text)


def repair_status(network: LocalNetwork, node: str) -> dict[str, Any]:
    return polling_client().get(f"{network.url(node)}/v1/repair/status", timeout=5).json()


def wait_for(what: str, condition: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something true; AssertionError naming ``what`` after
    ``timeout`` seconds (generous: the machine is shared and slow)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except httpx.HTTPError as error:
            last = error
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting until {what} (last: {last!r})")


def wait_certified_everywhere(network: LocalNetwork, count: int) -> None:
    """Every running node knows ``count`` certified blobs (from the writer or from peers)."""
    for node in network.running():
        wait_for(f"{node} knows {count} certified blobs",
                 lambda node=node: repair_status(network, node)["certified_blobs"] >= count)


def wait_whole(network: LocalNetwork, node: str, timeout: float = 90.0) -> dict[str, Any]:
    """Until ``node`` has read every peer's feed, has nothing left to do and misses nothing."""
    def whole() -> dict[str, Any] | None:
        status = repair_status(network, node)
        return status if status["idle"] and status["missing_slivers"] == 0 else None

    return wait_for(f"{node} is whole", whole, timeout)


def wipe(network: LocalNetwork, *nodes: str) -> None:
    """Stop the nodes and delete their data directories (a new disk); they are started again by
    the caller."""
    network.stop(*nodes)
    for node in nodes:
        shutil.rmtree(network.root / node / "data")


def held_slivers(network: LocalNetwork, node: str, blob: EncodedBlob) -> dict[tuple[int, SliverKind], bytes]:
    """The slivers of ``blob`` that ``node`` should hold, as the node serves them now (404: absent)."""
    committee = network.committee
    geometry = committee.geometry
    out = {}
    for shard in committee.shards_of(node):
        pair = geometry.pair_of_shard(shard, blob.blob_id.raw)
        for kind in SliverKind:
            response = httpx.get(f"{network.url(node)}/v1/blobs/{blob.blob_id}/slivers/{pair}/"
                                 f"{kind.name.lower()}", timeout=10)
            out[(pair, kind)] = response.content if response.status_code == 200 else b""
    return out


def expected_slivers(network: LocalNetwork, node: str, blob: EncodedBlob) -> dict[tuple[int, SliverKind], bytes]:
    geometry = network.committee.geometry
    out = {}
    for shard in network.committee.shards_of(node):
        pair = geometry.pair_of_shard(shard, blob.blob_id.raw)
        primary, secondary = blob.sliver_pair(pair)
        out[(pair, SliverKind.PRIMARY)] = primary.to_bytes()
        out[(pair, SliverKind.SECONDARY)] = secondary.to_bytes()
    return out


def sliver_bytes(network: LocalNetwork, node: str, blobs: list[EncodedBlob]) -> int:
    """The symbol bytes of every sliver ``node`` holds of ``blobs`` (what a wipe loses)."""
    total = 0
    for blob in blobs:
        layout = blob.layout
        total += len(network.committee.shards_of(node)) * (layout.primary_sliver_size + layout.secondary_sliver_size)
    return total


def holder(network: LocalNetwork, blob_id: BlobId, pair: int) -> str:
    committee = network.committee
    return committee.node_for_shard(committee.geometry.shard_of_pair(pair, blob_id.raw)).id
