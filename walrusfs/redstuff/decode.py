"""Checking slivers against metadata and rebuilding a blob from any quorum of slivers."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .blob import BlobMetadata
from .codec import codec_for
from .encode import column_code, encode, row_code
from .sliver import Sliver, SliverKind, as_line
from .wire import FormatError


class SliverVerificationError(ValueError):
    """A sliver that is not the one the blob's metadata commits to."""


class NotEnoughSliversError(ValueError):
    """Fewer distinct valid slivers than decoding needs."""


class InconsistentBlobError(ValueError):
    """The writer encoded the blob inconsistently: different quorums would give different bytes.

    Such a blob has no well-defined content; it is never served as data. ``proof``, when set, is an
    InconsistencyProof anyone holding the metadata can check.
    """

    def __init__(self, message: str, proof: object | None = None) -> None:
        super().__init__(message)
        self.proof = proof


def verify_sliver(metadata: BlobMetadata, sliver: Sliver) -> None:
    """Raise SliverVerificationError unless ``sliver`` is exactly the one ``metadata`` commits to."""
    what = f"{sliver.kind.name.lower()} sliver {sliver.index} of blob {metadata.blob_id}"
    if sliver.blob_id != metadata.blob_id:
        raise SliverVerificationError(f"{what}: sliver is for blob {sliver.blob_id}")
    try:
        sliver.matches(metadata)
    except FormatError as error:
        raise SliverVerificationError(str(error)) from error
    roots = metadata.primary_roots if sliver.kind is SliverKind.PRIMARY else metadata.secondary_roots
    root = codec_for(metadata.encoding).sliver_root(metadata.geometry, sliver.kind, sliver.data, sliver.symbol_size)
    if root != roots[sliver.index]:
        raise SliverVerificationError(f"{what}: content does not match its Merkle root")


def _distinct(slivers: Iterable[Sliver], kind: SliverKind, metadata: BlobMetadata,
              verify: bool) -> dict[int, Sliver]:
    chosen: dict[int, Sliver] = {}
    for sliver in slivers:
        if sliver.kind is not kind or sliver.index in chosen:
            continue
        if verify:
            verify_sliver(metadata, sliver)
        else:
            sliver.matches(metadata)
        chosen[sliver.index] = sliver
    return chosen


def decode(metadata: BlobMetadata, slivers: Iterable[Sliver], *, verify: bool = True) -> memoryview:
    """The blob, from any n_p primary slivers or any n_s secondary slivers (of one kind).

    With ``verify`` every sliver is first checked against the metadata (pass False only for slivers
    already verified). Systematic primary slivers are copied, not decoded. This does not prove the
    writer encoded consistently: ``decode_and_verify`` does.
    """
    slivers = list(slivers)
    geometry, layout = metadata.geometry, metadata.layout
    codec = codec_for(metadata.encoding)
    primary = _distinct(slivers, SliverKind.PRIMARY, metadata, verify)
    if len(primary) >= geometry.n_primary:
        data = {i: s.data for i, s in primary.items()}
        return memoryview(codec.decode(metadata, SliverKind.PRIMARY, data))[: metadata.blob_length]
    secondary = _distinct(slivers, SliverKind.SECONDARY, metadata, verify)
    if len(secondary) >= geometry.n_secondary:
        data = {i: s.data for i, s in secondary.items()}
        return memoryview(codec.decode(metadata, SliverKind.SECONDARY, data))[: metadata.blob_length]
    raise NotEnoughSliversError(
        f"blob {metadata.blob_id}: have {len(primary)} primary and {len(secondary)} secondary "
        f"slivers; decoding needs {geometry.n_primary} primary or {geometry.n_secondary} secondary"
        f" (n={geometry.n_shards}, sliver sizes {layout.primary_sliver_size} and "
        f"{layout.secondary_sliver_size} bytes)"
    )


def decode_gf256(metadata: BlobMetadata, kind: SliverKind, slivers: dict[int, object]) -> np.ndarray:
    """Encoding type 1: the padded blob from enough slivers of ``kind`` (index -> bytes)."""
    s = metadata.layout.symbol_size
    lines = {i: as_line(data, s) for i, data in slivers.items()}
    return _decode_primary(metadata, lines) if kind is SliverKind.PRIMARY else _decode_secondary(metadata, lines)


def _decode_primary(metadata: BlobMetadata, slivers: dict[int, np.ndarray]) -> np.ndarray:
    geometry, layout = metadata.geometry, metadata.layout
    s, n_p = layout.symbol_size, geometry.n_primary
    out = np.empty(layout.padded_length, dtype=np.uint8)
    rows = out.reshape(n_p, layout.row_length)
    missing = [a for a in range(n_p) if a not in slivers]
    for a in range(n_p):
        if a in slivers:
            rows[a] = slivers[a].reshape(-1).view(np.uint8)
    if missing:
        known = {i: line.reshape(8, -1) for i, line in slivers.items()}
        column_code(geometry).reconstruct(
            known, missing, [as_line(rows[a], s).reshape(8, -1) for a in missing]
        )
    return out


def _decode_secondary(metadata: BlobMetadata, slivers: dict[int, np.ndarray]) -> np.ndarray:
    geometry, layout = metadata.geometry, metadata.layout
    s, n_p, n_s = layout.symbol_size, geometry.n_primary, geometry.n_secondary
    # Every row is decoded at once: column j's whole sliver is one wide symbol of the row code.
    columns = np.empty((n_s, layout.secondary_sliver_size), dtype=np.uint8)
    missing = [b for b in range(n_s) if b not in slivers]
    for b in range(n_s):
        if b in slivers:
            columns[b] = slivers[b].reshape(-1).view(np.uint8)
    if missing:
        known = {j: line.reshape(8, -1) for j, line in slivers.items()}
        row_code(geometry).reconstruct(
            known, missing, [as_line(columns[b], s).reshape(8, -1) for b in missing]
        )
    out = np.empty(layout.padded_length, dtype=np.uint8)
    rows = out.reshape(n_p, layout.row_length)
    column_lines = [as_line(c, s) for c in columns]
    for a in range(n_p):
        row_line = as_line(rows[a], s)
        for b, column_line in enumerate(column_lines):
            row_line[:, b] = column_line[:, a]
    return out


def decode_and_verify(metadata: BlobMetadata, slivers: Iterable[Sliver], *,
                      verify: bool = True) -> memoryview:
    """``decode``, then re-encode the result and check it yields the same blob ID.

    This is what makes every correct reader agree: a writer that encoded inconsistently is caught
    here (InconsistentBlobError) whichever quorum of slivers the reader happened to get.
    """
    blob = decode(metadata, slivers, verify=verify)
    if encode(blob, metadata.n_shards, metadata.encoding).metadata.blob_id != metadata.blob_id:
        raise InconsistentBlobError(
            f"blob {metadata.blob_id} is inconsistently encoded: its slivers verify one by one, "
            "but the bytes they decode to do not re-encode to the blob ID"
        )
    return blob


__all__ = [
    "InconsistentBlobError",
    "NotEnoughSliversError",
    "SliverVerificationError",
    "decode",
    "decode_and_verify",
    "verify_sliver",
]
