"""A thin wrapper over sqlite3: autocommit statements, explicit transactions, WAL."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

AUTOCHECKPOINT_PAGES = 8192  # 32 MiB of 4 KiB pages


class Database:
    def __init__(self, path: Path) -> None:
        self.path = path
        # isolation_level=None: every statement commits on its own unless inside transaction().
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a crash never corrupts, the last commits may be lost on power loss;
        # sync() makes everything committed durable (called by fsync and unmount).
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=OFF")
        self.conn.execute("PRAGMA cache_size=-16384")  # 16 MiB page cache
        # SQLite checkpoints the WAL into the database file once it holds this many pages, syncing both
        # files, in the commit that crosses it. Small-file work commits a few pages per operation: at
        # the default 1,000 pages that was two disk waits every ~60 files created.
        self.conn.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
        self._depth = 0
        self._after_commit: list = []
        # A database made by an older walrusfs is brought up to this one's schema before anything
        # reads it (schema.py: MIGRATIONS); one made by a newer walrusfs is refused.
        from .schema import migrate

        try:
            for note in migrate(self):
                log.warning("%s: %s", path, note)
        except BaseException:
            self.conn.close()
            raise

    def execute(self, sql: str, params: tuple | dict = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def get_row(self, sql: str, params: tuple | dict = ()) -> tuple | None:
        return self.conn.execute(sql, params).fetchone()

    def get_val(self, sql: str, params: tuple | dict = ()) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def rowid(self, sql: str, params: tuple | dict = ()) -> int:
        return int(self.conn.execute(sql, params).lastrowid)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Nested calls join the outermost transaction."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._after_commit.clear()
            self.conn.execute("ROLLBACK")
            raise
        self._depth = 0
        self.conn.execute("COMMIT")
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()

    def after_commit(self, callback) -> None:
        """Run ``callback`` once the current transaction commits (at once outside one); dropped on
        rollback. For side effects that must not happen unless the change is recorded."""
        if self._depth:
            self._after_commit.append(callback)
        else:
            callback()

    def sync(self) -> None:
        """Make every committed transaction durable: fsync the WAL, which holds every commit since
        the last checkpoint (the checkpoints SQLite runs itself sync the database file before the WAL
        is reused). No checkpoint here: it copied pages and synced both files, twice the disk waits
        of an fsync, and a reader holding an older snapshot may keep it from syncing the WAL at all."""
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:  # nothing written through this connection: the database file holds it all
            fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def reopen(self) -> None:
        """Open ``path`` anew, after its connection was closed and its file replaced: a read-only
        mount that follows new snapshots puts the next one's database in place (follow.py)."""
        self.conn = Database(self.path).conn

    def close(self) -> None:
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.close()
