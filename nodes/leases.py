"""Writer leases (walrusfs.lease) as one node keeps them, and the fence on root records.

    <data>/leases/<fs id>.json

Each file holds the last request the node granted for a filesystem and when it expires:

    {"format": 1, "lease": {<LeaseRecord>}, "expires_wall_ns": <node's clock>, "checksum": "<hex>"}

``checksum`` is blake3 (16 bytes, hex) of ``json.dumps([lease, expires_wall_ns], sort_keys=True)``.
Written like every other object (temporary file, fdatasync, rename, directory fsync) before the
answer, so a granted lease survives a node crash or restart. While the process runs, expiry is
decided on the monotonic clock; the wall-clock expiry on disk is only what a restarted node starts
from, clamped to at most one term from its restart (a clock set back cannot stretch a lease).

The expiry on disk is written two terms ahead (``HORIZON_TERMS``), so a renewal by the same holder
and generation - four a term, and one per fsync - is written only when the horizon on disk would no
longer cover its new expiry: a restarted node then keeps the lease at least as long as it would
have running, and the writer's fsync does not wait for a disk flush on every node each time. A new
holder, a new generation, a takeover and a release are always written before they are answered.

Rules (docs/writer-lease.md): a request of the current holder renews (its renewal counter must
grow); another holder's request is granted only with a higher generation, and only if the current
lease has expired or the request is an explicit takeover. A version-2 root record is stored only if
it names the current holder and generation; a version-1 record only while no lease was ever granted.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import blake3

from walrusfs.protocol.lease import LeaseRecord, LeaseRecordError, LeaseState
from walrusfs.protocol.roots import RootRecord

from .fs_files import FsFiles
from .roots import RootStore

log = logging.getLogger(__name__)

FILE_FORMAT = 1
HORIZON_TERMS = 2


class LeaseRefused(Exception):
    """The node does not grant (or release) the lease; ``code`` for the API, ``current`` the lease
    that stands."""

    def __init__(self, code: str, message: str, current: LeaseState | None) -> None:
        super().__init__(message)
        self.code = code
        self.current = current


class FencedError(Exception):
    """A root record from a writer that does not hold the filesystem's current lease."""

    def __init__(self, message: str, current: LeaseState | None) -> None:
        super().__init__(message)
        self.current = current


@dataclass
class _Held:
    record: LeaseRecord
    expires_mono: float
    on_disk_until_ns: int  # the wall-clock expiry written to disk: at or after the real one


def describe(record: LeaseRecord) -> str:
    return f"holder {record.holder} ({record.label or 'no label'}), generation {record.generation}"


class LeaseStore:
    def __init__(self, data_dir: Path, monotonic: Callable[[], float] = time.monotonic,
                 wall_ns: Callable[[], int] = time.time_ns) -> None:
        self.files = FsFiles(data_dir / "leases")
        self.lock = threading.Lock()  # held across a fence check and the root record it admits
        self._monotonic = monotonic
        self._wall_ns = wall_ns
        self._held: dict[str, _Held | None] = {}

    def open(self) -> None:
        self.files.open()

    # --- reading -----------------------------------------------------------------------------------

    def _get(self, fs_id: str) -> _Held | None:
        if fs_id not in self._held:
            self._held[fs_id] = self._load(fs_id)
        return self._held[fs_id]

    def _load(self, fs_id: str) -> _Held | None:
        payload = self.files.read(fs_id)
        if payload is None:
            return None
        try:
            data = json.loads(payload)
            if data.get("format") != FILE_FORMAT:
                raise LeaseRecordError(f"file format {data.get('format')!r}, this node reads {FILE_FORMAT}")
            record = LeaseRecord.from_dict(data["lease"])
            record.verify(fs_id)
            expires_wall = data["expires_wall_ns"]
            intact = _checksum(data["lease"], expires_wall) == data["checksum"]
        except (ValueError, KeyError, TypeError, LeaseRecordError) as error:
            # One node losing a lease is within the f faults the quorum tolerates; keep the file.
            damaged = self.files.set_aside(fs_id)
            log.error("lease of %s on disk is damaged (%s): set aside as %s", fs_id, error, damaged.name)
            return None
        term_ns = record.term_ms * 1_000_000
        if not intact:  # the record verifies, its expiry does not: assume a whole term from now
            log.error("expiry of the lease of %s on disk is damaged: keeping the lease a whole term", fs_id)
            remaining = term_ns
        else:
            remaining = min(max(0, expires_wall - self._wall_ns()), term_ns)
        return _Held(record, self._monotonic() + remaining / 1e9, expires_wall)

    def _state(self, held: _Held) -> LeaseState:
        return LeaseState(held.record, max(0, int((held.expires_mono - self._monotonic()) * 1000)))

    def get(self, fs_id: str) -> LeaseState | None:
        with self.lock:
            held = self._get(fs_id)
            return None if held is None else self._state(held)

    # --- granting ----------------------------------------------------------------------------------

    def request(self, record: LeaseRecord) -> LeaseState:
        """Grant, renew or release the (verified) ``record``: the lease that stands afterwards, stored
        durably. Raises LeaseRefused with the lease that stands instead."""
        with self.lock:
            held = self._get(record.fs_id)
            current = None if held is None else self._state(held)
            self._decide(record, current)
            now_mono, now_wall = self._monotonic(), self._wall_ns()
            term_ns = record.term_ms * 1_000_000
            granted = _Held(record, now_mono + term_ns / 1e9, held.on_disk_until_ns if held else 0)
            same = (held is not None and held.record.holder == record.holder
                    and held.record.generation == record.generation and not held.record.release)
            if not same or record.release or record.takeover or granted.on_disk_until_ns < now_wall + term_ns:
                granted.on_disk_until_ns = now_wall + HORIZON_TERMS * term_ns if term_ns else now_wall
                self._write(record, granted.on_disk_until_ns)
            self._held[record.fs_id] = granted
            if current is None or current.record.holder != record.holder or record.release:
                log.info("lease of %s %s: %s%s", record.fs_id, "released" if record.release else "granted",
                         describe(record), " (takeover)" if record.takeover and current is not None
                         and current.record.holder != record.holder else "")
            return self._state(granted)

    def adopt(self, state: LeaseState) -> bool:
        """Take a (verified) lease another node of the epoch before granted, at a handover
        (nodes.handover_records), unless this node holds that one or a newer one already: newer is a
        higher generation, then a higher renewal. It stands for the time left that node gave it, at
        most one term, and is written durably. True if taken."""
        record = state.record
        with self.lock:
            held = self._get(record.fs_id)
            if held is not None and (held.record.generation, held.record.renewal) >= (record.generation,
                                                                                      record.renewal):
                return False
            remaining_ns = min(state.expires_in_ms, record.term_ms) * 1_000_000
            expires_wall = self._wall_ns() + remaining_ns
            self._write(record, expires_wall)
            self._held[record.fs_id] = _Held(record, self._monotonic() + remaining_ns / 1e9, expires_wall)
            log.info("lease of %s taken from the epoch before: %s, %.1f s left", record.fs_id, describe(record),
                     remaining_ns / 1e9)
            return True

    def _write(self, record: LeaseRecord, expires_wall_ns: int) -> None:
        lease = record.to_dict()
        payload = {"format": FILE_FORMAT, "lease": lease, "expires_wall_ns": expires_wall_ns,
                   "checksum": _checksum(lease, expires_wall_ns)}
        self.files.write(record.fs_id, json.dumps(payload, sort_keys=True).encode())

    @staticmethod
    def _decide(record: LeaseRecord, current: LeaseState | None) -> None:
        if current is None:
            if record.release:
                raise LeaseRefused("not_holder", "this node holds no lease of this filesystem to release", None)
            return
        stored = current.record
        if record.holder == stored.holder:
            if record.generation < stored.generation:
                raise LeaseRefused("stale_generation", f"this holder's lease is at generation {stored.generation} "
                                   f"here, not {record.generation}", current)
            if record.generation == stored.generation and record.renewal <= stored.renewal:
                raise LeaseRefused("stale_renewal", f"renewal {record.renewal} is not above this node's "
                                   f"{stored.renewal} (a replayed or reordered request)", current)
            return
        if record.release:
            raise LeaseRefused("not_holder", f"the lease is held by {describe(stored)}, not by this holder", current)
        if current.held and not record.takeover:
            raise LeaseRefused("lease_held", f"the filesystem is being written by {describe(stored)}; its lease "
                               f"expires in {current.expires_in_ms / 1000:.1f} s unless renewed", current)
        if record.generation <= stored.generation:
            raise LeaseRefused("stale_generation", f"a new holder needs a generation above {stored.generation} "
                               f"(the last holder's: {describe(stored)})", current)

    # --- fencing -----------------------------------------------------------------------------------

    def check_fence(self, record: RootRecord) -> None:
        """Raise FencedError unless ``record`` comes from the current lease holder (call with
        ``lock`` held, together with storing the record)."""
        held = self._get(record.fs_id)
        current = None if held is None else self._state(held)
        if record.version == 1:
            if current is not None:
                raise FencedError("this filesystem has a writer lease; a version-1 root record (from a walrusfs "
                                  "without leases) is refused here: upgrade walrusfs on the writer", current)
            return
        if current is None:
            raise FencedError("this node holds no writer lease of this filesystem: a root record is stored only "
                              "from the lease holder (acquire the lease first)", None)
        if (record.holder, record.generation) != (current.record.holder, current.record.generation):
            raise FencedError(f"root record published under generation {record.generation} by holder "
                              f"{record.holder}, but the filesystem's lease is now {describe(current.record)}: "
                              "a deposed or refused writer cannot publish", current)

    def put_fenced(self, roots: RootStore, record: RootRecord) -> bool:
        """Store ``record`` in ``roots`` if the fence admits it (atomic with respect to grants)."""
        with self.lock:
            self.check_fence(record)
            return roots.put(record)


def _checksum(lease: dict, expires_wall_ns: int) -> str:
    return blake3.blake3(json.dumps([lease, expires_wall_ns], sort_keys=True).encode()).digest(16).hex()
