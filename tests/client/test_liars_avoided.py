"""A node caught serving bad data is avoided for a cool-down: the read path on a mock clock.

A unit test of one layer (no network): BlobReader over in-process nodes that serve the slivers of a
real encoding, two of which flip a byte of every sliver they serve, and some of which may be down.
The client's HealthBook runs on trio's mock clock, so the cool-down is crossed by jumping it.
"""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from walrusfs.client.health import LIE_COOLDOWN, HealthBook
from walrusfs.client.read import BlobReader, ReadError, ReadReport
from walrusfs.client.transport import NodeError
from walrusfs.redstuff import BlobId, EncodedBlob, Sliver, SliverKind, encode

N = 7  # f = 2: a read needs 3 primary or 5 secondary slivers


class Node:
    """One node, holding shard i (one per node): honest, lying, or down."""

    def __init__(self, node_id: str, blob: EncodedBlob, health: HealthBook) -> None:
        self.node_id = node_id
        self.blob = blob
        self.health = health
        self.lies = False
        self.down = False
        self.slivers_asked = 0

    async def get_metadata(self, blob_id: BlobId):
        await trio.lowlevel.checkpoint()
        if self.down:
            raise NodeError(self.node_id, "get metadata", "ConnectError", unreachable=True)
        return self.blob.metadata

    async def get_sliver(self, blob_id: BlobId, pair: int, kind: SliverKind, on_head=None) -> Sliver:
        await trio.lowlevel.checkpoint()
        if self.down:
            raise NodeError(self.node_id, "get sliver", "ConnectError", unreachable=True)
        self.slivers_asked += 1
        sliver = self.blob.sliver_pair(pair)[kind is SliverKind.SECONDARY]
        if not self.lies:
            return sliver
        wire = bytearray(sliver.to_bytes())
        wire[len(wire) // 2] ^= 0xFF  # as tests/support/lying_proxy.py does
        return Sliver.from_bytes(bytes(wire))


def test_a_liar_is_not_asked_again_during_its_cool_down_and_is_asked_again_after_it():
    data = os.urandom(200_000)
    blob = encode(data, N)
    geometry = blob.layout.geometry

    def owner(shard: int) -> str:
        return f"node-{shard}"

    def holder(pair: int) -> str:
        return owner(geometry.shard_of_pair(pair, blob.blob_id.raw))

    async def main(clock: trio.testing.MockClock) -> None:
        health = HealthBook(clock=trio.current_time)
        nodes = {f"node-{i}": Node(f"node-{i}", blob, health) for i in range(N)}
        liars = [holder(0), holder(1)]  # two systematic rows: asked first by a fresh client
        for liar in liars:
            nodes[liar].lies = True
        reader = BlobReader(nodes, N, owner, health.order_key, hedge_after=None,  # type: ignore[arg-type]
                            avoided_for=health.avoided_for)

        first = ReadReport()
        assert bytes(await reader.read(blob.blob_id, report=first)) == data
        assert set(first.liars) == set(liars)
        assert all(nodes[liar].slivers_asked == 1 for liar in liars)

        # Within the cool-down the liars are not asked at all: the other five are enough.
        for _ in range(3):
            clock.jump(10)
            report = ReadReport()
            assert bytes(await reader.read(blob.blob_id, report=report)) == data
            assert set(report.avoided) == set(liars) and not report.liars
        assert all(nodes[liar].slivers_asked == 1 for liar in liars)

        # Three more nodes go down: the read cannot succeed, and the liars are still not asked;
        # the error says why they were left out.
        for node in [n for n in nodes if n not in liars][:3]:
            nodes[node].down = True
        with pytest.raises(ReadError) as caught:
            await reader.read(blob.blob_id, report=ReadReport())
        assert all(nodes[liar].slivers_asked == 1 for liar in liars)
        assert "served bad data recently" in str(caught.value)

        # After the cool-down they are asked again (they lie again, and are avoided again).
        clock.jump(LIE_COOLDOWN)
        assert not any(health.avoided(liar) for liar in liars)
        with pytest.raises(ReadError):
            await reader.read(blob.blob_id, report=ReadReport())
        assert all(nodes[liar].slivers_asked >= 2 for liar in liars)
        assert all(health.avoided(liar) for liar in liars)

    clock = trio.testing.MockClock()
    trio.run(main, clock, clock=clock)


def test_avoided_nodes_are_asked_last_when_too_few_others_are_left():
    data = os.urandom(100_000)
    blob = encode(data, N)

    def owner(shard: int) -> str:
        return f"node-{shard}"

    async def main() -> None:
        health = HealthBook(clock=trio.current_time)
        nodes = {f"node-{i}": Node(f"node-{i}", blob, health) for i in range(N)}
        suspects = ["node-0", "node-1", "node-2"]  # lied earlier, honest now
        for suspect in suspects:
            health.lie(suspect, "a sliver that failed its proof, earlier")
        nodes["node-3"].down = nodes["node-4"].down = True
        reader = BlobReader(nodes, N, owner, health.order_key, hedge_after=None,  # type: ignore[arg-type]
                            avoided_for=health.avoided_for)
        report = ReadReport()
        assert bytes(await reader.read(blob.blob_id, report=report)) == data
        # Four others are enough in number for 3 primary slivers, so the suspects are not asked for
        # those (two of the four are down); for 5 secondary slivers only four others are left, so
        # the suspects are asked, last, and the read succeeds.
        assert report.path == "secondary decode"
        assert all(nodes[suspect].slivers_asked == 1 for suspect in suspects)

    trio.run(main, clock=trio.testing.MockClock())
