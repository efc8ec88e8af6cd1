"""Slivers verify against the blob's metadata; metadata and blob IDs survive the wire; garbage does
not parse. A node stores only what verifies, so every one of these is a trust boundary."""

from __future__ import annotations

import dataclasses
import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walrusfs.redstuff import (
    BlobId,
    BlobMetadata,
    FormatError,
    Sliver,
    SliverKind,
    SliverVerificationError,
    encode,
    verify_sliver,
)

pytestmark = pytest.mark.usefixtures("each_encoding")

REJECTED = (SliverVerificationError, FormatError)


@pytest.fixture(scope="module")
def encoded():
    return encode(random.Random(1).randbytes(3 * 7 * 64 * 2 + 11), 10)


@pytest.mark.parametrize(("n", "length"), [(4, 0), (7, 777), (10, 5000), (13, 64 * 45 * 3)])
def test_every_sliver_verifies_after_a_wire_round_trip(n, length):
    encoded = encode(os.urandom(length), n)
    for kind in SliverKind:
        for index in range(n):
            sliver = encoded.sliver(kind, index)
            again = Sliver.from_bytes(sliver.to_bytes())
            assert (again.kind, again.index, again.blob_id, again.n_shards, again.symbol_size) == (
                kind, index, encoded.blob_id, n, encoded.layout.symbol_size)
            assert bytes(again.data) == bytes(sliver.data)
            verify_sliver(encoded.metadata, again)


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(SliverKind), index=st.integers(0, 9), bit=st.integers(0, 10**9))
def test_any_flipped_bit_in_the_symbols_is_rejected(encoded, kind, index, bit):
    sliver = encoded.sliver(kind, index)
    data = bytearray(sliver.data)
    bit %= 8 * len(data)
    data[bit // 8] ^= 1 << (bit % 8)
    tampered = dataclasses.replace(sliver, data=bytes(data))
    with pytest.raises(SliverVerificationError):
        verify_sliver(encoded.metadata, tampered)


def test_flipping_the_first_and_last_bit_of_every_sliver_is_rejected(encoded):
    for kind in SliverKind:
        for index in range(10):
            sliver = encoded.sliver(kind, index)
            for position, mask in ((0, 0x01), (sliver.nbytes - 1, 0x80)):
                data = bytearray(sliver.data)
                data[position] ^= mask
                with pytest.raises(SliverVerificationError):
                    verify_sliver(encoded.metadata, dataclasses.replace(sliver, data=bytes(data)))


def test_a_sliver_presented_under_another_index_is_rejected(encoded):
    for kind in SliverKind:
        for index in range(10):
            sliver = encoded.sliver(kind, index)
            for other in {(index + 1) % 10, 9 - index} - {index}:
                with pytest.raises(SliverVerificationError):
                    verify_sliver(encoded.metadata, dataclasses.replace(sliver, index=other))


def test_a_sliver_presented_as_the_other_kind_is_rejected(encoded):
    for kind in SliverKind:
        sliver = encoded.sliver(kind, 2)
        with pytest.raises(REJECTED):
            verify_sliver(encoded.metadata, dataclasses.replace(sliver, kind=kind.other))
        header = bytearray(sliver.to_bytes())
        header[5] = kind.other
        with pytest.raises(REJECTED):
            verify_sliver(encoded.metadata, Sliver.from_bytes(bytes(header)))


def test_a_sliver_presented_under_another_blob_id_is_rejected(encoded):
    other_blob = encode(os.urandom(100), 10)
    for kind in SliverKind:
        sliver = encoded.sliver(kind, 0)
        with pytest.raises(SliverVerificationError):
            verify_sliver(encoded.metadata, dataclasses.replace(sliver, blob_id=other_blob.blob_id))
        # The right bytes, checked against another blob's metadata.
        with pytest.raises(SliverVerificationError):
            verify_sliver(other_blob.metadata, sliver)


def test_a_sliver_of_a_same_length_blob_is_rejected(encoded):
    """Same n and symbol size, different content: only the roots tell them apart."""
    twin = encode(os.urandom(encoded.metadata.blob_length), 10)
    for kind in SliverKind:
        impostor = dataclasses.replace(twin.sliver(kind, 1), blob_id=encoded.blob_id)
        with pytest.raises(SliverVerificationError):
            verify_sliver(encoded.metadata, impostor)


@pytest.mark.parametrize("kind", list(SliverKind))
def test_truncated_or_extended_sliver_bytes_are_rejected(encoded, kind):
    wire = encoded.sliver(kind, 3).to_bytes()
    for cut in (0, 1, 4, 5, 20, 47, 48, 49, len(wire) - 64, len(wire) - 1):
        with pytest.raises(FormatError):
            Sliver.from_bytes(wire[:cut])
    with pytest.raises(FormatError):
        Sliver.from_bytes(wire + bytes(64))


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, b"XRSL", "magic"),
        (4, b"\x03", "version 3"),
        (4, b"\x02", "unknown encoding type 0"),  # version 2 names its encoding in byte 46
        (4, b"\x00", "version 0"),
        (5, b"\x02", "kind"),
        (6, struct.pack("<H", 3), "n_shards"),
        (6, struct.pack("<H", 300), "at most 256 shards"),
        (6, struct.pack("<H", 1025), "n_shards"),
        (8, struct.pack("<H", 10), "index"),
        (10, struct.pack("<I", 0), "symbol size"),
        (10, struct.pack("<I", 100), "symbol size"),
        (10, struct.pack("<I", 192), "bytes of symbols"),
        (46, b"\x01", "header padding is 0100, must be zero"),
        (47, b"\xff", "header padding is 00ff, must be zero"),
    ],
)
def test_malformed_sliver_headers_raise_format_error_saying_what_is_wrong(encoded, offset, value, message):
    wire = bytearray(encoded.sliver(SliverKind.PRIMARY, 3).to_bytes())
    wire[offset : offset + len(value)] = value
    with pytest.raises(FormatError, match=message):
        Sliver.from_bytes(bytes(wire))


def test_metadata_round_trips_through_bytes(encoded):
    meta = encoded.metadata
    wire = meta.to_bytes()
    assert len(wire) == BlobMetadata.wire_size(10) == 16 + 2 * 10 * 32
    again = BlobMetadata.from_bytes(wire)
    assert again == meta
    assert again.blob_id == meta.blob_id
    again.verify(meta.blob_id)


def test_metadata_with_any_root_changed_fails_verification(encoded):
    meta = encoded.metadata
    for field in ("primary_roots", "secondary_roots"):
        for index in range(10):
            roots = list(getattr(meta, field))
            roots[index] = bytes([roots[index][0] ^ 1]) + roots[index][1:]
            forged = dataclasses.replace(meta, **{field: tuple(roots)})
            with pytest.raises(FormatError, match="does not match"):
                forged.verify(meta.blob_id)
    with pytest.raises(FormatError):
        dataclasses.replace(meta, blob_length=meta.blob_length + 1).verify(meta.blob_id)


def test_metadata_from_bytes_rejects_malformed_input_with_clear_messages(encoded):
    wire = encoded.metadata.to_bytes()

    def patched(offset: int, value: bytes) -> bytes:
        return wire[:offset] + value + wire[offset + len(value):]

    cases = [
        (b"", "too short"),
        (wire[:4], "too short"),
        (wire[:10], "truncated"),
        (wire[:-1], "bytes, got"),
        (wire + b"\0", "bytes, got"),
        (patched(0, b"WRSL"), "bad magic"),
        (patched(4, b"\x02"), "version 2 is not one this walrusfs reads"),
        (patched(5, b"\x07"), "encoding"),
        (patched(6, struct.pack("<H", 3))[: 16 + 2 * 3 * 32], "n_shards"),
        (patched(8, struct.pack("<Q", 1 << 60)), "length"),
    ]
    for data, message in cases:
        with pytest.raises(FormatError, match=message):
            BlobMetadata.from_bytes(data)


def test_blob_id_text_round_trips():
    for _ in range(200):
        blob_id = BlobId(os.urandom(32))
        text = str(blob_id)
        assert len(text) == 43
        assert BlobId.parse(text) == blob_id
    assert BlobId.parse(str(BlobId(bytes(32)))) == BlobId(bytes(32))
    assert BlobId.parse(str(BlobId(b"\xff" * 32))) == BlobId(b"\xff" * 32)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "A" * 42,
        "A" * 44,
        "A" * 42 + "=",  # padding is not part of the text form
        "A" * 42 + "B",  # non-canonical: trailing bits set
        "A" * 41 + "+A",  # standard, not URL-safe, base64
        "A" * 41 + "/A",
        "A" * 41 + " A",
        "A" * 41 + ".A",
        "\u00e9" * 43,  # non-ASCII letters pass str.isalnum
        "\u0663" * 43,  # ARABIC-INDIC DIGIT THREE: isalnum, not base64
    ],
    ids=lambda text: text.encode("ascii", "backslashreplace").decode()[:20] or "empty",
)
def test_blob_id_parse_rejects_malformed_strings_with_format_error(text):
    with pytest.raises(FormatError):
        BlobId.parse(text)


@pytest.mark.parametrize("size", [0, 31, 33])
def test_blob_id_must_be_32_bytes(size):
    with pytest.raises(FormatError):
        BlobId(bytes(size))
