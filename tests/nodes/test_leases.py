"""Writer leases on a node (docs/writer-lease.md): one holder at a time, takeovers that fence the old
holder out of publishing root records, leases that survive a crash of the node.

The HTTP tests run a real node process; the expiry rules run the lease store in-process on mock
clocks, so that no test waits for a term to pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from node_harness import Node

from nodes.leases import LeaseRefused, LeaseStore
from walrusfs.keys import generate_key
from walrusfs.lease import LeaseRecord, LeaseRecordError
from walrusfs.redstuff import BlobId
from walrusfs.roots import RootRecord, fs_id_of_key

A, B, C = "a" * 32, "b" * 32, "c" * 32
MINUTE = 60_000


class Requests:
    """Signed lease requests of one filesystem, each with a renewal counter above the last."""

    def __init__(self) -> None:
        self.key = generate_key()
        self.fs_id = fs_id_of_key(self.key)
        self.renewal = 0

    def lease(self, holder: str, generation: int, term_ms: int = MINUTE, takeover: bool = False) -> LeaseRecord:
        self.renewal += 1
        return LeaseRecord.create(self.key, holder, generation, self.renewal, term_ms, takeover=takeover,
                                  label=f"machine-{holder[0]}:/state")

    def root(self, seq: int, fence: tuple[str, int] | None) -> RootRecord:
        return RootRecord.create(self.key, seq, BlobId(bytes([seq]) * 32), seq, fence)


def put_lease(node: Node, record: LeaseRecord | bytes, fs_id: str) -> httpx.Response:
    body = record if isinstance(record, bytes) else record.to_json()
    return node.put(f"/v1/leases/{fs_id}", body)


def put_root(node: Node, record: RootRecord) -> httpx.Response:
    return node.put(f"/v1/roots/{record.fs_id}", record.to_json())


def holder_of(response: httpx.Response) -> str:
    return response.json()["current"]["lease"]["holder"]


def test_a_node_grants_one_holder_at_a_time_and_a_takeover_needs_a_higher_generation(node: Node) -> None:
    fs = Requests()
    path = f"/v1/leases/{fs.fs_id}"
    assert node.http.get(path).status_code == 404
    assert node.http.put(path, content=fs.lease(A, 1).to_json()).status_code == 401  # unsigned

    first = put_lease(node, fs.lease(A, 1), fs.fs_id)
    assert first.status_code == 200 and first.json()["held"] and first.json()["lease"]["holder"] == A

    second = put_lease(node, fs.lease(B, 2), fs.fs_id)
    assert second.status_code == 409 and second.json()["error"] == "lease_held"
    assert holder_of(second) == A and "machine-a:/state" in second.json()["message"]

    renewal = fs.lease(A, 1)
    assert put_lease(node, renewal, fs.fs_id).status_code == 200
    replay = put_lease(node, renewal, fs.fs_id)  # a captured request cannot keep a lease alive
    assert replay.status_code == 409 and replay.json()["error"] == "stale_renewal"

    too_low = put_lease(node, fs.lease(B, 1, takeover=True), fs.fs_id)
    assert too_low.status_code == 409 and too_low.json()["error"] == "stale_generation"
    takeover = put_lease(node, fs.lease(B, 2, takeover=True), fs.fs_id)
    assert takeover.status_code == 200 and takeover.json()["lease"]["holder"] == B

    deposed = put_lease(node, fs.lease(A, 1), fs.fs_id)  # the old holder's next renewal
    assert deposed.status_code == 409 and holder_of(deposed) == B
    assert json.loads(node.http.get(path).content)["lease"]["generation"] == 2

    released = put_lease(node, fs.lease(B, 2, term_ms=0), fs.fs_id)
    assert released.status_code == 200 and not released.json()["held"]
    assert put_lease(node, fs.lease(C, 3), fs.fs_id).status_code == 200  # no takeover needed after a release

    stranger = Requests()  # a lease signed by another filesystem's key
    assert put_lease(node, stranger.lease(A, 1), fs.fs_id).status_code == 422
    assert put_lease(node, b'{"version": 1}', fs.fs_id).status_code == 422


def test_root_records_are_accepted_only_from_the_current_lease_holder(node: Node) -> None:
    fs = Requests()
    assert put_root(node, fs.root(1, None)).status_code == 201  # version 1, no lease yet: as before leases

    assert put_lease(node, fs.lease(A, 1), fs.fs_id).status_code == 200
    old_client = put_root(node, fs.root(2, None))
    assert old_client.status_code == 409 and old_client.json()["error"] == "fenced"
    assert put_root(node, fs.root(2, (A, 1))).status_code == 201
    refused = put_root(node, fs.root(3, (B, 2)))  # a writer that was refused the lease
    assert refused.status_code == 409 and refused.json()["error"] == "fenced"

    assert put_lease(node, fs.lease(B, 2, takeover=True), fs.fs_id).status_code == 200
    stale = put_root(node, fs.root(9, (A, 1)))  # the deposed writer, however high its number
    assert stale.status_code == 409 and stale.json()["error"] == "fenced"
    assert put_root(node, fs.root(1, (B, 2))).status_code == 201  # a later generation wins over any seq
    stored = RootRecord.from_json(node.http.get(f"/v1/roots/{fs.fs_id}").content)
    assert (stored.holder, stored.generation, stored.seq) == (B, 2, 1)


def test_a_granted_lease_survives_a_crash_of_the_node(node: Node) -> None:
    fs = Requests()
    assert put_lease(node, fs.lease(A, 1, term_ms=600_000), fs.fs_id).status_code == 200
    node.process.kill9()
    node.process.start()
    refused = put_lease(node, fs.lease(B, 2), fs.fs_id)
    assert refused.status_code == 409 and refused.json()["error"] == "lease_held" and holder_of(refused) == A
    assert put_root(node, fs.root(1, (B, 2))).status_code == 409


class Clocks:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = 1_700_000_000 * 10**9

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += int(seconds * 1e9)


def store(tmp_path: Path, clocks: Clocks) -> LeaseStore:
    leases = LeaseStore(tmp_path, lambda: clocks.mono, lambda: clocks.wall)
    leases.open()
    return leases


def test_a_lease_expires_after_its_term_on_the_nodes_clock(tmp_path: Path) -> None:
    fs, clocks = Requests(), Clocks()
    leases = store(tmp_path, clocks)
    leases.request(fs.lease(A, 1, term_ms=2_000))
    clocks.advance(1.9)
    with pytest.raises(LeaseRefused) as refused:
        leases.request(fs.lease(B, 2))
    assert refused.value.code == "lease_held"
    clocks.advance(0.2)
    assert leases.request(fs.lease(B, 2)).record.holder == B  # expired: no takeover needed


def test_a_restarted_node_keeps_at_least_the_rest_of_the_term_and_at_most_one_term(tmp_path: Path) -> None:
    fs, clocks = Requests(), Clocks()
    leases = store(tmp_path, clocks)
    leases.request(fs.lease(A, 1, term_ms=10_000))
    for _ in range(6):  # renewals every 4 s: not every one is written, yet the disk always covers them
        clocks.advance(4)
        leases.request(fs.lease(A, 1, term_ms=10_000))
        after_restart = store(tmp_path, clocks).get(fs.fs_id)
        assert after_restart.expires_in_ms >= leases.get(fs.fs_id).expires_in_ms == 10_000
        assert after_restart.expires_in_ms <= 10_000

    clocks.wall -= 3600 * 10**9  # the clock was set back an hour: the lease is not stretched
    assert store(tmp_path, clocks).get(fs.fs_id).expires_in_ms == 10_000
    clocks.wall += 3600 * 10**9 + 21 * 10**9  # down for longer than the horizon written
    assert not store(tmp_path, clocks).get(fs.fs_id).held

    leases.request(fs.lease(A, 1, term_ms=0))  # a release is written at once
    assert not store(tmp_path, clocks).get(fs.fs_id).held


def test_a_damaged_lease_file_is_set_aside_and_a_damaged_expiry_counts_a_whole_term(tmp_path: Path) -> None:
    fs, clocks = Requests(), Clocks()
    store(tmp_path, clocks).request(fs.lease(A, 1, term_ms=10_000))
    path = tmp_path / "leases" / f"{fs.fs_id}.json"
    data = json.loads(path.read_text())
    data["expires_wall_ns"] -= 10**12  # rot in the expiry: the signed record still verifies
    path.write_text(json.dumps(data))
    clocks.advance(9)
    assert store(tmp_path, clocks).get(fs.fs_id).expires_in_ms == 10_000

    data["lease"]["holder"] = B  # rot in the record: its signature fails
    path.write_text(json.dumps(data))
    assert store(tmp_path, clocks).get(fs.fs_id) is None
    assert path.with_name(path.name + ".damaged").exists()


def test_lease_records_are_checked_before_they_are_signed_or_stored() -> None:
    fs = Requests()
    for bad in (dict(holder="nothex" * 5), dict(generation=0), dict(term_ms=10)):
        arguments = dict(holder=A, generation=1, renewal=1, term_ms=MINUTE) | bad
        with pytest.raises(LeaseRecordError):
            LeaseRecord.create(fs.key, **arguments)  # type: ignore[arg-type]
    record = fs.lease(A, 1)
    assert LeaseRecord.from_json(record.to_json()) == record
    forged = json.loads(record.to_json())
    forged["generation"] = 7
    with pytest.raises(LeaseRecordError, match="bad signature"):
        LeaseRecord.from_dict(forged).verify(fs.fs_id)


def test_version_1_root_records_stay_readable_and_rank_below_any_leased_one() -> None:
    fs = Requests()
    old = fs.root(50, None)
    as_written_before = json.dumps({  # the exact form walrusfs wrote before leases
        "version": 1, "fs_id": old.fs_id, "seq": 50, "public_key": old.to_dict()["public_key"],
        "snapshot": str(old.snapshot), "created_ns": old.created_ns, "signature": old.to_dict()["signature"]})
    parsed = RootRecord.from_json(as_written_before)
    parsed.verify(fs.fs_id)
    assert (parsed.version, parsed.generation, parsed.seq) == (1, 0, 50)
    leased = fs.root(1, (A, 1))
    assert RootRecord.from_json(leased.to_json()) == leased
    assert max([parsed, leased], key=lambda r: r.order) == leased
    tampered = json.loads(leased.to_json())
    tampered["generation"] = 5
    with pytest.raises(ValueError, match="bad signature"):
        RootRecord.from_json(json.dumps(tampered)).verify(fs.fs_id)
