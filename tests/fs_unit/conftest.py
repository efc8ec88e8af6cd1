"""The fs unit tier: WalrusOperations, the namespace and the write-back driven directly, without FUSE
or storage nodes, on a temporary SQLite database and an in-process blob store (the way S3QL tests
its file system API). The real BlockStore, BlobCache and Uploader run; only the network is replaced.
Each test is a trio function run by ``fs_run``; the FUSE tests (tests/fs) stay the proof of the whole.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import blake3
import pytest
import trio

from walrusfs.fs.blocks import BlockStore
from walrusfs.fs.cache import BlobCache
from walrusfs.fs.db import Database
from walrusfs.fs.namespace import ROOT, make_root
from walrusfs.fs.operations import WalrusOperations
from walrusfs.fs.schema import DDL, SCHEMA_VERSION
from walrusfs.fs.uploader import Uploader

BLOCK = 4096


class _Certificate:
    def to_json(self) -> str:
        return '{"fake": true}'


class FakeBlobStore:
    """What the uploader (store) and the read cache (read) ask of the storage network, in memory.
    ``closed()`` holds every store until ``open()``; ``fail`` makes stores fail."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.fail = False
        self._gate: trio.Event | None = None
        self.reads = 0

    def close(self) -> None:
        self._gate = trio.Event()

    def open(self) -> None:
        if self._gate is not None:
            self._gate.set()
            self._gate = None

    async def store(self, data: bytes) -> SimpleNamespace:
        if self._gate is not None:
            await self._gate.wait()
        if self.fail:
            raise OSError("the fake blob store was told to fail")
        blob_id = blake3.blake3(data).hexdigest()
        self.blobs[blob_id] = bytes(data)
        return SimpleNamespace(blob_id=blob_id, certificate=_Certificate())

    async def read(self, blob_id: str) -> bytes:
        self.reads += 1
        return self.blobs[blob_id]


@dataclass
class Ctx:
    """The parts of a pyfuse3.RequestContext the operations read."""

    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    pid: int = field(default_factory=os.getpid)
    umask: int = 0o022


@dataclass
class Fields:
    """A pyfuse3.SetattrFields whose flags can be set."""

    update_size: bool = False
    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_atime: bool = False
    update_mtime: bool = False
    update_ctime: bool = False


class UnitFs:
    """One filesystem: a database, staging and cache directories under ``root``, the fake store."""

    def __init__(self, root: Path, store: FakeBlobStore, staging_limit: int, dirty_limit: int,
                 create: bool = True) -> None:
        self.root = root
        self.store = store
        self.db = Database(root / "meta.db")
        if create:  # as mkfs does (walrusfs/fs/cli.py)
            self.db.conn.executescript(DDL)
            self.db.execute("INSERT INTO settings (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            make_root(self.db)
        self.cache = BlobCache(root / "cache", 64 << 20, store.read)
        self.blocks = BlockStore(self.db, root / "staging", self.cache)
        self.uploader = Uploader(self.db, self.blocks, self.cache, store,  # type: ignore[arg-type]
                                 blob_size=16 * BLOCK, upload_delay=0.01)
        self.ops = WalrusOperations(self.db, self.blocks, self.uploader, BLOCK, staging_limit,
                                    dirty_limit=dirty_limit)
        self.ctx = Ctx()

    # Short forms of the calls the kernel makes, for tests that read as specifications.

    async def create(self, name: bytes, parent: int = ROOT, mode: int = 0o644) -> int:
        info, _entry = await self.ops.create(parent, name, mode, os.O_RDWR, self.ctx)
        return info.fh

    async def mkdir(self, name: bytes, parent: int = ROOT, mode: int = 0o755) -> int:
        return (await self.ops.mkdir(parent, name, mode, self.ctx)).st_ino

    async def write(self, inode: int, offset: int, data: bytes) -> None:
        assert await self.ops.write(inode, offset, data) == len(data)

    async def read(self, inode: int, offset: int = 0, length: int = 1 << 30) -> bytes:
        return await self.ops.read(inode, offset, length)

    async def attr(self, inode: int) -> Any:
        return await self.ops.getattr(inode)

    async def truncate(self, inode: int, size: int) -> None:
        entry = await self.ops.getattr(inode)
        entry.st_size = size
        await self.ops.setattr(inode, entry, Fields(update_size=True), inode, self.ctx)  # type: ignore[arg-type]

    def block_rows(self) -> int:
        return self.db.get_val("SELECT COUNT(*) FROM blocks")

    def close(self) -> None:
        self.db.close()


FsBody = Callable[[UnitFs], Awaitable[None]]


@pytest.fixture
def fs_run(tmp_path: Path) -> Callable[..., None]:
    """fs_run(body, staging_limit=..., dirty_limit=...): run ``await body(fs)`` under trio with the
    uploader running, then stop it and close the database."""

    def run(body: FsBody, staging_limit: int = 64 << 20, dirty_limit: int = 32 << 20) -> None:
        async def main() -> None:
            fs = UnitFs(tmp_path, FakeBlobStore(), staging_limit, dirty_limit)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(fs.uploader.run)
                    fs.ops.nursery = nursery
                    with trio.fail_after(30):
                        await body(fs)
                    nursery.cancel_scope.cancel()
            finally:
                fs.close()

        trio.run(main)

    return run
