"""The client's side of the committee chain, one layer alone (walrusfs.client.epochs): fetching links
from nodes that may lie, verifying them from the trusted committee, saving and re-loading the chain,
and checking certificates against the committee of their epoch. The nodes here are in-process fakes
answering ``GET /v1/committee/chain`` as docs/epochs.md says; tests/epochs/test_epoch_client.py does
the same on real node processes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import trio

from walrusfs.client.epochs import EpochFollower, load_chain, verify_in_chain
from walrusfs.client.transport import NodeError
from walrusfs.keys import generate_key, public_bytes
from walrusfs.protocol.certificates import Certificate, CertificateError, Confirmation
from walrusfs.protocol.chain import CommitteeChain, CommitteeLink, propose, sign_link
from walrusfs.protocol.committee import Committee, NodeInfo
from walrusfs.redstuff import BlobId

N_SHARDS = 4  # f = 1: a link needs signatures covering 3 shards


class Keys:
    """Node keys by id: nodes come and go, their keys stay theirs."""

    def __init__(self) -> None:
        self.keys = {}

    def __getitem__(self, node_id: str):
        if node_id not in self.keys:
            self.keys[node_id] = generate_key()
        return self.keys[node_id]


def committee(keys: Keys, epoch: int, assignment: dict[str, tuple[int, ...]]) -> Committee:
    nodes = tuple(NodeInfo(node_id, f"http://127.0.0.1:{20000 + int(node_id.split('-')[1])}",
                           public_bytes(keys[node_id]), shards) for node_id, shards in assignment.items())
    return Committee(epoch, N_SHARDS, nodes, frozenset())


def signed_link(keys: Keys, previous: Committee, successor: Committee) -> CommitteeLink:
    link = propose(previous, successor)
    for node in previous.nodes:
        link = link.with_signature(node.id, sign_link(keys[node.id], previous, successor))
    return link


def three_epochs(keys: Keys) -> tuple[Committee, list[CommitteeLink]]:
    """Epoch 1 on node-0..3; epoch 2 hands shard 3 to node-4; epoch 3 retires node-0 (shard 0 to node-4)."""
    first = committee(keys, 1, {"node-0": (0,), "node-1": (1,), "node-2": (2,), "node-3": (3,)})
    second = committee(keys, 2, {"node-0": (0,), "node-1": (1,), "node-2": (2,), "node-4": (3,)})
    third = committee(keys, 3, {"node-4": (0, 3), "node-1": (1,), "node-2": (2,)})
    return first, [signed_link(keys, first, second), signed_link(keys, second, third)]


class FakeNode:
    """Answers the chain route like a node (or like a liar, given ``answer``)."""

    def __init__(self, node_id: str, links: list[CommitteeLink], epoch: int, answer=None) -> None:
        self.node_id = node_id
        self.links = links
        self.epoch = epoch
        self.answer = answer
        self.asked: list[int] = []

    async def get_chain(self, after: int) -> dict:
        self.asked.append(after)
        if isinstance(self.answer, Exception):
            raise self.answer
        if self.answer is not None:
            return self.answer
        return {"version": 1, "epoch": self.epoch, "links": [link.to_dict() for link in self.links
                                                             if link.epoch > after]}


def follower(anchor: Committee, nodes: dict[str, FakeNode], saved: list[CommitteeChain] | None = None
             ) -> EpochFollower:
    def save(chain: CommitteeChain) -> None:
        if saved is not None:
            saved.append(CommitteeChain.from_json(chain.to_json()))

    return EpochFollower(CommitteeChain(anchor), lambda node: nodes[node.id], save)


def forged(link: CommitteeLink) -> dict:
    """``link`` with one node's URL pointed elsewhere: what an attacker would redirect clients with;
    the signatures, made over the real committee, no longer match."""
    data = link.to_dict()
    data["committee"]["nodes"][0]["url"] = "http://203.0.113.9:31400"
    return data


def test_a_client_holding_epoch_1_walks_to_epoch_3_and_saves_the_chain() -> None:
    keys = Keys()
    anchor, links = three_epochs(keys)
    nodes = {node_id: FakeNode(node_id, links, 3) for node_id in ("node-0", "node-1", "node-2", "node-3", "node-4")}
    saved: list[CommitteeChain] = []
    epochs = follower(anchor, nodes, saved)
    changes = []
    epochs.add_listener(lambda previous, current: changes.append((previous.epoch, current.epoch)))

    assert trio.run(epochs.refresh) is True

    assert epochs.current.epoch == 3
    assert epochs.current.node_for_shard(0).id == "node-4"
    assert changes == [(1, 3)]
    assert [committee.epoch for committee in saved[-1].committees()] == [1, 2, 3]
    assert sum(len(node.asked) for node in nodes.values()) == 1  # the first honest, current answer is enough
    assert trio.run(epochs.refresh) is False  # nothing newer: no change, nothing saved again
    assert len(saved) == 1


def test_a_node_serving_a_forged_link_is_skipped_and_named_and_honest_nodes_give_the_chain(
        caplog: pytest.LogCaptureFixture) -> None:
    keys = Keys()
    anchor, links = three_epochs(keys)
    liar_answer = {"version": 1, "epoch": 3, "links": [links[0].to_dict(), forged(links[1])]}
    nodes = {"node-0": FakeNode("node-0", links, 3, answer=liar_answer),
             **{node_id: FakeNode(node_id, links, 3) for node_id in ("node-1", "node-2", "node-3", "node-4")}}
    epochs = follower(anchor, nodes)

    with caplog.at_level(logging.WARNING, logger="walrusfs.client.epochs"):
        assert trio.run(epochs.refresh) is True

    assert epochs.current.epoch == 3
    assert epochs.current.node("node-4").url != "http://203.0.113.9:31400"
    assert "node-0" in epochs.rejected and "signed by nodes holding" in epochs.rejected["node-0"]
    assert any("node-0" in record.getMessage() and "does not verify" in record.getMessage()
               for record in caplog.records)
    assert nodes["node-1"].asked == [2]  # the liar's first link verified: asked only for what is after


@pytest.mark.parametrize("answer", [
    {"version": 1, "epoch": 3, "links": [{"version": 1, "committee": "garbage"}]},
    {"version": 7, "epoch": 3, "links": []},
    {"epoch": "three"},
    NodeError("node-0", "get committee chain", "HTTP 500: boom"),
])
def test_garbage_or_failing_nodes_are_skipped(answer: object) -> None:
    keys = Keys()
    anchor, links = three_epochs(keys)
    nodes = {"node-0": FakeNode("node-0", links, 3, answer=answer),
             **{node_id: FakeNode(node_id, links, 3) for node_id in ("node-1", "node-2", "node-3", "node-4")}}
    epochs = follower(anchor, nodes)
    assert trio.run(epochs.refresh) is True
    assert epochs.current.epoch == 3


def test_a_node_that_claims_more_than_it_proves_does_not_stop_the_walk() -> None:
    keys = Keys()
    anchor, links = three_epochs(keys)
    nodes = {"node-0": FakeNode("node-0", links[:1], 3),  # names epoch 3, serves only the link to 2
             **{node_id: FakeNode(node_id, links, 3) for node_id in ("node-1", "node-2", "node-3", "node-4")}}
    epochs = follower(anchor, nodes)
    trio.run(epochs.refresh)
    assert epochs.current.epoch == 3


def test_when_no_node_proves_the_claimed_epoch_the_chain_stays_and_is_not_asked_again_at_once() -> None:
    keys = Keys()
    anchor, links = three_epochs(keys)
    nodes = {node_id: FakeNode(node_id, links, 3, answer={"version": 1, "epoch": 9, "links": []})
             for node_id in ("node-0", "node-1", "node-2", "node-3")}
    now = [0.0]
    epochs = EpochFollower(CommitteeChain(anchor), lambda node: nodes[node.id], clock=lambda: now[0])
    epochs.saw("node-0", 9)
    assert epochs.behind
    assert trio.run(epochs.refresh) is False
    assert epochs.current.epoch == 1
    assert not epochs.behind  # a made-up epoch in a header does not make every request ask again
    now[0] += 60
    assert epochs.behind


def test_a_filesystem_made_before_epochs_has_no_chain_file_and_starts_from_its_committee(tmp_path: Path) -> None:
    anchor, _ = three_epochs(Keys())
    chain = load_chain(anchor, tmp_path / "committee-chain.json")
    assert chain.current == anchor and not chain.links


def test_a_saved_chain_is_re_verified_on_load_and_a_tampered_one_is_set_aside(tmp_path: Path) -> None:
    keys = Keys()
    anchor, links = three_epochs(keys)
    path = tmp_path / "committee-chain.json"
    path.write_text(CommitteeChain(anchor, links).to_json())
    assert load_chain(anchor, path).current.epoch == 3

    data = json.loads(path.read_text())
    data["links"][1] = forged(links[1])
    path.write_text(json.dumps(data))
    loaded = load_chain(anchor, path)
    assert loaded.current.epoch == 1  # back to the trusted committee; the nodes serve the links again
    assert not path.exists() and path.with_name(path.name + ".rejected").exists()


def test_a_saved_chain_of_another_committee_file_is_not_trusted(tmp_path: Path) -> None:
    keys, others = Keys(), Keys()
    anchor, _ = three_epochs(keys)
    stranger, stranger_links = three_epochs(others)
    path = tmp_path / "committee-chain.json"
    path.write_text(CommitteeChain(stranger, stranger_links).to_json())
    loaded = load_chain(anchor, path)
    assert loaded.current == anchor


def test_a_committee_file_replaced_by_a_later_committee_keeps_the_saved_chain(tmp_path: Path) -> None:
    keys = Keys()
    anchor, links = three_epochs(keys)
    path = tmp_path / "committee-chain.json"
    path.write_text(CommitteeChain(anchor, links).to_json())
    loaded = load_chain(links[0].committee, path)  # the operator rewrote the file with epoch 2's committee
    assert loaded.current.epoch == 3 and loaded.anchor.epoch == 1


def test_a_saved_chain_behind_a_newer_committee_file_is_kept_to_walk_forward(tmp_path: Path) -> None:
    keys = Keys()
    anchor, links = three_epochs(keys)
    path = tmp_path / "committee-chain.json"
    path.write_text(CommitteeChain(anchor, links[:1]).to_json())  # saved at epoch 2
    loaded = load_chain(links[1].committee, path)  # the file now holds epoch 3's committee
    assert loaded.anchor == anchor and loaded.current.epoch == 2 and path.exists()


def test_the_chain_kept_beside_a_rewritten_committee_file_reaches_back_to_older_epochs(tmp_path: Path) -> None:
    keys = Keys()
    anchor, links = three_epochs(keys)
    beside = tmp_path / "chain.json"  # as the bundled cluster keeps it next to committee.toml
    beside.write_text(CommitteeChain(anchor, links).to_json())
    current = links[1].committee
    loaded = load_chain(current, tmp_path / "state" / "committee-chain.json", beside)
    assert loaded.anchor == anchor and loaded.current == current  # epoch 1's certificates stay checkable

    stranger, stranger_links = three_epochs(Keys())
    beside.write_text(CommitteeChain(stranger, stranger_links).to_json())
    assert load_chain(current, None, beside).committees() == (current,)  # not this file's chain: ignored


def certificate(keys: Keys, committee: Committee, blob_id: BlobId, epoch: int | None = None) -> Certificate:
    epoch = committee.epoch if epoch is None else epoch
    confirmations = tuple(Confirmation(epoch, blob_id, node.id, node.shards).signed_by(keys[node.id])
                          for node in committee.nodes)
    return Certificate(blob_id, epoch, confirmations)


def test_a_certificate_of_epoch_1_verifies_at_epoch_3_against_epoch_1s_committee() -> None:
    keys = Keys()
    anchor, links = three_epochs(keys)
    chain = CommitteeChain(anchor, links)
    blob_id = BlobId(bytes(range(32)))
    verify_in_chain(chain, certificate(keys, anchor, blob_id))
    verify_in_chain(chain, certificate(keys, chain.current, blob_id))
    with pytest.raises(CertificateError):  # epoch 1's signers do not make a certificate of epoch 3
        verify_in_chain(chain, certificate(keys, anchor, blob_id, epoch=3))
    with pytest.raises(CertificateError, match="refresh the committee chain"):
        verify_in_chain(CommitteeChain(anchor), certificate(keys, chain.current, blob_id))


def test_previous_holders_are_the_shards_holders_of_earlier_epochs_newest_first() -> None:
    keys = Keys()
    anchor, links = three_epochs(keys)
    epochs = EpochFollower(CommitteeChain(anchor, links), lambda node: None)  # type: ignore[arg-type,return-value]
    assert [node.id for node in epochs.previous_holders(3)] == ["node-3"]
    assert [node.id for node in epochs.previous_holders(0)] == ["node-0"]
    assert epochs.previous_holders(1) == []
