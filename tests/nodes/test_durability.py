"""What a node acknowledged survives restarts and kill -9; what rots on disk is never served."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import httpx
from node_harness import Node, NodeProcess, node_process

from walrusfs.committee import Committee, NodeInfo
from walrusfs.keys import load_key
from walrusfs.protocol import sign_request
from walrusfs.redstuff import EncodedBlob, Sliver, SliverKind, encode, verify_sliver


def sliver_url(blob: EncodedBlob, pair: int, kind: SliverKind) -> str:
    return f"/v1/blobs/{blob.blob_id}/slivers/{pair}/{kind.name.lower()}"


def data_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "node-0" / "data" / "blobs").rglob("*") if p.is_file())


def test_a_restarted_node_keeps_everything_it_acknowledged(node: Node, blob: EncodedBlob) -> None:
    node.store(blob)
    before = {(p, k): node.http.get(sliver_url(blob, p, k)).content
              for p in node.pairs(blob) for k in SliverKind}
    assert node.process.stop() == 0  # SIGTERM: a clean exit
    assert "stopped" in node.process.log.read_text()
    node.process.start()
    assert node.http.get(f"/v1/blobs/{blob.blob_id}/metadata").content == blob.metadata.to_bytes()
    for (pair, kind), content in before.items():
        assert node.http.get(sliver_url(blob, pair, kind)).content == content
    assert node.http.get(f"/v1/blobs/{blob.blob_id}/confirmation").status_code == 200
    node.process.kill9()  # acknowledged writes were fsynced: kill -9 loses nothing either
    node.process.start()
    assert node.http.get(f"/v1/blobs/{blob.blob_id}/status").json()["complete"] is True


def test_a_sliver_rotted_on_disk_is_quarantined_not_served(node: Node, blob: EncodedBlob,
                                                          cluster_root: Path) -> None:
    node.store(blob)
    pair = node.pairs(blob)[0]
    stored = next(p for p in data_files(cluster_root) if p.name == f"p{pair}.primary")
    content = bytearray(stored.read_bytes())
    content[len(content) // 2] ^= 0x40  # one flipped bit
    stored.write_bytes(content)

    path = f"/v1/blobs/{blob.blob_id}/slivers/{pair}/primary"
    response = node.http.get(path)
    assert response.status_code == 404 and response.json()["error"] == "quarantined"
    assert node.http.get(path).status_code == 404  # and stays gone
    assert node.http.get(f"{path}/recovery/0").status_code == 404
    status = node.http.get(f"/v1/blobs/{blob.blob_id}/status").json()
    entry = next(e for e in status["shards"] if e["pair"] == pair)
    assert entry["primary"] == {"index": pair, "stored": False, "state": "quarantined"}
    assert status["complete"] is False
    assert node.http.get(f"/v1/blobs/{blob.blob_id}/confirmation").status_code == 409
    metrics = node.http.get("/metrics").text
    assert "walrusfs_node_checksum_failures_total 1" in metrics
    assert "walrusfs_node_quarantined_files 1" in metrics
    assert "checksum mismatch" in node.process.log.read_text()
    assert len(list((cluster_root / "node-0" / "data" / "quarantine").iterdir())) == 1

    # Repair stores it again: it is served once more.
    node.store(blob, pairs=[pair])
    assert node.http.get(path).content == blob.primary_sliver(pair).to_bytes()


def test_a_truncated_file_is_never_served(node: Node, blob: EncodedBlob, cluster_root: Path) -> None:
    node.store(blob)
    metadata_file = next(p for p in data_files(cluster_root) if p.name == "metadata")
    metadata_file.write_bytes(metadata_file.read_bytes()[:-10])
    assert node.http.get(f"/v1/blobs/{blob.blob_id}/metadata").status_code == 404


def _store_forever(node: NodeInfo, key: object, blobs: list[EncodedBlob], pairs: dict, events: list,
                   stop: threading.Event) -> None:
    """PUT metadata and slivers (and now and then DELETE the blob) over and over until the node dies.

    ``events`` records, in order, each acknowledged sliver ("stored", blob id, pair, kind) and each
    deletion that was acknowledged or cut short by the kill ("deleted", blob id).
    """
    with httpx.Client(base_url=node.url, timeout=5) as http:
        while not stop.is_set():
            for blob in blobs:
                uploads = [(f"/v1/blobs/{blob.blob_id}/metadata", blob.metadata.to_bytes(), None)]
                for pair in pairs[blob.blob_id]:
                    secondary = blob.secondary_sliver(blob.metadata.geometry.secondary_of_pair(pair))
                    uploads += [(f"/v1/blobs/{blob.blob_id}/slivers/{pair}/primary",
                                 blob.primary_sliver(pair).to_bytes(), SliverKind.PRIMARY),
                                (f"/v1/blobs/{blob.blob_id}/slivers/{pair}/secondary",
                                 secondary.to_bytes(), SliverKind.SECONDARY)]
                for path, body, kind in uploads:
                    try:
                        response = http.put(path, content=body,
                                            headers={"Authorization": sign_request(key, "PUT", path, node, body)})
                    except httpx.HTTPError:
                        return  # the node was killed
                    if response.status_code in (200, 201) and kind is not None:
                        events.append(("stored", blob.blob_id, int(path.split("/")[-2]), kind))
                # Delete now and then so that later rounds recreate blobs and rewrite slivers.
                if random.random() < 0.3:
                    path = f"/v1/blobs/{blob.blob_id}"
                    try:
                        http.delete(path, headers={"Authorization": sign_request(key, "DELETE", path, node)})
                    except httpx.HTTPError:
                        events.append(("deleted", blob.blob_id))  # it may or may not have happened
                        return
                    events.append(("deleted", blob.blob_id))


def must_survive(events: list) -> set:
    """The slivers acknowledged and not deleted since."""
    alive: set = set()
    for event in events:
        if event[0] == "stored":
            alive.add(event[1:])
        else:
            alive = {item for item in alive if item[0] != event[1]}
    return alive


def test_kill_9_during_stores_never_leaves_a_torn_sliver(cluster_root: Path) -> None:
    process: NodeProcess = node_process(cluster_root)
    key = load_key(cluster_root / "writer.key")
    committee = Committee.load(cluster_root / "committee.toml")
    blobs = [encode(os.urandom(3_000_000 + i), 7) for i in range(3)]  # slivers of ~200-500 KB
    pairs = {blob.blob_id: [committee.geometry.pair_of_shard(shard, blob.blob_id.raw)
                            for shard in committee.shards_of("node-0")] for blob in blobs}
    rng = random.Random(7)
    acknowledged = 0
    try:
        for _ in range(6):
            process.start()
            events: list = []
            stop = threading.Event()
            writer = threading.Thread(target=_store_forever,
                                      args=(committee.node("node-0"), key, blobs, pairs, events, stop))
            writer.start()
            deadline = time.monotonic() + 30
            while sum(1 for event in events if event[0] == "stored") < 2 and time.monotonic() < deadline:
                time.sleep(0.01)  # the kill lands amid stores, however slow the machine is today
            time.sleep(rng.uniform(0.0, 0.5))
            process.kill9()
            stop.set()
            writer.join()
            acknowledged += sum(1 for event in events if event[0] == "stored")

            process.start()
            served = set()
            with httpx.Client(base_url=process.url, timeout=10) as http:
                for blob in blobs:
                    for pair in pairs[blob.blob_id]:
                        for kind in SliverKind:
                            response = http.get(sliver_url(blob, pair, kind))
                            assert response.status_code in (200, 404), response.text
                            if response.status_code == 200:
                                verify_sliver(blob.metadata, Sliver.from_bytes(response.content))
                                served.add((blob.blob_id, pair, kind))
                assert http.get("/v1/health").json()["quarantined"] == 0, "a torn file was found on disk"
            assert must_survive(events) <= served, "an acknowledged sliver was lost"
            process.stop()
    finally:
        process.stop()
    assert acknowledged > 10  # the node really was killed in the middle of work
