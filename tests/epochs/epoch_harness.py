"""A local network whose committee changes: new nodes started in standby, committee e + 1 signed by the
nodes of committee e with their keys on disk and sent to every node (``POST /v1/committee/next``).

(Not a package: ``tests/epochs`` is on sys.path while its tests run.)
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import tomli_w
from blobtools import store
from network import LocalNetwork, free_port_range, polling_client

from walrusfs.committee import Committee, NodeInfo
from walrusfs.keys import generate_key, load_key, public_bytes, write_key
from walrusfs.protocol import sign_request
from walrusfs.protocol.chain import CommitteeLink, propose, sign_link
from walrusfs.protocol.roots import RootRecord
from walrusfs.redstuff import BlobId, BlobMetadata, Sliver, SliverKind, verify_sliver

COMMITTEE_NEXT = "/v1/committee/next"
HANDOVER = "/v1/handover"


class EpochNetwork(LocalNetwork):
    """A LocalNetwork that knows every node it ever had, and moves shards from epoch to epoch."""

    def __init__(self, root: Path, nodes: int = 4, shards: int = 7, request_timeout: float | None = None) -> None:
        """``request_timeout``: every node's ``[handover] request_timeout`` (seconds; the default, 20,
        if None), for tests that freeze a node and would otherwise wait that long for its silence."""
        super().__init__(root, nodes=nodes, shards=shards)
        self.known: dict[str, NodeInfo] = {node.id: node for node in self.committee.nodes}
        self.links: list[CommitteeLink] = []
        self.request_timeout = request_timeout
        if request_timeout is not None:
            for node_id in self.known:
                with open(self.config(node_id), "a") as config:
                    config.write(f"\n[handover]\nrequest_timeout = {request_timeout}\n")

    @property
    def node_ids(self) -> list[str]:
        return list(self.known)

    def info(self, node: str | int) -> NodeInfo:
        return self.known[self._id(node)]

    def key(self, node_id: str):
        return load_key(self.root / node_id / "node.key")

    def add_node(self, node_id: str, request_timeout: float | None = None) -> NodeInfo:
        """A new node in standby: its configuration names the epoch-1 committee, which it is not in.
        ``request_timeout``: its ``[handover] request_timeout``, else the network's."""
        port = free_port_range(1)
        directory = self.root / node_id
        (directory / "data").mkdir(parents=True)
        key = generate_key()
        write_key(directory / "node.key", key)
        config: dict[str, Any] = {"node_id": node_id, "listen": f"127.0.0.1:{port}", "data_dir": "data",
                                  "signing_key": "node.key", "committee": "../committee.toml"}
        timeout = request_timeout if request_timeout is not None else self.request_timeout
        if timeout is not None:
            config["handover"] = {"request_timeout": timeout}
        (directory / "config.toml").write_text(tomli_w.dumps(config))
        info = NodeInfo(node_id, f"http://127.0.0.1:{port}", public_bytes(key), ())
        self.known[node_id] = info
        return info

    def successor(self, assignment: dict[str, tuple[int, ...]], urls: dict[str, str] | None = None) -> Committee:
        """Committee e + 1: ``assignment`` gives each of its nodes its shards (``urls``: where others reach them)."""
        urls = urls or {}
        nodes = tuple(NodeInfo(node_id, urls.get(node_id, self.known[node_id].url), self.known[node_id].public_key,
                               tuple(shards)) for node_id, shards in assignment.items())
        previous = self.committee
        return Committee(previous.epoch + 1, previous.n_shards, nodes, previous.writer_keys)

    def change_epoch(self, successor: Committee, skip: tuple[str, ...] = ()) -> Committee:
        """Sign ``successor`` with the keys of every node of the current committee and send the chain's
        links to every running node of both committees (but ``skip``). Returns the previous committee."""
        previous = self.committee
        link = propose(previous, successor)
        for node in previous.nodes:
            link = link.with_signature(node.id, sign_link(self.key(node.id), previous, successor))
        self.links.append(link)
        self.committee = successor
        for node_id in {node.id for node in (*previous.nodes, *successor.nodes)} - set(skip):
            if self.pid(node_id) is not None:
                self.send_links(node_id)
        return previous

    def send_links(self, node_id: str) -> None:
        """Every link of the chain, to one node (it adopts those after its current epoch)."""
        body = {"version": 1, "links": [link.to_dict() for link in self.links]}
        response = httpx.post(self.known[node_id].url + COMMITTEE_NEXT, json=body, timeout=30)
        assert response.status_code in (200, 201), f"{node_id}: {response.status_code} {response.text}"

    def handover(self, node_id: str) -> dict[str, Any]:
        response = polling_client().get(self.known[node_id].url + HANDOVER, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def wait_handover(self, node_ids: list[str], released: bool = True, timeout: float = 60.0) -> dict[str, Any]:
        """Poll until each node's handover into the current epoch is complete (and, with ``released``,
        acknowledged by every old holder); the statuses."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = {node_id: self.handover(node_id) for node_id in node_ids}
            if all(_finished(status, self.committee.epoch, released) for status in statuses.values()):
                return statuses
            if time.monotonic() > deadline:
                raise AssertionError(f"handover not finished after {timeout} s: {statuses}")
            time.sleep(0.1)


def _finished(status: dict[str, Any], epoch: int, released: bool) -> bool:
    return status["epoch"] == epoch and status["complete"] and (
        not released or all(entry["released"] for entry in status["gaining"]))


def fetch_verified(url: str, metadata: BlobMetadata, pair: int, kind: SliverKind) -> Sliver:
    """GET a sliver from a node and check it against the blob's metadata (raises if it does not verify)."""
    blob_id: BlobId = metadata.blob_id
    response = polling_client().get(f"{url}/v1/blobs/{blob_id}/slivers/{pair}/{kind.name.lower()}", timeout=10)
    assert response.status_code == 200, f"{url} pair {pair} {kind.name.lower()}: {response.status_code} {response.text}"
    sliver = Sliver.from_bytes(response.content)
    verify_sliver(metadata, sliver)
    return sliver


def wait_stored_everywhere(network: EpochNetwork, blob_ids: list[BlobId], timeout: float = 60.0) -> None:
    """Until every node of the current committee holds all its slivers and the certificate of each blob
    (the client returns at a quorum; the rest arrives in the background)."""
    deadline = time.monotonic() + timeout
    pending = [(node.url, blob_id) for node in network.committee.nodes for blob_id in blob_ids]
    while pending:
        url, blob_id = pending[-1]
        status = polling_client().get(f"{url}/v1/blobs/{blob_id}/status", timeout=10)
        certificate = polling_client().get(f"{url}/v1/blobs/{blob_id}/certificate", timeout=10)
        if status.status_code == 200 and status.json()["complete"] and certificate.status_code == 200:
            pending.pop()
        elif time.monotonic() > deadline:
            raise AssertionError(f"{url} lacks blob {blob_id} after {timeout} s: {status.text}")
        else:
            time.sleep(0.1)


def stored_everywhere(network: EpochNetwork, count: int, size: int) -> list[BlobMetadata]:
    """``count`` blobs of random bytes (``size``, ``size`` + 1, ...) stored, and held complete by every node
    of the current committee."""
    stored = [store(network, os.urandom(size + i)) for i in range(count)]
    wait_stored_everywhere(network, [blob.blob_id for blob in stored])
    return [blob.metadata for blob in stored]


def sliver_file(network: EpochNetwork, node_id: str, blob_id: BlobId, pair: int, kind: SliverKind) -> Path:
    text = str(blob_id)
    return network.root / node_id / "data" / "blobs" / text[:2] / text / f"p{pair}.{kind.name.lower()}"


def put_root_everywhere(network: EpochNetwork, record: RootRecord) -> None:
    """A filesystem's root record, PUT by the writer to every node of the current committee."""
    path = f"/v1/roots/{record.fs_id}"
    body = record.to_json()
    for node in network.committee.nodes:
        headers = {"Authorization": sign_request(network.writer_key, "PUT", path, node, body)}
        response = httpx.put(node.url + path, content=body, headers=headers, timeout=10)
        assert response.status_code in (200, 201), response.text
