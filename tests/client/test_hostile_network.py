"""The client on a hostile network (real node processes, n=7, f=2): what a node answered reaches the
user; nodes caught lying are not asked again while they are avoided; nodes that are down do not
hold up a store's return. Tests that stop nodes start them again before they end.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from blobtools import FAST_FAIL, blob_client, random_bytes, run, store, systematic_holders
from network import LyingProxy, down

from walrusfs.client import ReadError, ReadReport, StoreError
from walrusfs.committee import Committee
from walrusfs.fs.status import format_status, node_state


def walrusfs(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "walrusfs.cli", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def blob_put(network, source: Path, certificates: Path, *extra: str) -> subprocess.CompletedProcess:
    return walrusfs("blob", "put", str(source), "--committee", str(network.committee_path),
                    "--writer-key", str(network.writer_key_path), "--certificate-dir", str(certificates), *extra)


# --- what the node said -----------------------------------------------------------------------------


def test_what_a_node_with_a_wrong_clock_answered_reaches_blob_put_and_the_mount_status(shared_network, tmp_path):
    net = shared_network
    source = tmp_path / "in.bin"
    source.write_bytes(random_bytes(200_000))
    net.stop("node-3")
    net.start("node-3", clock_offset=600)
    try:
        with down(net, "node-1", "node-2"):  # with node-3 refusing, no certificate can be had
            put = blob_put(net, source, tmp_path / "certs", "--timeout", "5")

            async def go() -> None:
                async with blob_client(net, settings=FAST_FAIL) as client:
                    await client.store(random_bytes(100_000))

            with pytest.raises(StoreError) as caught:
                run(go)
    finally:
        net.stop("node-3")
        net.start("node-3")
    # Request timestamps are whole seconds, so a node 600 s ahead sees 600 s plus the part of a second
    # the signer's clock was into, plus the time in transit: 600 or, now and then, 601.
    said = re.compile(r"Authorization timestamp is 60[01] s away from the node's clock "
                      r"\(limit 300 s\): check the clocks")
    assert put.returncode == 2, put.stderr
    assert re.search(r"node-3: HTTP 401: unauthorized: " + said.pattern, put.stderr), put.stderr
    assert "node-1: ConnectError" in put.stderr and "node-2: ConnectError" in put.stderr

    # The mount keeps the store's error as its last error and shows it in `walrusfs status`.
    status = {"mountpoint": "/mnt/x", "state": "mounted", "staged_bytes": 100_000, "upload_failures": 1,
              "last_error": str(caught.value), "last_error_at": time.time()}
    shown = format_status(status)
    assert "UPLOADS FAILING" in shown and said.search(" ".join(shown.split()))


# --- liars ------------------------------------------------------------------------------------------


def test_nodes_caught_lying_are_not_asked_again_while_avoided(shared_network):
    net = shared_network
    data = random_bytes(2 * 2**20)
    stored = store(net, data)
    liars = systematic_holders(net.committee, stored.blob_id)[:2]  # asked first by a fresh client
    others = [node for node in net.node_ids if node not in liars]
    with LyingProxy(net.url(liars[0])) as first, LyingProxy(net.url(liars[1])) as second:
        proxies = (first, second)
        committee = Committee.load(net.client_committee({liars[0]: first.url, liars[1]: second.url}))

        def requests() -> list[int]:  # slivers, metadata, anything: a liar may be caught on either
            return [sum(proxy.requests().values()) for proxy in proxies]

        async def go() -> tuple[list[int], list[int], list[int], list[str]]:
            async with blob_client(net, committee, writer=False) as client:
                report = ReadReport()
                assert await client.read(stored.blob_id, report=report) == data
                assert set(report.liars) == set(liars)
                caught = requests()
                reports = []
                for _ in range(3):  # the other five suffice: the liars are not asked
                    reports.append(ReadReport())
                    assert await client.read(stored.blob_id, report=reports[-1]) == data
                while_up = requests()
                errors = []
                with down(net, *others[:3]):  # three down, two lying: no read can succeed
                    for _ in range(3):
                        with pytest.raises(ReadError) as failed:
                            await client.read(stored.blob_id)
                        errors.append(str(failed.value))
                    while_down = requests()
                return caught, while_up, while_down, errors, reports, client.health.snapshot()

        caught, while_up, while_down, errors, reports, health = run(go)
    assert all(count >= 1 for count in caught)
    assert while_up == caught and while_down == caught, (caught, while_up, while_down)
    assert all(set(report.avoided) == set(liars) for report in reports)
    assert all("served bad data recently" in error for error in errors)
    # The mount's status shows them as avoided (its node table is the client's health).
    assert all("avoided" in node_state(health[liar]) for liar in liars)


# --- nodes that are down ----------------------------------------------------------------------------


def test_a_store_with_two_nodes_down_returns_about_as_fast_as_with_all_up(shared_network, tmp_path):
    """The certificate needs five nodes; the two that are down are left to repair at once, not
    waited for during the client's exit grace (10 s)."""
    net = shared_network

    def timed_put(name: str) -> float:
        source = tmp_path / name
        source.write_bytes(random_bytes(8 * 2**20))
        start = time.monotonic()
        put = blob_put(net, source, tmp_path / "certs")
        assert put.returncode == 0, put.stderr
        return time.monotonic() - start

    all_up = min(timed_put("a"), timed_put("b"))
    with down(net, "node-2", "node-5"):
        # Best of two on each side: a loaded machine adds seconds to one run, never 10 s to both.
        two_down = min(timed_put("c"), timed_put("d"))
    assert two_down < all_up + 5, (all_up, two_down)


def test_leaving_the_client_waits_only_for_nodes_that_are_there(shared_network):
    """In process: with two nodes down, leaving the client right after a store does not take the
    exit grace; the five live nodes all confirmed."""
    net = shared_network

    async def go() -> tuple[float, set[str]]:
        async with blob_client(net) as client:
            stored = await client.store(random_bytes(2 * 2**20))
            left = trio.current_time()
        return trio.current_time() - left, {c.node_id for c in stored.certificate.confirmations}

    with down(net, "node-0", "node-6"):
        exit_seconds, signers = run(go)
    assert exit_seconds < 3, exit_seconds  # the exit grace is 10 s
    assert signers == set(net.node_ids) - {"node-0", "node-6"}
