"""What a filesystem can still reach on the network: the blobs garbage collection must never delete,
and the ones the mount renews (issue 16; docs/gc.md).

A blob is reachable when any of these needs it:

- the live tree: a blob holding at least one block a file uses (blobs.refcount > 0, I6);
- a retained snapshot: every blob listed under it in snapshot_blobs (its data blobs, its segment
  blobs and its manifest, I12). The publisher records them before the root record goes out, so a
  snapshot that may be on the nodes is always recorded; the retention policy decides when one
  ages out (retained = 0);
- a snapshot mounted read-only on this machine right now: its pin file (below) is locked by the
  mount daemon, and the blobs are read from the snapshot's own database, so it stays readable even
  after the retention policy has dropped it;
- a pin (the pins table: published datasets, an operator's "keep this").

Remote read-only mounts (read capabilities on other machines) cannot tell the writer they exist:
what they read is kept as long as the retention policy keeps its snapshot, and no longer.

Snapshots published before schema 3 have no record of their blobs. Those the last manifest still
lists are reported as ``unrecorded``: gc must record them (reading their databases from the
network, gc.py) before it may delete anything.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from ..redstuff import BlobId
from .config import FsState
from .db import Database
from .snapshot import Manifest, SnapshotError

PIN_FILE = "in-use"  # <state>/snapshots/<seq>/in-use: locked while a read-only mount shows snapshot seq


@dataclass
class Reachability:
    """The reachable blob IDs (text), by what reaches them."""

    live: set[str] = field(default_factory=set)
    snapshots: set[str] = field(default_factory=set)
    mounted: set[str] = field(default_factory=set)
    pinned: set[str] = field(default_factory=set)
    mounted_seqs: list[int] = field(default_factory=list)  # snapshots read-only mounts show now
    unrecorded: list[int] = field(default_factory=list)  # retained snapshots without a record (pre schema 3)

    @property
    def all(self) -> set[str]:
        return self.live | self.snapshots | self.mounted | self.pinned

    def __contains__(self, blob_id: object) -> bool:
        return blob_id in self.live or blob_id in self.snapshots or blob_id in self.mounted or blob_id in self.pinned


def blobs_of_database(conn: sqlite3.Connection) -> dict[str, int]:
    """The data blobs (ID -> length) a metadata database's tree uses (a snapshot's copy, or the live one)."""
    return {blob_id: int(length) for blob_id, length in conn.execute(
        "SELECT DISTINCT blobs.blob_id, blobs.length FROM blocks JOIN blobs ON blobs.id = blocks.blob "
        "WHERE blocks.refcount > 0")}


def blobs_of_database_file(path: Path) -> dict[str, int]:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return blobs_of_database(conn)


def blobs_of_snapshot(data_blobs: dict[str, int], manifest: Manifest, manifest_id: str,
                      manifest_length: int) -> dict[str, int]:
    """Every blob (ID -> length) a snapshot needs: its tree's data blobs, its segment blobs, its manifest."""
    needed = dict(data_blobs)
    for segment in manifest.segments:
        needed[segment.blob] = max(needed.get(segment.blob, 0), segment.offset + segment.length)
    needed[manifest_id] = manifest_length
    return needed


def record_snapshot(db: Database, seq: int, created_ns: int, manifest_id: str, needed: dict[str, int]) -> None:
    """Record what snapshot ``seq`` needs, as retained: before its root record goes out (I12)."""
    with db.transaction():
        db.execute("INSERT OR REPLACE INTO snapshots (seq, created_ns, manifest, retained) VALUES (?, ?, ?, 1)",
                   (seq, created_ns, manifest_id))
        db.execute("DELETE FROM snapshot_blobs WHERE seq=?", (seq,))
        db.conn.executemany("INSERT INTO snapshot_blobs (seq, blob_id, length) VALUES (?, ?, ?)",
                            [(seq, blob_id, length) for blob_id, length in needed.items()])


def retire_snapshots(db: Database, published: int, kept: set[int]) -> int:
    """Snapshot ``published`` is on the nodes and its manifest keeps ``kept``: every older one not
    kept has aged out (newer attempts stay: their records may be on some nodes). Returns how many."""
    retired = 0
    with db.transaction():
        for (seq,) in db.execute("SELECT seq FROM snapshots WHERE retained = 1 AND seq < ?", (published,)).fetchall():
            if seq not in kept:
                db.execute("UPDATE snapshots SET retained = 0 WHERE seq=?", (seq,))
                retired += 1
    return retired


def retained_in_manifest(state: FsState) -> list[int]:
    """The snapshots the last manifest published from this state keeps: itself and its history."""
    try:
        manifest = Manifest.from_bytes(state.snapshot_manifest.read_bytes())
    except FileNotFoundError:
        return []
    except (OSError, SnapshotError):
        # Unreadable: the local snapshot state names the last one (fsck repairs the manifest file).
        try:
            seq = json.loads(state.snapshot_state.read_text()).get("seq")
        except (OSError, ValueError):
            return []
        return [] if seq is None else [int(seq)]
    return [*(ref.seq for ref in manifest.history), manifest.seq]


def compute(db: Database, state: FsState | None = None) -> Reachability:
    """Everything the filesystem can reach now (``state``: its state directory, for the snapshots
    mounted read-only and the last manifest; None for a database alone)."""
    found = Reachability()
    found.live = {blob_id for (blob_id,) in db.execute("SELECT blob_id FROM blobs WHERE refcount > 0")}
    found.snapshots = {blob_id for (blob_id,) in db.execute(
        "SELECT DISTINCT b.blob_id FROM snapshot_blobs b JOIN snapshots s ON s.seq = b.seq WHERE s.retained = 1")}
    found.pinned = {blob_id for (blob_id,) in db.execute("SELECT blob_id FROM pins")}
    if state is not None:
        recorded = {seq for (seq,) in db.execute("SELECT seq FROM snapshots WHERE retained = 1")}
        found.unrecorded = sorted(set(retained_in_manifest(state)) - recorded)
        for seq, db_path in mounted_snapshots(state):
            found.mounted_seqs.append(seq)
            found.mounted |= set(blobs_of_database_file(db_path))
    return found


def reachable_blobs(db: Database, state: FsState | None = None) -> set[BlobId]:
    """The blobs the filesystem can still reach (the renewal task renews exactly these)."""
    return {BlobId.parse(blob_id) for blob_id in compute(db, state).all}


# -- pins of read-only mounts of older snapshots -------------------------------------------------------


def mounted_snapshots(state: FsState) -> Iterator[tuple[int, Path]]:
    """(seq, database) of each snapshot a read-only mount on this machine shows now: its pin file is
    locked (gc's exclusive try fails). A daemon that died (kill -9) let go of its lock, so its pin does not count."""
    try:
        entries = list(os.scandir(state.snapshots))
    except FileNotFoundError:
        return
    for entry in entries:
        if not entry.name.isdigit():
            continue
        pin = Path(entry.path) / PIN_FILE
        try:
            fd = os.open(pin, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield int(entry.name), Path(entry.path) / "metadata.db"
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def pin_snapshot(db_path: Path) -> int:
    """Taken by a read-only mount of an older snapshot for as long as it runs (``db_path``: the
    snapshot's database under <state>/snapshots/<seq>/): the writer's gc keeps every blob it uses.
    Returns the descriptor holding the pin; closing it (or the process ending) lets go."""
    fd = os.open(db_path.parent / PIN_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)  # shared: several mounts may show one snapshot
    return fd
