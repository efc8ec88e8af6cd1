"""The block/blob catalog: the one owner of the ``blocks`` and ``blobs`` tables (schema.py, I3-I6).

Every statement on those tables is here, behind methods that keep the invariants, with rows handed
out as dataclasses. It also owns what the tables alone do not say and the upload pipeline needs:
how many staged bytes there are, which staged blocks an upload is reading (*pinned*), and which of
those were released meanwhile (*doomed*: their staging files go once the upload lets go of them).
That state changes only through these methods. Files and memory are BlockStore's (blocks.py); the
catalog only says when a staging file may go.

fsck keeps a few raw queries of its own: they recount what these methods maintain, to find
corruption that going through them would hide (fsck.py says which).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import trio

from .db import Database

_CHUNK = 500  # ids per "IN (...)" statement (SQLite's default limit on parameters is far higher)


@dataclass(frozen=True)
class StagedBlock:
    """A block with ``blob IS NULL``: its bytes are only in staging/<id> (I4)."""

    id: int
    size: int
    digest: bytes


@dataclass(frozen=True)
class BlockLocation:
    """Where a block's bytes are: its blob (None while staged) and offset there."""

    digest: bytes
    size: int
    blob_id: str | None
    offset: int | None


@dataclass(frozen=True)
class ReleasedBlock:
    """A block whose last reference went: deleted from the catalog."""

    id: int
    size: int
    staged: bool


@dataclass(frozen=True)
class BlobRecord:
    id: int  # row id
    blob_id: str
    length: int
    certificate: str
    refcount: int
    created_ns: int


class Pack(list[StagedBlock]):
    """Staged blocks to upload as one blob. ``full``: no further staged block fits, so waiting for
    more writes cannot make it bigger (a pack whose blocks stop just short of the blob size is as
    full as it gets: without this, steady small writes kept postponing every upload)."""

    full: bool = False


class Catalog:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._staged_bytes = int(db.get_val("SELECT COALESCE(SUM(size), 0) FROM blocks WHERE blob IS NULL"))
        self._pinned: dict[int, int] = {}  # staged block id -> size, while an upload reads it
        self._pinned_bytes = 0
        self._doomed: set[int] = set()  # pinned blocks released meanwhile
        # Releases of blobs from the nodes (gc.py), for stores that may make the very same blob again
        # (the same blocks packed the same way): blob ID -> the serial its last release began at, and
        # an event per release in flight. See released_since.
        self._release_serial = 0
        self._releases: dict[str, int] = {}
        self._releasing: dict[str, trio.Event] = {}

    # -- what is staged ----------------------------------------------------------------------

    @property
    def staged_bytes(self) -> int:
        """Bytes of staged blocks: written, not yet in a certified blob."""
        return self._staged_bytes

    @property
    def pinned_bytes(self) -> int:
        """Bytes of staged blocks that uploads are reading now."""
        return self._pinned_bytes

    @property
    def unpinned_bytes(self) -> int:
        return self._staged_bytes - self._pinned_bytes

    def staged(self) -> list[StagedBlock]:
        """Every staged block, in staging order."""
        return [StagedBlock(block_id, size, bytes(digest)) for block_id, size, digest in
                self.db.execute("SELECT id, size, hash FROM blocks WHERE blob IS NULL ORDER BY id")]

    def staged_ids(self) -> list[int]:
        return [block_id for (block_id,) in self.db.execute("SELECT id FROM blocks WHERE blob IS NULL ORDER BY id")]

    def count_staged(self, block_ids: Sequence[int] | None = None) -> int:
        """How many of ``block_ids`` (default: all blocks) are still staged."""
        if block_ids is None:
            return int(self.db.get_val("SELECT COUNT(*) FROM blocks WHERE blob IS NULL"))
        remaining = 0
        for start in range(0, len(block_ids), _CHUNK):
            chunk = tuple(block_ids[start : start + _CHUNK])
            remaining += int(self.db.get_val(
                f"SELECT COUNT(*) FROM blocks WHERE blob IS NULL AND id IN ({','.join('?' * len(chunk))})", chunk))
        return remaining

    def next_pack(self, blob_size: int, block_overhead: int = 0) -> Pack:
        """The oldest unpinned staged blocks whose contents fit in ``blob_size`` bytes (at least one,
        if any). ``block_overhead`` is what each stored block has beyond its content (a sealed block's
        header and tag): not counted, so that sixteen sealed 1 MiB blocks still make one 16 MiB blob,
        not fifteen (which cost encryption 1/15 more blobs, each with its fixed per-blob work)."""
        pack = Pack()
        total = 0
        for block_id, size, digest in self.db.execute(
                "SELECT id, size, hash FROM blocks WHERE blob IS NULL ORDER BY id"):
            if block_id in self._pinned:
                continue
            content = max(size - block_overhead, 0)
            if pack and total + content > blob_size:
                pack.full = True
                break
            pack.append(StagedBlock(block_id, size, bytes(digest)))
            total += content
        pack.full = pack.full or total >= blob_size
        return pack

    # -- pins: staged blocks an upload is reading ------------------------------------------------

    def pin(self, blocks: Iterable[StagedBlock]) -> None:
        for block in blocks:
            if block.id not in self._pinned:
                self._pinned[block.id] = block.size
                self._pinned_bytes += block.size

    def unpin(self, blocks: Iterable[StagedBlock]) -> list[int]:
        """The upload is done with ``blocks``. Returns those released meanwhile: their staging files
        may go now."""
        gone = []
        for block in blocks:
            self._pinned_bytes -= self._pinned.pop(block.id, 0)
            if block.id in self._doomed:
                self._doomed.discard(block.id)
                gone.append(block.id)
        return gone

    def is_pinned(self, block_id: int) -> bool:
        return block_id in self._pinned

    # -- references (call inside a transaction) -----------------------------------------------

    def find(self, digest: bytes) -> int | None:
        block_id = self.db.get_val("SELECT id FROM blocks WHERE hash=?", (digest,))
        return None if block_id is None else int(block_id)

    def add_reference(self, block_id: int) -> None:
        self.db.execute("UPDATE blocks SET refcount=refcount+1 WHERE id=?", (block_id,))

    def add_staged(self, digest: bytes, size: int) -> int:
        """A new staged block with one reference; the caller writes its staging file before the
        transaction commits (I4)."""
        block_id = self.db.rowid(
            "INSERT INTO blocks (hash, size, refcount, blob, offset) VALUES (?, ?, 1, NULL, NULL)", (digest, size))
        self._staged_bytes += size
        return block_id

    def release(self, block_id: int) -> ReleasedBlock | None:
        """Drop one reference. The last one deletes the block (and a reference of its blob, I6) and
        returns it; None while others remain."""
        row = self.db.get_row("SELECT refcount, blob, size FROM blocks WHERE id=?", (block_id,))
        if row is None:
            raise RuntimeError(f"block {block_id} is referenced but does not exist (run fsck)")
        refcount, blob, size = row
        if refcount > 1:
            self.db.execute("UPDATE blocks SET refcount=refcount-1 WHERE id=?", (block_id,))
            return None
        self.db.execute("DELETE FROM blocks WHERE id=?", (block_id,))
        if blob is not None:
            self.db.execute("UPDATE blobs SET refcount=refcount-1 WHERE id=?", (blob,))
        return ReleasedBlock(block_id, int(size), blob is None)

    def forget_staged(self, block: ReleasedBlock) -> bool:
        """A released staged block's deletion committed: it no longer counts as staged. Returns
        whether its staging file may go now (False while an upload reads it: unpin says when)."""
        self._staged_bytes -= block.size
        if block.id in self._pinned:
            self._doomed.add(block.id)
            return False
        return True

    def location(self, block_id: int) -> BlockLocation | None:
        row = self.db.get_row(
            "SELECT blocks.hash, blocks.size, blobs.blob_id, blocks.offset FROM blocks "
            "LEFT JOIN blobs ON blobs.id = blocks.blob WHERE blocks.id=?", (block_id,))
        if row is None:
            return None
        digest, size, blob_id, offset = row
        return BlockLocation(bytes(digest), int(size), blob_id, offset)

    def used_bytes(self) -> int:
        """Bytes of all blocks, staged or certified (each counted once however often it is used)."""
        return int(self.db.get_val("SELECT COALESCE(SUM(size), 0) FROM blocks"))

    # -- releases from the nodes (gc.py) -----------------------------------------------------

    @property
    def release_serial(self) -> int:
        """Read before a store: released_since says whether a release may have undone it."""
        return self._release_serial

    def begin_release(self, blob_id: str) -> None:
        self._release_serial += 1
        self._releases[blob_id] = self._release_serial
        self._releasing[blob_id] = trio.Event()

    def end_release(self, blob_id: str) -> None:
        self._release_serial += 1
        self._releases[blob_id] = self._release_serial
        event = self._releasing.pop(blob_id, None)
        if event is not None:
            event.set()

    def released_since(self, blob_id: str, serial: int) -> bool:
        """Whether a release of ``blob_id`` overlapped a store that began at ``serial`` (release_serial
        then): one in flight now, or one that began or ended since. The nodes may then have deleted
        what the store put there, and it must be stored again once the release is over."""
        return blob_id in self._releasing or self._releases.get(blob_id, 0) > serial

    async def release_finished(self, blob_id: str) -> None:
        event = self._releasing.get(blob_id)
        if event is not None:
            await event.wait()

    # -- certified blobs ------------------------------------------------------------------

    def record_certified(self, blob_id: str, length: int, certificate: str, pack: Sequence[StagedBlock]) -> int:
        """``pack``, laid end to end, is blob ``blob_id``, certified: its still-staged blocks now lie
        in it (I5, I6). Returns how many were placed (released ones are skipped). The caller syncs the
        database before removing the staging files (I4)."""
        placed_bytes = 0
        with self.db.transaction():
            # The same blocks packed the same way make the same blob: one recorded before (its
            # blocks since released) takes these blocks, with the fresh certificate.
            row = self._blob_row(blob_id, length, certificate)
            offset = placed = 0
            for block in pack:
                cursor = self.db.execute("UPDATE blocks SET blob=?, offset=? WHERE id=? AND blob IS NULL",
                                         (row, offset, block.id))
                if cursor.rowcount:
                    placed += 1
                    placed_bytes += block.size
                offset += block.size
            self.db.execute("UPDATE blobs SET refcount=refcount+? WHERE id=?", (placed, row))
        self._staged_bytes -= placed_bytes
        return placed

    def _blob_row(self, blob_id: str, length: int, certificate: str) -> int:
        """The row of a blob just certified. The same blob recorded before (its blocks since released)
        takes the fresh certificate; if it was on gc's to-release list it is no longer garbage (the
        store that certified it again began after any release of it: the uploader sees to that)."""
        self.db.execute("DELETE FROM gc_release WHERE blob_id=?", (blob_id,))
        row = self.db.get_val("SELECT id FROM blobs WHERE blob_id=?", (blob_id,))
        if row is None:
            return self.db.rowid(
                "INSERT INTO blobs (blob_id, length, certificate, refcount, created_ns) VALUES (?, ?, ?, 0, ?)",
                (blob_id, length, certificate, time.time_ns()))
        self.db.execute("UPDATE blobs SET certificate=?, created_ns=? WHERE id=?", (certificate, time.time_ns(), row))
        return int(row)

    def move_blocks(self, old_blob_id: str, blob_id: str, length: int, certificate: str,
                    placed: Sequence[tuple[int, int]]) -> list[int]:
        """Compaction: blocks (id, offset in the new blob) of ``old_blob_id`` now lie in ``blob_id``,
        certified, all in one transaction. Blocks released meanwhile are skipped. Returns the ids moved."""
        moved: list[int] = []
        with self.db.transaction():
            old = self.db.get_val("SELECT id FROM blobs WHERE blob_id=?", (old_blob_id,))
            row = self._blob_row(blob_id, length, certificate)
            for block_id, offset in placed:
                cursor = self.db.execute("UPDATE blocks SET blob=?, offset=? WHERE id=? AND blob=?",
                                         (row, offset, block_id, old))
                if cursor.rowcount:
                    moved.append(block_id)
            self.db.execute("UPDATE blobs SET refcount=refcount+? WHERE id=?", (len(moved), row))
            self.db.execute("UPDATE blobs SET refcount=refcount-? WHERE id=?", (len(moved), old))
        return moved

    def blobs(self) -> list[BlobRecord]:
        """Every blob on record, in recording order."""
        return [BlobRecord(*row) for row in self.db.execute(
            "SELECT id, blob_id, length, certificate, refcount, created_ns FROM blobs ORDER BY id")]

    def live_blob_ids(self) -> list[str]:
        """Blobs holding at least one live block, in recording order."""
        return [blob_id for (blob_id,) in self.db.execute("SELECT blob_id FROM blobs WHERE refcount > 0 ORDER BY id")]

    def blob_ids_of_blocks(self, inode: int, after: int, upto: int) -> list[str]:
        """The certified blobs holding blocks ``after`` < blockno <= ``upto`` of a file (read-ahead)."""
        return [blob_id for (blob_id,) in self.db.execute(
            "SELECT DISTINCT blobs.blob_id FROM inode_blocks JOIN blocks ON blocks.id = inode_blocks.block "
            "JOIN blobs ON blobs.id = blocks.blob WHERE inode_blocks.inode=? AND inode_blocks.blockno > ? "
            "AND inode_blocks.blockno <= ?", (inode, after, upto))]

    def staged_blocks_of(self, inode: int) -> list[int]:
        """The ids of a file's blocks that are still staged (what its fsync waits for)."""
        return [block_id for (block_id,) in self.db.execute(
            "SELECT blocks.id FROM inode_blocks JOIN blocks ON blocks.id = inode_blocks.block "
            "WHERE inode_blocks.inode=? AND blocks.blob IS NULL", (inode,))]

    def set_certificate(self, row_id: int, certificate: str) -> None:
        self.db.execute("UPDATE blobs SET certificate=? WHERE id=?", (certificate, row_id))


def resolve_staged(conn: sqlite3.Connection, reference: str = "ref") -> tuple[int, int]:
    """In a snapshot's database (``conn``, with the live one attached as ``reference``): point each
    block the snapshot recorded as staged at the certified blob that holds the same content in the
    live database by now. Blocks are content-addressed, so it is the same data. Call inside a
    transaction. Returns (resolved, still staged)."""
    staged = conn.execute("SELECT id, hash FROM blocks WHERE blob IS NULL").fetchall()
    resolved = 0
    for block, digest in staged:
        found = conn.execute(
            f"SELECT o.blob_id, o.length, o.certificate, o.created_ns, b.offset FROM {reference}.blocks b "
            f"JOIN {reference}.blobs o ON o.id = b.blob WHERE b.hash = ?", (digest,)).fetchone()
        if found is None:
            continue
        blob_id, length, certificate, created, offset = found
        row = conn.execute("SELECT id FROM blobs WHERE blob_id=?", (blob_id,)).fetchone()
        if row is None:
            row = (conn.execute("INSERT INTO blobs (blob_id, length, certificate, refcount, created_ns) "
                                "VALUES (?, ?, ?, 0, ?)", (blob_id, length, certificate, created)).lastrowid,)
        conn.execute("UPDATE blocks SET blob=?, offset=? WHERE id=?", (row[0], offset, block))
        conn.execute("UPDATE blobs SET refcount=refcount+1 WHERE id=?", (row[0],))
        resolved += 1
    return resolved, len(staged) - resolved
