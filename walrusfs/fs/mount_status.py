"""What a mount daemon reports about itself: one typed record, produced by the daemon and read by
``walrusfs status``, the Prometheus metrics, the systemd STATUS= line and ``walrusfs umount``.

On the wire it is JSON, the value of the root directory's ``walrusfs.status`` xattr
(``getfattr -n walrusfs.status DIR``), in the shape docs/operating.md documents. Older and newer
daemons report fewer or more fields: a field a daemon did not report reads as None here (and is left
out of reports and metrics, never shown as 0), and ``to_json`` gives back exactly the keys that were
reported, so ``walrusfs status --json`` passes on what the daemon said.

A low floor: standard library only, nothing of the FUSE side, so every command can import it cheaply.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import UserError

CONTROL_PREFIX = b"walrusfs."  # xattrs of the root directory that talk to the daemon
STATUS_XATTR = CONTROL_PREFIX + b"status"


class _Record:
    """JSON in and out for the dataclasses below: typed fields, plus what was reported (``reported``)
    and any keys this version does not know (``extra``), so that a round trip changes nothing."""

    reported: frozenset[str] | None
    extra: dict[str, Any]

    @classmethod
    def _known(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name not in ("reported", "extra")]

    def to_json(self) -> dict[str, Any]:
        out = {name: _json_value(getattr(self, name)) for name in self._known()
               if self.reported is None or name in self.reported}
        out.update(self.extra)
        return out


def _json_value(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_json()
    if isinstance(value, dict):
        return {key: _json_value(item) for key, item in value.items()}
    return value


def _number(value: Any) -> float | None:
    """A reported figure, or None for a missing one (or one of a type this version cannot use)."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass
class NodeHealth(_Record):
    """The client's health book entry for one storage node (walrusfs.client.health)."""

    latency_ms: float | None = None  # moving average of successful requests
    failure_score: float | None = None  # decaying count of recent failures (0: healthy)
    successes: int | None = None
    failures: int | None = None
    lies: int | None = None  # answers whose bytes did not verify
    last_error: str | None = None
    avoided_s: float | None = None  # seconds it is still avoided after serving bad data (0: not avoided)
    reported: frozenset[str] | None = field(default=None, repr=False, compare=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NodeHealth:
        return cls(latency_ms=_number(data.get("latency_ms")), failure_score=_number(data.get("failure_score")),
                   successes=_number(data.get("successes")), failures=_number(data.get("failures")),
                   lies=_number(data.get("lies")), last_error=data.get("last_error"),
                   avoided_s=_number(data.get("avoided_s")),
                   reported=frozenset(data), extra={k: v for k, v in data.items() if k not in cls._known()})


@dataclass
class SnapshotStatus(_Record):
    """The metadata snapshots of a writable mount (publisher.py); a read-only mount of an old snapshot
    reports only its ``seq``."""

    seq: int | None = None
    created_ns: int | None = None
    manifest: str | None = None
    db_bytes: int | None = None
    uploaded_bytes: int | None = None
    last_error: str | None = None  # set while the last attempt failed
    next_due_s: float | None = None
    following: bool | None = None  # a read capability's mount that switches to newer snapshots (follow.py)
    reported: frozenset[str] | None = field(default=None, repr=False, compare=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SnapshotStatus:
        return cls(seq=_number(data.get("seq")), created_ns=_number(data.get("created_ns")),
                   manifest=data.get("manifest"), db_bytes=_number(data.get("db_bytes")),
                   uploaded_bytes=_number(data.get("uploaded_bytes")), last_error=data.get("last_error"),
                   next_due_s=_number(data.get("next_due_s")), following=data.get("following"),
                   reported=frozenset(data), extra={k: v for k, v in data.items() if k not in cls._known()})

    @property
    def failing(self) -> bool:
        return bool(self.last_error)


@dataclass
class LeaseStatus(_Record):
    """A writable mount's writer lease on the nodes (writer_lease.py, docs/writer-lease.md)."""

    holder: str | None = None
    label: str | None = None
    generation: int | None = None
    held: bool | None = None
    valid_for_s: float | None = None
    term_s: float | None = None
    deposed_by: dict[str, Any] | None = None  # holder, label, generation of the writer that took over
    last_error: str | None = None
    message: str | None = None  # why nothing is durable now, while the lease is not held
    reported: frozenset[str] | None = field(default=None, repr=False, compare=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LeaseStatus:
        held, deposed_by = data.get("held"), data.get("deposed_by")
        return cls(holder=data.get("holder"), label=data.get("label"), generation=_number(data.get("generation")),
                   held=held if isinstance(held, bool) else None, valid_for_s=_number(data.get("valid_for_s")),
                   term_s=_number(data.get("term_s")),
                   deposed_by=dict(deposed_by) if isinstance(deposed_by, Mapping) else None,
                   last_error=data.get("last_error"), message=data.get("message"),
                   reported=frozenset(data), extra={k: v for k, v in data.items() if k not in cls._known()})

    @property
    def lost(self) -> bool:
        return not self.held and bool(self.message)


@dataclass
class RenewalStatus(_Record):
    """The renewal of the filesystem's claims on the nodes (renewal.py, docs/node-api.md "Claims")."""

    term_s: float | None = None  # the term each renewal asks for (fs.toml blob_term_days)
    blobs: int | None = None  # referenced blobs in the last round
    last_success: float | None = None
    expires: float | None = None  # the earliest expiry the nodes granted in the last successful round
    last_error: str | None = None  # set while the last round failed
    last_error_at: float | None = None
    reported: frozenset[str] | None = field(default=None, repr=False, compare=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RenewalStatus:
        return cls(term_s=_number(data.get("term_s")), blobs=_number(data.get("blobs")),
                   last_success=_number(data.get("last_success")), expires=_number(data.get("expires")),
                   last_error=data.get("last_error"), last_error_at=_number(data.get("last_error_at")),
                   reported=frozenset(data), extra={k: v for k, v in data.items() if k not in cls._known()})

    @property
    def failing(self) -> bool:
        return bool(self.last_error)


@dataclass
class MountStatus(_Record):
    """One mount daemon's state. Times are Unix seconds; byte counts are bytes."""

    pid: int | None = None
    fs_id: str | None = None
    state: str | None = None  # the local state directory
    encryption: str | None = None  # fs.toml's setting: "none" or the scheme (walrusfs/fs/encryption.py)
    mounted_since: float | None = None
    staged_bytes: int | None = None  # on local disk, not yet in a certified blob
    dirty_bytes: int | None = None  # in memory buffers, not yet staged
    uploads_in_flight: int | None = None
    uploaded_blobs: int | None = None  # certified since the mount started
    uploaded_bytes: int | None = None
    upload_failures: int | None = None
    last_error: str | None = None  # of the last failed upload
    upload_permanent_error: str | None = None  # the nodes refuse for good: not retried until asked (retry.py)
    last_error_at: float | None = None
    last_upload_at: float | None = None
    cache_capacity: int | None = None
    cache_bytes: int | None = None
    cache_hits: int | None = None
    cache_misses: int | None = None
    nodes: dict[str, NodeHealth] = field(default_factory=dict)
    read_only: bool | None = None
    snapshot: SnapshotStatus | None = None  # None: a daemon that does not report snapshots
    lease: LeaseStatus | None = None  # None: a read-only mount, or a daemon without writer leases
    epoch: int | None = None  # the committee's epoch the mount works with (docs/epochs.md)
    renewal: RenewalStatus | None = None  # None: a read-only mount, or a daemon without renewals
    over_quota: str | None = None  # what the nodes said while stores are refused for the writer's quota
    reported: frozenset[str] | None = field(default=None, repr=False, compare=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MountStatus:
        nodes = data.get("nodes")
        snapshot = data.get("snapshot")
        lease = data.get("lease")
        read_only = data.get("read_only")
        numbers = {name: _number(data.get(name)) for name in (
            "pid", "mounted_since", "staged_bytes", "dirty_bytes", "uploads_in_flight", "uploaded_blobs",
            "uploaded_bytes", "upload_failures", "last_error_at", "last_upload_at", "cache_capacity", "cache_bytes",
            "cache_hits", "cache_misses", "epoch")}
        return cls(
            **numbers,
            fs_id=data.get("fs_id"), state=data.get("state"), last_error=data.get("last_error"),
            encryption=data.get("encryption") if isinstance(data.get("encryption"), str) else None,
            upload_permanent_error=data.get("upload_permanent_error"),
            nodes={str(node): NodeHealth.from_json(health) for node, health in nodes.items()
                   if isinstance(health, Mapping)} if isinstance(nodes, Mapping) else {},
            read_only=read_only if isinstance(read_only, bool) else None,
            snapshot=SnapshotStatus.from_json(snapshot) if isinstance(snapshot, Mapping) else None,
            lease=LeaseStatus.from_json(lease) if isinstance(lease, Mapping) else None,
            renewal=RenewalStatus.from_json(data["renewal"]) if isinstance(data.get("renewal"), Mapping) else None,
            over_quota=data.get("over_quota") if isinstance(data.get("over_quota"), str) else None,
            reported=frozenset(data), extra={k: v for k, v in data.items() if k not in cls._known()})

    @classmethod
    def of(cls, status: MountStatus | Mapping[str, Any]) -> MountStatus:
        """``status`` itself, or parsed from its JSON form."""
        return status if isinstance(status, MountStatus) else cls.from_json(status)

    @property
    def pending_bytes(self) -> int:
        """Written but not yet certified: staged on disk plus still in memory."""
        return (self.staged_bytes or 0) + (self.dirty_bytes or 0)

    @property
    def uploads_failing(self) -> bool:
        """Whether staged data is currently failing to upload (as opposed to a failure long recovered).

        With ``last_error_at`` and ``last_upload_at`` reported the answer is exact: the latest upload
        outcome was a failure. Without them, the best guess is: something has failed and data is
        still waiting.
        """
        if not self.last_error or not self.upload_failures or not self.pending_bytes:
            return False
        if self.last_error_at is not None and self.last_upload_at is not None:
            return self.last_error_at >= self.last_upload_at
        return True

    @property
    def snapshot_failing(self) -> bool:
        return self.snapshot is not None and self.snapshot.failing

    @property
    def renewal_failing(self) -> bool:
        return self.renewal is not None and self.renewal.failing

    @property
    def lease_lost(self) -> bool:
        """A writable mount that does not hold its writer lease: nothing it writes is durable."""
        return self.lease is not None and self.lease.lost


def read_status(mountpoint: Path) -> MountStatus:
    """Ask the daemon of the walrusfs mount on ``mountpoint`` (its root) for its status."""
    try:
        return MountStatus.from_json(json.loads(os.getxattr(mountpoint, STATUS_XATTR)))
    except OSError as error:
        raise UserError(f"{mountpoint} is not a mounted walrusfs filesystem ({error.strerror})") from error


__all__ = ["CONTROL_PREFIX", "LeaseStatus", "MountStatus", "NodeHealth", "RenewalStatus", "SnapshotStatus",
           "read_status"]
