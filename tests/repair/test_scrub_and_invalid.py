"""Scrubbing finds rot the foreground never reads, and a blob its writer encoded inconsistently is
proven invalid by repair, the proof spreads to every node, and readers get a clear error, not data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import blake3
import httpx
import pytest
import trio
from blobtools import store
from healing import expected_slivers, held_slivers, holder, repair_network, repair_status, wait_for, wipe
from network import LocalNetwork

from walrusfs.client import BlobClient
from walrusfs.client.certificate import Certificate
from walrusfs.client.read import BlobInvalidError
from walrusfs.redstuff import BlobMetadata, InconsistencyProof, Sliver, SliverKind, encode, verify_inconsistency_proof
from walrusfs.redstuff.encode import sliver_root
from walrusfs.redstuff.sliver import as_line


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    with repair_network(tmp_path_factory.mktemp("scrub"), scrub_interval=1.0) as net:
        yield net


def sliver_file(network: LocalNetwork, node: str, blob_id, pair: int, kind: SliverKind):
    text = str(blob_id)
    return network.root / node / "data" / "blobs" / text[:2] / text / f"p{pair}.{kind.name.lower()}"


def healed(network: LocalNetwork, node: str, blob) -> bool:
    return held_slivers(network, node, blob) == expected_slivers(network, node, blob)


@pytest.mark.parametrize("checksum", ["stale", "rewritten"])
def test_a_sliver_rotted_on_disk_is_found_by_scrubbing_and_rebuilt(network, checksum):
    data = os.urandom(1_200_000)
    store(network, data)
    blob = encode(data, network.committee.n_shards)
    node = holder(network, blob.blob_id, 2)
    wait_for(f"{node} knows the blob certified", lambda: healed(network, node, blob)
             and repair_status(network, node)["certified_blobs"] >= 1)
    before = repair_status(network, node)["scrub"]["rot_found"]

    path = sliver_file(network, node, blob.blob_id, 2, SliverKind.SECONDARY)
    content = bytearray(path.read_bytes())
    content[-100] ^= 0x10  # one bit of one symbol
    if checksum == "rewritten":  # rot that the file's own checksum cannot see: only the Merkle root can
        content[8:40] = blake3.blake3(bytes(content[40:])).digest()
    path.write_bytes(content)

    wait_for("the scrubber found the rot", lambda: repair_status(network, node)["scrub"]["rot_found"] > before)
    wait_for(f"{node} rebuilt the sliver", lambda: healed(network, node, blob))
    assert "scrub: p2.secondary of blob" in network.log(node).read_text()


class LyingWriter:
    """A writer whose primary sliver ``tampered`` is random bytes, with metadata committing to it:
    every sliver verifies on its own, so nodes store and confirm it."""

    def __init__(self, n: int, length: int, tampered: int) -> None:
        self.honest = encode(os.urandom(length), n)
        self.tampered = tampered
        layout = self.honest.layout
        self.bad_row = os.urandom(layout.primary_sliver_size)
        roots = list(self.honest.metadata.primary_roots)
        roots[tampered] = sliver_root(layout.geometry, SliverKind.PRIMARY, as_line(self.bad_row, layout.symbol_size))
        self.metadata = BlobMetadata(n, length, tuple(roots), self.honest.metadata.secondary_roots)
        self.blob_id = self.metadata.blob_id

    def sliver(self, kind: SliverKind, index: int) -> Sliver:
        honest = self.honest.sliver(kind, index)
        data = self.bad_row if (kind, index) == (SliverKind.PRIMARY, self.tampered) else bytes(honest.data)
        return Sliver(self.blob_id, kind, index, honest.n_shards, honest.symbol_size, data)

    async def store(self, client: BlobClient) -> None:
        """Upload to every node, collect confirmations, tell every node the blob is certified."""
        geometry = self.metadata.geometry
        confirmations = []
        for node_id, connection in client.connections.items():
            await connection.put_metadata(self.metadata)
            for shard in client.committee.shards_of(node_id):
                pair = geometry.pair_of_shard(shard, self.blob_id.raw)
                await connection.put_sliver(pair, self.sliver(SliverKind.PRIMARY, pair))
                await connection.put_sliver(pair, self.sliver(SliverKind.SECONDARY, geometry.secondary_of_pair(pair)))
            confirmations.append(await connection.get_confirmation(self.blob_id))
        certificate = Certificate(self.blob_id, client.committee.epoch, tuple(confirmations))
        certificate.verify(client.committee)
        for connection in client.connections.values():
            await connection.put_certificate(self.blob_id, certificate.to_json())


def test_an_inconsistently_encoded_blob_is_proven_invalid_and_never_served(network):
    n = network.committee.n_shards
    liar = LyingWriter(n, 800_000, tampered=1)

    async def upload() -> None:
        async with BlobClient(network.committee, writer_key=network.writer_key) as client:
            await liar.store(client)

    trio.run(upload)
    victim = holder(network, liar.blob_id, liar.tampered)
    wait_for("every node knows the blob certified", lambda: all(
        repair_status(network, node)["certified_blobs"] >= 1 for node in network.node_ids))

    # The holder of the tampered row loses it; rebuilding it from the other nodes' symbols gives
    # the row the other slivers imply, which is not the one the metadata commits to.
    wipe(network, victim)
    network.start(victim)
    wait_for(f"{victim} proved the blob invalid", lambda: repair_status(network, victim)["invalid_found"] == 1)
    wait_for("every node learned and checked the proof", lambda: all(
        repair_status(network, node)["invalid_blobs"] == 1 for node in network.node_ids))

    for node in network.node_ids:
        proof_bytes = httpx.get(f"{network.url(node)}/v1/blobs/{liar.blob_id}/inconsistency").content
        assert verify_inconsistency_proof(liar.metadata, InconsistencyProof.from_bytes(proof_bytes))
        pair = network.committee.geometry.pair_of_shard(network.committee.shards_of(node)[0], liar.blob_id.raw)
        response = httpx.get(f"{network.url(node)}/v1/blobs/{liar.blob_id}/slivers/{pair}/primary")
        assert response.status_code == 410 and response.json()["error"] == "blob_invalid"

    async def read() -> bytes:
        async with BlobClient(network.committee) as client:
            return await client.read(liar.blob_id)

    with pytest.raises(BlobInvalidError, match="inconsistently"):
        trio.run(read)
