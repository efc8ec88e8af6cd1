"""Store then read back against a real 7-node network (n=7, f=2: quorum 5 shards, n_p=3, n_s=5)."""

from __future__ import annotations

import pytest
from blobtools import blob_client, random_bytes, run, systematic_holders

from walrusfs.client import BlobClient, ClientSettings, ReadReport, StoredBlob
from walrusfs.client.budget import ByteBudget
from walrusfs.protocol import verify_certificate


@pytest.mark.parametrize("size", [0, 1, 3 * 1024 + 17, 3 * 2**20 + 5])
def test_store_then_read_back_identical(shared_network, size):
    data = random_bytes(size)

    async def go() -> tuple[StoredBlob, bytes, ReadReport]:
        async with blob_client(shared_network) as client:
            stored = await client.store(data)
        report = ReadReport()
        async with blob_client(shared_network, writer=False) as reader:  # a fresh client: no cache
            back = await reader.read(stored.blob_id, report=report)
        return stored, back, report

    stored, back, report = run(go)
    assert back == data
    assert not report.liars and not report.failures
    if size:
        assert report.path == "systematic"  # all nodes up: the blob's own rows, no decode
    committee = shared_network.committee
    stored.certificate.verify(committee)
    covered = verify_certificate(committee, stored.blob_id, stored.certificate.confirmations)
    assert len(covered) >= committee.geometry.quorum == 5
    assert stored.certificate.epoch == committee.epoch
    assert all(c.blob_id == stored.blob_id for c in stored.certificate.confirmations)


def test_same_blob_twice_same_id(shared_network):
    data = random_bytes(10_000)

    async def go():
        async with blob_client(shared_network) as client:
            return await client.store(data), await client.store(data)

    first, second = run(go)
    assert first.blob_id == second.blob_id
    second.certificate.verify(shared_network.committee)


def test_all_nodes_confirm_eventually(shared_network):
    """store() may return at the quorum, but leaving the client serves every node: all 7 confirm."""
    data = random_bytes(200_000)

    async def go():
        async with blob_client(shared_network) as client:
            stored = await client.store(data)
        async with blob_client(shared_network, writer=False) as client:
            return stored, await client.status(stored.blob_id)

    _stored, statuses = run(go)
    assert {node: s.get("complete") for node, s in statuses.items()} == dict.fromkeys(shared_network.node_ids, True)


def test_concurrent_stores_stay_within_memory_budget(shared_network):
    """Eight concurrent 1 MiB stores through a 6 MiB budget (each store takes ~4.5 MiB): all succeed,
    the budget is never exceeded, and everything is released at the end."""
    blobs = [random_bytes(2**20 + i) for i in range(8)]
    settings = ClientSettings(memory_budget=6 * 2**20)
    peak = 0

    async def go():
        nonlocal peak
        import trio

        results: dict[int, StoredBlob] = {}
        async with blob_client(shared_network, settings=settings) as client:
            budget: ByteBudget = client._budget
            done = trio.Event()

            async def watch() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, budget.used)
                    await trio.sleep(0.002)

            async def one(i: int) -> None:
                results[i] = await client.store(blobs[i])

            async with trio.open_nursery() as watcher:
                watcher.start_soon(watch)
                async with trio.open_nursery() as nursery:
                    for i in range(len(blobs)):
                        nursery.start_soon(one, i)
                done.set()
        assert budget.used == 0
        async with blob_client(shared_network, writer=False) as reader:
            for i, stored in results.items():
                assert await reader.read(stored.blob_id) == blobs[i]
        return results

    results = run(go)
    assert len(results) == 8
    assert 0 < peak <= settings.memory_budget


def test_systematic_holders_are_distinct(shared_network):
    """Sanity of the geometry the other tests rely on: pairs 0..2 live on three different nodes."""
    stored = run(lambda: _store(shared_network, random_bytes(1000)))
    assert len(set(systematic_holders(shared_network.committee, stored.blob_id))) == 3


async def _store(network, data: bytes) -> StoredBlob:
    client: BlobClient
    async with blob_client(network) as client:
        return await client.store(data)


def test_a_store_checks_each_confirmation_signature_a_bounded_number_of_times(shared_network, monkeypatch):
    """Checking every confirmation again at each arrival cost ~n^2 signature checks per store (63
    for n=7): milliseconds of every small fsync. Each is checked as it arrives and once more for
    the shards it covers; the certificate's own check at the end adds at most n."""
    from walrusfs.protocol import Confirmation

    checks = 0
    real = Confirmation.verify

    def counted(self, public_key):
        nonlocal checks
        checks += 1
        return real(self, public_key)

    monkeypatch.setattr(Confirmation, "verify", counted)

    async def go():
        async with blob_client(shared_network) as client:
            return await client.store(random_bytes(4096))

    run(go)  # leaving the client waits until every node has confirmed
    n = len(shared_network.node_ids)
    assert n <= checks <= 3 * n
