"""``walrusfs status DIR [--json]``: what a mount daemon is doing, for people and for scripts.

Exit status: 0 when all is well; 1 when DIR is not (inside) a mounted walrusfs filesystem or its
daemon does not answer; 2 when staged data or metadata snapshots are failing to upload (the data
stays staged and is retried; the output says why), or a writable mount does not hold its writer
lease (deposed by another writer, or no quorum to renew it), the nodes refuse its stores for the
writer's quota, or renewing its blobs' claims on the nodes fails. Documented in docs/operating.md.
"""

from __future__ import annotations

import argparse
import errno
import json
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import UserError
from .config import NO_ENCRYPTION
from .mount_status import LeaseStatus, MountStatus, NodeHealth, SnapshotStatus, read_status

EXIT_FAILING = 2
FSTYPE = "fuse.walrusfs"
# A node whose decaying failure score is below this is "ok"; below FAILING_SCORE, "flaky".
FLAKY_SCORE = 0.5
FAILING_SCORE = 2.0


def register(commands: argparse._SubParsersAction) -> None:
    status = commands.add_parser(
        "status", help="what a mount is doing: staged bytes, uploads, cache, snapshots, node health",
        description="Show a mount's state. Exit 0: healthy; 1: not a walrusfs mount (or no answer); "
                    "2: uploads, metadata snapshots or claim renewals are failing, or the writer is over quota.")
    status.add_argument("dir", type=Path, help="the mount point (or any directory inside the mount)")
    status.add_argument("--json", action="store_true", help="the daemon's status as JSON, with derived fields")
    status.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the daemon to answer (default 10)")
    status.set_defaults(func=_status)


def uploads_failing(status: MountStatus | dict) -> bool:
    return MountStatus.of(status).uploads_failing


def snapshot_failing(status: MountStatus | dict) -> bool:
    return MountStatus.of(status).snapshot_failing


def _status(args: argparse.Namespace) -> int:
    mountpoint = find_mount_root(args.dir)
    status = MountStatus.of(read_status_within(mountpoint, args.timeout))
    failing = (status.uploads_failing or status.snapshot_failing or status.lease_lost or status.renewal_failing
               or bool(status.over_quota))
    if args.json:
        # What the daemon reported, as it reported it, plus the fields derived here.
        print(json.dumps(dict(status.to_json(), mountpoint=str(mountpoint), uploads_failing=status.uploads_failing,
                              snapshot_failing=status.snapshot_failing, renewal_failing=status.renewal_failing),
                         indent=2, sort_keys=True))
    else:
        print(format_status(status, mountpoint=mountpoint), end="")
    return EXIT_FAILING if failing else 0


# --- finding and asking the daemon ------------------------------------------------------------------------


def _mounts() -> list[tuple[Path, str]]:
    """(mount point, filesystem type) of every mount this process sees."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        try:
            fstype = fields[fields.index("-") + 1]
        except (ValueError, IndexError):
            continue
        # mountinfo escapes space, tab, newline and backslash as octal.
        point = fields[4].encode().decode("unicode_escape").encode("latin-1").decode(errors="replace")
        mounts.append((Path(point), fstype))
    return mounts


def find_mount_root(directory: Path) -> Path:
    """The walrusfs mount point ``directory`` is in (the daemon answers only on the root).

    Raises UserError, naming what is mounted there instead, if it is not in a walrusfs mount.
    """
    path = directory.absolute().resolve()
    if not path.exists():  # else the answer would be about whatever mount holds its parent (often /)
        raise UserError(f"{directory} does not exist; give the directory a walrusfs filesystem is mounted on"
                        f"{_walrusfs_mounts_hint()}")
    best: tuple[Path, str] | None = None
    for point, fstype in _mounts():
        if (path == point or point in path.parents) and (best is None or len(point.parts) >= len(best[0].parts)):
            best = (point, fstype)
    if best is None:
        raise UserError(f"{directory}: no such mount (is /proc mounted?)")
    point, fstype = best
    if fstype != FSTYPE:
        raise UserError(f"{directory} is not a walrusfs mount (it is on {point}, filesystem type {fstype}); "
                        f"give the directory a walrusfs filesystem is mounted on{_walrusfs_mounts_hint()}")
    return point


def _walrusfs_mounts_hint() -> str:
    points = [str(point) for point, fstype in _mounts() if fstype == FSTYPE]
    if not points:
        return " (none is mounted now)"
    return f" (mounted now: {', '.join(points[:5])}{' ...' if len(points) > 5 else ''})"


def read_status_within(mountpoint: Path, timeout: float) -> MountStatus:
    """read_status, but a daemon that is wedged costs ``timeout`` seconds and an error, not a hang."""
    result: list[MountStatus] = []
    failure: list[BaseException] = []

    def ask() -> None:
        try:
            result.append(read_status(mountpoint))
        except BaseException as error:
            failure.append(error)

    # A daemon thread: if getxattr never returns, the process can still exit.
    thread = threading.Thread(target=ask, name="walrusfs-status", daemon=True)
    thread.start()
    thread.join(timeout)
    if result:
        return result[0]
    if not failure:
        raise UserError(f"the mount daemon of {mountpoint} did not answer within {timeout:.0f} s: it is busy or "
                        "wedged (see its log: <state>/mount.log)")
    error = failure[0]
    cause = error.__cause__
    if isinstance(cause, OSError) and cause.errno == errno.ENOTCONN:
        raise UserError(f"the mount daemon of {mountpoint} is gone (Transport endpoint is not connected); "
                        f"run 'fusermount3 -u {mountpoint}' and mount again (staged data is uploaded then)") from cause
    raise error


# --- the human-readable form ------------------------------------------------------------------------------

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


def format_bytes(count: float | None) -> str:
    if count is None:
        return "-"
    if abs(count) < KiB:
        return f"{int(count)} B"
    for unit, size, digits in (("KiB", KiB, 1), ("MiB", MiB, 1), ("GiB", GiB, 2)):
        if abs(count) < size * 1024:
            return f"{count / size:.{digits}f} {unit}"
    return f"{count / TiB:.2f} TiB"


def format_duration(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min"
    if seconds < 86400:
        hours, rest = divmod(seconds, 3600)
        return f"{hours:.0f} h {rest // 60:.0f} min"
    days = seconds / 86400
    return f"{days:.0f} day" + ("" if round(days) == 1 else "s")


def format_age(timestamp: float | None, now: float) -> str:
    """'3 min ago' for a past Unix time, 'in 3 min' for a future one, '-' for none."""
    if timestamp is None:
        return "-"
    delta = now - timestamp
    if abs(delta) < 2:
        return "just now"
    return f"{format_duration(delta)} ago" if delta > 0 else f"in {format_duration(delta)}"


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _rows(pairs: list[tuple[str, str]], indent: str = "  ") -> list[str]:
    width = max(len(label) for label, _ in pairs)
    return [f"{indent}{label.ljust(width)}  {value}".rstrip() for label, value in pairs]


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def node_state(health: NodeHealth | Mapping[str, Any]) -> str:
    """ok, flaky or failing by its failure score, noting a node that lied and one avoided for it now."""
    if isinstance(health, Mapping):  # as the client's health book gives it
        health = NodeHealth.from_json(health)
    score = health.failure_score or 0.0
    state = "ok" if score < FLAKY_SCORE else "flaky" if score < FAILING_SCORE else "failing"
    if health.lies:
        state += ", lied"
    if health.avoided_s:
        state += f", avoided {health.avoided_s:.0f} s"  # not asked by reads for now
    return state


def format_status(status: MountStatus | dict, now: float | None = None, mountpoint: Path | None = None) -> str:
    """The status as an aligned report; fields a daemon does not report are left out."""
    status = MountStatus.of(status)
    now = time.time() if now is None else now
    lines: list[str] = []
    where = mountpoint or status.extra.get("mountpoint", "?")
    mode = {True: " (read-only)", False: " (read-write)"}.get(status.read_only, "")
    lines.append(f"walrusfs {status.fs_id or '?'} mounted on {where}{mode}")
    since = status.mounted_since
    daemon = f"pid {status.pid if status.pid is not None else '?'}"
    if since is not None:
        daemon += (f", up {format_duration(now - since)} "
                   f"(since {datetime.fromtimestamp(since).strftime('%Y-%m-%d %H:%M:%S')})")
    rows = [("daemon", daemon), ("state", status.state or "?")]
    if status.encryption == NO_ENCRYPTION:
        rows.append(("encryption", "none: every storage node can read this filesystem's data and names"))
    elif status.encryption:
        rows.append(("encryption", f"{status.encryption}: nodes store only ciphertext"))
    lines += _rows(rows)

    failures = int(status.upload_failures or 0)
    last_error = status.last_error
    snapshot = status.snapshot
    alerts: list[str] = []
    permanent = status.upload_permanent_error
    if permanent:
        # Retrying cannot help (the nodes refuse this writer, or the request): say so, and what to do.
        alerts.append(f"UPLOADS STOPPED, PERMANENT FAILURE ({_plural(failures, 'failed attempt')} since mount): "
                      "staged data is kept but not retried automatically; fix what the nodes say (the writer key, the "
                      "committee, the clocks), then fsync, sync, unmount or the next snapshot tries again")
        alerts.append(f"permanent error: {_shorten(str(permanent), 1000)}")  # the nodes say why
    elif status.uploads_failing:
        alerts.append(f"UPLOADS FAILING ({_plural(failures, 'failed attempt')} since mount): staged data is "
                      "kept and retried, but it is not durable yet")
        alerts.append(f"last error: {_shorten(str(last_error), 1000)}")  # it names each failed node and why
    if snapshot is not None and snapshot.failing:
        alerts.append(f"METADATA SNAPSHOTS FAILING: {_shorten(str(snapshot.last_error), 400)}")
    if status.lease_lost and status.lease is not None:
        alerts.append(f"NOT DURABLE, WRITER LEASE NOT HELD: {_shorten(str(status.lease.message), 600)}")
    if status.over_quota:
        alerts.append(f"OVER QUOTA ON THE NODES, NEW DATA IS NOT STORED: {_shorten(status.over_quota, 600)}")
    renewal = status.renewal
    if renewal is not None and renewal.failing:
        last = format_age(renewal.last_success, now) if renewal.last_success else "never since mount"
        kept = ""
        if renewal.expires:
            kept = f"; kept until {time.strftime('%Y-%m-%d %H:%M', time.localtime(renewal.expires))} at least"
        alerts.append(f"RENEWAL FAILING (last success: {last}{kept}): nodes delete blobs whose claims run out; "
                      f"last error: {_shorten(str(renewal.last_error), 600)}")
    if alerts:
        lines.append("")
        lines += [f"!! {alert}" for alert in alerts]
    lines.append("")

    staged = int(status.staged_bytes or 0)
    dirty = int(status.dirty_bytes or 0)
    in_flight = int(status.uploads_in_flight or 0)
    uploads = [
        ("staged", f"{format_bytes(staged):>10}  on local disk, not yet certified"),
        ("in memory", f"{format_bytes(dirty):>10}  written, not yet staged"),
        ("in flight", _plural(in_flight, "blob")),
        ("certified", f"{_plural(int(status.uploaded_blobs or 0), 'blob')}, "
                      f"{format_bytes(status.uploaded_bytes or 0)} since mount"),
        ("failures", str(failures)),
    ]
    if last_error and not status.uploads_failing:
        when = format_age(status.last_error_at, now) if status.last_error_at else "earlier"
        uploads.append(("last error", f"{_shorten(str(last_error), 100)} ({when}; since recovered)"))
    lines.append("uploads" + ("  (all certified)" if not staged and not dirty and not in_flight else ""))
    lines += _rows(uploads)

    hits, misses = int(status.cache_hits or 0), int(status.cache_misses or 0)
    cache = format_bytes(status.cache_bytes or 0)
    if status.cache_capacity:
        cache += f" of {format_bytes(status.cache_capacity)}"
    cache += f" used, {_plural(hits, 'hit')}, {_plural(misses, 'miss', 'misses')}"
    if hits + misses:
        cache += f" ({100 * hits / (hits + misses):.0f}% hits)"
    other = [("cache", cache), ("last snapshot", _format_snapshot(status, now))]
    other += _format_space(status.extra.get("space"), status.extra.get("gc"))
    if status.epoch is not None:
        other.append(("committee", f"epoch {status.epoch}"))
    if status.lease is not None:
        other.append(("writer lease", _format_lease(status.lease)))
    lines.append("")
    lines += _rows(other, indent="")

    nodes = status.nodes
    lines.append("")
    if not nodes:
        lines.append("nodes: none contacted yet")
    else:
        healthy = sum(1 for health in nodes.values() if node_state(health) == "ok")
        lines.append(f"nodes: {healthy} of {len(nodes)} healthy")
        rows = []
        for node, health in sorted(nodes.items()):
            latency = health.latency_ms
            rows.append([str(node), node_state(health), "-" if latency is None else f"{latency:.1f} ms",
                         f"{health.failure_score or 0:.2f}", str(health.successes or 0),
                         str(health.failures or 0), str(health.lies or 0),
                         _shorten(str(health.last_error or "-"), 60)])
        lines += _table(["NODE", "STATE", "LATENCY", "SCORE", "OK", "FAILED", "LIES", "LAST ERROR"], rows)
    return "\n".join(lines) + "\n"


def _format_space(space: Any, gc: Any) -> list[tuple[str, str]]:
    """Space on the network and the last gc pass (docs/gc.md), when the daemon reports them."""
    rows = []
    if isinstance(space, dict) and space.get("network_bytes") is not None:
        blobs = _plural(int(space.get("blobs") or 0), "blob")
        rows.append(("space", f"{format_bytes(space.get('network_bytes'))} on the nodes after encoding, for "
                              f"{format_bytes(space.get('blob_bytes'))} in {blobs} holding "
                              f"{format_bytes(space.get('logical_bytes'))} of live blocks"))
    last = gc.get("last") if isinstance(gc, dict) else None
    if isinstance(gc, dict) and gc.get("running"):
        running = gc["running"]
        rows.append(("gc", f"running: {running.get('step')} {running.get('done')}/{running.get('total')}"))
    elif isinstance(last, dict):
        text = (f"last pass released {format_bytes(last.get('released_bytes'))}, "
                f"{format_bytes(last.get('referenced_bytes'))} referenced")
        if last.get("pending_blobs"):
            text += f"; {_plural(int(last['pending_blobs']), 'blob')} not yet released on every node"
        rows.append(("gc", text))
    return rows


def lease_lost(status: MountStatus | dict) -> bool:
    """A writable mount that does not hold its writer lease (docs/writer-lease.md)."""
    return MountStatus.of(status).lease_lost


def _format_lease(lease: LeaseStatus) -> str:
    if lease.deposed_by:
        taker = lease.deposed_by
        return f"DEPOSED by {taker.get('label') or taker.get('holder')} (generation {taker.get('generation')})"
    state = f"held for {lease.valid_for_s or 0:.0f} s more" if lease.held else "LAPSED"
    return f"generation {lease.generation}, {state} (term {lease.term_s or 0:.0f} s)"


def _format_snapshot(status: MountStatus, now: float) -> str:
    snapshot: SnapshotStatus | None = status.snapshot
    if snapshot is None:
        # Absent (an older daemon), or reported as something other than a table.
        absent = status.reported is not None and "snapshot" not in status.reported
        return "- (this daemon does not report metadata snapshots)" if absent else "-"
    due = snapshot.next_due_s
    next_due = "" if due is None else f"; next due {format_age(now + due, now)}"
    if snapshot.seq is None:
        return f"none yet{next_due}"
    created = snapshot.created_ns
    text = f"#{snapshot.seq}, {format_age(None if created is None else created / 1e9, now)}"
    if snapshot.db_bytes:
        text += f", database {format_bytes(snapshot.db_bytes)}"
    if snapshot.uploaded_bytes:
        text += f" ({format_bytes(snapshot.uploaded_bytes)} uploaded)"
    if snapshot.manifest:
        text += f", manifest {snapshot.manifest}"
    return text + next_due
