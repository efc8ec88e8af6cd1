"""Byte-range reads (only the symbols that hold the range are fetched) and certificate checks."""

from __future__ import annotations

import dataclasses

import pytest
from blobtools import blob_client, random_bytes, run, store

from walrusfs.client import Certificate, CertificateError, ReadError, ReadReport
from walrusfs.keys import generate_key, load_key
from walrusfs.protocol import Confirmation

SIZE = 2**20 + 1000  # symbol 70016 B: packet 8752, plane 43760, row 350080; the last row is padded


@pytest.fixture(scope="module")
def blob(shared_network):
    data = random_bytes(SIZE)
    return store(shared_network, data), data


def _ranges(layout) -> list[tuple[int, int | None]]:
    symbol, row = layout.symbol_size, layout.row_length
    packet, plane = symbol // 8, 5 * symbol // 8
    return [
        (0, 10), (1, 1), (packet - 3, 6), (packet, packet), (plane - 5, 10), (plane, 3),
        (row - 5, 10), (row, 1), (2 * row - 1, 2), (symbol - 1, 2),
        (SIZE - 7, None), (SIZE - 100, 100), (SIZE - 1, 50), (SIZE // 2, 4096),
    ]


def test_range_reads_return_the_right_bytes_and_fetch_little(shared_network, blob):
    stored, data = blob
    layout = stored.metadata.layout
    assert layout.symbol_size == 70016 and layout.row_length == 350080

    async def go():
        out = []
        async with blob_client(shared_network, writer=False) as client:
            for offset, length in _ranges(layout):
                report = ReadReport()
                out.append((offset, length, await client.read(stored.blob_id, offset, length, report), report))
        return out

    for offset, length, got, report in run(go):
        end = SIZE if length is None else offset + length
        assert got == data[offset:end], (offset, length)
        assert report.path == "symbols", (offset, length, report.path)
        assert 0 < report.bytes_fetched <= 2 * layout.symbol_size < SIZE / 7, (offset, length, report)


def test_range_edges(shared_network, blob):
    stored, data = blob

    async def go():
        async with blob_client(shared_network, writer=False) as client:
            assert await client.read(stored.blob_id, SIZE, None) == b""
            assert await client.read(stored.blob_id, 5, 0) == b""
            assert await client.read(stored.blob_id, SIZE - 3, 10**9) == data[-3:]
            # A long range is a whole read (still exactly the right bytes).
            report = ReadReport()
            assert await client.read(stored.blob_id, 100, SIZE // 2, report) == data[100 : 100 + SIZE // 2]
            assert report.path == "systematic"
            with pytest.raises(ReadError):
                await client.read(stored.blob_id, SIZE + 1, 1)
            with pytest.raises(ReadError):
                await client.read(stored.blob_id, -1, 1)

    run(go)


# --- certificates -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_keys(shared_network):
    return {node: load_key(shared_network.root / node / "node.key") for node in shared_network.node_ids}


def _quorum_certificate(stored) -> Certificate:
    """Exactly five confirmations (one shard each): the least that certifies."""
    confirmations = sorted(stored.certificate.confirmations, key=lambda c: c.node_id)[:5]
    assert len(confirmations) == 5
    return Certificate(stored.blob_id, stored.certificate.epoch, tuple(confirmations))


def test_real_certificate_verifies_and_round_trips(shared_network, blob):
    stored, _ = blob
    certificate = _quorum_certificate(stored)
    certificate.verify(shared_network.committee)
    again = Certificate.from_json(certificate.to_json())
    again.verify(shared_network.committee)
    assert again == certificate


def _replace(certificate: Certificate, index: int, confirmation: Confirmation) -> Certificate:
    confirmations = list(certificate.confirmations)
    confirmations[index] = confirmation
    return dataclasses.replace(certificate, confirmations=tuple(confirmations))


def test_forged_signature_is_rejected(shared_network, blob):
    certificate = _quorum_certificate(blob[0])
    first = certificate.confirmations[0]
    forged = bytearray(first.signature)
    forged[10] ^= 0x40
    with pytest.raises(CertificateError, match="covers 4 shards"):
        _replace(certificate, 0, dataclasses.replace(first, signature=bytes(forged))).verify(
            shared_network.committee)


def test_signature_by_a_non_member_is_rejected(shared_network, blob):
    certificate = _quorum_certificate(blob[0])
    first = certificate.confirmations[0]
    stranger = generate_key()
    impostor = Confirmation(first.epoch, first.blob_id, first.node_id, first.shards).signed_by(stranger)
    outsider = Confirmation(first.epoch, first.blob_id, "node-99", first.shards).signed_by(stranger)
    for fake in (impostor, outsider):
        with pytest.raises(CertificateError):
            _replace(certificate, 0, fake).verify(shared_network.committee)


def test_wrong_epoch_is_rejected(shared_network, blob, node_keys):
    committee = shared_network.committee
    certificate = _quorum_certificate(blob[0])
    with pytest.raises(CertificateError, match="epoch"):
        dataclasses.replace(certificate, epoch=committee.epoch + 1).verify(committee)
    # Confirmations genuinely signed by the members, but for another epoch, count for nothing.
    other_epoch = tuple(
        Confirmation(committee.epoch + 1, c.blob_id, c.node_id, c.shards).signed_by(node_keys[c.node_id])
        for c in certificate.confirmations)
    with pytest.raises(CertificateError, match="covers 0 shards"):
        dataclasses.replace(certificate, confirmations=other_epoch).verify(committee)


def test_missing_or_repeated_confirmations_are_rejected(shared_network, blob, node_keys):
    committee = shared_network.committee
    certificate = _quorum_certificate(blob[0])
    with pytest.raises(CertificateError, match="covers 4 shards"):
        dataclasses.replace(certificate, confirmations=certificate.confirmations[:4]).verify(committee)
    with pytest.raises(CertificateError, match="covers 1 shards"):
        dataclasses.replace(certificate, confirmations=(certificate.confirmations[0],) * 5).verify(committee)
    with pytest.raises(CertificateError, match="covers 0 shards"):
        dataclasses.replace(certificate, confirmations=()).verify(committee)
    # One member claiming every shard is counted for the shards it holds only.
    first = certificate.confirmations[0]
    greedy = Confirmation(first.epoch, first.blob_id, first.node_id, tuple(range(7))).signed_by(
        node_keys[first.node_id])
    with pytest.raises(CertificateError, match="covers 1 shards"):
        dataclasses.replace(certificate, confirmations=(greedy,)).verify(committee)


def test_certificate_for_another_blob_is_rejected(shared_network, blob):
    stored, _ = blob
    other = store(shared_network, random_bytes(1000))
    certificate = dataclasses.replace(_quorum_certificate(stored), blob_id=other.blob_id)
    with pytest.raises(CertificateError):
        certificate.verify(shared_network.committee)
