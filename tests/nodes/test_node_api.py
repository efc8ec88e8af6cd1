"""The storage node's HTTP API, against a real node process on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import time

from node_harness import Node, other_blob
from prometheus_client.parser import text_string_to_metric_families

from walrusfs.keys import generate_key
from walrusfs.protocol import Confirmation, is_certified, verify_certificate
from walrusfs.protocol.wire import ErrorBody, FeedPage, Health, RepairStatus
from walrusfs.redstuff import EncodedBlob, RecoverySymbol, Sliver, SliverKind, verify_sliver
from walrusfs.redstuff.sliver import HEADER_SIZE


def sliver_path(blob: EncodedBlob, pair: int, kind: SliverKind) -> str:
    return f"/v1/blobs/{blob.blob_id}/slivers/{pair}/{kind.name.lower()}"


# --- storing and reading back ------------------------------------------------------------------------


def test_metadata_and_both_slivers_of_a_pair_read_back_identical(node: Node, blob: EncodedBlob) -> None:
    node.store(blob)
    assert node.http.get(f"/v1/blobs/{blob.blob_id}/metadata").content == blob.metadata.to_bytes()
    for pair in node.pairs(blob):
        for kind in SliverKind:
            response = node.http.get(sliver_path(blob, pair, kind))
            assert response.status_code == 200
            assert response.content == node.sliver(blob, pair, kind).to_bytes()
            verify_sliver(blob.metadata, Sliver.from_bytes(response.content))


def test_storing_the_same_sliver_twice_is_idempotent(node: Node, blob: EncodedBlob) -> None:
    node.store(blob)
    pair = node.pairs(blob)[0]
    body = node.sliver(blob, pair, SliverKind.PRIMARY).to_bytes()
    assert node.put(sliver_path(blob, pair, SliverKind.PRIMARY), body).status_code == 200
    assert node.put(f"/v1/blobs/{blob.blob_id}/metadata", blob.metadata.to_bytes()).status_code == 200


def test_range_reads_return_206_with_content_range(node: Node, blob: EncodedBlob) -> None:
    node.store(blob)
    pair = node.pairs(blob)[0]
    whole = node.sliver(blob, pair, SliverKind.PRIMARY).to_bytes()
    path = sliver_path(blob, pair, SliverKind.PRIMARY)
    size = len(whole)
    cases = {"bytes=0-47": (0, 48), "bytes=100-": (100, size), "bytes=-64": (size - 64, size),
             f"bytes=10-{size + 500}": (10, size)}
    for header, (start, end) in cases.items():
        response = node.http.get(path, headers={"Range": header})
        assert response.status_code == 206, header
        assert response.content == whole[start:end], header
        assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{len(whole)}"
    unsatisfiable = node.http.get(path, headers={"Range": f"bytes={len(whole)}-"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["content-range"] == f"bytes */{len(whole)}"


def test_recovery_symbols_verify_against_the_metadata(node: Node, blob: EncodedBlob) -> None:
    node.store(blob)
    pair = node.pairs(blob)[0]
    for kind in SliverKind:
        for target in range(node.committee.n_shards):
            response = node.http.get(f"{sliver_path(blob, pair, kind)}/recovery/{target}")
            assert response.status_code == 200
            symbol = RecoverySymbol.from_bytes(response.content)
            assert symbol.target_kind is kind.other and symbol.target_index == target
            assert symbol.is_valid_for(blob.metadata)


def test_status_reports_what_is_stored_per_shard(node: Node, blob: EncodedBlob) -> None:
    status = node.http.get(f"/v1/blobs/{blob.blob_id}/status").json()
    assert status["metadata"]["stored"] is False and status["complete"] is False
    first, *rest = node.pairs(blob)
    node.store(blob, pairs=[first])
    status = node.http.get(f"/v1/blobs/{blob.blob_id}/status").json()
    by_pair = {entry["pair"]: entry for entry in status["shards"]}
    assert sorted(entry["shard"] for entry in status["shards"]) == list(node.shards)
    assert by_pair[first]["primary"] == {"index": first, "stored": True, "state": "ok"}
    assert by_pair[first]["secondary"]["index"] == node.committee.n_shards - 1 - first
    assert all(not by_pair[p]["primary"]["stored"] for p in rest)


def test_inventory_pages_through_stored_blob_ids(node: Node) -> None:
    blobs = [other_blob(1000 + i) for i in range(5)]
    for blob in blobs:
        assert node.put(f"/v1/blobs/{blob.blob_id}/metadata", blob.metadata.to_bytes()).status_code == 201
    seen, after = [], None
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        page = node.http.get("/v1/inventory", params=params).json()
        seen += page["blob_ids"]
        after = page["next"]
        if after is None:
            break
    assert seen == sorted(str(b.blob_id) for b in blobs)


def test_deletion_is_authorised_and_removes_everything(node: Node, blob: EncodedBlob) -> None:
    node.store(blob)
    assert node.http.delete(f"/v1/blobs/{blob.blob_id}").status_code == 401
    assert node.delete(f"/v1/blobs/{blob.blob_id}").status_code == 200
    assert node.http.get(f"/v1/blobs/{blob.blob_id}/metadata").status_code == 404
    assert node.http.get(sliver_path(blob, node.pairs(blob)[0], SliverKind.PRIMARY)).status_code == 404
    assert node.delete(f"/v1/blobs/{blob.blob_id}").status_code == 404
    assert node.http.get("/v1/health").json()["blobs"] == 0


def test_health_and_metrics(node: Node, blob: EncodedBlob) -> None:
    node.store(blob)
    health = node.http.get("/v1/health").json()
    assert health["ok"] and health["node_id"] == "node-0" and health["shards"] == list(node.shards)
    assert health["epoch"] == node.committee.epoch and health["blobs"] == 1 and health["bytes"] > 0
    metrics = node.http.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in text_string_to_metric_families(text) for sample in family.samples}
    assert samples[("walrusfs_node_http_requests_total", (
        ("method", "PUT"), ("route", "/v1/blobs/{id}/slivers/{pair}/{kind}"), ("status", "201")))] == 8
    assert samples[("walrusfs_node_stored_blobs", ())] == 1
    assert "walrusfs_node_received_bytes_total" in text


def test_every_json_body_of_a_real_node_parses_as_its_wire_type(node: Node, blob: EncodedBlob) -> None:
    node.store(blob)
    health = Health.from_dict(node.http.get("/v1/health").json())
    assert (health.node_id, health.shards, health.blobs) == ("node-0", list(node.shards), 1)
    status = RepairStatus.from_dict(node.http.get("/v1/repair/status").json())
    assert status.node_id == "node-0" and status.scrub.passes >= 0
    page = FeedPage.from_dict(node.http.get("/v1/certified", params={"since": 0, "limit": 10}).json())
    assert page.entries == [] and not page.more  # nothing certified on this node
    refused = node.http.get("/v1/certified", params={"limit": 0})
    error = ErrorBody.from_dict(refused.json())
    assert refused.status_code == 400 and error.code == "bad_query" and "limit" in error.message


# --- confirmations -------------------------------------------------------------------------------------


def test_confirmation_only_once_every_sliver_of_its_shards_is_stored(node: Node, blob: EncodedBlob) -> None:
    path = f"/v1/blobs/{blob.blob_id}/confirmation"
    assert node.http.get(path).status_code == 404  # nothing at all
    first, *rest = node.pairs(blob)
    node.store(blob, pairs=[first])
    incomplete = node.http.get(path)
    assert incomplete.status_code == 409
    assert len(incomplete.json()["missing"]) == 2 * len(rest)
    node.store(blob)
    response = node.http.get(path)
    assert response.status_code == 200
    confirmation = Confirmation.from_json(response.content)
    assert confirmation.node_id == "node-0" and confirmation.shards == node.shards
    assert confirmation.verify(node.committee.node("node-0").public_key)
    covered = verify_certificate(node.committee, blob.blob_id, [confirmation])
    assert covered == set(node.shards)
    assert not is_certified(node.committee, covered)  # 4 of 7 shards; a quorum is 5


def test_the_sliver_that_completes_the_blob_brings_the_confirmation(node: Node, blob: EncodedBlob) -> None:
    node.store(blob, pairs=[])
    pairs = node.pairs(blob)
    answers = []
    for pair in pairs:
        for kind in SliverKind:
            path = f"/v1/blobs/{blob.blob_id}/slivers/{pair}/{kind.name.lower()}"
            response = node.put(path, node.sliver(blob, pair, kind).to_bytes())
            assert response.status_code == 201
            answers.append(response.json())
    assert all("confirmation" not in answer for answer in answers[:-1])
    confirmation = Confirmation.from_dict(answers[-1]["confirmation"])
    assert confirmation.blob_id == blob.blob_id and confirmation.shards == node.shards
    assert confirmation.verify(node.committee.node("node-0").public_key)
    # Storing it again (idempotent) confirms again: a writer retrying gets what it missed.
    path = f"/v1/blobs/{blob.blob_id}/slivers/{pairs[0]}/primary"
    again = node.put(path, node.sliver(blob, pairs[0], SliverKind.PRIMARY).to_bytes())
    assert again.status_code == 200 and "confirmation" in again.json()


# --- refusing what does not verify ----------------------------------------------------------------------


def test_corrupted_sliver_is_refused_and_counted(node: Node, blob: EncodedBlob) -> None:
    node.store(blob, pairs=[])
    pair = node.pairs(blob)[0]
    body = bytearray(node.sliver(blob, pair, SliverKind.PRIMARY).to_bytes())
    body[HEADER_SIZE + 1000] ^= 0x01
    response = node.put(sliver_path(blob, pair, SliverKind.PRIMARY), bytes(body))
    assert response.status_code == 422 and response.json()["error"] == "verification_failed"
    assert node.http.get(sliver_path(blob, pair, SliverKind.PRIMARY)).status_code == 404
    assert 'walrusfs_node_verification_failures_total{object="sliver"} 1' in node.http.get("/metrics").text


def test_sliver_of_another_pair_or_kind_is_refused(node: Node, blob: EncodedBlob) -> None:
    node.store(blob, pairs=[])
    first, second = node.pairs(blob)[:2]
    wrong_pair = node.put(sliver_path(blob, first, SliverKind.PRIMARY),
                          node.sliver(blob, second, SliverKind.PRIMARY).to_bytes())
    assert wrong_pair.status_code == 422 and wrong_pair.json()["error"] == "wrong_sliver"
    secondary = node.sliver(blob, first, SliverKind.SECONDARY).to_bytes()
    wrong_kind = node.put(sliver_path(blob, first, SliverKind.PRIMARY), secondary)
    assert wrong_kind.status_code in (400, 413, 422)


def test_sliver_for_a_shard_the_node_does_not_hold_is_refused(node: Node, blob: EncodedBlob) -> None:
    node.store(blob, pairs=[])
    pair = node.foreign_pair(blob)
    response = node.put(sliver_path(blob, pair, SliverKind.PRIMARY),
                        node.sliver(blob, pair, SliverKind.PRIMARY).to_bytes())
    assert response.status_code == 421
    assert response.json()["node"] == "node-1"


def test_sliver_of_another_blob_is_refused(node: Node, blob: EncodedBlob) -> None:
    node.store(blob, pairs=[])
    other = other_blob(200_000)  # same size, so same geometry, different content
    pair = node.pairs(blob)[0]
    response = node.put(sliver_path(blob, pair, SliverKind.PRIMARY),
                        node.sliver(other, pair, SliverKind.PRIMARY).to_bytes())
    assert response.status_code == 422


def test_sliver_before_metadata_is_refused_with_409(node: Node, blob: EncodedBlob) -> None:
    pair = node.pairs(blob)[0]
    response = node.put(sliver_path(blob, pair, SliverKind.PRIMARY),
                        node.sliver(blob, pair, SliverKind.PRIMARY).to_bytes())
    assert response.status_code == 409 and response.json()["error"] == "metadata_missing"


def test_metadata_of_another_blob_or_garbage_is_refused(node: Node, blob: EncodedBlob) -> None:
    other = other_blob()
    mismatched = node.put(f"/v1/blobs/{blob.blob_id}/metadata", other.metadata.to_bytes())
    assert mismatched.status_code == 422
    garbage = node.put(f"/v1/blobs/{blob.blob_id}/metadata", b"\0" * len(blob.metadata.to_bytes()))
    assert garbage.status_code == 400
    assert node.http.get(f"/v1/blobs/{blob.blob_id}/metadata").status_code == 404


# --- authorisation ------------------------------------------------------------------------------------


def test_writes_without_a_valid_writer_signature_are_refused(node: Node, blob: EncodedBlob) -> None:
    path = f"/v1/blobs/{blob.blob_id}/metadata"
    body = blob.metadata.to_bytes()
    assert node.http.put(path, content=body).status_code == 401
    assert node.put(path, body, key=generate_key()).status_code == 403  # a key, but not a writer's
    assert node.put(path, body, now=time.time() - 400).status_code == 401  # stale
    assert node.put(path, body, now=time.time() + 400).status_code == 401  # from the future
    signed_for_other_path = node.auth("PUT", f"/v1/blobs/{other_blob().blob_id}/metadata")
    assert node.http.put(path, content=body, headers=signed_for_other_path).status_code == 401
    assert node.http.get(path).status_code == 404  # nothing was stored


def test_a_signed_request_cannot_be_replayed(node: Node, blob: EncodedBlob) -> None:
    path = f"/v1/blobs/{blob.blob_id}/metadata"
    headers = node.auth("PUT", path, body=blob.metadata.to_bytes())
    assert node.http.put(path, content=blob.metadata.to_bytes(), headers=headers).status_code == 201
    assert node.http.put(path, content=blob.metadata.to_bytes(), headers=headers).status_code == 401


# --- bodies too large, refused before they are read -------------------------------------------------------


def raw_request(node: Node, head: str, body: bytes = b"", timeout: float = 5.0) -> tuple[float, bytes]:
    """Send a request by hand; return (seconds until the first reply bytes, the reply so far)."""
    host, port = node.process.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        start = time.monotonic()
        sock.sendall(head.encode() + b"\r\n" + body)
        reply = sock.recv(65536)
        return time.monotonic() - start, reply


def test_huge_content_length_is_refused_before_the_body_is_read(node: Node, blob: EncodedBlob) -> None:
    node.store(blob, pairs=[])
    pair = node.pairs(blob)[0]
    path = sliver_path(blob, pair, SliverKind.PRIMARY)
    head = (f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {1 << 40}\r\n"
            f"Authorization: {node.auth('PUT', path)['Authorization']}\r\n")
    elapsed, reply = raw_request(node, head, b"only a few bytes")
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert elapsed < 2.0


def test_sliver_larger_than_this_blobs_geometry_is_refused_early(node: Node, blob: EncodedBlob) -> None:
    node.store(blob, pairs=[])
    pair = node.pairs(blob)[0]
    path = sliver_path(blob, pair, SliverKind.PRIMARY)
    size = len(node.sliver(blob, pair, SliverKind.PRIMARY).to_bytes()) + 64
    head = (f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n"
            f"Authorization: {node.auth('PUT', path)['Authorization']}\r\n")
    elapsed, reply = raw_request(node, head, b"x")
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert elapsed < 2.0


def test_chunked_body_beyond_the_limit_is_cut_off(node: Node, blob: EncodedBlob) -> None:
    path = f"/v1/blobs/{blob.blob_id}/metadata"
    chunk = b"z" * 4096

    def chunks():
        for _ in range(1000):
            yield chunk

    response = node.http.put(path, content=chunks(), headers=node.auth("PUT", path))
    assert response.status_code == 413


def test_unauthorised_upload_is_refused_without_reading_the_body(node: Node, blob: EncodedBlob) -> None:
    path = f"/v1/blobs/{blob.blob_id}/metadata"
    elapsed, reply = raw_request(node, f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n", b"x")
    assert reply.startswith(b"HTTP/1.1 401") and elapsed < 2.0


# --- paths ----------------------------------------------------------------------------------------------


def _non_canonical_last(blob_id: str) -> str:
    """The same last character with one of its 2 unused low bits set: decodes to the same 32 bytes,
    but is not the ID's one spelling."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return alphabet[alphabet.index(blob_id[-1]) | 1]


def test_path_tricks_are_refused(node: Node, blob: EncodedBlob) -> None:
    node.store(blob)
    blob_id = str(blob.blob_id)
    for target in [
        f"/v1/blobs/{blob_id}/../../../etc/passwd",
        "/v1/blobs/..%2F..%2Fetc/metadata",
        f"/v1/blobs/{blob_id}%2Fmetadata",
        f"/v1/blobs/{blob_id}/slivers/0%2F..%2F1/primary",
        "/v1/blobs/not-a-blob-id/metadata",
        f"/v1/blobs/{blob_id[:-1]}{_non_canonical_last(blob_id)}/metadata",
        f"/v1/blobs/{blob_id}/slivers/-1/primary",
        f"/v1/blobs/{blob_id}/slivers/7/primary",
        f"/v1/blobs/{blob_id}/slivers/0/tertiary",
        f"/v1/blobs/{blob_id}/slivers/1e0/primary",
        f"/v1/blobs/{blob_id}//metadata",
        f"/v1/blobs/{blob_id}/slivers/0/primary/recovery/99",
    ]:
        _, reply = raw_request(node, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n")
        status = int(reply.split(b" ", 2)[1])
        assert 400 <= status < 500, (target, reply[:300])
        assert b"root:" not in reply


def test_a_bad_inventory_cursor_is_refused(node: Node) -> None:
    assert node.http.get("/v1/inventory", params={"after": "é" * 43}).status_code == 400
    assert node.http.get("/v1/inventory", params={"after": "x"}).status_code == 400
    assert node.http.get("/v1/inventory", params={"limit": "0"}).status_code == 400


def test_unknown_routes_and_methods(node: Node, blob: EncodedBlob) -> None:
    assert node.http.get("/v2/health").status_code == 404
    response = node.http.post(f"/v1/blobs/{blob.blob_id}/metadata")
    assert response.status_code == 405 and "PUT" in response.headers["allow"]
    assert json.loads(node.http.get("/nope").content)["error"] == "no_route"
