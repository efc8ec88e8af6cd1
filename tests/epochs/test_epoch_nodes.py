"""Nodes hold a committee chain, adopt verified links, sign proposals by their policy, and keep
certificates of earlier epochs valid (docs/epochs.md), on real node processes.

The network: 4 nodes, 4 shards (n = 4, f = 1: a link needs signatures covering 3 shards). Epoch 2
hands shard 3 from node-3 to a joining node-4.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tomli_w
from blobtools import store
from network import _LIVE, LocalNetwork, _terminate, free_port_range

from nodes.app import NodeApp
from nodes.config import NodeConfig
from nodes.epochs import served_certificate
from nodes.http import HTTPError
from nodes.store import BlobStore
from walrusfs.cluster import init_cluster
from walrusfs.keys import generate_key, load_key, public_bytes, public_key_text, write_key
from walrusfs.protocol import routes, sign_request
from walrusfs.protocol.chain import CommitteeChain, CommitteeLink, committee_digest, propose, sign_link
from walrusfs.protocol.committee import Committee, NodeInfo
from walrusfs.protocol.tls import node_certificate
from walrusfs.redstuff import SliverKind

FAST_REPAIR = {"sync_interval": 0.5, "grace": 0.5, "scrub_interval": 3600.0}
JOINER_REPAIR = {**FAST_REPAIR, "scrub_interval": 1.0}  # its scrubber finds what its new shard lacks
JOINER = "node-4"


class Network(LocalNetwork):
    """A LocalNetwork of 4 nodes whose configs name ``operator`` as proposer, plus a joining node-4
    (configured, not started) that the committee of epoch 1 does not name."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, nodes=4, shards=4)
        self.operator = generate_key()
        self.joiner_dir = self.root / JOINER
        (self.joiner_dir / "data").mkdir(parents=True)
        self.joiner_key = generate_key()
        write_key(self.joiner_dir / "node.key", self.joiner_key)
        port = free_port_range(1)
        self.joiner_info = NodeInfo(JOINER, f"http://127.0.0.1:{port}", public_bytes(self.joiner_key), (3,))
        self.joiner: subprocess.Popen | None = None
        for directory in [*(self.root / node for node in self.node_ids), self.joiner_dir]:
            repair = JOINER_REPAIR if directory == self.joiner_dir else FAST_REPAIR
            config = {"node_id": directory.name, "listen": f"127.0.0.1:{self._port(directory.name, port)}",
                      "data_dir": "data", "signing_key": "node.key", "committee": "../committee.toml",
                      "repair": repair, "epochs": {"proposers": [public_key_text(self.operator)]}}
            (directory / "config.toml").write_text(tomli_w.dumps(config))

    def _port(self, node_id: str, joiner_port: int) -> int:
        return joiner_port if node_id == JOINER else int(self.url(node_id).rsplit(":", 1)[1])

    def key(self, node_id: str):
        return self.joiner_key if node_id == JOINER else load_key(self.root / node_id / "node.key")

    def url(self, node: str | int) -> str:
        return self.joiner_info.url if node == JOINER else super().url(node)

    def start_joiner(self) -> None:
        with open(self.joiner_dir / "node.log", "ab") as log:
            self.joiner = subprocess.Popen([sys.executable, "-m", "nodes", "--config",
                                            str(self.joiner_dir / "config.toml")], stdin=subprocess.DEVNULL,
                                           stdout=log, stderr=subprocess.STDOUT, cwd=self.joiner_dir)
        _LIVE[self.joiner.pid] = self.joiner
        self.processes[JOINER] = self.joiner
        self._wait_healthy([JOINER])

    def kill9_joiner(self) -> None:
        if self.joiner is not None:
            _terminate(self.joiner, signum=9)

    def stop_all(self) -> None:
        super().stop_all()
        if self.joiner is not None:
            _terminate(self.joiner)

    # --- the committee of epoch 2 -------------------------------------------------------------------

    def epoch2(self) -> Committee:
        """node-3 leaves, node-4 takes its shard 3."""
        nodes = (*(node for node in self.committee.nodes if node.id != "node-3"), self.joiner_info)
        return Committee(2, self.committee.n_shards, nodes, self.committee.writer_keys)

    def link(self, successor: Committee, signers: list[str], previous: Committee | None = None) -> CommitteeLink:
        previous = previous or self.committee
        link = propose(previous, successor)
        for node_id in signers:
            link = link.with_signature(node_id, sign_link(self.key(node_id), previous, successor))
        return link


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    """Configured, not started: each test starts the nodes it needs (a node process takes seconds to
    start on a loaded machine)."""
    net = Network(tmp_path / "network")
    try:
        yield net
    finally:
        net.stop_all()


def post_next(url: str, *links: CommitteeLink) -> httpx.Response:
    body = json.dumps({"version": 1, "links": [link.to_dict() for link in links]})
    return httpx.post(url + routes.COMMITTEE_NEXT, content=body, timeout=10)


def chain_of(url: str, after: int = 0) -> dict:
    response = httpx.get(url + routes.COMMITTEE_CHAIN, params={"after": after}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def health(url: str) -> dict:
    return httpx.get(url + routes.HEALTH, timeout=10).json()


def propose_to(network: Network, node_id: str, link: CommitteeLink, key=None) -> httpx.Response:
    body = link.to_json().encode()
    info = network.committee.node(node_id)
    auth = sign_request(key or network.operator, "POST", routes.COMMITTEE_PROPOSALS, info, body)
    return httpx.post(info.url + routes.COMMITTEE_PROPOSALS, content=body, headers={"Authorization": auth},
                      timeout=10)


QUORUM_SIGNERS = ["node-0", "node-1", "node-2"]  # 3 of 4 shards: n - f


# --- adopting and serving the chain --------------------------------------------------------------------


def test_a_node_adopts_a_signed_link_serves_the_chain_and_keeps_it_across_kill_9(network: Network) -> None:
    network.start("node-0")
    link = network.link(network.epoch2(), QUORUM_SIGNERS)
    url = network.url("node-0")
    assert chain_of(url) == {"version": 1, "epoch": 1, "links": []}

    adopted = post_next(url, link)
    assert adopted.status_code == 200, adopted.text
    assert adopted.json() == {"epoch": 2, "adopted": [2]}
    assert health(url)["epoch"] == 2
    served = chain_of(url)
    assert served["epoch"] == 2 and [CommitteeLink.from_dict(entry) for entry in served["links"]] == [link]
    assert chain_of(url, after=2)["links"] == []
    assert post_next(url, link).json() == {"epoch": 2, "adopted": []}  # idempotent

    network.kill9("node-0")
    network.start("node-0")
    assert chain_of(url)["epoch"] == 2 and health(url)["epoch"] == 2
    stored = json.loads((network.root / "node-0" / "data" / "epochs" / "chain.json").read_text())
    assert stored["version"] == 1 and stored["anchor"]["epoch"] == 1 and len(stored["links"]) == 1


def test_every_response_carries_the_epoch_header(network: Network) -> None:
    network.start("node-1")
    url = network.url("node-1")
    assert httpx.get(url + routes.HEALTH).headers[routes.EPOCH_HEADER] == "1"
    missing = httpx.get(url + "/v1/no/such/route")
    assert missing.status_code == 404 and missing.headers[routes.EPOCH_HEADER] == "1"
    post_next(url, network.link(network.epoch2(), QUORUM_SIGNERS))
    assert httpx.get(url + routes.HEALTH).headers[routes.EPOCH_HEADER] == "2"


def test_a_link_that_does_not_verify_or_follow_is_refused_with_the_reason_and_nothing_changes(
        network: Network) -> None:
    network.start("node-2")
    url = network.url("node-2")
    successor = network.epoch2()
    forged = propose(network.committee, successor)  # names of members, signatures by other keys
    for node_id in QUORUM_SIGNERS:
        forged = forged.with_signature(node_id, sign_link(generate_key(), network.committee, successor))
    other = Committee(1, 4, network.committee.nodes, frozenset({public_bytes(generate_key())}))
    elsewhere = network.link(successor, QUORUM_SIGNERS, previous=other)  # signed after another epoch 1
    epoch3 = Committee(3, 4, successor.nodes, successor.writer_keys)
    cases = [
        (network.link(successor, ["node-0", "node-1"]), 422, "signed by nodes holding 2 shards of epoch 1; it needs 3"),
        (forged, 422, "signed by nodes holding 0 shards"),
        (elsewhere, 422, "another committee than the epoch 1 committee"),
        (network.link(epoch3, ["node-0", "node-1", "node-2", JOINER], previous=successor), 409,
         "next link it can take is for epoch 2, not 3"),
    ]
    for link, status, reason in cases:
        refused = post_next(url, link)
        assert refused.status_code == status, refused.text
        assert reason in refused.json()["message"]
        assert chain_of(url) == {"version": 1, "epoch": 1, "links": []} and health(url)["epoch"] == 1
        chain_file = json.loads((network.root / "node-2" / "data" / "epochs" / "chain.json").read_text())
        assert chain_file["links"] == []


def test_a_link_conflicting_with_an_adopted_one_is_refused_as_a_fork(network: Network) -> None:
    network.start("node-0")
    url = network.url("node-0")
    assert post_next(url, network.link(network.epoch2(), QUORUM_SIGNERS)).status_code == 200
    rival = Committee(2, 4, network.committee.nodes, frozenset({public_bytes(generate_key())}))
    refused = post_next(url, network.link(rival, QUORUM_SIGNERS))
    assert refused.status_code == 409 and "a fork" in refused.json()["message"]
    assert chain_of(url)["epoch"] == 2


# --- signing proposals ---------------------------------------------------------------------------------


def test_a_node_signs_a_proposal_of_its_proposer_once_per_epoch_also_across_a_restart(network: Network) -> None:
    network.start("node-1")
    successor = network.epoch2()
    unsigned = propose(network.committee, successor)
    signed = propose_to(network, "node-1", unsigned)
    assert signed.status_code == 200, signed.text
    answer = signed.json()
    assert answer["node_id"] == "node-1"
    link = unsigned.with_signature("node-1", base64.b64decode(answer["signature"]))
    assert link.signed_shards(network.committee) == {1}  # a valid signature of node-1's key
    assert propose_to(network, "node-1", unsigned).status_code == 200  # the same committee again: fine
    record = json.loads((network.root / "node-1" / "data" / "epochs" / "signed.json").read_text())
    assert record == {"version": 1, "signed": {"2": committee_digest(successor).hex()}}

    rival = Committee(2, 4, network.committee.nodes, successor.writer_keys)
    for restarted in (False, True):
        if restarted:
            network.kill9("node-1")
            network.start("node-1")
        refused = propose_to(network, "node-1", propose(network.committee, rival))
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"] == "signed_another"
        assert "never signs two successors of one epoch" in refused.json()["message"]


def test_a_proposal_not_signed_by_a_proposer_is_refused(network: Network) -> None:
    network.start("node-0")
    unsigned = propose(network.committee, network.epoch2())
    stranger = propose_to(network, "node-0", unsigned, key=generate_key())
    assert stranger.status_code == 403 and "not one of this node's proposers" in stranger.json()["message"]
    writer = propose_to(network, "node-0", unsigned, key=network.writer_key)  # a writer is no proposer
    assert writer.status_code == 403
    unsigned_request = httpx.post(network.url("node-0") + routes.COMMITTEE_PROPOSALS, content=unsigned.to_json())
    assert unsigned_request.status_code == 401
    assert not (network.root / "node-0" / "data" / "epochs" / "signed.json").exists()


def test_a_proposal_that_does_not_follow_the_current_committee_is_refused(network: Network) -> None:
    network.start("node-0")
    successor = network.epoch2()
    epoch3 = Committee(3, 4, successor.nodes, successor.writer_keys)
    refused = propose_to(network, "node-0", propose(successor, epoch3))
    assert refused.status_code == 409 and refused.json()["error"] == "proposal_does_not_follow"


# --- a joining node ------------------------------------------------------------------------------------


def test_a_joining_node_waits_in_standby_until_a_link_gives_it_shards(network: Network) -> None:
    network.start_joiner()
    url = network.url(JOINER)
    state = health(url)
    assert state["standby"] is True and state["shards"] == [] and state["epoch"] == 1
    refused = httpx.put(f"{url}/v1/blobs/{'A' * 43}/slivers/0/primary", content=b"x")
    assert refused.status_code == 421 and "in no committee of epoch 1" in refused.json()["message"]

    assert post_next(url, network.link(network.epoch2(), QUORUM_SIGNERS)).status_code == 200
    state = health(url)
    assert state["standby"] is False and state["shards"] == [3] and state["epoch"] == 2
    network.kill9_joiner()
    network.start_joiner()
    assert health(url)["shards"] == [3]


def test_a_node_that_missed_an_epoch_change_catches_up_from_its_peers(network: Network) -> None:
    network.start("node-0", "node-1")
    link = network.link(network.epoch2(), QUORUM_SIGNERS)
    assert post_next(network.url("node-1"), link).status_code == 200
    url = network.url("node-0")
    deadline = 60.0
    start = time.monotonic()
    while health(url)["epoch"] != 2:
        assert time.monotonic() - start < deadline, "node-0 did not follow the chain from its peers"
        time.sleep(0.2)


# --- certificates across epochs ------------------------------------------------------------------------


def test_a_node_that_hears_of_a_newer_epoch_from_a_peer_fetches_it_at_once(network: Network) -> None:
    """node-0 follows the chain only every 300-900 s by itself, but its feed polls node-1 every second,
    and node-1's answers name epoch 2."""
    config = network.config("node-0")
    config.write_text(config.read_text().replace("sync_interval = 0.5", "sync_interval = 600.0"))
    network.start("node-1")
    assert post_next(network.url("node-1"), network.link(network.epoch2(), QUORUM_SIGNERS)).status_code == 200
    network.start("node-0")
    url = network.url("node-0")
    start = time.monotonic()
    while health(url)["epoch"] != 2:
        assert time.monotonic() - start < 60, "node-0 did not fetch the links node-1's epoch header announced"
        time.sleep(0.2)


def test_a_certificate_of_epoch_1_stays_valid_at_epoch_3_and_repair_follows_the_new_assignment(
        network: Network) -> None:
    network.start()
    stored = store(network, b"certified in epoch 1" * 5000)
    assert stored.certificate.epoch == 1
    network.start_joiner()
    epoch2 = network.epoch2()
    epoch3 = Committee(3, epoch2.n_shards, epoch2.nodes, epoch2.writer_keys)
    links = [network.link(epoch2, QUORUM_SIGNERS), network.link(epoch3, QUORUM_SIGNERS, previous=epoch2)]
    for node_id in [*network.node_ids, JOINER]:
        assert post_next(network.url(node_id), *links).json()["epoch"] == 3

    # A certificate PUT is checked against the committee of its epoch, found through the chain.
    node0 = network.committee.node("node-0")
    path = routes.certificate(stored.blob_id)
    body = stored.certificate.to_json().encode()
    put = httpx.put(node0.url + path, content=body,
                    headers={"Authorization": sign_request(network.writer_key, "PUT", path, node0, body)})
    assert put.status_code in (200, 201), put.text

    # The joining node learns the blob from its peers' feeds (each entry's epoch-1 certificate
    # verified through the chain); its scrubber finds the slivers of its new shard 3 missing and
    # repair rebuilds them: both work on epoch 2's assignment.
    geometry = network.committee.geometry
    pair = geometry.pair_of_shard(3, stored.blob_id.raw)
    start = time.monotonic()
    while True:
        status = httpx.get(f"{network.url(JOINER)}{routes.status(stored.blob_id)}", timeout=10).json()
        if status.get("complete"):
            break
        assert time.monotonic() - start < 60, f"node-4 did not rebuild its slivers: {status}"
        time.sleep(0.3)
    sliver = httpx.get(network.url(JOINER) + routes.sliver(stored.blob_id, pair, SliverKind.PRIMARY), timeout=10)
    assert sliver.status_code == 200


# --- the config's committee at start -------------------------------------------------------------------


def test_a_config_committee_newer_than_the_chain_needs_links_to_reach_it(network: Network) -> None:
    network.start("node-0")
    network.stop("node-0")
    successor = network.epoch2()
    successor.write(network.root / "committee-2.toml")
    config = network.config("node-0")
    config.write_text(config.read_text().replace("../committee.toml", "../committee-2.toml"))

    # No node can show how epoch 1 led to epoch 2: the file alone is not trusted.
    refused = subprocess.run([sys.executable, "-m", "nodes", "--config", str(config)], capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert "refusing to start" in refused.stderr
    assert "is for epoch 2, but this node's chain" in refused.stderr and "ends at epoch 1" in refused.stderr

    # A peer that has the link: the node takes it at start, verified, and starts at epoch 2.
    network.start("node-1")
    assert post_next(network.url("node-1"), network.link(successor, QUORUM_SIGNERS)).status_code == 200
    network.start("node-0")
    assert health(network.url("node-0"))["epoch"] == 2


def test_a_joining_node_serves_tls_with_its_keys_certificate_when_the_network_does() -> None:
    """What the committee that admits it will pin (``node_certificate`` of its key), from the start:
    it cannot change scheme without a restart. Where no node serves TLS, neither does it."""
    keys = [generate_key() for _ in range(4)]
    joiner_key = generate_key()

    def committee(tls: bool) -> Committee:
        nodes = tuple(NodeInfo(f"node-{i}", f"{'https' if tls else 'http'}://127.0.0.1:{2000 + i}",
                               public_bytes(key), (i,), node_certificate(key) if tls else None)
                      for i, key in enumerate(keys))
        return Committee(1, 4, nodes, frozenset())

    tls_chain = CommitteeChain(committee(tls=True))
    assert served_certificate(tls_chain, JOINER, joiner_key) == node_certificate(joiner_key)
    assert served_certificate(tls_chain, "node-1", keys[1]) == tls_chain.current.node("node-1").tls_cert
    assert served_certificate(CommitteeChain(committee(tls=False)), JOINER, joiner_key) is None


def test_a_node_signs_nothing_while_its_own_handover_is_incomplete(tmp_path: Path) -> None:
    """One layer (the node's epoch service, in process): the handover's answer is asked before
    anything is signed or remembered."""
    committee = init_cluster(tmp_path, nodes=4, shards=4, base_port=free_port_range(4))
    config = NodeConfig.load(tmp_path / "node-0" / "config.toml")
    chain_committee, key = config.load_identity()
    blobs = BlobStore(config.data_dir)
    blobs.open()
    app = NodeApp(config, chain_committee, key, blobs)
    successor = Committee(2, 4, committee.nodes, frozenset({public_bytes(generate_key())}))
    link = propose(committee, successor)
    try:
        app.core.handover_complete = lambda: False
        with pytest.raises(HTTPError) as refused:
            asyncio.run(app.epochs.sign_proposal(link))
        assert refused.value.status == 409 and refused.value.code == "handover_incomplete"
        assert not (config.data_dir / "epochs" / "signed.json").exists()

        app.core.handover_complete = lambda: True
        signature = asyncio.run(app.epochs.sign_proposal(link))
        assert link.with_signature("node-0", signature).signed_shards(committee) == {0}
    finally:
        app.core.close()
        app.executor.shutdown()
