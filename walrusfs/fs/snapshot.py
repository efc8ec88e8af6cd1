"""Metadata snapshots on the network: the directory tree outlives the machine that holds it.

A snapshot is a consistent copy of the metadata database (SQLite's online backup, taken from its
own connection, so it sees exactly the committed state at one instant), cut into fixed segments.
Each segment is compressed and stored in certified blobs, except segments whose hash the previous
snapshot already stored: those are referenced where they are (incremental, since most pages of a
large tree do not change between snapshots). A manifest blob lists the segments and the retained
earlier snapshots; the filesystem's signed root record (walrusfs.protocol.roots) points at the manifest.

    root record (on every node, highest valid seq wins) -> manifest blob -> segment blobs

An encrypted filesystem seals every compressed segment and the manifest blob (encryption.py,
purposes SEGMENT and MANIFEST): nodes hold neither names nor sizes of its files. A manifest blob
says by its first bytes which it is, so a restore knows before it has read the settings.

Order of a snapshot: segment blobs certified -> manifest certified -> root record on a quorum.
A crash anywhere before the last step leaves the previous snapshot in force; what it stored is
unreferenced garbage on the nodes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import blake3
import trio

from .encryption import (
    AES_256_GCM,
    NO_ENCRYPTION,
    Contents,
    PlainContents,
    Purpose,
    TamperedError,
    contents_for,
    is_sealed,
)

SEGMENT_SIZE = 64 << 10  # small enough that a change to a few pages re-stores little
MANIFEST_MAGIC = b"WFSM"
MANIFEST_VERSION = 1


class SnapshotError(Exception):
    """A snapshot could not be taken, found or restored: the message says what and why."""


@dataclass(frozen=True)
class Segment:
    digest: str  # blake3 of the raw segment, hex
    blob: str  # blob ID holding its compressed bytes
    offset: int  # where they start in that blob
    length: int  # compressed length
    size: int  # raw length


@dataclass(frozen=True)
class SnapshotRef:
    seq: int
    created_ns: int
    manifest: str  # blob ID

    @property
    def created(self) -> datetime:
        return datetime.fromtimestamp(self.created_ns / 1e9, UTC)


@dataclass
class Manifest:
    fs_id: str
    seq: int
    created_ns: int
    settings: dict[str, Any]
    db_size: int
    db_hash: str
    segments: list[Segment]
    history: list[SnapshotRef] = field(default_factory=list)  # retained earlier snapshots, oldest first

    def to_bytes(self) -> bytes:
        body = {
            "fs_id": self.fs_id, "seq": self.seq, "created_ns": self.created_ns, "settings": self.settings,
            "db_size": self.db_size, "db_hash": self.db_hash,
            "segments": [[s.digest, s.blob, s.offset, s.length, s.size] for s in self.segments],
            "history": [[r.seq, r.created_ns, r.manifest] for r in self.history],
        }
        return MANIFEST_MAGIC + struct.pack("<B", MANIFEST_VERSION) + zlib.compress(json.dumps(body).encode(), 9)

    @classmethod
    def from_bytes(cls, payload: bytes) -> Manifest:
        if payload[:4] != MANIFEST_MAGIC or len(payload) < 5:
            raise SnapshotError("not a walrusfs snapshot manifest (bad magic)")
        if payload[4] != MANIFEST_VERSION:
            raise SnapshotError(f"snapshot manifest version {payload[4]}; this walrusfs reads "
                                f"{MANIFEST_VERSION} (upgrade walrusfs)")
        try:
            body = json.loads(zlib.decompress(payload[5:]))
            return cls(
                body["fs_id"], body["seq"], body["created_ns"], body["settings"], body["db_size"], body["db_hash"],
                [Segment(*entry) for entry in body["segments"]],
                [SnapshotRef(*entry) for entry in body["history"]])
        except (zlib.error, ValueError, KeyError, TypeError) as error:
            raise SnapshotError(f"malformed snapshot manifest: {error}") from None

    @property
    def encryption(self) -> str:
        """How the snapshot's segments are sealed: its filesystem's setting (old manifests: none)."""
        return str(self.settings.get("encryption", NO_ENCRYPTION))

    def stored_bytes(self) -> int:
        """Compressed bytes of every segment it references."""
        return sum(s.length for s in self.segments)


@dataclass(frozen=True)
class RetentionPolicy:
    """Which earlier snapshots a new one keeps listed: the ``last`` newest, plus the newest of each
    of the last ``daily`` days and of the last ``monthly`` months (UTC)."""

    last: int = 10
    daily: int = 14
    monthly: int = 12

    def keep(self, refs: list[SnapshotRef], now_ns: int) -> list[SnapshotRef]:
        ordered = sorted(refs, key=lambda r: r.seq, reverse=True)
        kept = {r.seq for r in ordered[: self.last]}
        now = datetime.fromtimestamp(now_ns / 1e9, UTC)
        days_seen: set[str] = set()
        months_seen: set[str] = set()
        for ref in ordered:  # newest first: the first of each day or month is its newest
            day, month = ref.created.strftime("%Y-%m-%d"), ref.created.strftime("%Y-%m")
            if (now - ref.created).days < self.daily and day not in days_seen:
                days_seen.add(day)
                kept.add(ref.seq)
            months_ago = (now.year - ref.created.year) * 12 + now.month - ref.created.month
            if months_ago < self.monthly and month not in months_seen:
                months_seen.add(month)
                kept.add(ref.seq)
        return sorted((r for r in refs if r.seq in kept), key=lambda r: r.seq)


def copy_database(db_path: Path, dest: Path) -> None:
    """A consistent copy of the live database: SQLite's backup API, in one step, from a separate
    connection (so it reads one committed state while the mount goes on writing)."""
    dest.unlink(missing_ok=True)
    source = sqlite3.connect(db_path)
    try:
        target = sqlite3.connect(dest)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()


@dataclass
class SegmentPlan:
    """What a new snapshot stores: its segments (``blob`` empty for new ones) and the new ones'
    compressed bytes, in order."""

    segments: list[Segment]
    new: list[tuple[int, bytes]]  # (index in segments, compressed bytes)
    db_size: int
    db_hash: str

    @property
    def new_bytes(self) -> int:
        return sum(len(data) for _, data in self.new)


def seal_manifest(manifest_bytes: bytes, contents: Contents) -> bytes:
    """The manifest blob's bytes: sealed for an encrypted filesystem."""
    return bytes(contents.seal(manifest_bytes, Purpose.MANIFEST))


def manifest_from_blob(payload: bytes, read_key: bytes | None) -> Manifest:
    """A manifest from its blob, opened with the filesystem's read key if it is sealed."""
    if is_sealed(payload):
        if read_key is None:
            raise SnapshotError("the snapshot manifest is encrypted: reading it needs the filesystem's key "
                                "or a read capability")
        try:
            payload = contents_for(AES_256_GCM, read_key).open(payload, Purpose.MANIFEST)
        except TamperedError as error:
            raise SnapshotError(f"{error} (or it belongs to a filesystem with another key)") from None
    return Manifest.from_bytes(payload)


def plan_segments(copy: Path, previous: Manifest | None, contents: Contents | None = None) -> SegmentPlan:
    """``contents``: how the filesystem seals what it stores (default: as is)."""
    contents = contents or PlainContents()
    known = {s.digest: s for s in previous.segments} if previous else {}
    segments: list[Segment] = []
    new: list[tuple[int, bytes]] = []
    whole = blake3.blake3()
    size = 0
    with open(copy, "rb") as handle:
        while chunk := handle.read(SEGMENT_SIZE):
            whole.update(chunk)
            size += len(chunk)
            digest = blake3.blake3(chunk).hexdigest()
            old = known.get(digest)
            if old is not None:
                segments.append(old)
                continue
            packed = contents.seal(zlib.compress(chunk, 6), Purpose.SEGMENT)
            new.append((len(segments), packed))
            segments.append(Segment(digest, "", 0, len(packed), len(chunk)))
    return SegmentPlan(segments, new, size, whole.hexdigest())


StoreBlob = Callable[[bytes], Awaitable[str]]  # stores bytes as a certified blob, returns its ID
ReadBlob = Callable[[str], Awaitable[bytes]]  # a blob's verified bytes


async def store_segments(plan: SegmentPlan, store_blob: StoreBlob, blob_size: int) -> list[Segment]:
    """Pack the plan's new segments into blobs of at most ``blob_size`` bytes and store them."""
    segments = list(plan.segments)
    batch: list[tuple[int, bytes]] = []

    async def flush() -> None:
        blob_id = await store_blob(b"".join(data for _, data in batch))
        offset = 0
        for index, data in batch:
            old = segments[index]
            segments[index] = Segment(old.digest, blob_id, offset, len(data), old.size)
            offset += len(data)
        batch.clear()

    for index, data in plan.new:
        if batch and sum(len(d) for _, d in batch) + len(data) > blob_size:
            await flush()
        batch.append((index, data))
    if batch:
        await flush()
    return segments


async def restore_database(manifest: Manifest, read_blob: ReadBlob, dest: Path,
                           progress: Callable[[int, int], None] | None = None, read_key: bytes | None = None) -> None:
    """Rebuild the database file of ``manifest`` at ``dest``: every segment opened (``read_key``:
    an encrypted filesystem's) and checked against its hash, the whole file against the snapshot's
    hash, then SQLite's own quick check."""
    try:
        contents = contents_for(manifest.encryption, read_key)
    except ValueError as error:
        raise SnapshotError(f"snapshot {manifest.seq}: {error}") from None
    by_blob: dict[str, list[int]] = {}
    for index, segment in enumerate(manifest.segments):
        by_blob.setdefault(segment.blob, []).append(index)
    temp = dest.with_name(dest.name + ".restoring")
    done = 0
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        offsets = [0]
        for segment in manifest.segments:
            offsets.append(offsets[-1] + segment.size)
        if offsets[-1] != manifest.db_size:
            raise SnapshotError(f"snapshot {manifest.seq}: segments add up to {offsets[-1]} bytes, "
                                f"the database had {manifest.db_size}")
        for blob_id, indices in by_blob.items():
            payload = await read_blob(blob_id)

            def write_segments(payload: bytes = payload, indices: list[int] = indices, blob_id: str = blob_id) -> int:
                written = 0
                for index in indices:
                    segment = manifest.segments[index]
                    sealed = payload[segment.offset : segment.offset + segment.length]
                    try:
                        raw = zlib.decompress(contents.open(sealed, Purpose.SEGMENT))
                    except TamperedError as error:
                        raise SnapshotError(f"snapshot {manifest.seq}: segment {index} in blob {blob_id}: "
                                            f"{error}") from None
                    if len(raw) != segment.size or blake3.blake3(raw).hexdigest() != segment.digest:
                        raise SnapshotError(f"snapshot {manifest.seq}: segment {index} from blob {blob_id} "
                                            "does not match its hash")
                    os.pwrite(fd, raw, offsets[index])
                    written += len(raw)
                return written

            try:
                done += await trio.to_thread.run_sync(write_segments)
            except zlib.error as error:
                raise SnapshotError(f"snapshot {manifest.seq}: a segment in blob {blob_id} does not "
                                    f"decompress: {error}") from None
            if progress:
                progress(done, manifest.db_size)
        os.fsync(fd)
    finally:
        os.close(fd)

    def check() -> None:
        digest = blake3.blake3()
        with open(temp, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != manifest.db_hash:
            raise SnapshotError(f"snapshot {manifest.seq}: the rebuilt database does not match its hash")
        conn = sqlite3.connect(temp)
        try:
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            conn.close()
        if result != "ok":
            raise SnapshotError(f"snapshot {manifest.seq}: SQLite finds the database damaged: {result}")

    try:
        await trio.to_thread.run_sync(check)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    for suffix in ("-wal", "-shm"):
        Path(str(dest) + suffix).unlink(missing_ok=True)
    temp.replace(dest)


def describe(ref: SnapshotRef) -> str:
    return f"#{ref.seq} {ref.created.strftime('%Y-%m-%d %H:%M:%S')} UTC"


def now_ns() -> int:
    return time.time_ns()


def settings_for_manifest(settings: Any) -> dict[str, Any]:
    """What a restore needs of fs.toml: everything but local paths."""
    data = asdict(settings)
    for local in ("committee", "writer_key", "fs_key"):
        data.pop(local, None)
    return data
