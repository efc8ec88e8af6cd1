"""Blobs written by the first encoding (RedStuff over GF(2^8), encoding type 1) stay readable.

The fixtures were written by the encoder of commit a348c71, before a second encoding existed: the
blob, its metadata and all 2n slivers, framed as ``"WFIX" | u32 count | count x (u32 length |
bytes)``. Whatever changes in the codec, these bytes must keep verifying, decoding, re-encoding
to the same blob ID and yielding recovery symbols.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from walrusfs.redstuff import (
    BlobId,
    BlobMetadata,
    Sliver,
    SliverExpansion,
    SliverKind,
    decode,
    decode_and_verify,
    encode,
    recover_sliver,
    verify_sliver,
)
from walrusfs.redstuff.blob import ENCODING_REDSTUFF_GF256_V1

FIXTURES = Path(__file__).parent / "fixtures"
# The IDs the old code gave these blobs: a blob is known by its ID forever.
LEGACY = {
    4: "rNudlF5J5Ctecb_OeSHowFfNbMP8b3GsJyeUPhzLx2k",
    7: "xEUS7qMz1bCuud4uyrhv9eArg4R82qwescoNq8XbYbM",
}


def load(n: int) -> tuple[bytes, BlobMetadata, list[Sliver], list[Sliver]]:
    data = (FIXTURES / f"gf256_v1_n{n}.bin").read_bytes()
    assert data[:4] == b"WFIX"
    (count,) = struct.unpack_from("<I", data, 4)
    parts, offset = [], 8
    for _ in range(count):
        (length,) = struct.unpack_from("<I", data, offset)
        parts.append(data[offset + 4 : offset + 4 + length])
        offset += 4 + length
    blob, metadata = parts[0], BlobMetadata.from_bytes(parts[1])
    slivers = [Sliver.from_bytes(p) for p in parts[2:]]
    return blob, metadata, slivers[0::2], slivers[1::2]


@pytest.mark.parametrize("n", sorted(LEGACY))
def test_old_blobs_verify_decode_and_keep_their_id(n):
    blob, metadata, primary, secondary = load(n)
    assert metadata.encoding == ENCODING_REDSTUFF_GF256_V1
    assert str(metadata.blob_id) == LEGACY[n]
    metadata.verify(BlobId.parse(LEGACY[n]))
    for sliver in primary + secondary:
        verify_sliver(metadata, sliver)
    parity_rows = primary[-metadata.geometry.n_primary :]
    assert bytes(decode_and_verify(metadata, parity_rows)) == blob
    assert bytes(decode(metadata, secondary[-metadata.geometry.n_secondary :])) == blob
    # What today's encoder picks for this n may differ; encoding type 1 must still give these IDs.
    assert encode(blob, n, encoding=ENCODING_REDSTUFF_GF256_V1).metadata.blob_id == metadata.blob_id


@pytest.mark.parametrize("n", sorted(LEGACY))
def test_old_blobs_recover_a_lost_sliver_pair(n):
    _, metadata, primary, secondary = load(n)
    geometry = metadata.geometry
    lost_primary, lost_secondary = n - 1, geometry.secondary_of_pair(n - 1)
    for_primary = [SliverExpansion(s).symbol_for(lost_primary) for s in secondary if s.index != lost_secondary]
    for_secondary = [SliverExpansion(s).symbol_for(lost_secondary) for s in primary if s.index != lost_primary]
    rebuilt = recover_sliver(metadata, SliverKind.PRIMARY, lost_primary, for_primary)
    assert bytes(rebuilt.data) == bytes(primary[lost_primary].data)
    rebuilt = recover_sliver(metadata, SliverKind.SECONDARY, lost_secondary, for_secondary)
    assert bytes(rebuilt.data) == bytes(secondary[lost_secondary].data)
