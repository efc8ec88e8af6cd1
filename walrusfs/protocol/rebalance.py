"""The next committee when nodes join or retire: shards spread as evenly as their number allows,
moving as few of them as that permits. Pure: no I/O, no clock, the same answer on every machine.

The shard count never changes (a blob's encoding depends on it), so with S shards over m nodes each
node holds S // m or S // m + 1 of them. Every shard that moves costs a handover (its slivers of
every stored blob travel to the new holder), so among the even assignments this picks one that
keeps the most shards where they are:

- the nodes that already hold the most shards get the larger targets (S // m + 1): a node can keep
  at most min(held, target) shards, and pairing the largest holdings with the largest targets makes
  the sum of those minimums as large as it can be;
- each staying node keeps its lowest-numbered min(held, target) shards; the rest, with every shard
  of a retiring node, go to the nodes below their target, lowest shard to the first such node in
  committee order.

Which shards a node keeps among equally good choices does not change how many move; the rule is
only there so that every proposer (and every test) computes the same committee.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from ..errors import UserError
from .committee import Committee, NodeInfo


class RebalanceError(UserError):
    """A requested change that no committee can satisfy (every node retiring, more nodes than shards...)."""


@dataclass(frozen=True)
class ShardMove:
    """Shard ``shard`` goes from node ``source`` (its holder in the old committee) to ``target``."""

    shard: int
    source: str
    target: str


def rebalance(current: Committee, joining: Sequence[NodeInfo] = (), retiring: Iterable[str] = ()) -> Committee:
    """Committee ``current.epoch + 1``: ``current``'s nodes less ``retiring``, plus ``joining`` (whose
    ``shards`` are ignored: they hold none yet), with every shard assigned as described above.

    Raises RebalanceError, saying what to do instead, when a retiring id is not in ``current``, a
    joining id is already taken, every node would retire, or there would be more nodes than shards
    (a committee node must hold at least one shard).
    """
    retiring_ids = _checked_retiring(current, retiring)
    _check_joining(current, joining)
    staying = [node for node in current.nodes if node.id not in retiring_ids]
    members = [*staying, *(replace(node, shards=()) for node in joining)]
    if not members:
        raise RebalanceError(f"retiring {', '.join(sorted(retiring_ids))} would leave no node to hold the "
                             f"{current.n_shards} shards: add nodes first (`walrusfs cluster add`), then retire")
    if len(members) > current.n_shards:
        raise RebalanceError(
            f"{len(members)} nodes cannot share {current.n_shards} shards: every committee node holds at least one "
            f"shard, and the shard count is fixed for the life of the network. Add at most "
            f"{current.n_shards - len(staying)} nodes here, or retire some in the same change")
    targets = _targets(members, current.n_shards)
    kept: dict[str, list[int]] = {}
    released: list[int] = []
    for node in current.nodes:
        shards = sorted(node.shards)
        keep = targets.get(node.id, 0)
        kept[node.id] = shards[:keep]
        released.extend(shards[keep:])
    released.sort()
    assignment: dict[str, tuple[int, ...]] = {}
    for node in members:
        shards = kept.get(node.id, [])
        missing = targets[node.id] - len(shards)
        shards = sorted(shards + released[:missing])
        del released[:missing]
        assignment[node.id] = tuple(shards)
    nodes = tuple(replace(node, shards=assignment[node.id]) for node in members)
    return Committee(current.epoch + 1, current.n_shards, nodes, current.writer_keys)


def _checked_retiring(current: Committee, retiring: Iterable[str]) -> set[str]:
    retiring_ids = set(retiring)
    unknown = sorted(node_id for node_id in retiring_ids if not current.has_node(node_id))
    if unknown:
        members = ", ".join(node.id for node in current.nodes)
        raise RebalanceError(f"cannot retire {', '.join(unknown)}: not in the committee of epoch {current.epoch} "
                             f"(its nodes: {members})")
    return retiring_ids


def _check_joining(current: Committee, joining: Sequence[NodeInfo]) -> None:
    seen: set[str] = set()
    for node in joining:
        if current.has_node(node.id):
            raise RebalanceError(f"a joining node is named {node.id!r}, which is already in the committee of epoch "
                                 f"{current.epoch}: give each new node an id no committee used")
        if node.id in seen:
            raise RebalanceError(f"two joining nodes are both named {node.id!r}: node ids must be unique")
        seen.add(node.id)


def _targets(members: list[NodeInfo], n_shards: int) -> dict[str, int]:
    """How many shards each member holds afterwards: n_shards // m, plus one for the n_shards % m
    members holding the most now (ties: committee order, so the answer is deterministic)."""
    base, extra = divmod(n_shards, len(members))
    by_holding = sorted(range(len(members)), key=lambda i: (-len(members[i].shards), i))
    larger = set(by_holding[:extra])
    return {node.id: base + (1 if i in larger else 0) for i, node in enumerate(members)}


def shard_moves(previous: Committee, successor: Committee) -> list[ShardMove]:
    """The shards whose holder differs between two committees of one network, by shard number."""
    if previous.n_shards != successor.n_shards:
        raise RebalanceError(f"committees of {previous.n_shards} and {successor.n_shards} shards are not "
                             "two epochs of one network: the shard count never changes")
    moves = []
    for shard in range(previous.n_shards):
        source, target = previous.node_for_shard(shard).id, successor.node_for_shard(shard).id
        if source != target:
            moves.append(ShardMove(shard, source, target))
    return moves


__all__ = ["RebalanceError", "ShardMove", "rebalance", "shard_moves"]
