"""The node's durable object store: blob metadata and slivers as checksummed files.

Layout under the data directory::

    blobs/<first 2 chars of blob id>/<blob id>/metadata
    blobs/<..>/<blob id>/p<pair>.primary | p<pair>.secondary
    blobs/<..>/<blob id>/certificate     the availability certificate (JSON), once the node knows it
    blobs/<..>/<blob id>/inconsistency   an InconsistencyProof: the blob is invalid, never served
    blobs/<..>/<blob id>/claims          who keeps the blob, until when (nodes.claims; JSON)
    tombstones/<blob id>                 blobs deleted by a writer: repair does not bring them back
    quarantine/<blob id>.<object>.<ns>      files that failed their checksum, kept for inspection
    trash/                                  blob directories being deleted

Every file is ``"WFSO" | u8 version=1 | 3 zero | 32-byte blake3 of payload | payload``. A write goes
to a temporary file in the same directory, is fsynced, renamed into place and the directory fsynced:
after a crash a file is either absent, the old one or the new one, never torn. Reads check the
checksum every time, so a file that rotted on disk is quarantined instead of served. Paths are built
only from a parsed BlobId (base64url) and validated object names: nothing escapes the data directory.

All methods block (disk I/O, hashing): call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import blake3

from walrusfs.directio import open_direct, read_range, write_aligned
from walrusfs.redstuff import BlobId, SliverKind

from .buffers import ObjectImage

log = logging.getLogger(__name__)

_HEAD = struct.Struct("<4sB3x32s")
_MAGIC = b"WFSO"
HEADER_SIZE = _HEAD.size
METADATA = "metadata"
CERTIFICATE = "certificate"
INCONSISTENCY = "inconsistency"
CLAIMS = "claims"
_TEMP_SUFFIX = ".tmp"


class StoreFullError(OSError):
    """The disk is full (ENOSPC/EDQUOT); nothing was changed."""


class CorruptObjectError(Exception):
    """A stored file failed its checksum; it has been moved to quarantine."""


class MissingMetadataError(Exception):
    """A sliver was written for a blob whose metadata is not stored."""


def sliver_name(pair: int, kind: SliverKind) -> str:
    return f"p{pair}.{kind.name.lower()}"


@dataclass
class StoreStats:
    blobs: int = 0
    bytes: int = 0
    quarantined: int = 0


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / "blobs"
        self.quarantine_dir = root / "quarantine"
        self.trash_dir = root / "trash"
        self.tombstones_dir = root / "tombstones"
        self.stats = StoreStats()
        # Filled by open(): blob ids (text) with a stored certificate, an inconsistency proof, a tombstone.
        self.certified: set[str] = set()
        self.invalid: set[str] = set()
        self.tombstones: set[str] = set()
        self._lock = threading.Lock()
        # Objects found corrupt (and not rewritten since), by blob id: shown in status.
        self._quarantined: dict[str, set[str]] = {}
        # Objects whose checksum passed on a read since the node started.
        self._verified: set[tuple[str, str]] = set()
        # Told of each blob whose metadata put_metadata stored anew (nodes.claims notes the unclaimed).
        self.on_created: Callable[[BlobId], None] = lambda blob_id: None

    def open(self) -> None:
        """Create the layout, drop leftovers of interrupted writes and deletions, count contents."""
        for directory in (self.root, self.blobs_dir, self.quarantine_dir, self.trash_dir, self.tombstones_dir):
            directory.mkdir(parents=True, exist_ok=True)
        probe = self.root / f".probe{_TEMP_SUFFIX}"
        probe.write_bytes(b"")  # fails now, not on the first write, if the directory is read-only
        probe.unlink()
        shutil.rmtree(self.trash_dir)
        self.trash_dir.mkdir()
        stats = StoreStats()
        leftovers = 0
        for prefix in os.scandir(self.blobs_dir):
            for blob in os.scandir(prefix.path):
                stats.blobs += 1
                for entry in os.scandir(blob.path):
                    if entry.name.endswith(_TEMP_SUFFIX):
                        os.unlink(entry.path)  # an unacknowledged write cut short
                        leftovers += 1
                    else:
                        stats.bytes += entry.stat().st_size
                        if entry.name == CERTIFICATE:
                            self.certified.add(blob.name)
                        elif entry.name == INCONSISTENCY:
                            self.invalid.add(blob.name)
        for entry in os.scandir(self.quarantine_dir):
            blob_text, _, rest = entry.name.partition(".")
            name = rest.rsplit(".", 1)[0]
            self._quarantined.setdefault(blob_text, set()).add(name)
            stats.quarantined += 1
        self.tombstones = set(os.listdir(self.tombstones_dir))
        self.stats = stats
        log.info("store %s: %d blobs, %d bytes, %d quarantined files, %d interrupted writes removed",
                 self.root, stats.blobs, stats.bytes, stats.quarantined, leftovers)

    def blob_dir(self, blob_id: BlobId) -> Path:
        text = str(blob_id)
        return self.blobs_dir / text[:2] / text

    # --- writing ---------------------------------------------------------------------------------

    def put_metadata(self, blob_id: BlobId, payload: bytes) -> bool:
        """Store metadata (creating the blob). False if it was already stored."""
        directory = self.blob_dir(blob_id)
        if (directory / METADATA).exists():
            return False
        created = _make_dirs(directory)
        if created:
            with self._lock:
                self.stats.blobs += 1
        self._write(blob_id, METADATA, payload)
        self.on_created(blob_id)
        return True

    def put_sliver(self, blob_id: BlobId, pair: int, kind: SliverKind,
                   payload: bytes | bytearray | ObjectImage) -> None:
        if not (self.blob_dir(blob_id) / METADATA).exists():
            raise MissingMetadataError(str(blob_id))
        self._write(blob_id, sliver_name(pair, kind), payload)

    def put_object(self, blob_id: BlobId, name: str, payload: bytes) -> None:
        """Store the certificate or inconsistency proof of a blob whose metadata is stored."""
        assert name in (CERTIFICATE, INCONSISTENCY)
        if not (self.blob_dir(blob_id) / METADATA).exists():
            raise MissingMetadataError(str(blob_id))
        self._write(blob_id, name, payload)
        (self.certified if name == CERTIFICATE else self.invalid).add(str(blob_id))

    def put_claims(self, blob_id: BlobId, payload: bytes) -> None:
        """Replace the claims object of a blob whose metadata is stored (nodes.claims), durably."""
        if not (self.blob_dir(blob_id) / METADATA).exists():
            raise MissingMetadataError(str(blob_id))
        self._write(blob_id, CLAIMS, payload)

    def blob_bytes(self, blob_id: BlobId) -> int:
        """Bytes of the files stored for a blob (0 if it is not stored)."""
        try:
            return sum(entry.stat().st_size for entry in os.scandir(self.blob_dir(blob_id)))
        except FileNotFoundError:
            return 0

    def bury(self, blob_id: BlobId, alive: bool = False) -> None:
        """Record that a writer deleted the blob (so repair leaves it deleted), or, with ``alive``,
        that it was certified again."""
        path = self.tombstones_dir / str(blob_id)
        if alive:
            if str(blob_id) in self.tombstones:
                _unlink_quietly(path)
                self.tombstones.discard(str(blob_id))
            return
        path.touch()
        _fsync_dir(self.tombstones_dir)
        self.tombstones.add(str(blob_id))

    def _write(self, blob_id: BlobId, name: str, payload: bytes | bytearray | ObjectImage) -> None:
        directory = self.blob_dir(blob_id)
        final = directory / name
        temp = directory / f".{name}.{secrets.token_hex(6)}{_TEMP_SUFFIX}"
        if isinstance(payload, ObjectImage):
            payload.header[:] = _HEAD.pack(_MAGIC, 1, blake3.blake3(payload.payload).digest())
            size = payload.payload_size
        else:
            size = len(payload)
        # An aligned image goes to disk with O_DIRECT (walrusfs.directio), anything else buffered.
        fd = self._create(blob_id, temp, direct=isinstance(payload, ObjectImage))
        try:
            try:
                if isinstance(payload, ObjectImage):
                    write_aligned(fd, payload.file)
                else:
                    _write_all(fd, [_HEAD.pack(_MAGIC, 1, blake3.blake3(payload).digest()), payload])
                os.fdatasync(fd)
            finally:
                os.close(fd)
            try:
                old_size = os.stat(final).st_size
            except FileNotFoundError:
                old_size = 0
            os.rename(temp, final)
        except BaseException as error:
            _unlink_quietly(temp)
            if isinstance(error, OSError):
                _raise_full_or(error)
            raise
        _fsync_dir(directory)
        key = str(blob_id)
        with self._lock:
            self.stats.bytes += HEADER_SIZE + size - old_size
            self._verified.add((key, name))
            names = self._quarantined.get(key)
            if names:
                names.discard(name)

    def _create(self, blob_id: BlobId, temp: Path, direct: bool) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            return open_direct(temp, flags) if direct else os.open(temp, flags | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            raise MissingMetadataError(str(blob_id)) from None  # deleted meanwhile
        except OSError as error:
            _raise_full_or(error)
            raise

    # --- reading ---------------------------------------------------------------------------------

    def has(self, blob_id: BlobId, name: str) -> bool:
        return (self.blob_dir(blob_id) / name).exists()

    def get(self, blob_id: BlobId, name: str) -> bytes | None:
        """The payload, checksum verified; None if not stored. CorruptObjectError (after moving the
        file to quarantine) if the checksum fails."""
        path = self.blob_dir(blob_id) / name
        try:
            fd = open_direct(path, os.O_RDONLY)  # past the page cache: see walrusfs.directio
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            header = read_range(fd, 0, HEADER_SIZE)
            payload = read_range(fd, HEADER_SIZE, size - HEADER_SIZE)
        finally:
            os.close(fd)
        good = len(header) == HEADER_SIZE
        if good:
            magic, version, digest = _HEAD.unpack(header)
            good = magic == _MAGIC and version == 1 and blake3.blake3(payload).digest() == digest
        if not good:
            self._quarantine(blob_id, name, path)
            raise CorruptObjectError(f"{name} of blob {blob_id} failed its checksum and was quarantined")
        with self._lock:
            self._verified.add((str(blob_id), name))
        return payload

    def object_state(self, blob_id: BlobId, name: str) -> str:
        """'ok' (verified on write or read since start), 'unread', 'quarantined' or 'missing'."""
        key = str(blob_id)
        if self.has(blob_id, name):
            return "ok" if (key, name) in self._verified else "unread"
        return "quarantined" if name in self._quarantined.get(key, ()) else "missing"

    def list_blobs(self, after: str | None, limit: int) -> list[str]:
        """Stored blob ids in sorted order, strictly after ``after``."""
        out: list[str] = []
        prefixes = sorted(p for p in os.listdir(self.blobs_dir) if after is None or p >= after[:2])
        for prefix in prefixes:
            for text in sorted(os.listdir(self.blobs_dir / prefix)):
                if after is None or text > after:
                    out.append(text)
                    if len(out) == limit:
                        return out
        return out

    # --- removing --------------------------------------------------------------------------------

    def delete_blob(self, blob_id: BlobId) -> bool:
        """Remove a blob and all its slivers atomically (one rename). False if not stored."""
        directory = self.blob_dir(blob_id)
        try:
            size = sum(entry.stat().st_size for entry in os.scandir(directory))
        except FileNotFoundError:
            return False
        doomed = self.trash_dir / f"{blob_id}.{secrets.token_hex(6)}"
        try:
            os.rename(directory, doomed)
        except FileNotFoundError:
            return False
        _fsync_dir(directory.parent)
        shutil.rmtree(doomed, ignore_errors=True)
        key = str(blob_id)
        with self._lock:
            self.stats.blobs -= 1
            self.stats.bytes -= size
            self._verified = {entry for entry in self._verified if entry[0] != key}
            self._quarantined.pop(key, None)
            self.certified.discard(key)
            self.invalid.discard(key)
        return True

    def delete_object(self, blob_id: BlobId, name: str) -> int:
        """Remove one object of a blob (a sliver handed over to its new holder), durably; the bytes
        freed, 0 if it was not stored. The blob's other objects stay."""
        path = self.blob_dir(blob_id) / name
        try:
            size = path.stat().st_size
            os.unlink(path)
        except FileNotFoundError:
            return 0
        _fsync_dir(path.parent)
        with self._lock:
            self.stats.bytes -= size
            self._verified.discard((str(blob_id), name))
        return size

    def quarantine(self, blob_id: BlobId, name: str) -> None:
        """Move aside an object whose checksum passed but whose content is wrong (it does not verify
        against the blob's metadata): what the scrubber does with a sliver that rotted undetectably."""
        self._quarantine(blob_id, name, self.blob_dir(blob_id) / name)

    def _quarantine(self, blob_id: BlobId, name: str, path: Path) -> None:
        target = self.quarantine_dir / f"{blob_id}.{name}.{time.time_ns()}"
        try:
            size = path.stat().st_size
            os.rename(path, target)
        except FileNotFoundError:
            return  # another reader quarantined it first
        _fsync_dir(path.parent)
        log.error("checksum mismatch: %s of blob %s moved to %s", name, blob_id, target)
        key = str(blob_id)
        with self._lock:
            self.stats.bytes -= size
            self.stats.quarantined += 1
            self._verified.discard((key, name))
            self._quarantined.setdefault(key, set()).add(name)


def _make_dirs(directory: Path) -> bool:
    """Create the blob directory and its prefix directory durably; True if newly created."""
    if directory.exists():
        return False
    prefix = directory.parent
    if not prefix.exists():
        try:
            prefix.mkdir()
        except FileExistsError:
            pass
        except OSError as error:
            _raise_full_or(error)
        _fsync_dir(prefix.parent)
    try:
        directory.mkdir()
    except FileExistsError:
        return False
    except OSError as error:
        _raise_full_or(error)
    _fsync_dir(prefix)
    return True


def _write_all(fd: int, parts: list[bytes | bytearray]) -> None:
    views = [memoryview(part).cast("B") for part in parts]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _raise_full_or(error: OSError) -> None:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        raise StoreFullError(error.errno, "no space left on the node's disk") from error
    raise error
