"""``walrusfs audit``: storage challenges against real nodes. Honest nodes pass; a node that deleted
slivers it signed for fails, and so does one that answers with symbols that fail their proofs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from blobtools import FAST_FAIL, store
from healing import configure, repair_network, wait_certified_everywhere, wait_whole
from network import LocalNetwork, LyingProxy

from walrusfs.redstuff import encode


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    with repair_network(tmp_path_factory.mktemp("audit")) as net:
        for size in (400_000, 900_000):
            store(net, os.urandom(size))
        wait_certified_everywhere(net, 2)
        yield net


def audit(committee: Path, *extra: str) -> tuple[int, dict]:
    result = subprocess.run([sys.executable, "-m", "walrusfs.cli", "audit", "--committee", str(committee),
                             "--json", "--challenges", "4", *extra], capture_output=True, timeout=120)
    assert b"Traceback" not in result.stderr, result.stderr.decode()
    return result.returncode, json.loads(result.stdout)


def test_every_honest_node_passes(network):
    code, report = audit(network.committee_path)
    assert code == 0 and report["failed"] == []
    assert len(report["blobs"]) == 2
    assert all(v["verdict"] == "pass" and v["passed"] == v["challenges"] == 8 for v in report["nodes"].values())


def signed_everything(network: LocalNetwork) -> str:
    """A node whose confirmation is in every certificate (each holds at least n - f of n)."""
    entries = httpx.get(f"{network.url(0)}/v1/certified").json()["entries"]
    signers = [{c["node_id"] for c in json.loads(e["certificate"])["confirmations"]} for e in entries]
    return sorted(set.intersection(*signers))[0]


def test_a_node_that_deleted_what_it_signed_for_fails(network):
    # The cheat throws its slivers away and does not repair them.
    cheat = signed_everything(network)
    network.stop(cheat)
    configure(network, cheat, enabled=False)
    for path in (network.root / cheat / "data" / "blobs").rglob("p*.*"):
        path.unlink()
    network.start(cheat)
    try:
        code, report = audit(network.committee_path)
        assert code == 1 and report["failed"] == [cheat]
        failures = report["nodes"][cheat]["failures"]
        assert len(failures) == 8 and all("404" in f["reason"] for f in failures)
    finally:
        network.stop(cheat)
        configure(network, cheat)
        network.start(cheat)


def test_a_node_answering_with_forged_symbols_fails(network):
    # Whether or not node-2's confirmation made it into the certificates (a store keeps the first
    # n - f), a forged answer is a lie and fails it.
    with LyingProxy(network.url("node-2"), corrupt=("symbol",)) as proxy:
        committee = network.client_committee({"node-2": proxy.url})
        code, report = audit(committee)
    assert code == 1 and "node-2" in report["failed"], report
    failures = report["nodes"]["node-2"]["failures"]
    assert len(failures) == 8 and all("Merkle proof" in f["reason"] for f in failures)


def test_forging_symbols_of_a_blob_it_did_not_sign_fails_a_node_too(network):
    # node-5 is down while the blob is stored, so its confirmation cannot be in the certificate;
    # it recovers its slivers from its peers once back, then lies about them.
    liar = "node-5"
    network.stop(liar)
    try:
        stored = store(network, os.urandom(300_000), FAST_FAIL)
    finally:
        network.start(liar)
    assert liar not in {c.node_id for c in stored.certificate.confirmations}
    wait_whole(network, liar)
    with LyingProxy(network.url(liar), corrupt=("symbol",)) as proxy:
        committee = network.client_committee({liar: proxy.url})
        code, report = audit(committee, f"--blob={stored.blob_id}")
    assert code == 1 and report["failed"] == [liar], report
    assert len(report["nodes"][liar]["failures"]) == 4 and not report["nodes"][liar]["unsigned_failures"]


def test_audit_of_a_named_blob_prints_a_readable_report(network, tmp_path):
    data = os.urandom(100_000)
    store(network, data)
    blob_id = str(encode(data, network.committee.n_shards).blob_id)
    result = subprocess.run([sys.executable, "-m", "walrusfs.cli", "audit", "--committee",
                             str(network.committee_path), f"--blob={blob_id}"], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert b"audited 1 certified blobs" in result.stdout and result.stdout.count(b": pass") == 7
