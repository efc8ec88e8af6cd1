"""The metadata database: one SQLite file in WAL mode, the single source of truth of the tree.

Invariants (each has one check in fsck; the operations keep them in one transaction each):

I1  inodes.refcount = number of dirents naming the inode (the root counts one for itself).
    An inode with refcount 0 lives on only while the kernel still knows it (open or looked up);
    then its blocks are released and the row deleted.
I2  Every dirents.inode and dirents.parent is an inode; every parent is a directory.
I3  blocks.refcount = number of inode_blocks rows pointing at the block; a block at 0 is deleted.
I4  A block with blob IS NULL is *staged*: its content is the file staging/<block id>, whose
    blake3 is blocks.hash. A staged block is never deleted before its blob is certified, unless
    no file references it any more.
I5  A block with blob set lies at [offset, offset+size) of that blob, and the blob has a row here,
    which exists only with a certificate of availability (n-f valid node signatures).
I6  blobs.refcount = number of blocks rows in that blob; a blob at 0 is garbage (kept listed for
    deletion from the nodes).
I7  inode_blocks rows of an inode have blockno * block_size < inodes.size (no data past EOF).
I8  A file's data is durable (fsync returns) only when each of its blocks satisfies I5, and the
    mount provably holds the filesystem's writer lease (walrusfs/fs/writer_lease.py).
I10 inodes.subdirs = number of dirents in that directory naming directories; a directory's st_nlink
    is 2 + subdirs (its name, its ".", each subdirectory's ".."), 0 once removed (schema 2).
I11 An xattrs row system.posix_acl_access is a valid ACL with a named user or group entry (a
    minimal one is only the mode, never stored), and its owner, group-class (mask, else owning
    group) and other entries equal the inode's permission bits; system.posix_acl_default is a
    valid ACL and only on directories (schema 2; acl.py).

I12 Every blob a retained snapshot references is listed under that snapshot in snapshot_blobs,
    recorded before its root record goes out (publisher.py); a snapshot whose record says
    retained=0 has aged out, and its blobs are garbage unless something else still reaches them
    (reachable.py, schema 3).
I13 A blob on the to-release list (gc_release) is reachable from nothing: no live block, no
    retained or in-use snapshot, no pin. It stays listed (and a data blob keeps its blobs row)
    until every node of the committee has released it (gc.py, schema 3).

Outside the database (publisher.py, snapshot.py):
I9  The root record on a quorum of nodes names the snapshot that <state>/snapshot.json records as
    published (a higher one means another machine wrote the filesystem: reported, never
    overwritten). Only the holder of the writer lease publishes (docs/writer-lease.md). Segment
    blobs and the manifest are certified before the record names them, and a sequence number is
    written down as attempted before any node sees it, so none is reused.
"""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from ..errors import UserError
from .acl import ACCESS, DEFAULT, Acl, AclError


class Database(Protocol):
    """What a migration needs of db.Database. Named here, not imported: db.py runs the migrations
    when it opens a database, so the schema sits below it and cannot import it back."""

    path: Path

    def execute(self, sql: str, params: tuple | dict = ...) -> sqlite3.Cursor: ...

    def get_val(self, sql: str, params: tuple | dict = ...) -> Any: ...

    def transaction(self) -> AbstractContextManager[None]: ...

SCHEMA_VERSION = 3

DDL = """
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE inodes (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the kernel may still know old ones
    mode     INTEGER NOT NULL,
    uid      INTEGER NOT NULL,
    gid      INTEGER NOT NULL,
    rdev     INTEGER NOT NULL DEFAULT 0,
    size     INTEGER NOT NULL DEFAULT 0,
    atime_ns INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    refcount INTEGER NOT NULL,
    subdirs  INTEGER NOT NULL DEFAULT 0  -- schema 2 (I10)
);
CREATE TABLE dirents (
    id     INTEGER PRIMARY KEY,   -- readdir offset: stable while the entry exists
    parent INTEGER NOT NULL REFERENCES inodes(id),
    name   BLOB NOT NULL,
    inode  INTEGER NOT NULL REFERENCES inodes(id),
    UNIQUE (parent, name)
);
CREATE INDEX dirents_by_inode ON dirents(inode);
CREATE TABLE symlinks (
    inode  INTEGER PRIMARY KEY REFERENCES inodes(id),
    target BLOB NOT NULL
);
CREATE TABLE xattrs (
    inode INTEGER NOT NULL REFERENCES inodes(id),
    name  BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (inode, name)
);
CREATE TABLE blobs (
    id          INTEGER PRIMARY KEY,
    blob_id     TEXT UNIQUE NOT NULL,
    length      INTEGER NOT NULL,
    certificate TEXT NOT NULL,
    refcount    INTEGER NOT NULL,
    created_ns  INTEGER NOT NULL
);
CREATE TABLE blocks (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: staging files are named by id
    hash     BLOB UNIQUE NOT NULL,
    size     INTEGER NOT NULL,
    refcount INTEGER NOT NULL,
    blob     INTEGER REFERENCES blobs(id),
    offset   INTEGER
);
CREATE INDEX blocks_staged ON blocks(blob) WHERE blob IS NULL;
CREATE INDEX blocks_by_blob ON blocks(blob);
CREATE TABLE inode_blocks (
    inode   INTEGER NOT NULL REFERENCES inodes(id),
    blockno INTEGER NOT NULL,
    block   INTEGER NOT NULL REFERENCES blocks(id),
    PRIMARY KEY (inode, blockno)
) WITHOUT ROWID;
CREATE INDEX inode_blocks_by_block ON inode_blocks(block);
""" + """
CREATE TABLE snapshots (      -- schema 3 (I12): snapshots published or attempted from this database
    seq        INTEGER PRIMARY KEY,
    created_ns INTEGER NOT NULL,
    manifest   TEXT NOT NULL,     -- its manifest blob
    retained   INTEGER NOT NULL   -- 1 while the retention policy keeps it (or it may be on the nodes)
);
CREATE TABLE snapshot_blobs (  -- schema 3 (I12): every blob a snapshot needs (data, segments, manifest)
    seq     INTEGER NOT NULL REFERENCES snapshots(seq),
    blob_id TEXT NOT NULL,
    length  INTEGER NOT NULL,
    PRIMARY KEY (seq, blob_id)
) WITHOUT ROWID;
CREATE INDEX snapshot_blobs_by_blob ON snapshot_blobs(blob_id);
CREATE TABLE pins (            -- schema 3: blobs kept whatever else says (published datasets, an operator)
    blob_id TEXT PRIMARY KEY,
    reason  TEXT NOT NULL
);
CREATE TABLE gc_release (      -- schema 3 (I13): the to-release list
    blob_id    TEXT PRIMARY KEY,
    length     INTEGER NOT NULL,
    queued_ns  INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
"""


class SchemaError(UserError):
    """A database this version cannot open (made by a newer walrusfs)."""


def _to_2(db: Database) -> list[str]:
    """Schema 1 -> 2: directory link counts (I10), and ACLs given a meaning (I11).

    Schema 1 stored system.posix_acl_* as ordinary xattrs and left the mode alone, so a tree
    copied with ``cp -a`` kept modes like 0600 while its ACL xattrs held the modes the copying tool
    set. Those ACLs are what the tool asked for: they are applied to the mode now; minimal ones
    then go (the mode says it all), invalid ones and default ACLs of non-directories are dropped."""
    notes = []
    db.execute("ALTER TABLE inodes ADD COLUMN subdirs INTEGER NOT NULL DEFAULT 0")
    db.execute("UPDATE inodes SET subdirs = (SELECT COUNT(*) FROM dirents d JOIN inodes c ON c.id = d.inode "
               "WHERE d.parent = inodes.id AND (c.mode & ?) = ?)", (0o170000, stat.S_IFDIR))
    applied = dropped = 0
    for inode, name, value, mode in db.execute(
            "SELECT x.inode, x.name, x.value, i.mode FROM xattrs x JOIN inodes i ON i.id = x.inode "
            "WHERE x.name IN (?, ?)", (ACCESS, DEFAULT)).fetchall():
        try:
            acl = Acl.parse(bytes(value))
        except AclError:
            acl = None
        name = bytes(name)
        if acl is None or (name == DEFAULT and not stat.S_ISDIR(mode)):
            db.execute("DELETE FROM xattrs WHERE inode=? AND name=?", (inode, name))
            dropped += 1
            continue
        if name == ACCESS:
            db.execute("UPDATE inodes SET mode=? WHERE id=?", ((mode & ~0o777) | acl.mode_bits(), inode))
            applied += 1
            if acl.is_minimal:
                db.execute("DELETE FROM xattrs WHERE inode=? AND name=?", (inode, name))
    if applied or dropped:
        notes.append(f"{applied} stored access ACLs applied to their modes, {dropped} invalid ACLs dropped")
    return notes


GC_DDL = DDL[DDL.index("CREATE TABLE snapshots ("):]


def _to_3(db: Database) -> list[str]:
    """Schema 2 -> 3: the tables of garbage collection (I12, I13), empty. Snapshots published before
    have no record of the blobs they need: gc finds them listed in the last manifest and reads their
    databases from the network before it deletes anything (reachable.py)."""
    for statement in GC_DDL.split(";"):
        if statement.strip():
            db.execute(statement)
    return []


# MIGRATIONS[n] turns a database of schema n into one of schema n+1 (inside one transaction).
MIGRATIONS: dict[int, Callable[[Database], list[str]]] = {1: _to_2, 2: _to_3}


def migrate(db: Database) -> list[str]:
    """Bring a database made by an older walrusfs up to SCHEMA_VERSION, all steps in one
    transaction (a crash leaves the old schema, migrated again at the next open). Returns what
    was done, for the log. A database without a settings table is new (mkfs creates it)."""
    if db.get_val("SELECT 1 FROM sqlite_master WHERE type='table' AND name='settings'") is None:
        return []
    version = int(db.get_val("SELECT value FROM settings WHERE key='schema_version'") or 1)
    if version > SCHEMA_VERSION:
        raise SchemaError(f"the metadata database {db.path} has schema {version}, made by a newer walrusfs "
                          f"(this one knows up to {SCHEMA_VERSION}): upgrade walrusfs to open it")
    notes = []
    if version < SCHEMA_VERSION:
        with db.transaction():
            for step in range(version, SCHEMA_VERSION):
                notes += [f"schema {step} -> {step + 1}: {n}" for n in MIGRATIONS[step](db)]
                notes.append(f"schema {step} -> {step + 1}")
            db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('schema_version', ?)",
                       (str(SCHEMA_VERSION),))
    return notes
