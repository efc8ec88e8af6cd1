"""The client under failure: nodes down, nodes that lie, nodes that never answer (real processes).

n=7 shards on 7 nodes, so f=2: a certificate needs 5 shards, a read 3 primary (or 5 secondary)
slivers. Tests that stop nodes start them again before they end, so the module shares one network.
"""

from __future__ import annotations

import socket
import time

import pytest
import trio
from blobtools import FAST_FAIL, blob_client, pair_holder, random_bytes, run, store, systematic_holders
from network import BlackHole, LyingProxy, down

from walrusfs.client import ClientSettings, ReadError, ReadReport, StoreError
from walrusfs.committee import Committee
from walrusfs.protocol import verify_certificate


def dead_url() -> str:
    """A URL on which nothing listens (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def read(network, blob_id, committee: Committee | None = None, settings: ClientSettings | None = None,
         offset: int = 0, length: int | None = None) -> tuple[bytes, ReadReport]:
    report = ReadReport()

    async def go() -> bytes:
        async with blob_client(network, committee, settings, writer=False) as client:
            return await client.read(blob_id, offset, length, report)

    return run(go), report


# --- stores -----------------------------------------------------------------------------------------


def test_store_with_two_nodes_down_is_certified_by_the_other_five(shared_network):
    net = shared_network
    stopped = ["node-2", "node-5"]
    data = random_bytes(300_000)
    with down(net, *stopped):
        stored = store(net, data, settings=FAST_FAIL)
        signers = {c.node_id for c in stored.certificate.confirmations}
        assert signers.isdisjoint(stopped)
        covered = verify_certificate(net.committee, stored.blob_id, stored.certificate.confirmations)
        assert len(covered) == 5
        stored.certificate.verify(net.committee)
        back, _ = read(net, stored.blob_id)
        assert back == data


def test_store_with_three_nodes_down_fails_naming_them(shared_network):
    net = shared_network
    stopped = ["node-0", "node-3", "node-6"]
    returned = []
    with down(net, *stopped):
        start = time.monotonic()

        async def go() -> None:
            async with blob_client(net, settings=FAST_FAIL) as client:
                returned.append(await client.store(random_bytes(100_000)))

        with pytest.raises(StoreError) as caught:  # StoreError itself, not wrapped in a group
            run(go)
        elapsed = time.monotonic() - start
    assert returned == []  # no blob ID, no certificate
    error = caught.value
    assert set(stopped) <= set(error.failures), error.failures
    message = str(error)
    assert "NOT stored" in message
    for node in stopped:
        assert node in message
    # The deadline is honoured, and leaving the client does not wait out the background deadline
    # for nodes that are down.
    assert elapsed < FAST_FAIL.store_deadline + FAST_FAIL.background_deadline + 3, elapsed


def test_confirmation_with_bad_signature_is_not_counted(shared_network):
    net = shared_network
    with LyingProxy(net.url("node-1"), ("confirmation",)) as liar:
        committee = Committee.load(net.client_committee({"node-1": liar.url}))

        async def go():
            async with blob_client(net, committee) as client:
                stored = await client.store(random_bytes(50_000))
            return stored, client.health["node-1"].lies  # after every node was served

        stored, lies = run(go)
        assert "node-1" not in {c.node_id for c in stored.certificate.confirmations}
        assert lies >= 1
        stored.certificate.verify(net.committee)

        # With two nodes unreachable as well, the liar's confirmation would have been the 5th: no
        # certificate, and the error says why node-1 failed.
        committee = Committee.load(net.client_committee(
            {"node-1": liar.url, "node-4": dead_url(), "node-5": dead_url()}))

        async def fail() -> None:
            async with blob_client(net, committee, FAST_FAIL) as client:
                await client.store(random_bytes(50_000))

        with pytest.raises(StoreError) as caught:
            run(fail)
        assert "node-1" in caught.value.failures
        assert "does not verify" in caught.value.failures["node-1"]


def test_node_refusing_slivers_does_not_break_the_store(shared_network):
    """node-1 receives corrupted sliver uploads and refuses them (422): it is a failed node, the
    store is certified by the others, and nothing escapes the client."""
    net = shared_network
    data = random_bytes(80_000)
    with LyingProxy(net.url("node-1"), ("upload",)) as proxy:
        committee = Committee.load(net.client_committee({"node-1": proxy.url}))

        async def go():
            async with blob_client(net, committee, FAST_FAIL) as client:
                return await client.store(data)

        stored = run(go)
    assert "node-1" not in {c.node_id for c in stored.certificate.confirmations}
    stored.certificate.verify(net.committee)
    assert read(net, stored.blob_id)[0] == data


def test_a_node_that_never_answers_does_not_hold_up_a_store(shared_network):
    """node-0 accepts connections and never answers. The store is certified by the others without
    waiting for it; node-0's slivers are kept for it from the background budget; leaving the client
    gives up on it after the exit grace and every byte held is released."""
    net = shared_network
    data = random_bytes(3 * 2**20)
    settings = ClientSettings(store_deadline=20.0, exit_grace=1.0)  # read timeout: 30 s
    with BlackHole() as hole:
        committee = Committee.load(net.client_committee({"node-0": hole.url}))

        async def go():
            client = blob_client(net, committee, settings)
            async with client:
                start = trio.current_time()
                stored = await client.store(data)
                certified = trio.current_time()
                held = client._background.used
            left = trio.current_time()
            return stored, certified - start, left - certified, held, client._budget.used + client._background.used

        stored, store_seconds, exit_seconds, held_for_node_0, held_after = run(go)
    assert store_seconds < 5, store_seconds  # waiting for node-0 would take the 20 s store deadline
    assert "node-0" not in {c.node_id for c in stored.certificate.confirmations}
    stored.certificate.verify(net.committee)
    assert held_for_node_0 > 0  # the blob stayed in memory for node-0 after the store returned
    assert settings.exit_grace <= exit_seconds < settings.exit_grace + 2
    assert held_after == 0
    assert read(net, stored.blob_id)[0] == data


# --- reads ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored_blob(shared_network):
    data = random_bytes(2 * 2**20 + 333)
    return store(shared_network, data), data


def test_read_with_four_down_from_the_three_systematic_holders(shared_network, stored_blob):
    net = shared_network
    stored, data = stored_blob
    keep = systematic_holders(net.committee, stored.blob_id)
    with down(net, *[n for n in net.node_ids if n not in keep]):
        back, report = read(net, stored.blob_id)
    assert back == data
    assert report.path == "systematic"


def test_read_with_four_down_from_any_three_primaries(shared_network, stored_blob):
    net = shared_network
    stored, data = stored_blob
    systematic = systematic_holders(net.committee, stored.blob_id)
    parity = [n for n in net.node_ids if n not in systematic]
    keep = [systematic[2], *parity[:2]]  # one systematic row, two parity rows
    with down(net, *[n for n in net.node_ids if n not in keep]):
        back, report = read(net, stored.blob_id)
    assert back == data
    assert report.path == "primary decode"


def test_read_with_five_down_fails_naming_nodes(shared_network, stored_blob):
    net = shared_network
    stored, _ = stored_blob
    stopped = net.node_ids[:5]
    with down(net, *stopped):
        start = time.monotonic()
        with pytest.raises(ReadError) as caught:
            read(net, stored.blob_id)
        elapsed = time.monotonic() - start
    message = str(caught.value)
    assert "only 2 of 3 primary" in message, message
    for node in stopped:
        assert node in message
    assert elapsed < 10


def test_two_lying_nodes_are_outvoted_and_named(shared_network, stored_blob):
    net = shared_network
    stored, data = stored_blob
    liars = systematic_holders(net.committee, stored.blob_id)[:2]
    with LyingProxy(net.url(liars[0])) as first, LyingProxy(net.url(liars[1])) as second:
        committee = Committee.load(net.client_committee({liars[0]: first.url, liars[1]: second.url}))

        async def go():
            report = ReadReport()
            async with blob_client(net, committee, writer=False) as client:
                back = await client.read(stored.blob_id, report=report)
                return back, report, {n: client.health[n].lies for n in net.node_ids}

        back, report, lies = run(go)
    assert back == data
    assert set(report.liars) == set(liars)
    assert report.path == "primary decode"
    assert {n for n, count in lies.items() if count} == set(liars)


def test_lying_metadata_is_skipped(shared_network, stored_blob):
    """A fresh client asks node-0 first for metadata (ties sort by id); node-0 lies about it."""
    net = shared_network
    stored, data = stored_blob
    with LyingProxy(net.url("node-0"), ("metadata",)) as liar:
        committee = Committee.load(net.client_committee({"node-0": liar.url}))
        back, report = read(net, stored.blob_id, committee)
    assert back == data
    assert "node-0" in report.liars


def test_range_read_from_a_lying_row_holder_falls_back(shared_network, stored_blob):
    net = shared_network
    stored, data = stored_blob
    row0 = pair_holder(net.committee, stored.blob_id, 0)
    with LyingProxy(net.url(row0)) as liar:
        committee = Committee.load(net.client_committee({row0: liar.url}))
        back, report = read(net, stored.blob_id, committee, offset=10, length=100)
    assert back == data[10:110]
    assert row0 in report.liars


def test_black_hole_costs_at_most_about_one_hedge_delay(shared_network):
    """The node asked first for metadata (node-0, for a fresh client) and holding a systematic row
    never answers: the read overtakes it after the hedge delay."""
    net = shared_network
    for _ in range(30):
        data = random_bytes(2**20)
        stored = store(net, data)
        if "node-0" in systematic_holders(net.committee, stored.blob_id):
            break
    else:
        pytest.fail("no blob with a systematic row on node-0 in 30 tries")
    settings = ClientSettings(hedge_after=0.3)

    def timed(committee: Committee) -> tuple[float, ReadReport]:
        samples = []
        for _ in range(5):
            start = time.monotonic()
            back, report = read(net, stored.blob_id, committee, settings)
            samples.append(time.monotonic() - start)
            assert back == data
        return min(samples), report  # the least disturbed run: the machine is shared

    with BlackHole() as hole:
        holed = Committee.load(net.client_committee({"node-0": hole.url}))
        baseline, _ = timed(net.committee)
        with_hole, report = timed(holed)
    delay = with_hole - baseline
    # Without the hedge the read would wait for the read timeout (30 s).
    assert delay < settings.hedge_after + 0.5, (baseline, with_hole)
    assert "node-0" in report.failures and "hedge" in report.failures["node-0"], report.failures


def test_reads_prefer_healthy_nodes_after_a_failure(shared_network, stored_blob):
    """After a node failed, the same client's next reads do not ask it (neither its metadata nor its
    systematic row) while its penalty lasts."""
    net = shared_network
    stored, data = stored_blob
    row0 = pair_holder(net.committee, stored.blob_id, 0)
    committee = Committee.load(net.client_committee({row0: dead_url(), }))

    async def go():
        async with blob_client(net, committee, writer=False) as client:
            first = ReadReport()
            assert await client.read(stored.blob_id, report=first) == data
            assert row0 in first.failures
            later = []
            for _ in range(3):
                report = ReadReport()
                assert await client.read(stored.blob_id, report=report) == data
                later.append(report)
            return later, client.health.snapshot()

    later, health = run(go)
    for report in later:
        assert row0 not in report.failures, report
    assert health[row0]["failures"] == 1


def test_reads_use_a_node_again_once_it_is_back(shared_network, stored_blob):
    net = shared_network
    stored, data = stored_blob
    row0 = pair_holder(net.committee, stored.blob_id, 0)

    async def go():
        async with blob_client(net, writer=False) as client:
            with down(net, row0):
                report = ReadReport()
                assert await client.read(stored.blob_id, report=report) == data
            health = client.health[row0]
            assert health.failures >= 1
            before = health.successes
            health._updated -= 600  # pretend the penalty has decayed (half-life 30 s)
            report = ReadReport()
            assert await client.read(stored.blob_id, report=report) == data
            return report, health.successes - before

    report, new_successes = run(go)
    assert report.path == "systematic"
    assert new_successes >= 1
