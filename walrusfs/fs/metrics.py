"""Prometheus metrics of a mount daemon: an HTTP endpoint and/or a node_exporter textfile.

Both render the daemon's MountStatus (the one ``getfattr -n walrusfs.status`` returns), so the
metrics never disagree with ``walrusfs status``; prometheus_client writes the format (walrusfs.prometheus).
Every metric is described in docs/operating.md.

The HTTP server is deliberately tiny: one request per connection, ``GET /metrics`` only, a bounded
request head read under a deadline, a bounded number of connections. It runs inside the daemon's
trio loop, so a client that never finishes its request must cost a socket and nothing else.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

import trio
from prometheus_client.core import Metric

from ..prometheus import CONTENT_TYPE, Sample, metric_family, render
from .mount_status import MountStatus

StatusFn = Callable[[], MountStatus | Mapping[str, Any]]  # the daemon's status now

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
TEXTFILE_INTERVAL = 15.0  # seconds between textfile rewrites (a typical scrape interval)
REQUEST_TIMEOUT = 10.0  # a client gets this long to send its request head
SEND_TIMEOUT = 10.0  # ... and this long to take the response
MAX_REQUEST_HEAD = 8192
MAX_CONNECTIONS = 16
BIND_RETRY = 30.0  # seconds between attempts when the metrics port cannot be bound

# Top-level status fields exported as they are: (status key, metric suffix, type, help).
_PLAIN: list[tuple[str, str, str, str]] = [
    ("mounted_since", "start_time_seconds", "gauge", "When the mount daemon started (Unix time)."),
    ("staged_bytes", "staged_bytes", "gauge",
     "Bytes written and staged on local disk, not yet in a certified blob."),
    ("dirty_bytes", "dirty_bytes", "gauge", "Bytes written into memory buffers, not yet staged."),
    ("uploads_in_flight", "uploads_in_flight", "gauge", "Blobs being encoded or stored right now."),
    ("uploaded_blobs", "uploaded_blobs_total", "counter", "Blobs certified since the mount started."),
    ("uploaded_bytes", "uploaded_bytes_total", "counter", "Bytes in blobs certified since the mount started."),
    ("upload_failures", "upload_failures_total", "counter",
     "Blob uploads that failed (their blocks stay staged and are retried)."),
    ("cache_bytes", "cache_bytes", "gauge", "Bytes held by the local read cache."),
    ("cache_capacity", "cache_capacity_bytes", "gauge", "The read cache's bound."),
    ("cache_hits", "cache_hits_total", "counter", "Block reads served by the read cache."),
    ("cache_misses", "cache_misses_total", "counter", "Block reads that had to fetch a blob from the nodes."),
    ("last_error_at", "last_upload_error_timestamp_seconds", "gauge", "When the last upload failed (Unix time)."),
]

# Fields of status["snapshot"] (metadata snapshots): (key, metric suffix, type, help, divisor to base units).
_SNAPSHOT: list[tuple[str, str, str, str, float]] = [
    ("seq", "snapshot_seq", "gauge", "Sequence number of the last metadata snapshot.", 1.0),
    ("created_ns", "snapshot_last_timestamp_seconds", "gauge", "When the last metadata snapshot was taken.",
     1e9),
    ("db_bytes", "snapshot_db_bytes", "gauge", "Size of the metadata database the last snapshot covered.", 1.0),
    ("uploaded_bytes", "snapshot_last_uploaded_bytes", "gauge",
     "Bytes the last metadata snapshot uploaded (its new segments and manifest).", 1.0),
    ("next_due_s", "snapshot_next_due_seconds", "gauge", "Seconds until the next metadata snapshot is due.", 1.0),
]

# Fields of each status["nodes"][node_id] (the client's health book): (key, suffix, type, help, divisor).
_NODE: list[tuple[str, str, str, str, float]] = [
    ("latency_ms", "node_latency_seconds", "gauge", "Moving average of successful request latency, per node.",
     1e3),
    ("failure_score", "node_failure_score", "gauge",
     "Recent failures of a node, decaying by half every 30 s (0: healthy; nodes are tried in score order).",
     1.0),
    ("successes", "node_successes_total", "counter", "Successful requests to a node.", 1.0),
    ("failures", "node_failures_total", "counter", "Failed requests to a node (errors, timeouts, bad bytes).", 1.0),
    ("lies", "node_lies_total", "counter", "Answers from a node whose bytes did not verify.", 1.0),
]


def uploads_failing(status: MountStatus | Mapping[str, Any]) -> bool:
    """Whether staged data is currently failing to upload (MountStatus.uploads_failing)."""
    return MountStatus.of(status).uploads_failing


def snapshot_failing(status: MountStatus | Mapping[str, Any]) -> bool:
    return MountStatus.of(status).snapshot_failing


def render_metrics(status: MountStatus | Mapping[str, Any]) -> str:
    """The status in the Prometheus text exposition format, version 0.0.4.

    Fields the daemon did not report (older or newer daemons) are left out rather than reported as 0.
    """
    return render(_families(MountStatus.of(status)))


def _families(status: MountStatus) -> Iterator[Metric]:
    def family(suffix: str, kind: str, help_text: str, samples: Iterable[Sample]) -> Iterator[Metric]:
        samples = list(samples)
        if samples:
            yield metric_family("walrusfs_mount_" + suffix, kind, help_text, samples)

    info = {"fs_id": status.fs_id or "", "state": status.state or ""}
    yield from family("info", "gauge", "Constant 1, labelled with the filesystem id and its local state directory.",
                      [(info, 1)])
    if status.read_only is not None:
        yield from family("read_only", "gauge", "1 if the filesystem is mounted read-only.",
                          [({}, status.read_only)])
    for key, suffix, kind, help_text in _PLAIN:
        value = getattr(status, key)
        if value is not None:
            yield from family(suffix, kind, help_text, [({}, value)])
    yield from family("uploads_failing", "gauge",
                      "1 while staged data is failing to upload (see last_error in status).",
                      [({}, status.uploads_failing)])

    if status.snapshot is not None:
        for key, suffix, kind, help_text, divisor in _SNAPSHOT:
            value = getattr(status.snapshot, key)
            if value is not None:
                yield from family(suffix, kind, help_text, [({}, value / divisor)])
        yield from family("snapshot_failing", "gauge", "1 if the last metadata snapshot attempt failed.",
                          [({}, status.snapshot_failing)])

    if status.renewal is not None:
        yield from family("renewal_failing", "gauge", "1 while renewing the filesystem's claims on the nodes fails.",
                          [({}, status.renewal_failing)])
        if status.renewal.last_success is not None:
            yield from family("renewal_last_success_seconds", "gauge",
                              "Unix time of the last successful renewal of the filesystem's claims.",
                              [({}, status.renewal.last_success)])
    if "over_quota" in (status.reported or ()) or status.over_quota is not None:
        yield from family("over_quota", "gauge", "1 while the nodes refuse this writer's stores for its quota.",
                          [({}, status.over_quota is not None)])

    for key, suffix, kind, help_text, divisor in _NODE:
        yield from family(suffix, kind, help_text,
                          [({"node": node}, getattr(health, key) / divisor)
                           for node, health in sorted(status.nodes.items()) if getattr(health, key) is not None])


# --- the HTTP endpoint ---------------------------------------------------------------------------------


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT`` or ``PORT`` (host 127.0.0.1); port 0 picks a free one."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"bad listen address {text!r} (expected [IPv6]:PORT)")
        port_text = rest[1:]
    elif ":" in text:
        host, port_text = text.rsplit(":", 1)
    else:
        host, port_text = "", text
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"bad listen address {text!r}: the port must be a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"bad listen address {text!r}: port out of range")
    return host or DEFAULT_HOST, port


class _BadRequest(Exception):
    pass


async def serve_metrics(listen: str, status_fn: StatusFn, *,
                        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``GET /metrics`` on ``listen`` (only that address) until cancelled.

    ``task_status.started`` gets the bound port, so ``HOST:0`` works with ``nursery.start``.
    Raises OSError if the address cannot be bound.
    """
    host, port = parse_listen(listen)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, bound)
    limiter = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def handler(stream: trio.SocketStream) -> None:
        try:
            limiter.acquire_nowait()
        except trio.WouldBlock:
            return  # over the limit: closed at once (serve_listeners closes the stream)
        try:
            await _answer(stream, status_fn)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass  # the client went away or was too slow: nothing to tell anyone
        finally:
            limiter.release()

    task_status.started(bound)
    await trio.serve_listeners(handler, listeners)


async def _answer(stream: trio.SocketStream, status_fn: StatusFn) -> None:
    try:
        with trio.fail_after(REQUEST_TIMEOUT):
            head = await _read_head(stream)
        method, path = _parse_request_line(head)
    except _BadRequest as error:
        await _respond(stream, 400, "Bad Request", f"{error}\n".encode())
        return
    if path != "/metrics":
        await _respond(stream, 404, "Not Found", b"walrusfs mount metrics are at /metrics\n")
        return
    if method not in ("GET", "HEAD"):
        await _respond(stream, 405, "Method Not Allowed", b"GET /metrics\n", extra="Allow: GET, HEAD\r\n")
        return
    try:
        body = render_metrics(status_fn()).encode()
    except Exception:
        log.exception("rendering metrics failed")
        await _respond(stream, 500, "Internal Server Error", b"rendering metrics failed (see the mount log)\n")
        return
    await _respond(stream, 200, "OK", body, content_type=CONTENT_TYPE, head_only=method == "HEAD")


async def _read_head(stream: trio.SocketStream) -> bytes:
    buffer = bytearray()
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            end = buffer.find(b"\n\n")  # bare-LF clients (tolerated, as most servers do)
        if end >= 0:
            return bytes(buffer[:end])
        if len(buffer) > MAX_REQUEST_HEAD:
            raise _BadRequest("request head too large")
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise _BadRequest("connection closed before the end of the request head")
        buffer += chunk


def _parse_request_line(head: bytes) -> tuple[str, str]:
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise _BadRequest("malformed request line")
    try:
        method, target = parts[0].decode("ascii"), parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise _BadRequest("non-ASCII request line") from None
    return method, target.split("?", 1)[0]


async def _respond(stream: trio.SocketStream, code: int, reason: str, body: bytes, *,
                   content_type: str = "text/plain; charset=utf-8", extra: str = "",
                   head_only: bool = False) -> None:
    header = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
              f"Connection: close\r\n{extra}\r\n").encode()
    with trio.fail_after(SEND_TIMEOUT):
        await stream.send_all(header if head_only else header + body)


# --- the textfile route and the daemon's entry point ---------------------------------------------------


async def write_textfile(path: str | os.PathLike[str], status_fn: StatusFn,
                         interval: float = TEXTFILE_INTERVAL) -> None:
    """Rewrite ``path`` (for node_exporter's textfile collector) every ``interval`` seconds.

    Each write goes to a temporary name and is renamed over ``path``, so the collector never reads
    half a file. When the task ends (the mount went away) the file is removed: stale figures of a
    daemon that is gone must not look current.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # not *.prom: the collector skips it
    reported: str | None = None
    try:
        while True:
            text = render_metrics(status_fn())
            try:
                await trio.to_thread.run_sync(_replace, temporary, path, text)
                reported = None
            except OSError as error:
                if str(error) != reported:  # once per distinct error, not every interval
                    log.warning("cannot write the metrics textfile %s: %s", path, error)
                    reported = str(error)
            await trio.sleep(interval)
    finally:
        with suppress(OSError):
            path.unlink()
        with suppress(OSError):
            temporary.unlink()


def _replace(temporary: Path, path: Path, text: str) -> None:
    temporary.write_text(text)
    temporary.chmod(0o644)
    os.replace(temporary, path)


async def export_metrics(listen: str | None, textfile: str | None, status_fn: StatusFn) -> None:
    """What the mount daemon runs for ``-o metrics=HOST:PORT`` and ``-o metrics_textfile=PATH``.

    A port that cannot be bound is logged and retried: metrics are never a reason to take the
    filesystem down.
    """
    async def keep_serving(listen: str) -> None:
        while True:
            try:
                await serve_metrics(listen, status_fn)
            except OSError as error:
                log.error("cannot serve metrics on %s: %s (retrying every %.0f s)", listen, error, BIND_RETRY)
            await trio.sleep(BIND_RETRY)

    async with trio.open_nursery() as nursery:
        if listen:
            nursery.start_soon(keep_serving, listen)
        if textfile:
            nursery.start_soon(write_textfile, textfile, status_fn)
