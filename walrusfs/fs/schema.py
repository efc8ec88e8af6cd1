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

Outside the database (publisher.py, snapshot.py):
I9  The root record on a quorum of nodes names the snapshot that <state>/snapshot.json records as
    published (a higher one means another machine wrote the filesystem: reported, never
    overwritten). Only the holder of the writer lease publishes (docs/writer-lease.md). Segment
    blobs and the manifest are certified before the record names them, and a sequence number is
    written down as attempted before any node sees it, so none is reused.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

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
    refcount INTEGER NOT NULL
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
"""
