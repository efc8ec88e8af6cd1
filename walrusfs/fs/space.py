"""Space accounting: what a filesystem occupies on the network, after encoding, next to what it holds
(``walrusfs status``; ``df`` on a mount shows network_bytes plus the staged bytes as used; docs/gc.md).

    logical_bytes   bytes of the distinct blocks the live tree uses (as stored: sealed, deduplicated)
    blob_bytes      bytes of every blob this filesystem has on the nodes: live, kept for a retained
                    snapshot, or garbage not yet released
    network_bytes   what those blobs take over all nodes' disks: their encoded length (RedStuff's
                    slivers on every shard)

Blobs stored by a crashed snapshot or upload that no record names are not counted: the database
does not know of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..redstuff.geometry import EncodingGeometry
from .db import Database


@dataclass(frozen=True)
class Space:
    logical_bytes: int
    blob_bytes: int
    network_bytes: int
    blobs: int

    def to_json(self) -> dict[str, Any]:
        return {"logical_bytes": self.logical_bytes, "blob_bytes": self.blob_bytes,
                "network_bytes": self.network_bytes, "blobs": self.blobs}


def blob_lengths(db: Database) -> dict[str, int]:
    """Every blob the database says is (or may still be) on the nodes, with its length."""
    lengths: dict[str, int] = {}
    for sql in ("SELECT blob_id, length FROM blobs", "SELECT blob_id, length FROM snapshot_blobs",
                "SELECT blob_id, length FROM gc_release"):
        for blob_id, length in db.execute(sql):
            lengths[blob_id] = max(lengths.get(blob_id, 0), int(length))
    return lengths


def measure(db: Database, geometry: EncodingGeometry) -> Space:
    lengths = blob_lengths(db)
    encoded = sum(geometry.layout(length).encoded_length for length in lengths.values() if length > 0)
    logical = int(db.get_val("SELECT COALESCE(SUM(size), 0) FROM blocks"))
    return Space(logical, sum(lengths.values()), encoded, len(lengths))


class SpaceAccount:
    """A mount's figures, recounted only when the database changed (statfs is called often: every
    df, some file managers)."""

    def __init__(self, db: Database, geometry: Callable[[], EncodingGeometry], staged_bytes: Callable[[], int]) -> None:
        self.db = db
        self.geometry = geometry
        self.staged_bytes = staged_bytes
        self._last: Space | None = None
        self._changes = -1

    def current(self) -> Space:
        changes = self.db.conn.total_changes
        if self._last is None or changes != self._changes:
            self._last, self._changes = measure(self.db, self.geometry()), changes
        return self._last

    def used_bytes(self) -> int:
        """What df shows as used: on the network after encoding, plus what is staged to go there."""
        return self.current().network_bytes + self.staged_bytes()

    def to_json(self) -> dict[str, Any]:
        return self.current().to_json()
