"""The block/blob catalog (catalog.py) on a real SQLite database in a temp dir: one layer, no mount.

Each method keeps schema.py's invariants I3-I6 and the staged/pinned/doomed bookkeeping the upload
pipeline relies on."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import blake3
import pytest

from walrusfs.fs.catalog import Catalog, resolve_staged
from walrusfs.fs.db import Database
from walrusfs.fs.schema import DDL, SCHEMA_VERSION


def new_db(path: Path) -> Database:
    db = Database(path)
    db.conn.executescript(DDL)
    db.execute("INSERT INTO settings (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    return db


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog(new_db(tmp_path / "meta.db"))


def stage(catalog: Catalog, data: bytes) -> int:
    digest = blake3.blake3(data).digest()
    with catalog.db.transaction():
        existing = catalog.find(digest)
        if existing is not None:
            catalog.add_reference(existing)
            return existing
        return catalog.add_staged(digest, len(data))


def test_staging_counts_bytes_once_per_distinct_content(catalog: Catalog) -> None:
    a = stage(catalog, b"a" * 100)
    assert stage(catalog, b"a" * 100) == a
    b = stage(catalog, b"b" * 50)
    assert catalog.staged_bytes == 150
    assert catalog.staged_ids() == [a, b]
    assert [(s.id, s.size) for s in catalog.staged()] == [(a, 100), (b, 50)]
    assert catalog.count_staged() == 2 and catalog.count_staged([b]) == 1
    assert catalog.location(a).blob_id is None and catalog.location(a).size == 100


def test_next_pack_takes_the_oldest_unpinned_blocks_up_to_the_blob_size(catalog: Catalog) -> None:
    ids = [stage(catalog, bytes([i]) * 40) for i in range(5)]
    pack = catalog.next_pack(100)
    assert [b.id for b in pack] == ids[:2]
    catalog.pin(pack)
    assert catalog.pinned_bytes == 80 and catalog.unpinned_bytes == 120
    assert [b.id for b in catalog.next_pack(100)] == ids[2:4]
    assert [b.id for b in catalog.next_pack(10)] == ids[2:3]  # one block even if it alone is larger
    assert pack.full and catalog.next_pack(100).full  # no further block fits: waiting cannot fill it more
    assert not catalog.next_pack(1000).full  # room left: worth waiting for more writes
    assert catalog.unpin(pack) == []
    assert catalog.pinned_bytes == 0


def test_a_sealed_blocks_overhead_does_not_count_against_the_blob_size(catalog: Catalog) -> None:
    ids = [stage(catalog, bytes([i]) * 30) for i in range(5)]  # 25 bytes of content + 5 of sealing each
    assert [b.id for b in catalog.next_pack(100)] == ids[:3]  # counted as stored: 3 x 30
    pack = catalog.next_pack(100, block_overhead=5)
    assert [b.id for b in pack] == ids[:4] and pack.full  # counted as content: 4 x 25 fill the blob


def test_releasing_the_last_reference_deletes_the_block_and_its_file_waits_for_the_upload(catalog: Catalog) -> None:
    a = stage(catalog, b"a" * 100)
    stage(catalog, b"a" * 100)
    b = stage(catalog, b"b" * 10)
    with catalog.db.transaction():
        assert catalog.release(a) is None  # one reference left
    pack = catalog.next_pack(1000)
    catalog.pin(pack)
    with catalog.db.transaction():
        released = catalog.release(a)
    assert released is not None and released.staged and released.size == 100
    assert catalog.forget_staged(released) is False  # pinned: its file stays until the upload lets go
    assert catalog.staged_bytes == 10
    assert catalog.unpin(pack) == [a]  # now it may go
    with catalog.db.transaction():
        released = catalog.release(b)
    assert catalog.forget_staged(released) is True
    assert catalog.staged_bytes == 0 and catalog.count_staged() == 0


def test_record_certified_places_the_still_staged_blocks_and_counts_the_blob_references(catalog: Catalog) -> None:
    a, b, c = (stage(catalog, bytes([i]) * 10) for i in range(3))
    pack = catalog.next_pack(1000)
    catalog.pin(pack)
    with catalog.db.transaction():
        catalog.forget_staged(catalog.release(b))  # released while uploading: not placed
    assert catalog.record_certified("blob1", 30, '{"cert": 1}', pack) == 2
    assert catalog.staged_bytes == 0
    assert catalog.location(a).blob_id == "blob1" and catalog.location(a).offset == 0
    assert catalog.location(c).offset == 20  # its place in the blob, as packed
    [blob] = catalog.blobs()
    assert (blob.blob_id, blob.length, blob.refcount, blob.certificate) == ("blob1", 30, 2, '{"cert": 1}')
    assert catalog.live_blob_ids() == ["blob1"]
    with catalog.db.transaction():
        catalog.release(a)
        catalog.release(c)
    assert catalog.blobs()[0].refcount == 0 and catalog.live_blob_ids() == []
    catalog.set_certificate(blob.id, '{"cert": 2}')
    assert catalog.blobs()[0].certificate == '{"cert": 2}'


def test_the_same_blob_recorded_again_takes_the_fresh_certificate(catalog: Catalog) -> None:
    a = stage(catalog, b"x" * 10)
    pack = catalog.next_pack(1000)
    catalog.record_certified("same", 10, "old", pack)
    with catalog.db.transaction():
        catalog.release(a)
    a2 = stage(catalog, b"x" * 10)
    assert catalog.record_certified("same", 10, "new", catalog.next_pack(1000)) == 1
    [blob] = catalog.blobs()
    assert blob.certificate == "new" and blob.refcount == 1 and catalog.location(a2).blob_id == "same"


def test_staged_bytes_survive_a_reopen(tmp_path: Path) -> None:
    db = new_db(tmp_path / "meta.db")
    stage(Catalog(db), b"q" * 77)
    assert Catalog(db).staged_bytes == 77


def test_resolve_staged_points_a_snapshot_block_at_the_live_blob_with_the_same_content(tmp_path: Path) -> None:
    live = Catalog(new_db(tmp_path / "live.db"))
    stage(live, b"L" * 10)
    stage(live, b"M" * 10)
    live.record_certified("liveblob", 20, "cert", live.next_pack(1000))
    live.db.sync()
    snap = Catalog(new_db(tmp_path / "snap.db"))
    stage(snap, b"M" * 10)
    stage(snap, b"only here" * 3)
    snap.db.close()
    conn = sqlite3.connect(tmp_path / "snap.db", isolation_level=None)
    conn.execute("ATTACH DATABASE ? AS ref", (f"file:{tmp_path / 'live.db'}?mode=ro",))
    conn.execute("BEGIN")
    assert resolve_staged(conn, "ref") == (1, 1)
    conn.execute("COMMIT")
    conn.close()
    snap = Catalog(Database(tmp_path / "snap.db"))
    assert snap.staged_bytes == 27
    [blob] = snap.blobs()
    assert (blob.blob_id, blob.refcount) == ("liveblob", 1)
    assert snap.location(1).offset == 10


def test_what_a_file_waits_for_and_reads_ahead_from(catalog: Catalog) -> None:
    a, b, c = (stage(catalog, bytes([i]) * 10) for i in range(3))
    for blockno, block in enumerate((a, b, c)):
        catalog.db.execute("INSERT INTO inode_blocks (inode, blockno, block) VALUES (5, ?, ?)", (blockno, block))
    catalog.record_certified("first", 10, "cert", catalog.next_pack(10))  # block a only
    assert catalog.staged_blocks_of(5) == [b, c]
    assert catalog.blob_ids_of_blocks(5, -1, 2) == ["first"]
    assert catalog.blob_ids_of_blocks(5, 0, 2) == []  # blocks 1..2 are still staged
    assert catalog.used_bytes() == 30
