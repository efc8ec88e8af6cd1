"""Replacing a filesystem's local state (``walrusfs restore --force``) without losing it silently.

The old state directory is renamed, never deleted: ``<state>.replaced-<UTC time>``. What it held
that the restored snapshot does not (files only there, or with other contents; blocks staged and
never uploaded) is listed, and the old directory can be mounted read-only to copy it back.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .config import FsState

ROOT_INODE = 1
SHOWN = 20  # paths listed; the rest are counted


@dataclass
class Discarded:
    """What the old local state held that the restored one does not."""

    aside: Path
    paths: list[str] = field(default_factory=list)  # only there, or different there
    staged_bytes: int = 0  # written there, never uploaded

    def warning(self, name: str) -> str:
        if not self.paths and not self.staged_bytes:
            return f"the old local state held nothing the network's snapshot lacks; it is kept in {self.aside}"
        lines = [f"WARNING: the old local state of {name} held {len(self.paths)} paths that the restored "
                 f"snapshot lacks or holds differently ({self.staged_bytes} bytes of them never uploaded). "
                 "They are NOT in the restored filesystem:"]
        lines += [f"    {path}" for path in self.paths[:SHOWN]]
        if len(self.paths) > SHOWN:
            lines.append(f"    ... and {len(self.paths) - SHOWN} more")
        lines.append(f"The old state is kept in {self.aside}: mount it read-only to copy them back "
                     f"(walrusfs mount {self.aside} DIR -o ro), delete it when done.")
        return "\n".join(lines)


def set_aside(state: FsState) -> Path:
    """Rename ``state`` out of the way (refused while it is mounted); returns where it went."""
    try:
        fd = os.open(state.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise UserError(f"cannot check whether {state.root} is mounted: {error}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{state.root} is mounted: unmount it first, then restore") from None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = state.root.with_name(f"{state.root.name}.replaced-{stamp}")
        suffix = 0
        while aside.exists():
            suffix += 1
            aside = state.root.with_name(f"{state.root.name}.replaced-{stamp}-{suffix}")
        os.rename(state.root, aside)
        return aside
    finally:
        os.close(fd)


def tree(db_path: Path) -> dict[str, tuple]:
    """path -> (mode, size, mtime, block hashes, symlink target) for everything in a metadata database."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        paths = conn.execute(
            "WITH RECURSIVE t(inode, path) AS (SELECT ?, '' UNION ALL "
            "SELECT d.inode, t.path || '/' || CAST(d.name AS TEXT) FROM dirents d JOIN t ON d.parent = t.inode) "
            "SELECT t.path, i.mode, i.size, i.mtime_ns, t.inode FROM t JOIN inodes i ON i.id = t.inode "
            "WHERE t.inode != ? OR t.path = ''", (ROOT_INODE, ROOT_INODE)).fetchall()
        contents: dict[int, list[bytes]] = {}
        for inode, digest in conn.execute("SELECT ib.inode, b.hash FROM inode_blocks ib JOIN blocks b "
                                          "ON b.id = ib.block ORDER BY ib.inode, ib.blockno"):
            contents.setdefault(inode, []).append(digest)
        targets = dict(conn.execute("SELECT inode, target FROM symlinks"))
        return {path or "/": (mode, size, mtime, tuple(contents.get(inode, ())), targets.get(inode))
                for path, mode, size, mtime, inode in paths}
    finally:
        conn.close()


def staged_bytes(db_path: Path) -> int:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COALESCE(SUM(size), 0) FROM blocks WHERE blob IS NULL").fetchone()[0])
    finally:
        conn.close()


def compare(aside: Path, restored_db: Path) -> Discarded:
    """What the set-aside state holds that ``restored_db`` does not (directories' own times aside)."""
    found = Discarded(aside)
    old_db = aside / "metadata.db"
    if not old_db.exists():
        return found
    try:
        old, new = tree(old_db), tree(restored_db)
        found.staged_bytes = staged_bytes(old_db)
    except sqlite3.Error as error:
        found.paths.append(f"(the old metadata could not be read: {error})")
        return found
    for path, entry in sorted(old.items()):
        other = new.get(path)
        if other is None:
            found.paths.append(f"{path}  (only in the old state)")
        elif entry[0] & 0o170000 != 0o040000 and entry != other:
            found.paths.append(f"{path}  (different in the old state)")
    return found
