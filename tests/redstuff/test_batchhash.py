"""The batch hasher gives exactly the blake3 package's keyed digests, for every length and layout."""

from __future__ import annotations

import blake3
import numpy as np
import pytest

from walrusfs.redstuff import batchhash

KEY = blake3.blake3(b"test key").digest()


@pytest.mark.parametrize("length", [0, 1, 4, 63, 64, 65, 127, 128, 192, 1000, 1023, 1024, 1025, 4096])
@pytest.mark.parametrize("count", [1, 7, 8, 9, 17])
def test_every_row_gets_its_keyed_blake3_digest(length, count):
    rows = np.random.default_rng(length * 31 + count).integers(0, 256, (count, length), dtype=np.uint8)
    digests = batchhash.hash_rows(rows, KEY)
    assert [bytes(d) for d in digests] == [blake3.blake3(r.tobytes(), key=KEY).digest() for r in rows]


def test_strided_rows_and_batches_split_over_threads():
    rng = np.random.default_rng(5)
    wide = rng.integers(0, 256, (batchhash._SPLIT_ROWS + 3, 256), dtype=np.uint8)
    rows = wide[:, 32:224]  # rows 192 bytes long, 256 apart
    digests = batchhash.hash_rows(rows, KEY)
    for i in [0, 1, batchhash._SPLIT_ROWS // 2, len(rows) - 1]:
        assert bytes(digests[i]) == blake3.blake3(rows[i].tobytes(), key=KEY).digest()


def test_the_compiled_kernel_is_there():
    """This machine has a C compiler: the fast path must be the one in use, not the fallback."""
    assert batchhash.kernel() is not None
