"""Reads during an epoch change, the reader alone (walrusfs.client.read): a shard's new holder that
does not have a sliver yet (404) or answers from an older epoch (421) is not the end of it; the
sliver comes from the shard's previous holder, verified like any other, so the read needs no decode.
The nodes are in-process fakes serving a real encoded blob; test_epoch_client.py reads through real
nodes.
"""

from __future__ import annotations

import os

import trio

from walrusfs.client.health import HealthBook
from walrusfs.client.read import BlobReader, ReadReport
from walrusfs.client.transport import NodeError
from walrusfs.redstuff import BlobId, SliverKind, encode

N = 7


class FakeNode:
    def __init__(self, node_id: str, encoded, holds: set[int], health: HealthBook,
                 refuse: int | None = None) -> None:
        self.node_id = node_id
        self.encoded = encoded
        self.holds = holds  # pairs whose slivers it has
        self.health = health
        self.refuse = refuse  # HTTP status for pairs it does not have (404: not yet; 421: not its shard)
        self.asked: list[tuple[int, SliverKind]] = []

    async def get_metadata(self, blob_id: BlobId):
        return self.encoded.metadata

    async def get_sliver(self, blob_id: BlobId, pair: int, kind: SliverKind, on_head=None):
        self.asked.append((pair, kind))
        if pair not in self.holds:
            raise NodeError(self.node_id, "get sliver", f"HTTP {self.refuse}", status=self.refuse,
                            transient=self.refuse == 404, epoch=2)
        if on_head is not None:
            on_head()
        geometry = self.encoded.layout.geometry
        if kind is SliverKind.PRIMARY:
            return self.encoded.primary_sliver(pair)
        return self.encoded.secondary_sliver(geometry.secondary_of_pair(pair))


def read_with_a_new_holder(refuse: int, with_previous: bool = True) -> tuple[bytes, ReadReport, FakeNode]:
    """Node i holds the shard of pair i, except that pair 0's shard moved to node-new, which lacks it;
    node-old, its previous holder, still serves it."""
    data = os.urandom(200_000)
    encoded = encode(data, N)
    blob_id = encoded.blob_id
    geometry = encoded.layout.geometry
    health = HealthBook()
    owner = {geometry.shard_of_pair(pair, blob_id.raw): f"node-{pair}" for pair in range(1, N)}
    moved_shard = geometry.shard_of_pair(0, blob_id.raw)
    owner[moved_shard] = "node-new"
    connections = {f"node-{pair}": FakeNode(f"node-{pair}", encoded, {pair}, health) for pair in range(1, N)}
    connections["node-new"] = FakeNode("node-new", encoded, set(), health, refuse=refuse)
    old = FakeNode("node-old", encoded, {0}, health)

    def previous(shard: int) -> list[FakeNode]:
        return [old] if with_previous and shard == moved_shard else []

    reader = BlobReader(connections, N, owner.__getitem__, lambda node: (0.0, 0.0), hedge_after=5.0,  # type: ignore[arg-type]
                        previous_holders=previous)  # type: ignore[arg-type]
    report = ReadReport()
    back = trio.run(reader.read, blob_id, 0, None, report)
    assert bytes(back) == data
    return bytes(back), report, old


def test_a_sliver_the_new_holder_lacks_comes_from_the_previous_holder() -> None:
    _, report, old = read_with_a_new_holder(404)
    assert old.asked == [(0, SliverKind.PRIMARY)]
    assert report.path == "systematic"  # every systematic row arrived: nothing was decoded


def test_a_new_holder_that_has_not_adopted_the_epoch_yet_is_overtaken_by_the_previous_holder() -> None:
    _, report, old = read_with_a_new_holder(421)
    assert old.asked == [(0, SliverKind.PRIMARY)]
    assert report.path == "systematic"


def test_without_a_previous_holder_the_read_decodes_from_the_others() -> None:
    _, report, old = read_with_a_new_holder(404, with_previous=False)
    assert old.asked == []
    assert report.path == "primary decode"
