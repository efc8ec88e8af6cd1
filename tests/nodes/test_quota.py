"""Quotas (docs/deploy-nodes.md, "Lifecycle and quotas"): a node caps the bytes each writer key has
claimed; a store over the cap is refused 403 ``over_quota`` with used bytes, cap and key, and nothing
already stored changes. /metrics and /v1/health report used and free space.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from node_harness import Node, node_process, other_blob
from test_claims import A, B, claim, claims

from nodes.config import LifecycleConfig, QuotaConfig
from walrusfs.committee import Committee
from walrusfs.errors import UserError
from walrusfs.keys import decode_public_key, generate_key, load_key, public_key_text


def start(cluster_root: Path, quotas: str) -> Node:
    path = cluster_root / "node-0" / "config.toml"
    text = path.read_text().split("\n[quotas]")[0]
    path.write_text(text + "\n[quotas]\n" + quotas)
    process = node_process(cluster_root)
    process.start()
    committee = Committee.load(cluster_root / "committee.toml")
    return Node(process, committee, "node-0", load_key(cluster_root / "writer.key"),
                httpx.Client(base_url=process.url, timeout=10))


def claimed(node: Node, writer: str) -> int:
    found = re.search(rf'walrusfs_node_writer_claimed_bytes{{[^}}]*writer="{re.escape(writer)}"[^}}]*}} (\S+)',
                      node.http.get("/metrics").text)
    return int(float(found.group(1))) if found else 0


def test_a_writer_over_its_quota_is_refused_and_what_it_stored_stays(cluster_root: Path) -> None:
    key = public_key_text(load_key(cluster_root / "writer.key"))
    first, second = other_blob(200_000), other_blob(200_000)
    node = start(cluster_root, f'default = 1\n"{key}" = 100000000\n')  # the key's own cap overrides the default
    try:
        node.store(first)
        assert claim(node, first, A).status_code == 200
        used = claimed(node, key)
        assert used > 200_000 * 4 // 7  # this node's 4 of 7 shards, encoded
    finally:
        node.process.stop()
        node.http.close()

    cap = used + used // 2  # room for half a blob more
    node = start(cluster_root, f'default = 1\n"{key}" = {cap}\n')
    try:
        answer = claim(node, second, A)
        assert answer.status_code == 403, answer.text
        body = answer.json()
        assert body["error"] == "over_quota"
        assert str(used) in body["message"] and str(cap) in body["message"] and key in body["message"]
        assert node.http.get(f"/v1/blobs/{second.blob_id}/metadata").status_code == 404
        # What the writer stored stays whole, and claims on it cost nothing new: they are granted.
        assert claim(node, first, B).status_code == 200
        assert set(claims(node, first)) == {"", A, B}
        for pair in node.pairs(first):
            assert node.http.get(f"/v1/blobs/{first.blob_id}/slivers/{pair}/secondary").status_code == 200
        assert claimed(node, key) == used

        # Releasing frees the writer's quota: the new blob fits once the old one is gone.
        for owner in ("", A, B):
            node.delete(f"/v1/blobs/{first.blob_id}?owner={owner}" if owner else f"/v1/blobs/{first.blob_id}")
        assert claimed(node, key) == 0
        assert claim(node, second, A).status_code == 201
    finally:
        node.process.stop()
        node.http.close()


def test_space_is_reported_in_metrics_and_health(node: Node) -> None:
    node.store(other_blob())
    metrics = node.http.get("/metrics").text
    used = float(re.search(r"^walrusfs_node_used_bytes(?:{[^}]*})? (\S+)$", metrics, re.M).group(1))
    free = float(re.search(r"^walrusfs_node_free_bytes(?:{[^}]*})? (\S+)$", metrics, re.M).group(1))
    health = node.http.get("/v1/health").json()
    assert used == health["bytes"] > 0
    assert free > 0 and health["free_bytes"] > 0
    assert claimed(node, public_key_text(node.writer_key)) > 0


def test_the_lifecycle_and_quota_tables_are_checked_with_messages_that_say_what_to_fix() -> None:
    key = public_key_text(generate_key())
    quotas = QuotaConfig.from_dict({"default": 10, key: 1000})
    assert quotas.cap(decode_public_key(key)) == 1000 and quotas.cap(bytes(32)) == 10
    assert LifecycleConfig.from_dict({"default_term_days": 0.5, "max_term_days": 1}).default_term == 43200.0
    for table, data, message in (
            (QuotaConfig, {"not-a-key": 5}, "neither 'default' nor a base64 writer key"),
            (QuotaConfig, {"default": -1}, "must be a number of bytes"),
            (LifecycleConfig, {"max_term_days": 1, "default_term_days": 2}, "at most max_term_days"),
            (LifecycleConfig, {"sweep_interval": 0}, "must be a positive number"),
            (LifecycleConfig, {"term": 3}, "unknown settings term")):
        with pytest.raises(UserError, match=message):
            table.from_dict(data)
