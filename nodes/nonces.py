"""The durable half of replay protection: nonces of requests that are dangerous to replay, kept on disk
until their signature expires, so that a captured DELETE is refused after the node restarts too.

File ``<data dir>/nonces.journal`` (format v1, docs/node-api.md)::

    walrusfs-nonce-journal 1\\n
    <expiry, unix seconds> <nonce>\\n      one line per accepted request, appended

A line is appended and fdatasync'ed before the request takes effect, so every request that took
effect has its nonce on disk. A torn last line (a crash mid-append) belonged to a request that had not
taken effect yet and is dropped. Lines whose expiry has passed are dropped when the file is rewritten:
at open, and whenever dead lines outnumber live ones (and are many). At most ``capacity`` live nonces
are kept; beyond that a request is refused (503), never admitted unrecorded.

Methods block (disk I/O): call them from a worker thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from walrusfs.protocol import MAX_CLOCK_SKEW

log = logging.getLogger("nodes.nonces")

JOURNAL = "nonces.journal"
_MAGIC = b"walrusfs-nonce-journal 1\n"
DEFAULT_CAPACITY = 1_000_000  # live nonces: ~40 MB of file and ~100 MB of memory at the very most
_REWRITE_AFTER = 10_000  # dead lines tolerated before a rewrite is worth it


class JournalError(Exception):
    """The journal cannot take another nonce (full or unwritable): refuse the request, do not run it."""


class NonceJournal:
    def __init__(self, directory: Path, capacity: int = DEFAULT_CAPACITY, rewrite_after: int = _REWRITE_AFTER) -> None:
        self.path = Path(directory) / JOURNAL
        self.capacity = capacity
        self.rewrite_after = rewrite_after
        self._live: dict[str, int] = {}  # nonce -> expiry
        self._lines = 0  # lines in the file, live or dead
        self._next_compaction = rewrite_after  # when to look for dead lines again (amortised: O(1) a line)
        self._lock = threading.Lock()
        self._fd = -1

    def open(self, now: float | None = None) -> None:
        """Load the nonces still live and rewrite the file with only them."""
        now = time.time() if now is None else now
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = _MAGIC
        if not data.startswith(_MAGIC):
            raise OSError(f"{self.path} is not a walrusfs nonce journal (v1); move it away if this is the "
                          "right data directory")
        torn = 0
        for line in data[len(_MAGIC):].split(b"\n")[:-1]:  # the piece after the last newline is torn
            expiry_text, _, nonce = line.decode("ascii", "replace").partition(" ")
            if not expiry_text.isdigit() or not nonce:
                torn += 1
                continue
            if int(expiry_text) >= now:
                self._live[nonce] = max(int(expiry_text), self._live.get(nonce, 0))
        if torn:
            log.warning("%s: %d unreadable lines dropped", self.path, torn)
        self._rewrite()
        log.info("replay journal %s: %d nonces still live", self.path, len(self._live))

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __len__(self) -> int:
        return len(self._live)

    def remember(self, nonce: str, expiry: int, now: float | None = None) -> bool:
        """Record ``nonce`` durably; False if it was recorded before (a replay). JournalError if it
        cannot be recorded. ``nonce`` is base64url (no spaces or newlines): verify_request checks."""
        now = time.time() if now is None else now
        with self._lock:
            if nonce in self._live and self._live[nonce] >= now:
                return False
            if len(self._live) >= self.capacity:
                self._live = {n: e for n, e in self._live.items() if e >= now}
                if len(self._live) >= self.capacity:
                    raise JournalError(f"{len(self._live)} writes that must not be replayed in the last "
                                       f"{2 * MAX_CLOCK_SKEW} s: this node remembers no more of them until older "
                                       "ones expire; retry in a minute")
            if self._lines >= self._next_compaction:
                self._live = {n: e for n, e in self._live.items() if e >= now}
                if self._lines - len(self._live) > max(self.rewrite_after, len(self._live)):
                    self._rewrite()
                self._next_compaction = self._lines + max(self.rewrite_after, len(self._live))
            try:
                os.write(self._fd, f"{expiry} {nonce}\n".encode("ascii"))
            except OSError as error:
                raise JournalError(f"cannot write the replay journal {self.path}: {error.strerror}") from error
            self._live[nonce] = expiry
            self._lines += 1
            # Flushed outside the lock (concurrent requests share a flush instead of queueing for their
            # own), through a duplicate: a rewrite meanwhile may close the original descriptor.
            fd = os.dup(self._fd)
        try:
            os.fdatasync(fd)
        except OSError as error:
            raise JournalError(f"cannot flush the replay journal {self.path}: {error.strerror}") from error
        finally:
            os.close(fd)
        return True

    def _rewrite(self) -> None:
        """Replace the file by one holding only the live nonces (atomically: rename over it)."""
        temp = self.path.with_name(JOURNAL + ".tmp")
        body = b"".join(f"{expiry} {nonce}\n".encode("ascii") for nonce, expiry in self._live.items())
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(_MAGIC + body)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._lines = len(self._live)
