"""``walrusfs bench codec``: RedStuff encode, decode and recovery throughput on one core.

Every figure is MB/s of blob (1 MB = 10^6 bytes), the median of ``--repeat`` runs on the same blob.
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc
from typing import Any

from ..redstuff import (
    EncodedBlob,
    SliverExpansion,
    SliverKind,
    decode,
    decode_and_verify,
    encode,
    encodings,
    recover_sliver,
)
from .report import emit, mb_per_s, median_seconds, progress


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("codec", help="RedStuff encode/decode/recovery speed")
    parser.add_argument("--n", type=int, default=10, help="number of shards, 4..1024 (default 10)")
    parser.add_argument("--encoding", default="auto",
                        help="gf256, rs16, or auto: what a new blob of n shards gets (default auto)")
    parser.add_argument("--size", type=float, default=32, help="blob size in MiB (default 32)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (median; default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def measure(n: int, size: int, repeat: int, encoding: int | None = None) -> dict[str, Any]:
    encoding = encodings.choose_encoding(n) if encoding is None else encoding
    blob = os.urandom(size)
    progress(f"bench codec: n={n}, encoding {encodings.NAMES[encoding]}, blob {size / 2**20:.1f} MiB, "
             f"{repeat} runs per figure")
    encoded: EncodedBlob = encode(blob, n, encoding)
    metadata, geometry, layout = encoded.metadata, encoded.metadata.geometry, encoded.layout
    n_p, n_s = geometry.n_primary, geometry.n_secondary
    results: dict[str, Any] = {
        "n": n, "encoding": encodings.NAMES[encoding], "f": geometry.max_faulty, "n_primary": n_p, "n_secondary": n_s,
        "blob_bytes": size, "symbol_size": layout.symbol_size,
        "expansion": layout.encoded_length / max(size, 1),
    }

    progress("  encode with commitments")
    results["encode_mb_s"] = mb_per_s(size, median_seconds(lambda: encode(blob, n, encoding), repeat))
    # Per CPU-second too: on a loaded machine wall times swing 2-3x between runs, CPU time hardly.
    results["encode_cpu_mb_s"] = mb_per_s(size, median_seconds(lambda: encode(blob, n, encoding), repeat,
                                                               clock=time.process_time))

    systematic = [encoded.primary_sliver(i) for i in range(n_p)]
    parity_rows = [encoded.primary_sliver(i) for i in range(n - n_p, n)][:n_p]  # none systematic
    parity_columns = [encoded.secondary_sliver(j) for j in range(n - n_s, n)]
    for label, slivers in [("systematic", systematic), ("worst_case", parity_rows),
                           ("secondary", parity_columns)]:
        progress(f"  decode from {label} slivers")
        assert bytes(decode(metadata, slivers)) == blob, f"{label} decode is wrong"
        results[f"decode_{label}_mb_s"] = mb_per_s(
            size, median_seconds(lambda s=slivers: decode(metadata, s), repeat))
        results[f"decode_{label}_unverified_mb_s"] = mb_per_s(
            size, median_seconds(lambda s=slivers: decode(metadata, s, verify=False), repeat))
    progress("  decode worst case, then re-encode to check the blob ID (what a reader does)")
    results["decode_and_verify_worst_case_mb_s"] = mb_per_s(
        size, median_seconds(lambda: decode_and_verify(metadata, parity_rows), repeat))
    results["decode_and_verify_worst_case_cpu_mb_s"] = mb_per_s(
        size, median_seconds(lambda: decode_and_verify(metadata, parity_rows), repeat, clock=time.process_time))

    progress("  recover one sliver pair from recovery symbols")
    pair = n - 1  # a parity row and a systematic column: the harder pair to lose
    lost_primary, lost_secondary = pair, geometry.secondary_of_pair(pair)
    for_primary = [SliverExpansion(encoded.secondary_sliver(j)).symbol_for(lost_primary)
                   for j in range(n) if j != lost_secondary][:n_s]
    for_secondary = [SliverExpansion(encoded.primary_sliver(i)).symbol_for(lost_secondary)
                     for i in range(n) if i != lost_primary][:n_p]

    def recover_pair() -> None:
        recover_sliver(metadata, SliverKind.PRIMARY, lost_primary, for_primary)
        recover_sliver(metadata, SliverKind.SECONDARY, lost_secondary, for_secondary)

    recovered = recover_sliver(metadata, SliverKind.PRIMARY, lost_primary, for_primary)
    assert bytes(recovered.data) == bytes(encoded.primary_sliver(lost_primary).data)
    pair_bytes = layout.primary_sliver_size + layout.secondary_sliver_size
    seconds = median_seconds(recover_pair, repeat)
    results["recover_pair_mb_s"] = mb_per_s(size, seconds)
    results["recover_pair_seconds"] = seconds
    results["recover_pair_read_bytes"] = sum(len(s.to_bytes()) for s in for_primary + for_secondary)
    results["recover_pair_bytes"] = pair_bytes
    results["recover_read_over_pair"] = results["recover_pair_read_bytes"] / pair_bytes
    results["recover_read_over_blob"] = results["recover_pair_read_bytes"] / max(size, 1)
    helper_sliver = encoded.secondary_sliver(0)
    helper_seconds = median_seconds(lambda: SliverExpansion(helper_sliver), repeat)
    results["helper_expansion_seconds"] = helper_seconds

    progress("  encode peak memory")
    del encoded
    tracemalloc.start()
    encode(blob, n, encoding)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    results["encode_peak_bytes"] = peak
    results["encode_peak_over_blob"] = peak / max(size, 1)
    return results


def run(args: argparse.Namespace) -> int:
    size = int(args.size * 2**20)
    try:
        encoding = None if args.encoding == "auto" else encodings.parse(args.encoding)
    except ValueError as error:
        raise SystemExit(f"bench codec: {error}") from None
    r = measure(args.n, size, args.repeat, encoding)
    rows = [
        ("geometry", f"n={r['n']} ({r['encoding']}) f={r['f']} n_p={r['n_primary']} n_s={r['n_secondary']}, "
                     f"symbol {r['symbol_size']} B, expansion {r['expansion']:.2f}x"),
        ("blob", f"{size / 2**20:.1f} MiB"),
        ("encode (all commitments)", f"{r['encode_mb_s']:8.0f} MB/s  ({r['encode_cpu_mb_s']:.0f} MB per CPU-second)"),
        ("decode worst case (no systematic)", f"{r['decode_worst_case_mb_s']:8.0f} MB/s  "
         f"({r['decode_worst_case_unverified_mb_s']:.0f} MB/s with slivers already verified)"),
        ("decode worst case + re-encode check", f"{r['decode_and_verify_worst_case_mb_s']:8.0f} MB/s  "
         f"({r['decode_and_verify_worst_case_cpu_mb_s']:.0f} MB per CPU-second)"),
        ("decode systematic", f"{r['decode_systematic_mb_s']:8.0f} MB/s  "
         f"({r['decode_systematic_unverified_mb_s']:.0f} MB/s with slivers already verified)"),
        ("decode from secondary slivers", f"{r['decode_secondary_mb_s']:8.0f} MB/s"),
        ("recover one sliver pair", f"{r['recover_pair_seconds'] * 1e3:8.1f} ms "
         f"({r['recover_pair_mb_s']:.0f} MB/s of blob)"),
        ("recovery reads / pair size", f"{r['recover_read_over_pair']:8.3f}x "
         f"({r['recover_pair_read_bytes']} B for a {r['recover_pair_bytes']} B pair; "
         f"{r['recover_read_over_blob']:.3f}x the blob)"),
        ("encode peak memory / blob", f"{r['encode_peak_over_blob']:8.2f}x "
         f"({r['encode_peak_bytes'] / 2**20:.1f} MiB)"),
    ]
    emit(r, args.json, rows)
    return 0
