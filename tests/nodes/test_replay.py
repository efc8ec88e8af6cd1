"""Replaying captured writes (docs/threat-model.md), on real node processes: a signed request is
good once, at the node it was signed for, and a dangerous one stays spent across a crash."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from network import free_port_range
from node_harness import Node, NodeProcess, node_process

from walrusfs.cluster import init_cluster
from walrusfs.committee import Committee
from walrusfs.keys import load_key
from walrusfs.redstuff import EncodedBlob


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    root = tmp_path / "cluster"
    init_cluster(root, nodes=2, shards=7, base_port=free_port_range(2))
    committee = Committee.load(root / "committee.toml")
    writer = load_key(root / "writer.key")
    processes = [node_process(root, 0), node_process(root, 1)]
    clients = [httpx.Client(base_url=p.url, timeout=10) for p in processes]
    try:
        for process in processes:
            process.start()
        yield tuple(Node(p, committee, f"node-{i}", writer, c)  # type: ignore[misc]
                    for i, (p, c) in enumerate(zip(processes, clients, strict=True)))
    finally:
        for process, client in zip(processes, clients, strict=True):
            client.close()
            process.stop()


def has_metadata(node: Node, blob: EncodedBlob) -> bool:
    return node.http.get(f"/v1/blobs/{blob.blob_id}/metadata").status_code == 200


def restart_after_crash(process: NodeProcess) -> None:
    process.kill9()
    process.start()


def test_a_delete_signed_for_one_node_is_refused_by_another(two_nodes: tuple[Node, Node], blob: EncodedBlob) -> None:
    node0, node1 = two_nodes
    node0.store(blob, pairs=[])
    node1.store(blob, pairs=[])
    path = f"/v1/blobs/{blob.blob_id}"
    captured = node1.auth("DELETE", path)

    replayed = node0.http.delete(path, headers=captured)
    assert replayed.status_code == 401
    assert "signed for node 'node-1'" in replayed.json()["message"]
    assert has_metadata(node0, blob)

    assert node1.http.delete(path, headers=captured).status_code == 200  # the original still works
    assert not has_metadata(node1, blob)
    assert has_metadata(node0, blob)


def test_a_captured_delete_is_refused_after_the_node_restarts(two_nodes: tuple[Node, Node],
                                                              blob: EncodedBlob) -> None:
    node = two_nodes[0]
    path = f"/v1/blobs/{blob.blob_id}"
    node.store(blob, pairs=[])
    captured = node.auth("DELETE", path)
    assert node.http.delete(path, headers=captured).status_code == 200
    node.store(blob)  # stored again since, by the writer: metadata and slivers

    restart_after_crash(node.process)
    replayed = node.http.delete(path, headers=captured)
    assert replayed.status_code == 401 and "already used" in replayed.json()["message"]
    assert node.http.get(f"/v1/blobs/{blob.blob_id}/status").json()["complete"]
    assert node.delete(path).status_code == 200  # a fresh signature does delete


def test_a_captured_metadata_put_cannot_bring_a_deleted_blob_back_after_a_restart(
        two_nodes: tuple[Node, Node], blob: EncodedBlob) -> None:
    node = two_nodes[0]
    metadata_path = f"/v1/blobs/{blob.blob_id}/metadata"
    body = blob.metadata.to_bytes()
    captured = node.auth("PUT", metadata_path, body=body)
    assert node.http.put(metadata_path, content=body, headers=captured).status_code == 201
    assert node.delete(f"/v1/blobs/{blob.blob_id}").status_code == 200

    restart_after_crash(node.process)
    assert node.http.put(metadata_path, content=body, headers=captured).status_code == 401
    assert not has_metadata(node, blob)
    assert node.put(metadata_path, body).status_code == 201  # the writer can store it again


def test_a_signed_body_cannot_be_swapped(two_nodes: tuple[Node, Node], blob: EncodedBlob) -> None:
    node = two_nodes[0]
    node.store(blob, pairs=[])
    path = f"/v1/blobs/{blob.blob_id}/certificate"
    headers = node.auth("PUT", path, body=b'{"a": "certificate"}')
    response = node.http.put(path, content=b'{"another": "body"}', headers=headers)
    assert response.status_code == 401 and "not the one the Authorization signature covers" in response.text


def test_the_v1_format_which_named_no_node_is_refused(two_nodes: tuple[Node, Node], blob: EncodedBlob) -> None:
    node = two_nodes[0]
    node.store(blob, pairs=[])
    path = f"/v1/blobs/{blob.blob_id}"
    v2 = node.auth("DELETE", path)["Authorization"]
    v1 = "WalrusFS-Ed25519 " + ", ".join(p for p in v2.split(" ", 1)[1].split(", ")
                                        if not p.startswith(("node=", "body=")))
    response = node.http.delete(path, headers={"Authorization": v1})
    assert response.status_code == 401 and "upgrade walrusfs on the client" in response.json()["message"]
    assert has_metadata(node, blob)
