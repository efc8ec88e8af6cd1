"""Compaction: blobs whose live fraction fell below ``compact_below`` (fs.toml) have their live blocks
repacked into new blobs (docs/gc.md).

Many small files share a blob, so deleting most of them leaves a blob mostly dead that no block
count ever brings to zero. Compaction reads such blobs, stores their live blocks (as stored: sealed
blocks stay sealed, no key needed) end to end in a new certified blob, and moves the block map over
in one transaction per old blob (Catalog.move_blocks). The old blob then has no live block: gc lists
it for release like any other garbage, once no retained snapshot needs it.

Reads never fail meanwhile: until the move commits, blocks are read from the old blob, which stays
on the nodes; a read that looked its block up just before the move and fetches after the old blob
is released looks it up again (BlockStore.content). Blobs a retained snapshot, a read-only mount or
a pin needs are left alone: compacting them would store their live bytes twice until they age out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..client import BlobClient
from ..redstuff import BlobId
from .cache import BlobCache
from .catalog import Catalog
from .db import Database
from .reachable import Reachability

log = logging.getLogger(__name__)


class Collecting(Protocol):
    """What compaction needs of the garbage collector that runs it (gc.py)."""

    db: Database
    catalog: Catalog
    client: BlobClient
    cache: BlobCache | None
    compact_below: float
    blob_size: int


@dataclass
class Compacted:
    blobs: int = 0  # sparse blobs repacked (or, in a dry run, that would be)
    rewritten_bytes: int = 0  # live bytes stored again


@dataclass(frozen=True)
class Sparse:
    """A blob below the threshold: its live bytes and length."""

    row: int
    blob_id: str
    length: int
    live: int


def sparse_blobs(gc: Collecting, reach: Reachability) -> list[Sparse]:
    """Blobs whose live fraction is below the threshold and that only the live tree needs, sparsest first."""
    kept_otherwise = reach.snapshots | reach.mounted | reach.pinned
    found = []
    for row, blob_id, length, live in gc.db.execute(
            "SELECT b.id, b.blob_id, b.length, COALESCE(SUM(k.size), 0) FROM blobs b JOIN blocks k ON k.blob = b.id "
            "WHERE b.refcount > 0 GROUP BY b.id"):
        if live < gc.compact_below * length and blob_id not in kept_otherwise:
            found.append(Sparse(int(row), blob_id, int(length), int(live)))
    return sorted(found, key=lambda s: s.live / max(s.length, 1))


class Compactor:
    def __init__(self, gc: Collecting, reach: Reachability) -> None:
        self.gc = gc
        self.reach = reach

    async def run(self, dry_run: bool, step: Callable[[str, int, int], None]) -> Compacted:
        sparse = sparse_blobs(self.gc, self.reach)
        result = Compacted()
        if dry_run or not sparse:
            return Compacted(len(sparse), sum(s.live for s in sparse))
        groups: list[list[Sparse]] = [[]]
        for blob in sparse:  # packs of about blob_size live bytes
            if groups[-1] and sum(b.live for b in groups[-1]) + blob.live > self.gc.blob_size:
                groups.append([])
            groups[-1].append(blob)
        total = sum(s.live for s in sparse)
        done = 0
        step("compacting", 0, total)
        for group in groups:
            await self._repack(group, result)
            done += sum(b.live for b in group)
            step("compacting", done, total)
        return result

    async def _read(self, blob_id: str, length: int) -> bytes:
        cache = self.gc.cache
        if cache is not None and cache.contains(blob_id):
            return await cache.read(blob_id, 0, length)
        return bytes(await self.gc.client.read(BlobId.parse(blob_id)))

    async def _repack(self, group: list[Sparse], result: Compacted) -> None:
        db, catalog = self.gc.db, self.gc.catalog
        parts: list[bytes] = []
        placements: dict[str, list[tuple[int, int]]] = {}  # old blob -> (block id, offset in the new blob)
        offset = 0
        for blob in group:
            data = await self._read(blob.blob_id, blob.length)
            for block_id, at, size in db.execute(
                    "SELECT id, offset, size FROM blocks WHERE blob=? ORDER BY offset", (blob.row,)).fetchall():
                parts.append(data[at : at + size])
                placements.setdefault(blob.blob_id, []).append((int(block_id), offset))
                offset += size
        if not parts:
            return
        payload = b"".join(parts)
        serial = catalog.release_serial
        stored = await self.gc.client.store(payload)
        new_id = str(stored.blob_id)
        while catalog.released_since(new_id, serial):  # as the uploader does (uploader.py)
            await catalog.release_finished(new_id)
            serial = catalog.release_serial
            stored = await self.gc.client.store(payload)
        certificate = stored.certificate.to_json()
        moved = 0
        for old, placed in placements.items():
            moved += len(catalog.move_blocks(old, new_id, len(payload), certificate, placed))
        db.sync()  # the move is durable before the old blobs can be released
        result.blobs += len(group)
        result.rewritten_bytes += len(payload)
        log.info("compaction: %d blobs (%d bytes) repacked into %s: %d live bytes, %d blocks moved",
                 len(group), sum(b.length for b in group), new_id, len(payload), moved)
