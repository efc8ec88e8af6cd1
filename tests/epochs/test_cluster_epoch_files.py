"""What ``walrusfs cluster add|retire`` keeps in a cluster directory and how it reads the nodes'
answers, without processes: the operator key in every node config, new nodes' ids and ports, the
chain beside committee.toml, the pending proposal, and handover progress from /v1/handover answers.
(The same commands on real node processes: test_cluster_epochs.py.)"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from walrusfs.cluster import default_shards, init_cluster
from walrusfs.cluster_epochs import (
    CHAIN_FILE,
    Change,
    Pending,
    _next_step,
    create_nodes,
    load_chain,
    operator_key,
    save_chain,
)
from walrusfs.epoch_change import EpochChangeError, SignatureRound, handover_progress
from walrusfs.errors import UserError
from walrusfs.keys import decode_public_key, generate_key, load_key, public_bytes, public_key_text
from walrusfs.ports import free_port_range
from walrusfs.protocol.chain import ChainError, CommitteeChain, committee_digest, propose, sign_link
from walrusfs.protocol.committee import Committee
from walrusfs.protocol.rebalance import rebalance


def make(root: Path, nodes: int = 4, shards: int = 8) -> Committee:
    return init_cluster(root, nodes=nodes, shards=shards, base_port=free_port_range(nodes + 4))


def signed_by_all(root: Path, previous: Committee, successor: Committee) -> CommitteeChain:
    link = propose(previous, successor)
    for node in previous.nodes:
        link = link.with_signature(node.id, sign_link(load_key(root / node.id / "node.key"), previous, successor))
    chain = CommitteeChain(previous)
    chain.extend(link)
    return chain


def test_init_makes_an_operator_key_that_every_node_config_lists_as_its_proposer(tmp_path: Path) -> None:
    committee = make(tmp_path)
    operator = operator_key(tmp_path)
    assert (tmp_path / "operator.key").stat().st_mode & 0o777 == 0o600
    for node in committee.nodes:
        config = tomllib.loads((tmp_path / node.id / "config.toml").read_text())
        assert config["epochs"] == {"proposers": [public_key_text(operator)]}


def test_cluster_init_gives_two_shards_per_node_by_default_so_the_network_can_grow(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "walrusfs.cli", "cluster", "init", tmp_path / "net", "--nodes", "7",
                             "--base-port", str(free_port_range(7))], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    committee = Committee.load(tmp_path / "net" / "committee.toml")
    assert committee.n_shards == 14 and [len(node.shards) for node in committee.nodes] == [2] * 7
    assert "7 nodes, 14 shards" in result.stdout
    # never fewer shards than nodes, nor than the codec's minimum; at most 32 unless there are more nodes
    assert [default_shards(n) for n in (1, 2, 3, 10, 16, 17, 40)] == [4, 4, 6, 20, 32, 32, 40]


def test_a_cluster_without_an_operator_key_is_told_how_to_make_one(tmp_path: Path) -> None:
    make(tmp_path)
    (tmp_path / "operator.key").unlink()
    with pytest.raises(UserError, match=r"walrusfs node keygen .*operator.key.*\[epochs\].*proposers"):
        operator_key(tmp_path)


def test_new_nodes_take_ids_and_ports_after_every_one_a_committee_ever_used(tmp_path: Path) -> None:
    first = make(tmp_path)
    # node-3 retires in epoch 2 and its directory is deleted: its id and port stay taken
    chain = signed_by_all(tmp_path, first, rebalance(first, retiring=["node-3"]))
    (tmp_path / "node-3" / "config.toml").unlink()
    (tmp_path / "node-3" / "node.key").unlink()
    (tmp_path / "node-3" / "data").rmdir()
    (tmp_path / "node-3").rmdir()
    operator = public_key_text(generate_key())
    new = create_nodes(tmp_path, chain, 2, operator)
    assert [node.id for node in new] == ["node-4", "node-5"]
    assert Committee.load(tmp_path / "first-committee.toml") == first
    last_port = max(int(node.url.rsplit(":", 1)[1]) for node in first.nodes)
    ports = [int(node.url.rsplit(":", 1)[1]) for node in new]
    assert ports[0] > last_port and ports[1] > ports[0]
    for node, port in zip(new, ports, strict=True):
        assert node.shards == () and node.url.startswith("http://")
        config = tomllib.loads((tmp_path / node.id / "config.toml").read_text())
        assert config["listen"] == f"127.0.0.1:{port}"
        # the chain's first committee: the node can then check certificates of every epoch since
        assert config["committee"] == "../first-committee.toml"
        assert config["epochs"]["proposers"] == [operator]
        assert public_bytes(load_key(tmp_path / node.id / "node.key")) == node.public_key


def test_new_nodes_of_a_tls_cluster_serve_tls_too(tmp_path: Path) -> None:
    committee = init_cluster(tmp_path, nodes=4, shards=4, base_port=free_port_range(6), tls=True)
    [new] = create_nodes(tmp_path, CommitteeChain(committee), 1, public_key_text(generate_key()))
    assert new.url.startswith("https://") and new.tls_cert is not None


def test_the_chain_file_is_saved_before_the_committee_file_and_both_read_back(tmp_path: Path) -> None:
    first = make(tmp_path)
    assert load_chain(tmp_path).current == first  # no chain.json yet: the committee file alone
    chain = signed_by_all(tmp_path, first, rebalance(first, retiring=["node-0"]))
    save_chain(tmp_path, chain)
    assert Committee.load(tmp_path / "committee.toml").epoch == 2
    again = load_chain(tmp_path)
    assert again.current == chain.current and again.anchor == first


def test_a_committee_file_the_chain_does_not_back_is_refused(tmp_path: Path) -> None:
    first = make(tmp_path)
    save_chain(tmp_path, signed_by_all(tmp_path, first, rebalance(first, retiring=["node-0"])))
    edited = rebalance(first, retiring=["node-1"])  # epoch 2 too, but not the signed one
    edited.write(tmp_path / "committee.toml")
    with pytest.raises(ChainError, match=r"is not a committee of .*chain\.json"):
        load_chain(tmp_path)


def test_a_chain_file_with_a_forged_link_is_refused(tmp_path: Path) -> None:
    first = make(tmp_path)
    chain = signed_by_all(tmp_path, first, rebalance(first, retiring=["node-0"]))
    save_chain(tmp_path, chain)
    data = json.loads((tmp_path / CHAIN_FILE).read_text())
    data["links"][0]["signatures"] = data["links"][0]["signatures"][:1]  # one node of four: 2 of 8 shards
    (tmp_path / CHAIN_FILE).write_text(json.dumps(data))
    with pytest.raises(ChainError, match="needs 6 of 8"):
        load_chain(tmp_path)


def test_a_pending_proposal_reads_back_as_written_and_a_damaged_one_says_what_to_do(tmp_path: Path) -> None:
    first = make(tmp_path)
    pending = Pending(Change("retire", node_ids=("node-2",)), propose(first, rebalance(first, retiring=["node-2"])))
    pending.save(tmp_path)
    loaded = Pending.load(tmp_path)
    assert loaded is not None and loaded.change == pending.change
    assert committee_digest(loaded.link.committee) == committee_digest(pending.link.committee)
    (tmp_path / "proposal.json").write_text("{not json")
    with pytest.raises(UserError, match="sign no other committee for its epoch: restore the file"):
        Pending.load(tmp_path)


# --- reading the nodes' answers --------------------------------------------------------------------------


def test_handover_progress_follows_each_moved_shard_on_its_new_holder(tmp_path: Path) -> None:
    first = make(tmp_path, nodes=4, shards=8)
    [new] = create_nodes(tmp_path, CommitteeChain(first), 1, public_key_text(generate_key()))
    second = rebalance(first, joining=[new], retiring=["node-3"])  # node-3's 2 shards go to node-4
    assert {(s, n.id) for n in second.nodes for s in n.shards if first.node_for_shard(s).id != n.id} == \
        {(3, "node-4"), (7, "node-4")}
    statuses = {"node-4": {"version": 1, "node_id": "node-4", "epoch": 2, "complete": False, "gaining": [
        {"shard": 3, "from": "node-3", "epoch": 2, "state": "synced", "released": True, "bytes_moved": 1000,
         "bytes_to_move": 990},
        {"shard": 7, "from": "node-3", "epoch": 2, "state": "copying", "released": False, "bytes_moved": 200,
         "bytes_to_move": 700},
        {"shard": 7, "from": "node-1", "epoch": 1, "state": "synced", "released": True, "bytes_moved": 5,
         "bytes_to_move": 5}]}}  # an older epoch's entry for the same shard does not count
    progress = handover_progress(first, second, statuses)
    assert [(s.shard, s.state) for s in progress.shards] == [(3, "synced"), (7, "copying")]
    assert not progress.complete and progress.synced_count == 1
    assert (progress.bytes_moved, progress.bytes_to_move, progress.bytes_left) == (1200, 1690, 500)
    statuses["node-4"]["gaining"][1].update(state="synced", bytes_moved=710, released=True)
    done = handover_progress(first, second, statuses)
    assert done.complete and done.released and done.bytes_left == 0


def test_a_new_holder_that_does_not_answer_or_has_not_started_is_not_synced(tmp_path: Path) -> None:
    first = make(tmp_path, nodes=4, shards=8)
    second = rebalance(first, retiring=["node-0"])
    targets = {node.id for node in second.nodes}
    statuses = {target: EpochChangeError(f"{target} does not answer") for target in targets}
    unknown = handover_progress(first, second, statuses)
    assert unknown.shards and {s.state for s in unknown.shards} == {"unknown"} and not unknown.complete
    statuses = {target: {"version": 1, "epoch": 1, "gaining": [], "handing_off": []} for target in targets}
    assert {s.state for s in handover_progress(first, second, statuses).shards} == {"waiting"}


def test_a_signature_that_does_not_verify_counts_for_nothing(tmp_path: Path) -> None:
    first = make(tmp_path, nodes=4, shards=8)  # quorum 6 of 8: three nodes of two shards each
    successor = rebalance(first, retiring=["node-0"])
    round_ = SignatureRound(propose(first, successor), first)
    assert round_.add("node-1", sign_link(load_key(tmp_path / "node-1" / "node.key"), first, successor))
    assert not round_.add("node-2", sign_link(generate_key(), first, successor))  # not node-2's key
    assert "does not verify" in round_.refusals["node-2"]
    assert round_.add("node-3", sign_link(load_key(tmp_path / "node-3" / "node.key"), first, successor))
    assert not round_.quorum_reached and round_.still_possible()  # node-0 could still sign
    round_.refusals["node-0"] = "no"
    assert not round_.still_possible()


# --- an interrupted change is finished by running the command again ----------------------------------------


def test_a_proposal_not_yet_signed_is_proposed_again_unchanged(tmp_path: Path) -> None:
    first = make(tmp_path)
    pending = Pending(Change("retire", node_ids=("node-2",)), propose(first, rebalance(first, retiring=["node-2"])))
    pending.save(tmp_path)
    step = _next_step(tmp_path, CommitteeChain(first), Change("add", count=1), io.StringIO())
    assert step is not None and step.pending is not None and step.change == pending.change
    assert committee_digest(step.successor) == committee_digest(pending.link.committee)
    assert (tmp_path / "proposal.json").exists()  # kept until the signed link is saved


def test_a_proposal_whose_link_the_nodes_already_adopted_goes_on_to_its_handover(tmp_path: Path) -> None:
    first = make(tmp_path)
    successor = rebalance(first, retiring=["node-2"])
    Pending(Change("retire", node_ids=("node-2",)), propose(first, successor)).save(tmp_path)
    chain = signed_by_all(tmp_path, first, successor)  # what the nodes serve: the run stopped after sending it
    out = io.StringIO()
    step = _next_step(tmp_path, chain, Change("retire", node_ids=("node-2",)), out)
    assert step is not None and step.pending is None
    assert step.previous == first and step.successor == successor
    assert not (tmp_path / "proposal.json").exists() and "waiting for its handover" in out.getvalue()


def test_a_proposal_overtaken_by_another_committee_is_dropped(tmp_path: Path) -> None:
    first = make(tmp_path)
    retire_two = propose(first, rebalance(first, retiring=["node-2"]))
    Pending(Change("retire", node_ids=("node-2",)), retire_two).save(tmp_path)
    chain = signed_by_all(tmp_path, first, rebalance(first, retiring=["node-1"]))  # another epoch 2
    out = io.StringIO()
    assert _next_step(tmp_path, chain, Change("add", count=1), out) is None  # plan the new change afresh
    assert not (tmp_path / "proposal.json").exists() and "overtaken" in out.getvalue()


def test_retiring_a_node_that_left_at_the_last_change_waits_for_that_handover(tmp_path: Path) -> None:
    first = make(tmp_path)
    chain = signed_by_all(tmp_path, first, rebalance(first, retiring=["node-2"]))
    step = _next_step(tmp_path, chain, Change("retire", node_ids=("node-2",)), io.StringIO())
    assert step is not None and step.pending is None and step.previous == first and step.successor == chain.current
    assert _next_step(tmp_path, chain, Change("retire", node_ids=("node-1",)), io.StringIO()) is None


# --- committee plan, for a deployment's operator ------------------------------------------------------------


def cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "walrusfs.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_committee_plan_writes_the_rebalanced_next_committee_and_names_the_moves(tmp_path: Path) -> None:
    first = make(tmp_path)  # no node runs: the chain is the committee file's alone
    key = public_key_text(generate_key())
    planned = cli("committee", "plan", "--committee", tmp_path / "committee.toml", "--retire", "node-1",
                  "--join", "node-9", "http://127.0.0.1:9999", key, "-o", tmp_path / "next.toml")
    assert planned.returncode == 0, planned.stderr
    nxt = Committee.load(tmp_path / "next.toml")
    assert nxt == rebalance(first, joining=[nxt.node("node-9")], retiring=["node-1"])
    assert nxt.node("node-9").url == "http://127.0.0.1:9999" and nxt.node("node-9").public_key == decode_public_key(key)
    assert "epoch 2: 2 of 8 shards move (1: node-1 -> node-9, 5: node-1 -> node-9)" in planned.stderr
    refused = cli("committee", "plan", "--committee", tmp_path / "committee.toml", "--join", "node-0",
                  "http://127.0.0.1:9999", key)
    assert refused.returncode != 0 and "already in the committee" in refused.stderr


def test_committee_propose_refuses_a_committee_that_is_not_for_the_next_epoch(tmp_path: Path) -> None:
    first = make(tmp_path)
    rebalance(rebalance(first, retiring=["node-0"]), retiring=["node-1"]).write(tmp_path / "epoch3.toml")
    refused = cli("committee", "propose", tmp_path / "epoch3.toml", "--committee", tmp_path / "committee.toml",
                  "--operator-key", tmp_path / "operator.key")
    assert refused.returncode != 0
    assert "is a committee for epoch 3, and the network is at epoch 1: propose a committee for epoch 2" in \
        refused.stderr


def test_init_force_replaces_a_cluster_whose_retired_nodes_directories_were_kept(tmp_path: Path) -> None:
    first = make(tmp_path)
    save_chain(tmp_path, signed_by_all(tmp_path, first, rebalance(first, retiring=["node-3"])))
    old_key = (tmp_path / "node-3" / "node.key").read_text()
    again = init_cluster(tmp_path, nodes=4, shards=8, base_port=free_port_range(4), force=True)
    assert again.epoch == 1 and again.has_node("node-3")
    assert (tmp_path / "node-3" / "node.key").read_text() != old_key
    assert not (tmp_path / "chain.json").exists()
