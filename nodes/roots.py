"""Root records of filesystems (walrusfs.protocol.roots): the node keeps the highest valid one of each.

    <data>/roots/<fs id>.json

A record replaces the stored one only if it verifies and it is higher in (lease generation, sequence
number) order, so neither a replay of an old record nor a forgery nor a deposed writer's record can
roll a filesystem back on an honest node. Which writer may publish at all is the lease store's
fence (nodes/leases.py). Written like
every other object: temporary file, fdatasync, rename, directory fsync (nodes.fs_files).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from walrusfs.protocol.roots import RootRecord, RootRecordError

from .fs_files import FsFiles

log = logging.getLogger(__name__)


class StaleRecordError(Exception):
    """A record not above the stored one in (generation, seq) order (and which differs from it)."""

    def __init__(self, stored: RootRecord) -> None:
        super().__init__(f"this node holds record {stored.seq} (lease generation {stored.generation}) already; "
                         "a new record needs a higher seq, or a later generation")
        self.stored = stored


class RootStore:
    def __init__(self, data_dir: Path) -> None:
        self.files = FsFiles(data_dir / "roots")
        self._lock = threading.Lock()

    def open(self) -> None:
        self.files.open()

    def get(self, fs_id: str) -> RootRecord | None:
        """The stored record, or None; a stored record that no longer verifies (rot) is dropped."""
        payload = self.files.read(fs_id)
        if payload is None:
            return None
        try:
            record = RootRecord.from_json(payload)
            record.verify(fs_id)
        except RootRecordError as error:
            log.error("root record of %s on disk is damaged (%s): dropping it", fs_id, error)
            self.files.drop(fs_id)
            return None
        return record

    def list(self, after: str | None, limit: int) -> list[str]:
        """The filesystem IDs with a stored record, in ascending order, strictly after ``after``."""
        return [fs_id for fs_id in self.files.ids() if after is None or fs_id > after][:limit]

    def put(self, record: RootRecord) -> bool:
        """Store a verified record; True if it replaced the stored one, False if identical.
        Raises StaleRecordError for a lower or equal, different record."""
        with self._lock:
            stored = self.get(record.fs_id)
            if stored is not None:
                if stored == record:
                    return False
                if record.order <= stored.order:
                    raise StaleRecordError(stored)
            self.files.write(record.fs_id, record.to_json())
            return True
