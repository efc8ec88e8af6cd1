"""The encoding types a blob ID can name, their limits, and which one a new blob gets.

A blob's encoding is part of its ID (see blob.py) and of its metadata: a blob is decoded, verified
and repaired by the encoding it was written with, forever. ``codec.codec_for`` maps each type to
its implementation; this module only names them, so that the formats can check them without
importing the codecs.
"""

from __future__ import annotations

# Type 1: RedStuff over GF(2^8) (0x11D), Cauchy generators as built by gf256, 64-byte aligned
# bit-sliced (plane-major) symbols, blake3 Merkle commitments with prefixed leaves (merkle.py).
ENCODING_REDSTUFF_GF256_V1 = 1
# Type 2: RedStuff over GF(2^16) with the O(n log n) Reed-Solomon code of reed-solomon-simd (the
# reed-solomon-leopard wheel, version pinned: its generator is part of the format), symbol-major
# symbols (each symbol's bytes contiguous), keyed-BLAKE3 Merkle commitments (rs16merkle.py).
ENCODING_REDSTUFF_RS16_V2 = 2

NAMES = {ENCODING_REDSTUFF_GF256_V1: "gf256", ENCODING_REDSTUFF_RS16_V2: "rs16"}
MAX_SHARDS = {ENCODING_REDSTUFF_GF256_V1: 256, ENCODING_REDSTUFF_RS16_V2: 1024}

# Where GF(2^16) starts to win. `walrusfs bench codec --size 32 --n N --encoding gf256|rs16`, encode
# with all commitments in MB per CPU-second, 2026-12-01 on a machine at load average 20-36
# (docs/redstuff-encodings.md): n=10 gf256 123 vs rs16 65; n=31 gf256 64 vs rs16 40; n=64 gf256 25
# vs rs16 28 (even, and gf256 needs 2.7x the blob in memory, rs16 8.7x); n=100 gf256 8 vs rs16 32.
# GF(2^8)'s bit-sliced XORs win while its matrices are small; above 64 shards the O(n log n) code
# with batched commitments does, and beyond 256 shards only it can.
RS16_FROM_SHARDS = 65


def choose_encoding(n_shards: int) -> int:
    """The encoding a new blob for ``n_shards`` shards gets (the only place this is decided)."""
    if n_shards >= RS16_FROM_SHARDS:
        return ENCODING_REDSTUFF_RS16_V2
    return ENCODING_REDSTUFF_GF256_V1


def parse(text: str) -> int:
    """An encoding by name ('gf256', 'rs16') or number."""
    for number, name in NAMES.items():
        if text in (name, str(number)):
            return number
    raise ValueError(f"unknown encoding {text!r}: use one of {', '.join(NAMES.values())}")


def check(encoding: object, n_shards: int) -> str | None:
    """Why ``encoding`` cannot encode ``n_shards`` shards, or None if it can."""
    if encoding not in MAX_SHARDS:
        return f"unknown encoding type {encoding!r} (this walrusfs knows {sorted(MAX_SHARDS)}; a newer one may)"
    if n_shards > MAX_SHARDS[encoding]:  # type: ignore[index]
        return f"encoding {NAMES[encoding]} takes at most {MAX_SHARDS[encoding]} shards, got {n_shards}"  # type: ignore[index]
    return None
