"""A writer lease (walrusfs.lease) on a quorum of nodes: reading it, asking for it, releasing it.

Leases are replicated whole to every node. A writer holds the filesystem while nodes covering
n-f shards granted its request; two such quorums share at least f+1 shards, so at least one
honest node has granted both and, by its rules, cannot have granted two holders at once. Which
node said what is kept, so the caller can say who holds the filesystem and until when.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from ..protocol.committee import Committee
from ..protocol.lease import LeaseRecord, LeaseState
from .quorum import ask_every_node
from .transport import LeaseAnswer, NodeConnection, NodeError

log = logging.getLogger(__name__)


class LeaseQuorumError(Exception):
    """Not enough nodes answered to read, grant or renew a lease; says which and why."""


@dataclass
class LeaseRound:
    """What the nodes answered to one lease request."""

    record: LeaseRecord
    answers: dict[str, LeaseAnswer] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def _granted(self, answer: LeaseAnswer) -> bool:
        # A retry of a request that did reach the node is refused as a replay of itself: granted.
        return answer.granted or (answer.code == "stale_renewal" and answer.current is not None
                                  and answer.current.record == self.record)

    @property
    def granted(self) -> list[str]:
        return sorted(node for node, answer in self.answers.items() if self._granted(answer))

    def refusals(self, code: str | None = None) -> dict[str, LeaseAnswer]:
        return {node: answer for node, answer in self.answers.items()
                if not self._granted(answer) and (code is None or answer.code == code)}

    def others(self, holder: str) -> list[tuple[str, LeaseState]]:
        """(node, lease) of the refusals that name another holder's lease."""
        return [(node, answer.current) for node, answer in self.refusals().items()
                if answer.current is not None and answer.current.record.holder != holder]

    def detail(self) -> str:
        parts = [f"{node}: {why}" for node, why in sorted(self.failures.items())]
        parts += [f"{node}: {answer.code}: {answer.message}" for node, answer in sorted(self.refusals().items())]
        return "; ".join(parts) or "no answer in time"


async def read_leases(connections: dict[str, NodeConnection], committee: Committee, fs_id: str,
                      deadline: float = 20.0, grace: float = 0.5) -> dict[str, LeaseState | None]:
    """Each answering node's lease of ``fs_id`` (None: it holds none). Waits up to ``grace`` seconds
    for the rest once nodes covering n-f shards answered; raises LeaseQuorumError without them."""
    found = await ask_every_node(connections, committee, lambda connection: connection.get_lease(fs_id),
                                 deadline, grace)
    if not found.quorum:
        raise LeaseQuorumError(f"cannot read the writer lease of filesystem {fs_id}: nodes covering "
                               f"{found.covered(committee)} shards answered, {committee.geometry.quorum} "
                               f"needed ({found.detail()}). Check the nodes (walrusfs cluster status).")
    return found.answers


async def send_lease(connections: dict[str, NodeConnection], record: LeaseRecord, deadline: float) -> LeaseRound:
    """Send one lease request to every node, once (a node that does not answer within ``deadline``
    counts as a failure). Rounds are cheap and repeated by the caller: a round that waited out
    retries of a node that is down would hold up every fsync behind it."""
    result = LeaseRound(record)

    async def one(connection: NodeConnection) -> None:
        try:
            result.answers[connection.node_id] = await connection.put_lease(record)
        except NodeError as error:
            result.failures[connection.node_id] = error.reason

    with trio.move_on_after(deadline):
        async with trio.open_nursery() as nursery:
            for connection in connections.values():
                nursery.start_soon(one, connection)
    for node in connections:
        if node not in result.answers and node not in result.failures:
            result.failures[node] = f"no answer within {deadline:.1f} s"
    return result
