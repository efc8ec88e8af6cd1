"""Clients and mounts follow the committee chain (docs/epochs.md, "Reads and writes during a change"),
on real node processes: a client that holds the committee of epoch 1 reads after the network moved
to epoch 3, refuses a node that serves a forged link and gets the chain from the honest ones, keeps
epoch 1's certificates valid, and a store that meets the change is certified in the new epoch; a
mount keeps reading and writing while the epoch changes, and the filesystem restores from the
network alone afterwards.

The networks: 4 nodes holding 7 shards (f = 2; node-0..2 hold two each, node-3 one), and a spare
node that joins. Links are signed here with
the nodes' keys on disk and sent to every node (``POST /v1/committee/next``), as a proposer would.
The shards that move are handed over by the nodes (tests/epochs/test_handover.py tests that); at
most f shards change hands, so while it runs a read gets a moved sliver from its previous holder, or
decodes without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from blobtools import PATIENT, random_bytes
from epoch_harness import EpochNetwork as HarnessNetwork
from network import LyingProxy

from walrusfs.client import BlobClient, StoredBlob
from walrusfs.client.epochs import load_chain, verify_in_chain
from walrusfs.keys import load_key
from walrusfs.protocol import routes
from walrusfs.protocol.certificates import Certificate
from walrusfs.protocol.chain import CommitteeChain, propose, sign_link
from walrusfs.protocol.committee import Committee, NodeInfo
from walrusfs.repair.audit import audit, current_chain

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fs"))  # the mount harness

from fs_harness import WALRUSFS, Filesystem, mounted, run

SPARE = "node-7"


class EpochNetwork(HarnessNetwork):
    """The harness's network (epoch_harness.py), with a spare node and its own way to move shards:
    committee e + 1 is signed by every node of committee e with its key on disk and sent to every
    running node. ``forger``: node-0 is reached (by everyone, as the committee says) through a proxy
    that forges the committee links it serves."""

    def __init__(self, root: Path, forger: bool = False) -> None:
        super().__init__(root, nodes=4, shards=7)
        self.first = self.committee
        self.proxy: LyingProxy | None = None
        self.add_node(SPARE)  # configured with the committee of epoch 1, which does not name it: standby
        if forger:
            real = self.committee.node("node-0")
            self.proxy = LyingProxy(real.url, corrupt=("chain",))
            nodes = tuple(NodeInfo(n.id, self.proxy.url, n.public_key, n.shards) if n.id == "node-0" else n
                          for n in self.committee.nodes)
            self.committee = self.first = Committee(1, self.committee.n_shards, nodes, self.committee.writer_keys)
            self.committee.write(self.committee_path)
            self.known["node-0"] = self.committee.node("node-0")

    @property
    def node_ids(self) -> list[str]:
        return [node_id for node_id in self.known if node_id != SPARE]  # the spare starts when asked

    def successor(self, moves: dict[int, str], drop: tuple[str, ...] = ()) -> Committee:
        """The current committee with shard s given to node ``moves[s]``; nodes left without shards leave."""
        holders = {shard: moves.get(shard, self.committee.node_for_shard(shard).id)
                   for shard in range(self.committee.n_shards)}
        nodes = tuple(NodeInfo(node_id, info.url, info.public_key,
                               tuple(s for s, holder in holders.items() if holder == node_id))
                      for node_id, info in self.known.items() if node_id in holders.values() and node_id not in drop)
        return Committee(self.committee.epoch + 1, self.committee.n_shards, nodes, self.committee.writer_keys)

    def change_epoch(self, successor: Committee) -> None:
        previous = self.committee
        link = propose(previous, successor)
        for node in previous.nodes:
            key = load_key(self.root / node.id / "node.key")
            link = link.with_signature(node.id, sign_link(key, previous, successor))
        self.links.append(link)
        self.committee = successor
        body = {"version": 1, "links": [link.to_dict() for link in self.links]}
        for node_id in self.known:
            if self.pid(node_id) is not None:
                response = httpx.post(self.known[node_id].url + routes.COMMITTEE_NEXT, json=body, timeout=30)
                assert response.status_code in (200, 201), f"{node_id}: {response.status_code} {response.text}"

    def stop_all(self) -> None:
        super().stop_all()
        if self.proxy is not None:
            self.proxy.close()


def to_epoch_3(network: EpochNetwork) -> None:
    """Epoch 2: shard 3 moves from node-3 to node-2 (node-3 leaves). Epoch 3: the spare joins and takes
    shard 1 from node-1. Two shards change hands, f of 7."""
    network.change_epoch(network.successor({3: "node-2"}))
    network.start(SPARE)
    network.change_epoch(network.successor({1: SPARE}))


def client(committee: Committee | CommitteeChain, network: EpochNetwork) -> BlobClient:
    return BlobClient(committee, writer_key=network.writer_key, settings=PATIENT)


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EpochNetwork, list[tuple[bytes, StoredBlob]]]]:
    """Blobs stored in epoch 1, then the network moved to epoch 3; node-0 forges the links it serves."""
    with EpochNetwork(tmp_path_factory.mktemp("moved"), forger=True) as network:
        blobs = [random_bytes(size) for size in (70_000, 1_500_000)]

        async def store() -> list[StoredBlob]:
            async with client(network.first, network) as c:
                return [await c.store(data) for data in blobs]

        stored = trio.run(store)
        to_epoch_3(network)
        yield network, list(zip(blobs, stored, strict=True))


def test_a_client_holding_epoch_1_reads_after_the_network_moved_to_epoch_3(moved) -> None:
    network, blobs = moved

    async def go() -> list[bytes]:
        async with client(network.first, network) as c:  # knows only the committee of epoch 1
            back = [bytes(await c.read(stored.blob_id)) for _, stored in blobs]
            with trio.fail_after(30):  # the nodes named epoch 3 in their answers: the client follows
                while c.committee.epoch < 3:
                    await trio.sleep(0.05)
            assert c.committee == network.committee
            assert SPARE in c.connections and "node-3" not in c.connections
            back += [bytes(await c.read(stored.blob_id)) for _, stored in blobs]  # with epoch 3's holders
            return back

    back = trio.run(go)
    assert back == [data for data, _ in blobs] * 2


def test_a_node_serving_a_forged_link_is_refused_and_honest_nodes_give_the_chain(
        moved, caplog: pytest.LogCaptureFixture) -> None:
    network, _ = moved

    async def go() -> BlobClient:
        async with client(network.first, network) as c:
            assert await c.refresh_chain("test")
            return c

    with caplog.at_level(logging.WARNING, logger="walrusfs.client.epochs"):
        c = trio.run(go)
    assert c.committee == network.committee  # every link verified from epoch 1
    assert c.epochs.rejected.keys() == {"node-0"}
    assert "signed by nodes holding" in c.epochs.rejected["node-0"]
    warnings = [record.getMessage() for record in caplog.records if "node-0" in record.getMessage()]
    assert warnings and "does not verify" in warnings[0] and network.known["node-0"].url in warnings[0]


def test_a_blob_certified_at_epoch_1_verifies_at_epoch_3(moved) -> None:
    network, blobs = moved
    _, stored = blobs[0]
    assert stored.certificate.epoch == 1

    async def go() -> CommitteeChain:
        async with client(network.first, network) as c:
            await c.refresh_chain("test")
            return c.chain

    chain = trio.run(go)
    verify_in_chain(chain, stored.certificate)
    # As a node of epoch 3 keeps it: the same certificate, checked against the committee of its epoch.
    answer = httpx.get(network.known["node-2"].url + f"/v1/blobs/{stored.blob_id}/certificate", timeout=10)
    assert answer.status_code == 200
    verify_in_chain(chain, Certificate.from_json(answer.content))
    with pytest.raises(ValueError, match="epoch 1"):
        stored.certificate.verify(chain.current)  # not against epoch 3's committee: against its own


def wait_handover_complete(network: EpochNetwork, node_ids: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for node_id in node_ids:
        while True:
            status = httpx.get(network.known[node_id].url + routes.HANDOVER, timeout=10).json()
            if status["epoch"] == network.committee.epoch and status["complete"]:
                break
            assert time.monotonic() < deadline, f"{node_id}: handover not complete after {timeout} s: {status}"
            time.sleep(0.2)


def test_audit_starts_from_the_committee_file_and_challenges_the_current_holders(moved) -> None:
    network, blobs = moved
    wait_handover_complete(network, ["node-2", SPARE])  # the nodes that gained shards 3 and 1
    chain = trio.run(current_chain, network.first)  # what `walrusfs audit --committee FILE` does first
    chosen, verdicts = trio.run(audit, chain, [stored.blob_id for _, stored in blobs], 2, 3, random.Random(7))
    assert sorted(chosen) == sorted(stored.blob_id for _, stored in blobs)
    assert verdicts.keys() == {node.id for node in network.committee.nodes}  # node-3 retired, the spare in
    assert all(verdict.ok for verdict in verdicts.values()), {n: v.to_dict() for n, v in verdicts.items()}
    assert all(verdict.challenges == 2 * 3 for verdict in verdicts.values())


def test_a_store_that_meets_an_epoch_change_is_certified_in_the_new_epoch(tmp_path: Path) -> None:
    with EpochNetwork(tmp_path / "network") as network:

        async def go() -> tuple[StoredBlob, StoredBlob, CommitteeChain]:
            async with client(network.first, network) as c:
                before = await c.store(random_bytes(300_000))
                # The network moves on; this client has not heard of it. Shard 3's holder of epoch 1
                # now refuses its slivers (421), the others confirm in epoch 2.
                await trio.to_thread.run_sync(lambda: network.change_epoch(network.successor({3: "node-2"})))
                after = await c.store(random_bytes(300_000))
                return before, after, c.chain

        before, after, chain = trio.run(go)
    assert before.certificate.epoch == 1 and after.certificate.epoch == 2
    assert {c.epoch for c in after.certificate.confirmations} == {2}  # one epoch per certificate
    assert "node-3" not in {c.node_id for c in after.certificate.confirmations}
    verify_in_chain(chain, before.certificate)
    verify_in_chain(chain, after.certificate)


class Load:
    """A reader and a writer working in a mount until stopped; every error is kept."""

    def __init__(self, mountpoint: Path, expected: dict[str, bytes]) -> None:
        self.mountpoint = mountpoint
        self.expected = expected
        self.written: dict[str, bytes] = {}
        self.errors: list[str] = []
        self.reads = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._read), threading.Thread(target=self._write)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(120)

    def _read(self) -> None:
        while not self.stop.is_set():
            for name, data in self.expected.items():
                try:
                    # O_DIRECT-free cold reads: drop the kernel's page cache of the file first.
                    fd = os.open(self.mountpoint / name, os.O_RDONLY)
                    try:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        back = b"".join(iter(lambda fd=fd: os.read(fd, 1 << 20), b""))
                    finally:
                        os.close(fd)
                    if back != data:
                        self.errors.append(f"read {name}: {len(back)} bytes, not the {len(data)} written")
                    self.reads += 1
                except OSError as error:
                    self.errors.append(f"read {name}: {error}")

    def _write(self) -> None:
        number = 0
        while not self.stop.is_set():
            name, data = f"new-{number}", os.urandom(256 * 1024 + number)
            try:
                with open(self.mountpoint / name, "wb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())  # durable: certified in whichever epoch it met
                self.written[name] = data
            except OSError as error:
                self.errors.append(f"write {name}: {error}")
            number += 1
            time.sleep(0.1)


def digest(data: bytes) -> str:
    return hashlib.blake2b(data).hexdigest()


def test_a_mount_reads_and_writes_through_epoch_changes_and_restores_from_the_network_after(
        tmp_path: Path) -> None:
    with EpochNetwork(tmp_path / "network") as network:
        fs = Filesystem("epochfs", tmp_path / "home", network)
        # 1 MiB blobs and a 1 MiB read cache: the reads keep going to the nodes, not to the local cache.
        run([WALRUSFS, "mkfs", fs.name, "--committee", str(network.committee_path), "--writer-key",
             str(network.writer_key_path), "--blob-size", "1", "--cache-size", "1"], fs.env)
        try:
            expected = {f"old-{i}": os.urandom(600_000 + i) for i in range(3)}
            with mounted(fs, tmp_path / "mnt") as mountpoint:
                for name, data in expected.items():
                    (mountpoint / name).write_bytes(data)
                os.sync()
                with Load(mountpoint, expected) as load:
                    time.sleep(1.0)
                    to_epoch_3(network)
                    deadline = time.monotonic() + 60
                    while (json.loads(os.getxattr(mountpoint, "walrusfs.status")).get("epoch") != 3
                           or load.reads < 6 or len(load.written) < 3):
                        assert time.monotonic() < deadline, f"mount stuck: {fs.log_tail()}"
                        time.sleep(0.2)
                assert load.errors == [], f"{load.errors[:5]}\n{fs.log_tail()}"
                shown = run([WALRUSFS, "status", str(mountpoint)], fs.env, check=False).stdout
                assert "epoch 3" in shown
                written = dict(load.written)
            chain = load_chain(network.first, fs.state / "committee-chain.json")
            assert chain.current == network.committee  # saved, and verified again from fs.toml's committee

            # Another machine: the filesystem's key and the committee file of epoch 1, nothing else.
            other = Filesystem("epochfs", tmp_path / "elsewhere", network)
            (tmp_path / "elsewhere").mkdir()
            run([WALRUSFS, "restore", "epochfs", "--key", str(fs.state / "fs.key"), "--committee",
                 str(network.committee_path), "--writer-key", str(network.writer_key_path)], other.env)
            assert load_chain(network.first, other.state / "committee-chain.json").current.epoch == 3
            with mounted(other, tmp_path / "mnt2", "-o", "ro") as mountpoint:
                for name, data in {**expected, **written}.items():
                    assert digest((mountpoint / name).read_bytes()) == digest(data), name
            fsck = run([WALRUSFS, "fsck", "epochfs", "--deep", "--json"], other.env, check=False)
            assert json.loads(fsck.stdout)["clean"], fsck.stdout
        finally:
            fs.cleanup()
