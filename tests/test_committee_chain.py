"""The committee chain (walrusfs.protocol.chain): each committee after the first is valid only when
nodes holding n - f shards of the one before signed it, and anyone holding an old committee can walk
forward to the current one. Pure functions: no processes."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest

from walrusfs.keys import generate_key, public_bytes
from walrusfs.protocol.chain import (
    ChainError,
    CommitteeChain,
    CommitteeLink,
    committee_digest,
    propose,
    sign_link,
)
from walrusfs.protocol.committee import Committee, NodeInfo, round_robin_shards

N_SHARDS = 10  # f = 3, quorum 7
KEYS = {f"node-{i}": generate_key() for i in range(12)}
WRITER = generate_key()


def committee(epoch: int, members: list[str]) -> Committee:
    shards = round_robin_shards(len(members), N_SHARDS)
    nodes = tuple(NodeInfo(name, f"http://127.0.0.1:{9000 + int(name.split('-')[1])}", public_bytes(KEYS[name]),
                           held) for name, held in zip(members, shards, strict=True))
    return Committee(epoch, N_SHARDS, nodes, frozenset({public_bytes(WRITER)}))


def signed(previous: Committee, successor: Committee, signers: list[str] | None = None) -> CommitteeLink:
    link = propose(previous, successor)
    for node in previous.nodes:
        if signers is None or node.id in signers:
            link = link.with_signature(node.id, sign_link(KEYS[node.id], previous, successor))
    return link


def five_epochs() -> tuple[list[Committee], list[CommitteeLink]]:
    """Epoch 1 on nodes 0-4; every later epoch adds one node and drops the oldest."""
    committees = [committee(1 + e, [f"node-{i}" for i in range(e, e + 5)]) for e in range(5)]
    links = [signed(before, after) for before, after in itertools.pairwise(committees)]
    return committees, links


def test_a_client_holding_the_first_committee_walks_to_the_fifth() -> None:
    committees, links = five_epochs()
    chain = CommitteeChain(committees[0])
    chain.extend_from(reversed(links))  # any order: the chain sorts them by epoch
    assert chain.current == committees[-1]
    assert chain.current.epoch == 5
    assert [chain.committee_at(e).epoch for e in range(1, 6)] == [1, 2, 3, 4, 5]
    assert chain.committee_at(2) == committees[1]


def test_a_chain_survives_its_json_and_is_reverified_on_load() -> None:
    committees, links = five_epochs()
    chain = CommitteeChain(committees[0], links)
    loaded = CommitteeChain.from_json(chain.to_json())
    assert loaded.current == chain.current and len(loaded.links) == 4
    data = json.loads(chain.to_json())
    data["links"][2]["committee"]["nodes"][0]["url"] = "http://127.0.0.1:1"  # redirect one node
    with pytest.raises(ChainError, match="epoch 4 is signed by nodes holding 0 shards"):
        CommitteeChain.from_json(json.dumps(data))


def test_a_copy_is_extended_on_its_own() -> None:
    committees, links = five_epochs()
    chain = CommitteeChain(committees[0], links[:2])
    longer = chain.copy()
    longer.extend(links[2])
    assert longer.current == committees[3] and len(longer.links) == 3
    assert chain.current == committees[2] and len(chain.links) == 2
    with pytest.raises(ChainError, match="does not follow"):
        longer.extend(links[0])  # the copy still verifies what it is given


def test_a_successor_signed_by_too_few_shards_is_refused() -> None:
    first = committee(1, [f"node-{i}" for i in range(5)])  # 2 shards each
    second = committee(2, [f"node-{i}" for i in range(1, 6)])
    three_nodes = signed(first, second, ["node-0", "node-1", "node-2"])  # 6 of 10 shards: quorum is 7
    with pytest.raises(ChainError, match="holding 6 shards of epoch 1; it needs 7 of 10"):
        three_nodes.verify(first)
    four_nodes = signed(first, second, ["node-0", "node-1", "node-2", "node-3"])
    assert four_nodes.verify(first) == second


def test_a_forged_successor_is_refused() -> None:
    first = committee(1, [f"node-{i}" for i in range(5)])
    honest = committee(2, [f"node-{i}" for i in range(1, 6)])
    link = signed(first, honest)
    # Another committee presented with the honest signatures: the signatures do not cover it.
    forged_committee = committee(2, [f"node-{i}" for i in range(6, 11)])
    forged = CommitteeLink(link.previous_digest, forged_committee, link.signatures)
    with pytest.raises(ChainError, match="signed by nodes holding 0 shards"):
        forged.verify(first)
    # Signatures by keys that are not the previous committee's count for nothing.
    outsiders = propose(first, forged_committee)
    for name in ("node-6", "node-7", "node-8", "node-9", "node-10"):
        outsiders = outsiders.with_signature(name, sign_link(KEYS[name], first, forged_committee))
    with pytest.raises(ChainError, match="holding 0 shards"):
        outsiders.verify(first)
    # A signer that claims another member's name does not gain its shards.
    impostor = propose(first, forged_committee)
    for member in first.nodes:
        impostor = impostor.with_signature(member.id, sign_link(KEYS["node-11"], first, forged_committee))
    with pytest.raises(ChainError, match="holding 0 shards"):
        impostor.verify(first)


def test_a_link_signed_for_another_predecessor_is_a_fork_and_refused() -> None:
    first = committee(1, [f"node-{i}" for i in range(5)])
    other_first = replace(first, writer_keys=frozenset({public_bytes(generate_key())}))
    second = committee(2, [f"node-{i}" for i in range(1, 6)])
    link = signed(other_first, second)
    with pytest.raises(ChainError, match="successor of another committee"):
        link.verify(first)


def test_links_are_walked_one_epoch_at_a_time_and_shard_counts_never_change() -> None:
    committees, links = five_epochs()
    chain = CommitteeChain(committees[0])
    with pytest.raises(ChainError, match="does not follow epoch 1"):
        chain.extend(links[1])
    wider = Committee(2, 13, tuple(replace(node, shards=held) for node, held in
                                  zip(committees[1].nodes, round_robin_shards(5, 13), strict=True)),
                      committees[1].writer_keys)
    with pytest.raises(ChainError, match="has 13 shards, epoch 1 has 10"):
        signed(committees[0], wider).verify(committees[0])


def test_the_digest_is_canonical_and_covers_what_clients_act_on() -> None:
    first = committee(1, [f"node-{i}" for i in range(5)])
    reordered = replace(first, nodes=tuple(reversed(first.nodes)))
    assert committee_digest(reordered) == committee_digest(first)
    assert committee_digest(Committee.loads(first.dumps())) == committee_digest(first)
    moved = replace(first, nodes=(replace(first.nodes[0], url="http://127.0.0.1:1"), *first.nodes[1:]))
    rewritten = replace(first, writer_keys=frozenset({public_bytes(generate_key())}))
    assert len({committee_digest(c) for c in (first, moved, rewritten)}) == 3


def test_unknown_epochs_and_versions_say_what_to_do() -> None:
    committees, links = five_epochs()
    chain = CommitteeChain(committees[1], links[1:])
    with pytest.raises(ChainError, match="no committee of epoch 1 is known here"):
        chain.committee_at(1)
    assert [link.epoch for link in chain.links_after(3)] == [4, 5]
    data = links[0].to_dict()
    data["version"] = 2
    with pytest.raises(ChainError, match=r"link version 2 .* upgrade walrusfs"):
        CommitteeLink.from_dict(data)
    with pytest.raises(ChainError, match="not a committee link"):
        CommitteeLink.from_json(b"{}")
    assert CommitteeLink.from_json(links[0].to_json()) == links[0]
