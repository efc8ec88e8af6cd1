"""Blob claims on a node (docs/node-api.md, "Claims"): owners claim a blob with an expiry at store,
release it one by one, renew it; the node keeps a blob while a claim is left, durably across kill -9;
a store written before claims existed still opens, each blob kept for one default term.

Real node processes; the expiry rule itself (never before the signed time) runs the claim store
in-process on a mock clock (tests/nodes/test_expiry.py runs the sweeper on real nodes).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from node_harness import Node

from walrusfs.protocol.certificates import Confirmation
from walrusfs.redstuff import EncodedBlob

A, B = "a" * 32, "b" * 32
DAY = 86400


def configure(root: Path, node_id: str, text: str) -> None:
    """Append TOML tables to a node's config.toml."""
    path = root / node_id / "config.toml"
    path.write_text(path.read_text() + "\n" + text)


@pytest.fixture
def node_config() -> str:
    """node-0 (conftest's ``node``) with a default term of 10 days and a maximum of 100."""
    return "[lifecycle]\ndefault_term_days = 10\nmax_term_days = 100\n"


def claim(node: Node, blob: EncodedBlob, owner: str | None = None, expires: int | None = None) -> httpx.Response:
    query = "&".join(f"{k}={v}" for k, v in (("owner", owner), ("expires", expires)) if v is not None)
    path = f"/v1/blobs/{blob.blob_id}/metadata" + (f"?{query}" if query else "")
    return node.put(path, blob.metadata.to_bytes())


def store(node: Node, blob: EncodedBlob, owner: str | None = None, expires: int | None = None) -> int:
    """Claim and upload the node's slivers; the expiry granted."""
    response = claim(node, blob, owner, expires)
    assert response.status_code in (200, 201), response.text
    node.store(blob)  # its metadata PUT (no owner) adds the node's default claim for owner ""
    return response.json()["expires"]


def claims(node: Node, blob: EncodedBlob) -> dict[str, int]:
    response = node.http.get(f"/v1/blobs/{blob.blob_id}/claims")
    if response.status_code == 404:
        return {}
    assert response.status_code == 200, response.text
    return {owner: c["expires"] for owner, c in response.json()["claims"].items()}


def release(node: Node, blob: EncodedBlob, owner: str) -> httpx.Response:
    return node.delete(f"/v1/blobs/{blob.blob_id}?owner={owner}")


def restart_after_kill9(node: Node) -> None:
    node.process.kill9()
    node.process.start()


def test_owners_claim_at_store_and_the_blob_goes_only_with_the_last_claim(node: Node, blob: EncodedBlob) -> None:
    now = int(time.time())
    granted_a = store(node, blob, A, now + 5 * DAY)
    assert granted_a == now + 5 * DAY
    granted_b = claim(node, blob, B, now + 1000 * DAY).json()["expires"]
    assert now + 100 * DAY - 5 <= granted_b <= int(time.time()) + 100 * DAY  # capped at the maximum term
    held = claims(node, blob)
    assert held[A] == granted_a and held[B] == granted_b
    assert now + 10 * DAY - 5 <= held[""] <= int(time.time()) + 10 * DAY  # no owner: the default term

    restart_after_kill9(node)  # every claim was durable before its answer
    assert claims(node, blob) == held

    answer = release(node, blob, A)
    assert answer.status_code == 200 and answer.json() == {"blob_id": str(blob.blob_id), "deleted": False,
                                                           "claims_left": 2}
    assert release(node, blob, "").status_code == 400  # an owner is a filesystem ID
    restart_after_kill9(node)
    assert set(claims(node, blob)) == {"", B}
    assert node.http.get(f"/v1/blobs/{blob.blob_id}/metadata").status_code == 200

    # Release is idempotent per owner: A's claim is gone, B's and the default one stay.
    assert release(node, blob, A).json()["claims_left"] == 2
    node.delete(f"/v1/blobs/{blob.blob_id}")  # an operator's DELETE without owner: everything goes
    assert node.http.get(f"/v1/blobs/{blob.blob_id}/metadata").status_code == 404
    assert release(node, blob, B).status_code == 404
    restart_after_kill9(node)
    assert node.http.get(f"/v1/blobs/{blob.blob_id}/metadata").status_code == 404


def test_the_last_release_deletes_the_blob_with_a_tombstone(node: Node, blob: EncodedBlob,
                                                            cluster_root: Path) -> None:
    now = int(time.time())
    claim(node, blob, A, now + DAY)
    claim(node, blob, B, now + DAY)
    assert release(node, blob, A).json() == {"blob_id": str(blob.blob_id), "deleted": False, "claims_left": 1}
    assert release(node, blob, B).json() == {"blob_id": str(blob.blob_id), "deleted": True, "claims_left": 0}
    assert node.http.get(f"/v1/blobs/{blob.blob_id}/metadata").status_code == 404
    assert (cluster_root / "node-0" / "data" / "tombstones" / str(blob.blob_id)).exists()
    assert release(node, blob, B).status_code == 404


def test_the_confirmation_signs_the_expiry_the_node_keeps_the_blob_until(node: Node, blob: EncodedBlob) -> None:
    now = int(time.time())
    store(node, blob, A, now + 50 * DAY)
    response = node.http.get(f"/v1/blobs/{blob.blob_id}/confirmation")
    assert response.status_code == 200, response.text
    confirmation = Confirmation.from_json(response.content)
    assert confirmation.version == 2 and confirmation.expires == now + 50 * DAY
    assert confirmation.verify(node.committee.node("node-0").public_key)
    forged = Confirmation(confirmation.epoch, confirmation.blob_id, confirmation.node_id, confirmation.shards,
                          confirmation.signature, 2, confirmation.expires + DAY)
    assert not forged.verify(node.committee.node("node-0").public_key)


def test_renewal_extends_the_owners_claims_durably_and_names_unknown_blobs(node: Node, blob: EncodedBlob) -> None:
    from node_harness import other_blob

    absent = other_blob()
    now = int(time.time())
    claim(node, blob, A, now + DAY)
    path = f"/v1/owners/{A}/renewals"
    body = json.dumps({"format": 1, "expires": now + 20 * DAY, "blobs": [str(blob.blob_id),
                                                                       str(absent.blob_id)]}).encode()
    answer = node.http.post(path, content=body, headers=node.auth("POST", path, body=body))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"format": 1, "granted": now + 20 * DAY, "renewed": [str(blob.blob_id)],
                             "unknown": [str(absent.blob_id)]}
    restart_after_kill9(node)
    assert claims(node, blob)[A] == now + 20 * DAY

    # A renewal never shortens a claim, and is capped at the maximum term.
    for expires in (now + 2 * DAY, now + 1000 * DAY):
        body = json.dumps({"format": 1, "expires": expires, "blobs": [str(blob.blob_id)]}).encode()
        node.http.post(path, content=body, headers=node.auth("POST", path, body=body)).raise_for_status()
    assert now + 100 * DAY - 5 <= claims(node, blob)[A] <= int(time.time()) + 100 * DAY

    # Bad requests get a clear 400 and change nothing; an unsigned one is refused.
    before = claims(node, blob)
    for bad in ({"format": 2, "expires": now, "blobs": []}, {"format": 1, "expires": "soon", "blobs": []},
                {"format": 1, "expires": now, "blobs": ["not-a-blob"]},
                {"format": 1, "expires": now, "blobs": [str(blob.blob_id)] * 1001}):
        body = json.dumps(bad).encode()
        answer = node.http.post(path, content=body, headers=node.auth("POST", path, body=body))
        assert answer.status_code in (400, 413) and answer.json()["error"] in ("bad_renewal", "too_large")
    assert node.http.post(path, content=b"{}").status_code == 401
    assert claims(node, blob) == before


def test_a_store_written_before_claims_opens_and_keeps_each_blob_a_default_term(
        node: Node, blob: EncodedBlob, cluster_root: Path) -> None:
    node.store(blob)
    node.process.stop()
    # The layout the nodes wrote before claims: the blob directory without a claims object.
    blob_dir = next((cluster_root / "node-0" / "data" / "blobs").glob(f"*/{blob.blob_id}"))
    (blob_dir / "claims").unlink()
    started = int(time.time())
    node.process.start()
    held = claims(node, blob)
    assert list(held) == [""]
    assert started + 10 * DAY <= held[""] <= int(time.time()) + 10 * DAY
    assert (blob_dir / "claims").exists()  # written at the upgrade, so a restart keeps that expiry
    for pair in node.pairs(blob):
        assert node.http.get(f"/v1/blobs/{blob.blob_id}/slivers/{pair}/primary").status_code == 200
    node.process.stop()
    node.process.start()
    assert claims(node, blob) == held


def test_a_metadata_put_with_a_bad_owner_or_expiry_is_refused_and_stores_nothing(node: Node,
                                                                                 blob: EncodedBlob) -> None:
    for owner, expires in (("NOT-AN-FS", None), (A, "tomorrow")):
        path = f"/v1/blobs/{blob.blob_id}/metadata?owner={owner}" + (f"&expires={expires}" if expires else "")
        answer = node.put(path, blob.metadata.to_bytes())
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"] in ("bad_fs_id", "bad_expires")
    assert node.http.get(f"/v1/blobs/{blob.blob_id}/metadata").status_code == 404
