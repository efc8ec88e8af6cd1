"""Expiry (docs/node-api.md, "Claims"): a blob whose claims have all run out is deleted, with a
tombstone, by every node's sweeper; a renewed one stays; and no node deletes a blob before the time
it signed for (checked on a mock clock, to the second).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import httpx
import pytest
from node_harness import Node, node_process, other_blob
from test_claims import A, configure

from nodes.claims import Claim, ClaimStore
from nodes.config import LifecycleConfig, QuotaConfig
from nodes.store import _HEAD, _MAGIC, BlobStore
from walrusfs.committee import Committee
from walrusfs.keys import load_key
from walrusfs.redstuff import EncodedBlob

TERM = 4.0  # seconds: the nodes' default term in this test
SWEEP = 0.5


@pytest.fixture
def nodes(cluster_root: Path) -> Iterator[list[Node]]:
    """Both nodes of the 2-node cluster, with a term of seconds and a sweep twice a second."""
    committee = Committee.load(cluster_root / "committee.toml")
    key = load_key(cluster_root / "writer.key")
    with contextlib.ExitStack() as stack:
        running = []
        for index, info in enumerate(committee.nodes):
            configure(cluster_root, info.id, f"[lifecycle]\ndefault_term_days = {TERM / 86400}\n"
                                             f"max_term_days = 1\nsweep_interval = {SWEEP}\n")
            process = node_process(cluster_root, index)
            stack.callback(process.stop)
            process.start()
            http = stack.enter_context(httpx.Client(base_url=process.url, timeout=10))
            running.append(Node(process, committee, info.id, key, http))
        yield running


def renew(node: Node, blob: EncodedBlob, seconds: float) -> None:
    path = f"/v1/owners/{A}/renewals"
    body = json.dumps({"format": 1, "expires": int(time.time() + seconds), "blobs": [str(blob.blob_id)]}).encode()
    answer = node.http.post(path, content=body, headers=node.auth("POST", path, body=body))
    assert answer.status_code == 200 and answer.json()["renewed"] == [str(blob.blob_id)], answer.text


def stored(node: Node, blob: EncodedBlob) -> bool:
    return node.http.get(f"/v1/blobs/{blob.blob_id}/metadata").status_code == 200


def test_an_unrenewed_blob_expires_on_every_node_and_a_renewed_one_stays(nodes: list[Node],
                                                                         cluster_root: Path) -> None:
    abandoned, kept = other_blob(), other_blob()
    for node in nodes:
        node.store(abandoned)
        node.store(kept)
        renew(node, kept, TERM)
    deadline = time.monotonic() + TERM * 2 + 60  # generous: the machine is loaded
    while any(stored(node, abandoned) for node in nodes):
        assert time.monotonic() < deadline, "the unrenewed blob was not expired"
        for node in nodes:
            renew(node, kept, TERM)
        time.sleep(0.5)
    for node in nodes:
        renew(node, kept, TERM)
        assert stored(node, kept)
        assert (cluster_root / node.node_id / "data" / "tombstones" / str(abandoned.blob_id)).exists()
        metrics = node.http.get("/metrics").text
        assert "walrusfs_node_expired_blobs_total 1" in metrics
    # Renewals stop: the kept blob goes too, once its last renewal ran out.
    deadline = time.monotonic() + TERM * 2 + 60
    while any(stored(node, kept) for node in nodes):
        assert time.monotonic() < deadline, "the blob no longer renewed was not expired"
        time.sleep(0.5)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_sweeper_never_deletes_before_the_latest_signed_expiry(tmp_path: Path) -> None:
    blob = other_blob(5_000)
    store = BlobStore(tmp_path)
    store.open()
    clock = Clock(1_000_000.0)
    claims = ClaimStore(store, LifecycleConfig(1.0, 10.0, 1.0), QuotaConfig(), clock)
    store.on_created = claims.noticed
    claims.open()
    writer = bytes(32)
    claims.store_and_claim(blob.blob_id, blob.metadata.to_bytes(), A, 1_000_100, writer, 100)
    claims.store_and_claim(blob.blob_id, blob.metadata.to_bytes(), "b" * 32, 1_000_050, writer, 100)
    assert claims.keep_until(blob.blob_id) == 1_000_100
    for now in (1_000_050.0, 1_000_099.0, 1_000_100.0):  # one claim expired; at the latest expiry, still kept
        clock.now = now
        assert claims.sweep() == []
        assert store.has(blob.blob_id, "metadata")
    clock.now = 1_000_100.5
    assert claims.sweep() == [str(blob.blob_id)]
    assert not store.has(blob.blob_id, "metadata") and str(blob.blob_id) in store.tombstones

    # A blob stored without a claim (repair, handover) gets the default term at the next sweep.
    again = other_blob(5_000)
    store.put_metadata(again.blob_id, again.metadata.to_bytes())
    assert claims.sweep() == []
    assert claims.claims_of(again.blob_id) == {"": Claim(int(clock.now + 86400), "")}
    # The owners' claims, when a peer gives them (handover, repair), replace that default one.
    claims.adopt(again.blob_id, {A: Claim(int(clock.now + 500), "w"), "": Claim(int(clock.now + 20 * 86400), "w")})
    assert claims.claims_of(again.blob_id) == {A: Claim(int(clock.now + 500), "w"),
                                               "": Claim(int(clock.now + 10 * 86400), "w")}  # capped at the max


def test_damaged_claims_keep_the_blob_for_the_longest_term_never_shorter(tmp_path: Path) -> None:
    blob, clock = other_blob(5_000), Clock(2_000_000.0)
    lifecycle = LifecycleConfig(1.0, 10.0, 1.0)

    def opened() -> tuple[BlobStore, ClaimStore]:
        store = BlobStore(tmp_path)
        store.open()
        claims = ClaimStore(store, lifecycle, QuotaConfig(), clock)
        store.on_created = claims.noticed
        claims.open()
        return store, claims

    store, claims = opened()
    claims.store_and_claim(blob.blob_id, blob.metadata.to_bytes(), A, 2_000_100, bytes(32), 100)
    path = store.blob_dir(blob.blob_id) / "claims"
    damaged = bytearray(path.read_bytes())
    damaged[-3] ^= 0xFF  # rot in the payload: the checksum fails
    path.write_bytes(bytes(damaged))
    store, claims = opened()
    assert claims.claims_of(blob.blob_id) == {"": Claim(int(clock.now + 10 * 86400), "")}
    assert any(entry.name.startswith(f"{blob.blob_id}.claims") for entry in (tmp_path / "quarantine").iterdir())

    path.write_bytes(path.read_bytes()[:40] + b"{not json")  # unreadable (a checksum made for garbage)


    payload = b'{"format": 9}'
    path.write_bytes(_HEAD.pack(_MAGIC, 1, blake3.blake3(payload).digest()) + payload)
    store, claims = opened()
    assert claims.claims_of(blob.blob_id) == {"": Claim(int(clock.now + 10 * 86400), "")}
