"""Blocks: content-addressed, deduplicated pieces of files, staged on local disk until their blob
is certified, then read back through the blob cache. Every block handed out is checked against its
digest (schema invariants I3-I5).

A block is stored as its filesystem's Contents seal it (encryption.py): as is, or encrypted. Its
``size`` in the catalog is the stored size (what it occupies in its blob); its ``hash`` is the
Contents' digest of the plaintext (plain blake3, or keyed for an encrypted filesystem)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import trio

from .. import directio
from .cache import BlobCache
from .catalog import Catalog, StagedBlock
from .db import Database
from .encryption import Contents, PlainContents, Purpose, TamperedError

# Blocks at least this large are hashed, sealed and opened in a worker thread: blake3 and AES-GCM
# release the GIL, so the event loop goes on serving FUSE requests meanwhile. Smaller ones are not
# worth a thread hop (tens of microseconds).
OFFLOAD_BYTES = 256 << 10


class BlockCorruptError(OSError):
    """A block's bytes do not match its hash (local disk rot, or a bug): never returned as data."""


def open_block(contents: Contents, stored: bytes | memoryview, digest: bytes, size: int, where: str) -> bytes:
    """The plaintext of a stored block, checked: its stored size, and that it is the block of
    ``digest`` (a plain block by hashing it, a sealed one by its authenticated nonce: Contents.open_as).
    BlockCorruptError naming ``where`` otherwise. Safe in a worker thread."""
    if len(stored) != size:
        raise BlockCorruptError(f"{where} holds {len(stored)} bytes, the block has {size}")
    try:
        return contents.open_as(stored, Purpose.BLOCK, digest)
    except TamperedError as error:
        raise BlockCorruptError(f"{where}: {error}") from None


@dataclass(frozen=True, slots=True)
class Prepared:
    """A block's digest and stored (sealed) bytes, computed before the transaction that stages it."""

    digest: bytes
    stored: bytes | bytearray


class BlockStore:
    """Block contents: staging files, the blob cache and a verified in-memory LRU. What blocks exist
    and where they lie is the catalog's (catalog.py)."""

    def __init__(self, db: Database, staging: Path, cache: BlobCache, memory_bytes: int = 16 << 20,
                 staged_memory_bytes: int = 32 << 20, catalog: Catalog | None = None,
                 contents: Contents | None = None) -> None:
        self.db = db
        self.contents = contents or PlainContents()
        self.catalog = catalog or Catalog(db)
        self.staging = staging
        self.cache = cache
        staging.mkdir(parents=True, exist_ok=True)
        self._memory: OrderedDict[int, bytes] = OrderedDict()  # verified plaintexts, LRU
        self._memory_bytes = 0
        self._memory_limit = memory_bytes
        # Blocks staged but not yet uploaded, as stored (sealed), kept so that the uploader, seconds
        # later, packs them without reading the staging files back (bounded: beyond it, it reads the files).
        self._staged: dict[int, bytes | bytearray] = {}
        self._staged_memory = 0  # plaintext bytes: sealed blocks are held as many as plain ones
        self._staged_limit = staged_memory_bytes

    @property
    def staged_bytes(self) -> int:
        return self.catalog.staged_bytes

    def staging_path(self, block_id: int) -> Path:
        return self.staging / str(block_id)

    def prepare(self, data: bytes) -> Prepared:
        """Hash and seal ``data`` (touches no shared state: safe in a worker thread)."""
        digest = self.contents.digest(data)
        return Prepared(digest, self.contents.seal(data, Purpose.BLOCK, digest))

    async def prepare_large(self, data: bytes) -> Prepared | None:
        """``prepare(data)`` in a worker thread if ``data`` is large, else None (stage() does it inline,
        sealing only if the block is new). A block already stored is sealed for nothing: cheaper than
        a second thread hop to look it up first."""
        if len(data) < OFFLOAD_BYTES:
            return None
        return await trio.to_thread.run_sync(self.prepare, data)

    def stage(self, data: bytes, prepared: Prepared | None = None) -> int:
        """The id of a block holding ``data`` (``prepared``: its prepare(), if done already): an
        existing one with one more reference, or a new staged block. Call inside a transaction."""
        digest = self.contents.digest(data) if prepared is None else prepared.digest
        existing = self.catalog.find(digest)
        if existing is not None:
            self.catalog.add_reference(existing)
            return existing
        stored = self.contents.seal(data, Purpose.BLOCK, digest) if prepared is None else prepared.stored
        block_id = self.catalog.add_staged(digest, len(stored))
        # Written before the row commits: a crash in between leaves an orphan file (fsck removes
        # it), never a row without its file.
        directio.write_file(self.staging_path(block_id), stored)  # past the page cache
        self._remember(block_id, data)
        if self._staged_memory + len(data) <= self._staged_limit:
            self._staged[block_id] = stored
            self._staged_memory += len(data)
        return block_id

    def staged_in_memory(self, block_id: int) -> bytes | bytearray | None:
        """A staged block's stored bytes if they are still held in memory (safe from a worker thread)."""
        return self._staged.get(block_id)

    def unstage(self, block_id: int) -> None:
        """The block's staging file is gone (uploaded, or the block deleted): remove it."""
        self.staging_path(block_id).unlink(missing_ok=True)
        data = self._staged.pop(block_id, None)
        if data is not None:
            self._staged_memory -= len(data) - self.contents.overhead

    def release(self, block_id: int) -> None:
        """Drop one reference; the last one deletes the block. Call inside a transaction."""
        released = self.catalog.release(block_id)
        if released is None:
            return
        self._forget(block_id)
        if released.staged:
            def drop_file() -> None:
                if self.catalog.forget_staged(released):
                    self.unstage(block_id)
            self.db.after_commit(drop_file)

    def unpin(self, pack: Iterable[StagedBlock]) -> None:
        """An upload is done reading ``pack``: staging files of blocks released meanwhile go now."""
        for block_id in self.catalog.unpin(pack):
            self.unstage(block_id)

    async def content(self, block_id: int) -> bytes:
        """The block's plaintext, verified (open_block)."""
        cached = self._memory.get(block_id)
        if cached is not None:
            self._memory.move_to_end(block_id)
            return cached
        where = self.catalog.location(block_id)
        if where is None:
            raise RuntimeError(f"block {block_id} does not exist (run fsck)")
        digest, size, offset, blob_id = where.digest, where.size, where.offset, where.blob_id
        stored: bytes | memoryview
        if blob_id is None:
            stored, source = self.read_staged(block_id), "its staging file"
        else:
            try:
                # A view where the cache holds the blob in memory: opening makes the one copy needed.
                stored = await self.cache.read(blob_id, offset, size, view=True)
            except Exception:
                # Compaction may have moved the block (and gc released its old blob) since it was
                # looked up: read it from where it lies now. Elsewhere the failure stands.
                moved = self.catalog.location(block_id)
                if moved is None or moved.blob_id is None or moved.blob_id == blob_id:
                    raise
                digest, size, offset, blob_id = moved.digest, moved.size, moved.offset, moved.blob_id
                stored = await self.cache.read(blob_id, offset, size, view=True)
            source = f"cached blob {blob_id}"
        what = f"block {block_id} from {source}"
        try:
            if size >= OFFLOAD_BYTES:
                data = await trio.to_thread.run_sync(open_block, self.contents, stored, digest, size, what)
            else:
                data = open_block(self.contents, stored, digest, size, what)
        except BlockCorruptError:
            if blob_id is not None:
                self.cache.drop(blob_id)  # refetched, verified, on the next read
            raise
        self._remember(block_id, data)
        return data

    def read_staged(self, block_id: int) -> bytes:
        """A staged block's stored bytes, unchecked."""
        data = directio.read_file(self.staging_path(block_id))
        if data is None:
            raise FileNotFoundError(f"staged block {block_id} is missing: {self.staging_path(block_id)}")
        return data

    def _remember(self, block_id: int, data: bytes) -> None:
        if len(data) > self._memory_limit // 4:
            return
        self._memory[block_id] = data
        self._memory_bytes += len(data)
        while self._memory_bytes > self._memory_limit:
            _, old = self._memory.popitem(last=False)
            self._memory_bytes -= len(old)

    def _forget(self, block_id: int) -> None:
        old = self._memory.pop(block_id, None)
        if old is not None:
            self._memory_bytes -= len(old)

