"""``walrusfs blob put|get|status`` end to end: the real command in a subprocess, a real network."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from walrusfs.client import Certificate
from walrusfs.redstuff import BlobId


def walrusfs(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "walrusfs.cli", *args], capture_output=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_put_get_status(shared_network, tmp_path: Path):
    net = shared_network
    source = tmp_path / "in.bin"
    data = os.urandom(1_234_567)
    source.write_bytes(data)
    certificates = tmp_path / "certs"
    put = walrusfs("blob", "put", str(source), "--committee", str(net.committee_path),
                   "--writer-key", str(net.writer_key_path), "--certificate-dir", str(certificates))
    assert put.returncode == 0, put.stderr.decode()
    blob_id = put.stdout.decode().strip()
    BlobId.parse(blob_id)
    certificate = Certificate.from_json((certificates / f"{blob_id}.json").read_text())
    assert str(certificate.blob_id) == blob_id
    certificate.verify(net.committee)

    out = tmp_path / "out.bin"
    # --blob=ID works for every ID; a bare ID only if it does not start with '-' (1 in 64 do).
    named = blob_id if not blob_id.startswith("-") else f"--blob={blob_id}"
    get = walrusfs("blob", "get", named, "-o", str(out), "--committee", str(net.committee_path))
    assert get.returncode == 0, get.stderr.decode()
    assert out.read_bytes() == data
    assert not (tmp_path / "out.bin.part").exists()

    to_stdout = walrusfs("blob", "get", f"--blob={blob_id}", "--offset", "1000", "--length", "77",
                         "--committee", str(net.committee_path))
    assert to_stdout.returncode == 0, to_stdout.stderr.decode()
    assert to_stdout.stdout == data[1000:1077]

    status = walrusfs("blob", "status", f"--blob={blob_id}", "--json", "--committee", str(net.committee_path))
    assert status.returncode == 0, status.stderr.decode()
    statuses = json.loads(status.stdout)
    assert set(statuses) == set(net.node_ids)
    assert all(s["complete"] for s in statuses.values())
    table = walrusfs("blob", "status", named, "--committee", str(net.committee_path))
    assert table.returncode == 0 and all(node.encode() in table.stdout for node in net.node_ids)


def test_put_without_quorum_fails_clearly(shared_network, tmp_path: Path):
    net = shared_network
    unreachable = ["node-1", "node-3", "node-5"]
    committee = net.client_committee({node: dead_url() for node in unreachable})
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(10_000))
    certificates = tmp_path / "certs"
    start = time.monotonic()
    put = walrusfs("blob", "put", str(source), "--committee", str(committee), "--writer-key",
                   str(net.writer_key_path), "--certificate-dir", str(certificates), "--timeout", "2")
    elapsed = time.monotonic() - start
    stderr = put.stderr.decode()
    assert put.returncode == 2, stderr
    assert put.stdout == b""  # no blob ID
    assert "walrusfs: error:" in stderr and "NOT stored" in stderr
    assert "Traceback" not in stderr
    for node in unreachable:
        assert node in stderr
    assert not certificates.exists() or not list(certificates.iterdir())
    assert elapsed < 20, elapsed


def test_get_errors(shared_network, tmp_path: Path):
    net = shared_network
    bad = walrusfs("blob", "get", "not-a-blob-id", "--committee", str(net.committee_path))
    assert bad.returncode != 0 and b"Traceback" not in bad.stderr and b"blob ID" in bad.stderr
    unknown = str(BlobId(bytes(32)))
    missing = walrusfs("blob", "get", unknown, "--committee", str(net.committee_path))
    assert missing.returncode == 2, missing.stderr.decode()
    assert b"Traceback" not in missing.stderr and b"metadata" in missing.stderr
    no_committee = walrusfs("blob", "get", unknown, "--committee", str(tmp_path / "nope.toml"))
    assert no_committee.returncode == 1 and b"no committee file" in no_committee.stderr
