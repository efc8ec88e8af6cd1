"""The next committee when nodes join or retire (walrusfs.protocol.rebalance): even counts, the
fewest shards moved, and a clear refusal of what no committee can do. Pure functions: no processes.

The property tests check the answer against a brute-force search over every assignment of the
shards, for networks small enough to enumerate."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walrusfs.keys import generate_key, public_bytes
from walrusfs.protocol.chain import committee_digest
from walrusfs.protocol.committee import Committee, NodeInfo, round_robin_shards
from walrusfs.protocol.rebalance import RebalanceError, ShardMove, rebalance, shard_moves

KEY = public_bytes(generate_key())
WRITER = public_bytes(generate_key())


def node(name: str, shards: tuple[int, ...] = ()) -> NodeInfo:
    return NodeInfo(name, f"http://127.0.0.1:{9000 + int(name.split('-')[1])}", KEY, shards)


def committee(assignment: list[tuple[int, ...]], n_shards: int | None = None, epoch: int = 1) -> Committee:
    n_shards = sum(map(len, assignment)) if n_shards is None else n_shards
    nodes = tuple(node(f"node-{i}", shards) for i, shards in enumerate(assignment))
    return Committee(epoch, n_shards, nodes, frozenset({WRITER}))


def round_robin(nodes: int, shards: int) -> Committee:
    return committee(round_robin_shards(nodes, shards), shards)


def counts(result: Committee) -> dict[str, int]:
    return {member.id: len(member.shards) for member in result.nodes}


def moved(before: Committee, after: Committee) -> int:
    return len(shard_moves(before, after))


# --- what an operator sees ----------------------------------------------------------------------------


def test_adding_one_node_to_seven_over_sixteen_shards_moves_two() -> None:
    before = round_robin(7, 16)  # counts 3,3,2,2,2,2,2
    after = rebalance(before, joining=[node("node-7")])
    assert after.epoch == 2 and after.n_shards == 16 and after.writer_keys == before.writer_keys
    assert sorted(counts(after).values()) == [2] * 8
    # node-0 and node-1 each give up one shard (their highest), and only those move, both to node-7
    assert shard_moves(before, after) == [ShardMove(14, "node-0", "node-7"), ShardMove(15, "node-1", "node-7")]
    assert after.node("node-7").shards == (14, 15)


def test_retiring_a_node_hands_each_of_its_shards_to_the_least_loaded() -> None:
    before = round_robin(4, 8)  # 2 shards each
    after = rebalance(before, retiring=["node-2"])
    assert [member.id for member in after.nodes] == ["node-0", "node-1", "node-3"]
    assert {move.source for move in shard_moves(before, after)} == {"node-2"}
    assert moved(before, after) == 2
    assert sorted(counts(after).values()) == [2, 3, 3]


def test_joining_and_retiring_in_one_change_moves_the_retiring_nodes_shards_straight_to_the_newcomers() -> None:
    before = round_robin(7, 14)  # 2 each
    after = rebalance(before, joining=[node("node-7"), node("node-8")], retiring=["node-0", "node-1"])
    assert sorted(m.id for m in after.nodes) == [f"node-{i}" for i in range(2, 9)]
    assert all(len(m.shards) == 2 for m in after.nodes)
    assert moved(before, after) == 4  # exactly the retiring nodes' shards
    assert {move.target for move in shard_moves(before, after)} == {"node-7", "node-8"}


def test_newcomers_keep_the_order_they_were_given_after_the_staying_nodes() -> None:
    after = rebalance(round_robin(4, 12), joining=[node("node-9"), node("node-5")])
    assert [m.id for m in after.nodes] == ["node-0", "node-1", "node-2", "node-3", "node-9", "node-5"]


def test_the_shards_a_joining_node_claims_to_hold_are_ignored() -> None:
    after = rebalance(round_robin(4, 8), joining=[node("node-4", (0, 1, 2))])
    assert after.node("node-4").shards != (0, 1, 2)
    assert len(after.node("node-4").shards) == 1


def test_an_unbalanced_committee_is_evened_out_with_the_fewest_moves() -> None:
    before = committee([(0, 1, 2, 3, 4, 5), (6,), (7,)])
    after = rebalance(before)  # nobody joins or leaves: only the counts change
    assert sorted(counts(after).values()) == [2, 3, 3]
    assert moved(before, after) == 3 and {m.source for m in shard_moves(before, after)} == {"node-0"}


def test_every_proposer_computes_the_same_committee() -> None:
    before = round_robin(5, 17)
    first = rebalance(before, joining=[node("node-5")], retiring=["node-3"])
    again = rebalance(before, joining=[node("node-5")], retiring=["node-3"])
    assert committee_digest(first) == committee_digest(again)


# --- refusals ------------------------------------------------------------------------------------------


def test_retiring_every_node_is_refused() -> None:
    with pytest.raises(RebalanceError, match=r"retiring node-0, node-1 would leave no node .*add nodes first"):
        rebalance(round_robin(2, 4), retiring=["node-0", "node-1"])


def test_retiring_every_node_while_others_join_is_a_full_replacement_and_allowed() -> None:
    before = round_robin(2, 4)
    after = rebalance(before, joining=[node("node-5"), node("node-6")], retiring=["node-0", "node-1"])
    assert sorted(m.id for m in after.nodes) == ["node-5", "node-6"] and moved(before, after) == 4


def test_more_nodes_than_shards_is_refused_since_a_node_would_hold_none() -> None:
    with pytest.raises(RebalanceError, match=r"5 nodes cannot share 4 shards.*Add at most 0 nodes"):
        rebalance(round_robin(4, 4), joining=[node("node-4")])
    with pytest.raises(RebalanceError, match=r"8 nodes cannot share 6 shards.*Add at most 2 nodes"):
        rebalance(round_robin(4, 6), joining=[node(f"node-{i}") for i in range(4, 8)])
    # retiring one in the same change makes room for one more
    assert len(rebalance(round_robin(4, 4), joining=[node("node-4")], retiring=["node-0"]).nodes) == 4


def test_retiring_an_unknown_node_is_refused_and_names_the_members() -> None:
    with pytest.raises(RebalanceError, match=r"cannot retire node-9: not in the committee of epoch 1 "
                                             r"\(its nodes: node-0, node-1, node-2, node-3\)"):
        rebalance(round_robin(4, 8), retiring=["node-9"])


def test_a_joining_id_already_in_the_committee_or_given_twice_is_refused() -> None:
    with pytest.raises(RebalanceError, match="'node-1', which is already in the committee"):
        rebalance(round_robin(4, 8), joining=[node("node-1")])
    with pytest.raises(RebalanceError, match="both named 'node-7'"):
        rebalance(round_robin(4, 8), joining=[node("node-7"), node("node-7")])


def test_a_retiring_nodes_id_cannot_be_reused_by_a_newcomer_in_the_same_change() -> None:
    # its key differs, and a client would take the newcomer for the node it knew
    with pytest.raises(RebalanceError, match="already in the committee"):
        rebalance(round_robin(4, 8), joining=[node("node-3")], retiring=["node-3"])


def test_shard_moves_refuses_committees_of_two_networks() -> None:
    with pytest.raises(RebalanceError, match="shard count never changes"):
        shard_moves(round_robin(4, 8), round_robin(4, 9))


# --- properties, checked against brute force --------------------------------------------------------------


@st.composite
def changes(draw: st.DrawFn, max_shards: int = 6) -> tuple[Committee, list[NodeInfo], list[str]]:
    """Any committee of 4..max_shards shards (any assignment, however uneven), some joiners, some retirees."""
    n_shards = draw(st.integers(4, max_shards))
    n_nodes = draw(st.integers(1, n_shards))
    # every node one shard first (a committee node holds at least one), the rest anywhere
    holder = list(range(n_nodes)) + [draw(st.integers(0, n_nodes - 1)) for _ in range(n_shards - n_nodes)]
    holder = draw(st.permutations(holder))
    assignment = [tuple(s for s in range(n_shards) if holder[s] == i) for i in range(n_nodes)]
    before = committee(assignment, n_shards)
    retiring = draw(st.lists(st.sampled_from([m.id for m in before.nodes]), unique=True))
    joining = [node(f"node-{n_nodes + i}") for i in range(draw(st.integers(0, 3)))]
    return before, joining, retiring


def fewest_moves_by_brute_force(before: Committee, members: list[str]) -> int:
    """Try every assignment of every shard to a member; the fewest moves among the even ones."""
    best = None
    holders = [before.node_for_shard(s).id for s in range(before.n_shards)]
    for choice in itertools.product(members, repeat=before.n_shards):
        spread = Counter(choice)
        if len(spread) != len(members) or max(spread.values()) - min(spread.values()) > 1:
            continue
        moves = sum(1 for old, new in zip(holders, choice, strict=True) if old != new)
        best = moves if best is None else min(best, moves)
    assert best is not None
    return best


@settings(max_examples=120, deadline=None)
@given(changes())
def test_the_next_committee_is_even_moves_the_fewest_and_never_both_gives_and_takes(
        change: tuple[Committee, list[NodeInfo], list[str]]) -> None:
    before, joining, retiring = change
    members = [m.id for m in before.nodes if m.id not in retiring] + [m.id for m in joining]
    if not members or len(members) > before.n_shards:
        with pytest.raises(RebalanceError):
            rebalance(before, joining, retiring)
        return
    after = rebalance(before, joining, retiring)  # Committee() itself checks every shard is held once
    assert after.epoch == before.epoch + 1 and after.n_shards == before.n_shards
    assert [m.id for m in after.nodes] == members
    assert max(counts(after).values()) - min(counts(after).values()) <= 1
    assert moved(before, after) == fewest_moves_by_brute_force(before, members)
    for member in after.nodes:  # a node that gains a shard keeps all it had: nothing moves twice
        if before.has_node(member.id):
            gained = set(member.shards) - set(before.node(member.id).shards)
            lost = set(before.node(member.id).shards) - set(member.shards)
            assert not (gained and lost), member.id
    assert not set(retiring) & {m.id for m in after.nodes}


@settings(max_examples=200, deadline=None)
@given(st.integers(4, 256).flatmap(lambda s: st.tuples(st.just(s), st.integers(1, min(s, 40)),
                                                           st.integers(0, 5), st.integers(0, 5))))
def test_growing_and_shrinking_a_round_robin_network_moves_only_what_evenness_needs(
        sizes: tuple[int, int, int, int]) -> None:
    n_shards, n_nodes, adding, retiring_count = sizes
    before = round_robin(n_nodes, n_shards)
    retiring = [f"node-{i}" for i in range(min(retiring_count, n_nodes))]
    joining = [node(f"node-{n_nodes + i}") for i in range(adding)]
    members = n_nodes - len(retiring) + adding
    if members == 0 or members > n_shards:
        with pytest.raises(RebalanceError):
            rebalance(before, joining, retiring)
        return
    after = rebalance(before, joining, retiring)
    assert max(counts(after).values()) - min(counts(after).values()) <= 1
    # a lower bound every even committee meets: the retiring nodes' shards, and each staying node's
    # shards above the largest count it may keep, must move; this one moves no more than that
    base, extra = divmod(n_shards, members)
    staying = [m for m in before.nodes if m.id not in retiring]
    over = sorted((len(m.shards) for m in staying), reverse=True)
    must_move = sum(len(before.node(r).shards) for r in retiring) + sum(
        max(0, held - (base + (1 if rank < extra else 0))) for rank, held in enumerate(over))
    assert moved(before, after) == must_move
