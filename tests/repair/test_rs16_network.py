"""Blobs of the second encoding (RS16, GF(2^16)) on a real network: stored, read, and a lost node's
slivers rebuilt from recovery symbols its peers compute.

4 nodes holding 31 shards. By measurement a new blob gets RS16 only from 65 shards on
(encodings.choose_encoding), and such a network repairs too slowly for a test on this machine, so
this module has the client (in this process) pick RS16 at 31; the nodes verify, serve and repair
by the encoding the metadata names, as they do for any blob.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from blobtools import blob_client, run, store
from healing import configure, expected_slivers, held_slivers, repair_status, wait_for, wipe
from network import LocalNetwork

from walrusfs.client import ReadReport
from walrusfs.redstuff import encode, encodings

SHARDS = 31


@pytest.fixture(scope="module", autouse=True)
def new_blobs_are_rs16() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(encodings, "choose_encoding", lambda n_shards: encodings.ENCODING_REDSTUFF_RS16_V2)
        yield


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    net = LocalNetwork(tmp_path_factory.mktemp("rs16"), nodes=4, shards=SHARDS)
    for node in net.node_ids:
        configure(net, node)
    with net:
        yield net


def test_a_blob_of_the_new_encoding_is_stored_and_read_back(network):
    data = os.urandom(700_000)
    stored = store(network, data)
    assert encode(data, SHARDS, encodings.ENCODING_REDSTUFF_RS16_V2).metadata.blob_id == stored.blob_id

    async def read() -> tuple[bytes, ReadReport]:
        report = ReadReport()
        async with blob_client(network, writer=False) as reader:
            back = await reader.read(stored.blob_id, report=report)
            part = await reader.read(stored.blob_id, 123_456, 5_000)
        assert part == data[123_456:128_456]
        return back, report

    back, report = run(read)
    assert back == data
    assert not report.liars and not report.failures


def test_a_wiped_node_rebuilds_its_rs16_slivers_from_its_peers(network):
    data = os.urandom(300_000)
    store(network, data)
    blob = encode(data, SHARDS, encodings.ENCODING_REDSTUFF_RS16_V2)
    node = "node-2"
    wait_for("every node knows the blob certified",
             lambda: all(repair_status(network, n)["certified_blobs"] >= 1 for n in network.node_ids))
    wipe(network, node)
    network.start(node)
    wait_for(f"{node} rebuilt its slivers", lambda: held_slivers(network, node, blob) == expected_slivers(
        network, node, blob), timeout=180)
    assert repair_status(network, node)["recovered_slivers"] >= 1
