"""Small helpers for tests that drive the blob client against a LocalNetwork."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from walrusfs.client import BlobClient, ClientSettings
from walrusfs.committee import Committee
from walrusfs.redstuff import BlobId

T = TypeVar("T")

# Deadlines short enough that a store that cannot succeed fails within seconds.
FAST_FAIL = ClientSettings(hedge_after=0.3, store_deadline=3.0, background_deadline=1.0,
                           connect_timeout=1.0, read_timeout=10.0)


# The tests' default client: a node that is merely slow on a loaded machine is not overtaken, so a
# test can assert which nodes a read asked and which path it took. Hedging has its own test.
PATIENT = ClientSettings(hedge_after=5.0)


def run(function: Callable[[], Awaitable[T]]) -> T:
    return trio.run(function)


def blob_client(network, committee: Committee | None = None, settings: ClientSettings | None = None,
                writer: bool = True) -> BlobClient:
    return BlobClient(committee or network.committee, writer_key=network.writer_key if writer else None,
                      settings=settings or PATIENT)


def store(network, data: bytes, settings: ClientSettings | None = None):
    async def go():
        async with blob_client(network, settings=settings) as client:
            return await client.store(data)

    return run(go)


def pair_holder(committee: Committee, blob_id: BlobId, pair: int) -> str:
    """The node that holds sliver pair ``pair`` of the blob."""
    return committee.node_for_shard(committee.geometry.shard_of_pair(pair, blob_id.raw)).id


def systematic_holders(committee: Committee, blob_id: BlobId) -> list[str]:
    return [pair_holder(committee, blob_id, pair) for pair in range(committee.geometry.n_primary)]


def random_bytes(size: int) -> bytes:
    return os.urandom(size)
