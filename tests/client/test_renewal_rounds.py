"""The mount's renewal rounds (walrusfs/fs/renewal.py) against real nodes: every referenced blob is
renewed on every node in batches, the next round is due when a third of the term is left, and a
round that a node fails is reported (error, last success kept) and retried.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from blobtools import blob_client, store
from network import LocalNetwork

import walrusfs.client.lifecycle as lifecycle
from walrusfs.client.client import ClientSettings
from walrusfs.fs.renewal import Renewer
from walrusfs.redstuff import BlobId

OWNER = "d" * 32
TERM = 3000.0


@pytest.fixture
def network(tmp_path: Path) -> Iterator[LocalNetwork]:
    with LocalNetwork(tmp_path / "network", nodes=4) as network:
        yield network


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def expiry_on(network: LocalNetwork, node: str, blob_id: BlobId) -> int | None:
    answer = httpx.get(f"{network.url(node)}/v1/blobs/{blob_id}/claims", timeout=10)
    return answer.json()["claims"].get(OWNER, {}).get("expires") if answer.status_code == 200 else None


def test_rounds_renew_every_blob_in_batches_and_report_a_failing_node(network: LocalNetwork,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    blobs = {store(network, os.urandom(20_000 + i), ClientSettings(owner=OWNER, blob_term=60.0)).blob_id
             for i in range(5)}
    monkeypatch.setattr(lifecycle, "RENEWAL_BATCH", 2)  # 5 blobs: three requests per node
    clock = Clock()
    start = clock.now

    async def rounds() -> tuple[bool, bool, Renewer]:
        async with blob_client(network) as client:
            renewer = Renewer(client, OWNER, TERM, lambda: set(blobs), clock)
            assert renewer.due_in() == 0  # the first round at once: nothing is known of earlier ones
            first = await renewer.renew_once()
            assert renewer.due_in() == pytest.approx(TERM * 2 / 3, abs=2)
            network.stop("node-1")
            clock.now = start + TERM / 2
            second = await renewer.renew_once()
            return first, second, renewer

    first, second, renewer = trio.run(rounds)
    assert first and not second
    granted = int(start + TERM)
    for blob_id in blobs:
        for node in network.node_ids:
            if node != "node-1":
                assert expiry_on(network, node, blob_id) == int(start + TERM / 2 + TERM)  # the second round's
    status = renewer.status
    assert status.blobs == 5 and status.expires == granted
    assert status.last_success == start
    assert status.last_error and "node-1" in status.last_error and status.last_error_at == clock.now
    network.start("node-1")
    for blob_id in blobs:
        assert expiry_on(network, "node-1", blob_id) == granted  # the first round reached it too
