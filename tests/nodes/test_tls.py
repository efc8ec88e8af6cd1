"""Nodes serving TLS with self-signed certificates pinned in the committee (walrusfs.tls), on real node
processes started by ``walrusfs cluster up``: clients and peers trust exactly the committee's certificate
of the node they mean to reach, and nothing is served in the clear."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import trio
from network import free_port_range

from nodes.peers import PeerError, Peers
from walrusfs.client import BlobClient
from walrusfs.committee import Committee
from walrusfs.keys import load_key
from walrusfs.tls import certificate_text, node_certificate, pinned_context


def walrusfs(*args: object) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "walrusfs.cli", *map(str, args)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"walrusfs {args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """4 nodes (7 shards) serving https, started and stopped by the cluster commands."""
    root = tmp_path_factory.mktemp("tls") / "cluster"
    walrusfs("cluster", "init", root, "--nodes", 4, "--shards", 7, "--base-port", free_port_range(4), "--tls")
    try:
        walrusfs("cluster", "up", root)
        yield root
    finally:
        walrusfs("cluster", "down", root)
        for pid_file in root.glob("node-*/node.pid"):  # only if `down` failed: our recorded pids
            pid = int(pid_file.read_text())
            if str(root).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)


def test_the_committee_pins_each_nodes_certificate(tls_cluster: Path) -> None:
    committee = Committee.load(tls_cluster / "committee.toml")
    assert all(node.url.startswith("https://") and node.tls_cert for node in committee.nodes)
    status = walrusfs("cluster", "status", tls_cluster).stdout
    assert status.count(" up ") == 4, status


def test_blobs_are_stored_and_read_over_tls(tls_cluster: Path) -> None:
    committee = Committee.load(tls_cluster / "committee.toml")
    data = os.urandom(3_000_000)  # slivers of ~200 KB: received into the store's buffers through TLS

    async def round_trip() -> bytes:
        async with BlobClient(committee, load_key(tls_cluster / "writer.key")) as client:
            stored = await client.store(data)
            return bytes(await client.read(stored.blob_id))

    assert trio.run(round_trip) == data


def test_peers_reach_each_other_over_tls(tls_cluster: Path) -> None:
    committee = Committee.load(tls_cluster / "committee.toml")

    async def feeds() -> list[bytes]:
        peers = Peers(list(committee.nodes), "node-0")
        try:
            return [await peers.feed(node.id, 0) for node in committee.nodes[1:]]
        finally:
            await peers.close()

    assert all(b"entries" in feed for feed in asyncio.run(feeds()))  # as in a node: asyncio


def test_a_node_cannot_pose_as_another(tls_cluster: Path) -> None:
    """node-0's certificate is no good at node-1's address, for clients and for peers."""
    committee = Committee.load(tls_cluster / "committee.toml")
    node0, node1 = committee.nodes[0], committee.nodes[1]
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{node1.url}/v1/health", verify=pinned_context(node0.tls_cert))  # type: ignore[arg-type]
    assert httpx.get(f"{node1.url}/v1/health", verify=pinned_context(node1.tls_cert)).status_code == 200  # type: ignore[arg-type]

    impostor = replace(node1, tls_cert=node0.tls_cert)  # what a committee file would never load

    async def feed() -> bytes:
        peers = Peers([node0, impostor], "node-0")
        try:
            return await peers.feed(node1.id, 0)
        finally:
            await peers.close()

    with pytest.raises(PeerError, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(feed())


def test_nothing_is_served_in_the_clear_nor_to_a_ca_verifying_client(tls_cluster: Path) -> None:
    node = Committee.load(tls_cluster / "committee.toml").nodes[2]
    with pytest.raises(httpx.HTTPError):
        httpx.get(node.url.replace("https://", "http://") + "/v1/health", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{node.url}/v1/health", verify=ssl.create_default_context())


def test_node_cert_prints_the_certificate_a_committee_entry_needs(tmp_path: Path) -> None:
    walrusfs("node", "keygen", tmp_path / "node.key")
    printed = walrusfs("node", "cert", tmp_path / "node.key").stdout.strip()
    assert printed == certificate_text(node_certificate(load_key(tmp_path / "node.key")))
