"""One small file per filesystem under the node's data directory, as the root records
(``<data>/roots/<fs id>.json``, nodes.roots) and the writer leases (``<data>/leases/<fs id>.json``,
nodes.leases) are kept: what the two stores share of reading, writing and setting aside such files.
What a file holds, and when a write is needed, is each store's business."""

from __future__ import annotations

from pathlib import Path

from walrusfs.durable import replace_durably


class FsFiles:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for entry in self.directory.glob("*.tmp"):
            entry.unlink()  # a write cut short: it was never acknowledged

    def path(self, fs_id: str) -> Path:
        return self.directory / f"{fs_id}.json"

    def ids(self) -> list[str]:
        """The filesystem IDs that have a file, in ascending order."""
        return sorted(path.stem for path in self.directory.glob("*.json"))

    def read(self, fs_id: str) -> bytes | None:
        """The file's bytes, or None if there is none."""
        try:
            return self.path(fs_id).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, fs_id: str, payload: bytes) -> None:
        """Durably (temporary file, fdatasync, rename, directory fsync), before the caller answers."""
        replace_durably(self.path(fs_id), payload, 0o644)

    def drop(self, fs_id: str) -> None:
        self.path(fs_id).unlink(missing_ok=True)

    def set_aside(self, fs_id: str) -> Path:
        """Keep a damaged file for inspection under another name (``.damaged``); returns that name."""
        path = self.path(fs_id)
        damaged = path.with_name(path.name + ".damaged")
        path.replace(damaged)
        return damaged
