"""Asking every node of the committee the same small question, for records replicated whole to each
(root records, writer leases): the answers count once the nodes that gave them cover n-f shards.

Once they do, the others get ``grace`` seconds more, so that a fast quorum of stale answers does not
hide a newer one a slow node already holds; two such quorums share f+1 shards, so at least one
honest node is in both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import trio

from ..protocol.committee import Committee
from .transport import NodeConnection, NodeError

T = TypeVar("T")


def shards_of(committee: Committee, node_ids: list[str]) -> int:
    return sum(len(committee.shards_of(node_id)) for node_id in node_ids)


@dataclass
class QuorumAnswers(Generic[T]):
    """What the nodes answered (node -> answer) and why the others did not (node -> reason)."""

    answers: dict[str, T] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    quorum: bool = False  # the answering nodes cover n-f shards

    def covered(self, committee: Committee) -> int:
        return shards_of(committee, list(self.answers))

    def detail(self) -> str:
        return "; ".join(f"{node}: {why}" for node, why in sorted(self.failures.items())) or "no answer in time"


async def ask_every_node(connections: dict[str, NodeConnection], committee: Committee,
                         ask: Callable[[NodeConnection], Awaitable[T]], deadline: float,
                         grace: float) -> QuorumAnswers[T]:
    """``ask`` each node once, concurrently; stop when all answered, ``grace`` seconds after a
    quorum answered, or at ``deadline``. A NodeError from ``ask`` is that node's failure."""
    result: QuorumAnswers[T] = QuorumAnswers()
    quorum, everyone = trio.Event(), trio.Event()

    async def one(connection: NodeConnection) -> None:
        try:
            result.answers[connection.node_id] = await ask(connection)
        except NodeError as error:
            result.failures[connection.node_id] = error.reason
        if result.covered(committee) >= committee.geometry.quorum:
            result.quorum = True
            quorum.set()
        if len(result.answers) + len(result.failures) == len(connections):
            everyone.set()

    with trio.move_on_after(deadline):
        async with trio.open_nursery() as nursery:
            for connection in connections.values():
                nursery.start_soon(one, connection)

            async def stop_when_everyone_answered() -> None:
                await everyone.wait()
                nursery.cancel_scope.cancel()

            async def stop_after_grace() -> None:
                await quorum.wait()
                await trio.sleep(grace)
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_when_everyone_answered)
            nursery.start_soon(stop_after_grace)
    return result
