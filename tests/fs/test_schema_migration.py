"""A metadata database made by an older walrusfs opens with this one, migrated (schema.py: MIGRATIONS).

``data/schema1-metadata.sql`` is the dump of a database that the schema-1 code wrote through a real
mount: ``cp -a`` of files and directories of several modes (which that code left at 0600/0700,
holding the ACL xattrs cp set), a tree with subdirectories, a hard link, a symlink, a user xattr,
an extended access ACL (setfacl -m u:65534:r) and a default ACL (setfacl -d). It holds no file
data, so it mounts on any network.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest
from fs_harness import WALRUSFS, mounted, run

from walrusfs.fs.db import Database
from walrusfs.fs.schema import SCHEMA_VERSION, SchemaError

DUMP = Path(__file__).parent / "data" / "schema1-metadata.sql"

# What the copying tool asked for (the source tree's modes), and what the old code kept elsewhere.
EXPECTED_MODES = {
    "copied": 0o40755, "copied/file-0644": 0o100644, "copied/file-0755": 0o100755,
    "copied/file-0600": 0o100600, "copied/file-0444": 0o100444, "copied/file-2755": 0o102755,
    "copied/dir-0755": 0o40755, "copied/dir-0755/inner": 0o40755, "copied/dir-0750": 0o40750,
    "copied/dir-0750/inner": 0o40755, "copied/dir-1777": 0o41777, "copied/dir-1777/inner": 0o40755,
    "tree": 0o40755, "tree/a": 0o40755, "tree/a/b": 0o40755, "tree/c": 0o40755, "tree/file": 0o100644,
    "tree/c/hard": 0o100644, "tree/link": 0o120777, "acl-file": 0o100640, "acl-dir": 0o40750,
}


def schema1_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.executescript(DUMP.read_text())
    finally:
        conn.close()


def test_opening_a_schema1_database_migrates_it(tmp_path: Path) -> None:
    schema1_database(tmp_path / "metadata.db")
    db = Database(tmp_path / "metadata.db")
    try:
        assert db.get_val("SELECT value FROM settings WHERE key='schema_version'") == str(SCHEMA_VERSION)
        subdirs = dict(db.execute("SELECT d.name, i.subdirs FROM dirents d JOIN inodes i ON i.id = d.inode "
                                  "WHERE d.parent = 1"))
        assert subdirs == {b"copied": 3, b"tree": 2, b"acl-file": 0, b"acl-dir": 0}
        assert db.get_val("SELECT subdirs FROM inodes WHERE id=1") == 3
        acls = db.execute("SELECT DISTINCT i.id, x.name FROM xattrs x JOIN inodes i ON i.id = x.inode "
                          "ORDER BY i.id").fetchall()
        # Minimal ACLs became modes and went; the extended and default ACLs and user xattrs stay.
        # In the dump, inode 18 is tree/file (and tree/c/hard), 20 acl-file, 21 acl-dir.
        assert acls == [(18, b"user.kept"), (20, b"system.posix_acl_access"), (21, b"system.posix_acl_default")]
        assert db.get_val("SELECT mode FROM inodes WHERE id=3") == 0o100644  # copied/file-0644, left 0600
    finally:
        db.close()
    Database(tmp_path / "metadata.db").close()  # a second open finds nothing to do


def test_a_database_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    schema1_database(tmp_path / "metadata.db")
    conn = sqlite3.connect(tmp_path / "metadata.db")
    conn.execute("UPDATE settings SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError, match="newer walrusfs"):
        Database(tmp_path / "metadata.db")


def tree_modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_mode for p in root.rglob("*")}


def test_a_schema1_filesystem_mounts_with_its_modes_link_counts_and_acls(shared_network, make_fs,
                                                                          tmp_path: Path) -> None:
    fs = make_fs(shared_network)
    with sqlite3.connect(fs.db_path) as conn:
        fs_id = conn.execute("SELECT value FROM settings WHERE key='fs_id'").fetchone()[0]
    fs.db_path.unlink()
    schema1_database(fs.db_path)
    with sqlite3.connect(fs.db_path) as conn:
        conn.execute("UPDATE settings SET value=? WHERE key='fs_id'", (fs_id,))
    with mounted(fs, tmp_path / "mnt") as mp:
        assert tree_modes(mp) == EXPECTED_MODES
        assert [(mp / p).stat().st_nlink for p in ("", "copied", "tree", "tree/a", "tree/a/b")] == [5, 5, 4, 3, 2]
        assert (mp / "tree" / "file").stat().st_nlink == 2
        assert os.getxattr(mp / "tree" / "file", "user.kept") == b"as it was"
        acl = subprocess.run(["getfacl", "-n", "-p", "-c", str(mp / "acl-file")], capture_output=True, text=True,
                             check=True).stdout.split()
        assert acl == ["user::rw-", "user:65534:r--", "group::r--", "mask::r--", "other::---"]
        (mp / "acl-dir" / "new").touch()  # the default ACL the old code stored is inherited
        assert "user:65534:rwx\t#effective:rw-" in subprocess.run(["getfacl", "-n", "-c", str(mp / "acl-dir" / "new")],
                                                  capture_output=True, text=True, check=True).stdout
        assert stat.S_IMODE((mp / "copied" / "file-0644").stat().st_mode) == 0o644
    result = run([WALRUSFS, "fsck", fs.name, "--offline"], fs.env, check=False)
    assert result.returncode == 0, f"fsck after the migration: {result.stdout}{result.stderr}"
