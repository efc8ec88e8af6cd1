"""The node's HTTP/1.1 server: ASGI, plus one extension that receives a body straight into the
caller's buffer.

Why not uvicorn (still selectable with ``--server uvicorn``, for comparison): uvicorn hands an app a
body as a stream of fresh ``bytes`` objects (copied out of the socket by uvloop, again by httptools)
that the app then copies into place; for sliver uploads that was most of a node's CPU. Here a body
with a Content-Length read through ``scope["extensions"]["walrusfs.receive_into"]`` goes from the
socket into the object image that the store writes with O_DIRECT: one copy, by the kernel, and no
Python per chunk. Measured over loopback with 9 MiB PUTs: 0.72 ms of server CPU per MiB with uvicorn,
0.15 ms with this design (docs/node-api.md).

Request heads are parsed by llhttp (httptools), the parser uvicorn uses; chunked bodies go through it
too. One request at a time per connection (keep-alive; pipelined requests wait their turn). Idle,
slow-head and stalled-body connections are closed by a watchdog. SIGTERM or SIGINT stops accepting,
lets in-flight requests finish (up to ``grace`` seconds), then runs the app's lifespan shutdown.

Memory per connection is bounded and mostly zero while it idles: its staging buffer is allocated when
bytes arrive (4 KiB, doubled as a head needs, at most ``STAGING_MAX``) and dropped whenever it is
empty between requests; bodies read with ``receive_into`` bypass it. Connections are capped in
total and per peer address (``Limits``); one over a cap is answered 503 ``too_many_connections``
and closed, without a buffer. The listening socket is bound before the app's lifespan startup, so
nothing the app starts (peer polling) can take the port first. docs/node-api.md states the bound.

Length: one HTTP/1.1 connection state machine (head, bodies fixed and chunked, receive_into,
keep-alive, watchdog, caps) whose parts share the connection's buffers and state; split across
modules they would only pass that state back and forth.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import resource
import signal
import ssl as ssl_module
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import httptools

log = logging.getLogger("nodes.httpd")

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]],
                    Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]
RECEIVE_INTO = "walrusfs.receive_into"

MAX_HEAD = 64 * 1024  # request line and headers; more is answered 431
# A connection's staging buffer (heads, small and chunked bodies): allocated at its first bytes,
# doubled while a head needs room, never above STAGING_MAX, dropped when empty between requests.
_STAGING_FIRST = 4 * 1024
STAGING_MAX = MAX_HEAD + 4 * 1024
DRAIN_LIMIT = 1 << 20  # unread body bytes read and dropped to keep a connection; more closes it
_FILES_RESERVED = 1024  # file descriptors kept for everything but client connections (store, peers)


@dataclass(frozen=True)
class Limits:
    """How many connections the server holds at once. One more is answered 503 and closed."""

    max_connections: int = 2048
    max_connections_per_peer: int = 256  # per client IP address; below the total, so one cannot starve others
    refusing: int = 256  # refused connections kept open for ``Timeouts.refused`` so the client reads the 503


@dataclass
class ConnectionStats:
    """What the server did with connections, for metrics and the node's memory keeper."""

    open: int = 0
    peak: int = 0  # most open at once since the memory keeper last reset it
    accepted: int = 0
    refused_total: int = 0  # over Limits.max_connections
    refused_peer: int = 0  # over Limits.max_connections_per_peer


class Timeouts:
    keepalive = 30.0  # an idle connection between requests
    head = 30.0  # from the first byte of a request head to its end
    body = 60.0  # without a byte of a body the app is waiting for
    grace = 10.0  # in-flight requests at shutdown
    refused = 2.0  # a refused connection, for its client to read the 503 before the close


class _Head:
    """httptools' callbacks for one request."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.complete = False
        self.keep_alive = False
        self.parser: httptools.HttpRequestParser | None = None

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()  # type: ignore[union-attr]

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class _Disconnected(Exception):
    pass


class _Connection(asyncio.BufferedProtocol):
    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None  # the client's IP address
        self.admitted = False  # counted in the server's connections (refused ones are not)
        self.staging = bytearray()  # see _STAGING_FIRST
        self.start = self.end = 0
        self.target: memoryview | None = None  # receive_into: the socket reads into this
        self.filled = 0
        self._into_target = False  # where the last get_buffer() pointed
        self.reading_paused = False
        self.closed = False
        self.eof = False
        self._waiter: asyncio.Future[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        # Watchdog state: what the connection is waiting for, since when.
        self.state = "idle"
        self.since = time.monotonic()
        self.in_request = False
        self.task: asyncio.Task[None] | None = None

    # --- asyncio callbacks ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if isinstance(peername, tuple) and peername else None
        refusal = self.server.admit(self)
        if refusal is not None:
            self._refuse_connection(refusal)
            return
        self.task = self.loop.create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.release(self)
        self._writable.set()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        if self.state == "refused":
            self.close()
            return False
        self._wake()
        return True  # keep the transport: a response may still be owed; _serve closes it

    def _refuse_connection(self, message: str) -> None:
        """Answer 503 before reading anything, then end the connection: at once if many refused ones
        are lingering, else after the client closes or ``Timeouts.refused`` (closing with its request
        unread could reset the connection before the client reads the answer)."""
        self.state, self.since = "refused", time.monotonic()
        body = json.dumps({"error": "too_many_connections", "message": message}).encode()
        transport = self.transport
        assert transport is not None
        transport.write(_status_line(503) + b"content-type: application/json\r\nretry-after: 1\r\n"
                        + self.server.own_header_lines()
                        + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)
        if len(self.server.refusing) >= self.server.limits.refusing or not transport.can_write_eof():
            self.close()
            return
        self.server.refusing.add(self)
        transport.write_eof()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.state == "refused":
            return self.server.discard
        self._into_target = self.target is not None and self.filled < len(self.target)
        if self._into_target:
            return self.target[self.filled:]  # type: ignore[index]
        if self.end == len(self.staging):
            if self.start:
                self._compact()
            if self.end == len(self.staging):
                self._grow()
        return memoryview(self.staging)[self.end:]

    def buffer_updated(self, nbytes: int) -> None:
        if self.state == "refused":
            return  # dropped unread
        if self.state == "body":
            self.since = time.monotonic()
        if self._into_target:
            self.filled += nbytes
            if self.filled == len(self.target):  # type: ignore[arg-type]
                self._wake()
            return
        self.end += nbytes
        if self.end - self.start >= STAGING_MAX and not self.reading_paused:
            # Full: wait until the request consumes some (or, for a head, until it is refused 431).
            self.transport.pause_reading()  # type: ignore[union-attr]
            self.reading_paused = True
        self._wake()

    # --- buffer -----------------------------------------------------------------------------------

    def _compact(self) -> None:
        size = self.end - self.start
        self.staging[:size] = self.staging[self.start:self.end]
        self.start, self.end = 0, size

    def _grow(self) -> None:
        """Room for more: double the buffer up to STAGING_MAX. Past it reading is being paused,
        but a read already under way still needs room (a little more is given)."""
        size = len(self.staging)
        larger = min(max(_STAGING_FIRST, 2 * size), STAGING_MAX) if size < STAGING_MAX else size + 4096
        # A new buffer rather than a resize: a view of the old one may still be alive.
        grown = bytearray(larger)
        grown[:size] = self.staging
        self.staging = grown

    def _release_staging(self) -> None:
        """Drop the buffer when it holds nothing: an idle connection costs no staging memory."""
        if self.start == self.end and self.staging:
            self.staging = bytearray()
            self.start = self.end = 0

    def _take(self, size: int) -> bytes:
        data = bytes(self.staging[self.start:self.start + size])
        self._consume(size)
        return data

    def _consume(self, size: int) -> None:
        self.start += size
        if self.start == self.end:
            self.start = self.end = 0
        if self.reading_paused and not self.closed and self.end - self.start < STAGING_MAX:
            self.reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self) -> None:
        """Until more bytes arrive, the target fills, or the connection ends."""
        if self.closed:
            raise _Disconnected
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()
            self._wake()

    # --- requests ---------------------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            while not self.closed:
                head = await self._read_head()
                if head is None:
                    break
                exchange = _Exchange(self, *head)
                self.in_request, self.state = True, "app"
                try:
                    keep_alive = await exchange.run()
                finally:
                    self.in_request = False
                if not keep_alive:
                    break
                self.state, self.since = "idle", time.monotonic()
                self._release_staging()
        except _Disconnected:
            pass
        except Exception:
            log.exception("HTTP connection failed")
        finally:
            self.close()

    async def _read_head(self) -> tuple[httptools.HttpRequestParser, _Head] | None:
        """The next request's parsed head (its body, if any, is still unread), or None when the
        connection is done. Malformed heads are answered 400 (431 when too large) and end it."""
        scanned = 0
        while True:
            while self.staging.startswith(b"\r\n", self.start, self.end):
                self._consume(2)  # empty lines between requests are allowed (RFC 9112 2.2)
            end = self.staging.find(b"\r\n\r\n", self.start + max(0, scanned - 3), self.end)
            if end >= 0:
                if end + 4 - self.start > MAX_HEAD:
                    self._refuse(431, "request head larger than 64 KiB")
                    return None
                break
            scanned = self.end - self.start
            if scanned > MAX_HEAD:
                self._refuse(431, "request head larger than 64 KiB")
                return None
            if self.eof or self.closed:
                return None
            if scanned and self.state == "idle":
                self.state, self.since = "head", time.monotonic()
            await self._wait()
        head = _Head()
        parser = head.parser = httptools.HttpRequestParser(head)
        size = end + 4 - self.start
        try:
            parser.feed_data(self._take(size))
        except httptools.HttpParserUpgrade:
            self._refuse(501, "protocol upgrades are not supported")
            return None
        except httptools.HttpParserError as error:
            self._refuse(400, f"malformed request: {error}")
            return None
        finally:
            head.parser = None
        version = parser.get_http_version()
        if version not in ("1.0", "1.1"):
            # An HTTP/0.9 request line (no version) wants a bare body with no status or headers,
            # which nothing here can check; other versions do not belong on an HTTP/1 connection.
            if version == "0.9":
                self._refuse(400, "a request line needs an HTTP version (HTTP/0.9 is not supported): "
                                  "send HTTP/1.1")
            else:
                self._refuse(505, f"HTTP/{version} is not supported on this connection: send HTTP/1.1")
            return None
        return parser, head

    def _refuse(self, status: int, message: str) -> None:
        """Answer with an error and end the connection (what follows in it cannot be trusted)."""
        if self.closed:
            return
        code = {431: "head_too_large", 500: "internal", 501: "not_implemented",
                505: "http_version_not_supported"}.get(status, "bad_request")
        body = json.dumps({"error": code, "message": message}).encode()
        self.transport.write(_status_line(status) + b"content-type: application/json\r\n"  # type: ignore[union-attr]
                             + self.server.own_header_lines()
                        + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)
        self.close()


class _Exchange:
    """One request and its response on a connection."""

    def __init__(self, connection: _Connection, parser: httptools.HttpRequestParser, head: _Head) -> None:
        self.connection = connection
        self.parser = parser
        self.head = head
        self.method = parser.get_method().decode("ascii")
        self.keep_alive = head.keep_alive
        self.started = False  # response head sent
        self.done = False  # response complete
        self.status = 0
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.expect_continue = False
        self.body_mode = "none"
        self.body_left = 0
        self.error: tuple[int, str] | None = None  # a head llhttp let through that we refuse
        self.disconnected = False
        self.body_delivered = False
        self.fed_tail = b""
        lengths = {value.strip() for name, value in head.headers if name == b"content-length"}
        encodings = [value for name, value in head.headers if name == b"transfer-encoding"]
        if encodings:
            if lengths:
                self.error = (400, "both Transfer-Encoding and Content-Length")
            elif not encodings[-1].lower().rstrip().endswith(b"chunked"):
                self.error = (501, "only the chunked transfer coding is supported")
            elif not head.complete:
                self.body_mode = "chunked"
        elif lengths:
            if len(lengths) > 1 or not next(iter(lengths)).isdigit():
                self.error = (400, "malformed or conflicting Content-Length")
            else:
                self.body_left = int(next(iter(lengths)))
                self.body_mode = "length" if self.body_left else "none"
        for name, value in head.headers:
            if name == b"expect" and value.lower() == b"100-continue":
                self.expect_continue = True

    def scope(self) -> dict[str, Any]:
        url = httptools.parse_url(self.head.url)
        raw_path = url.path or b"/"
        transport = self.connection.transport
        return {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": self.parser.get_http_version(), "scheme": "http",
            "method": self.method, "root_path": "",
            "path": unquote_to_bytes(raw_path).decode("utf-8", "replace"), "raw_path": raw_path,
            "query_string": url.query or b"", "headers": self.head.headers,
            "server": transport.get_extra_info("sockname") if transport else None,
            "client": transport.get_extra_info("peername") if transport else None,
            "extensions": {RECEIVE_INTO: self.receive_into},
        }

    async def run(self) -> bool:
        """Serve the request; whether the connection can carry another."""
        connection = self.connection
        if self.error is not None:
            connection._refuse(*self.error)
            return False
        try:
            await connection.server.app(self.scope(), self.receive, self.send)
        except _Disconnected:
            return False
        except Exception:
            log.exception("%s %s failed", self.method, self.head.url[:200])
            if not self.started:
                connection._refuse(500, "internal error; see the node's log")
            return False
        if connection.closed or self.disconnected:
            return False
        if not self.started:
            log.error("%s %s: the app sent no response", self.method, self.head.url[:200])
            connection._refuse(500, "internal error; see the node's log")
            return False
        if not self.done:
            return False
        return self.keep_alive and await self._drain()

    async def _drain(self) -> bool:
        """Read and drop what the app left of the body, if that is little; else end the connection."""
        if self.body_mode == "length" and self.body_left <= DRAIN_LIMIT:
            try:
                while self.body_left:
                    await self._next_chunk()
            except _Disconnected:
                return False
        return self.body_mode == "none"

    # --- the ASGI receive side --------------------------------------------------------------------

    def _continue(self) -> None:
        if self.expect_continue and not self.started:
            self.connection.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]
        self.expect_continue = False

    async def _more(self) -> None:
        """Wait for more of the body (the watchdog ends a wait without progress)."""
        connection = self.connection
        connection.state, connection.since = "body", time.monotonic()
        try:
            if connection.eof:
                raise _Disconnected
            await connection._wait()
        except _Disconnected:
            self.disconnected = True
            raise
        finally:
            connection.state = "app"

    async def receive(self) -> dict[str, Any]:
        if self.body_delivered:
            with contextlib.suppress(_Disconnected):
                while not self.done:
                    await self.connection._wait()
            return {"type": "http.disconnect"}
        try:
            body = await self._next_chunk()
        except _Disconnected:
            return {"type": "http.disconnect"}
        more = self._more_body()
        self.body_delivered = not more
        return {"type": "http.request", "body": body, "more_body": more}

    def _more_body(self) -> bool:
        return self.body_mode != "none"

    async def _next_chunk(self) -> bytes:
        connection = self.connection
        if connection.closed:
            raise _Disconnected
        if self.body_mode == "none":
            return b""
        self._continue()
        if self.body_mode == "length":
            while connection.start == connection.end:
                await self._more()
            chunk = connection._take(min(self.body_left, connection.end - connection.start))
            self.body_left -= len(chunk)
            if not self.body_left:
                self.body_mode = "none"
            return chunk
        while not self.head.chunks and not self.head.complete:  # chunked: through the parser
            while connection.start == connection.end:
                await self._more()
            data = connection._take(self._chunked_piece())
            self.fed_tail = (self.fed_tail + data)[-3:]
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError as error:
                connection._refuse(400, f"malformed chunked body: {error}")
                raise _Disconnected from None
        chunk = b"".join(self.head.chunks)
        self.head.chunks.clear()
        if self.head.complete:
            self.body_mode = "none"
        return chunk

    def _chunked_piece(self) -> int:
        connection = self.connection
        start, end = connection.start, connection.end
        seam = (self.fed_tail + connection.staging[start:start + 3]).find(b"\r\n\r\n")
        if seam >= 0:
            return seam + 4 - len(self.fed_tail)
        cut = connection.staging.find(b"\r\n\r\n", start, end)
        return end - start if cut < 0 else cut + 4 - start

    async def receive_into(self, view: memoryview) -> int:
        """Receive the next ``len(view)`` bytes of the body (fewer if it ends first) into ``view``;
        the count received. Short of the body's end, fewer means the client went away."""
        connection = self.connection
        if self.body_mode != "length":
            got = 0
            while got < len(view) and self.body_mode != "none":
                try:
                    chunk = await self._next_chunk()
                except _Disconnected:
                    return got
                size = min(len(chunk), len(view) - got)
                view[got:got + size] = memoryview(chunk)[:size]
                got += size
                if size < len(chunk):
                    self.head.chunks.append(chunk[size:])
                    self.body_mode = "chunked"
            return got
        if connection.closed:
            return 0
        self._continue()
        want = min(len(view), self.body_left)
        staged = min(want, connection.end - connection.start)
        view[:staged] = connection.staging[connection.start:connection.start + staged]
        connection._consume(staged)
        got = staged
        if got < want:
            connection.target, connection.filled = view[got:want], 0
            try:
                while connection.filled < want - got:
                    await self._more()
            except _Disconnected:
                pass
            finally:
                got += connection.filled
                connection.target = None
        self.body_left -= got
        if not self.body_left:
            self.body_mode = "none"
        return got

    # --- the ASGI send side -----------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        connection = self.connection
        kind = message["type"]
        if kind == "http.response.start":
            if self.started or self.status:
                raise RuntimeError("response already started")
            self.status = message["status"]
            self.response_headers = list(message.get("headers", []))
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if not self.status or self.done:
            raise RuntimeError("response body before its start, or after its end")
        if connection.closed:
            raise _Disconnected
        body = message.get("body", b"")
        more = message.get("more_body", False)
        transport = connection.transport
        assert transport is not None
        if not self.started:
            transport.write(self._response_head(len(body), more))
            self.started = True
        if body and self.method != "HEAD":
            transport.write(body)
        if not more:
            self.done = True
            connection._wake()
        await connection._writable.wait()

    def _response_head(self, body_size: int, more: bool) -> bytes:
        names = {name.lower() for name, _ in self.response_headers}
        lines = [_status_line(self.status)]
        lines += [name + b": " + value + b"\r\n" for name, value in self.response_headers]
        if b"content-length" not in names and b"transfer-encoding" not in names:
            if more:
                self.keep_alive = False  # the body ends when the connection does
            else:
                lines.append(b"content-length: %d\r\n" % body_size)
        if self.body_mode != "none" and self.body_left > DRAIN_LIMIT:
            self.keep_alive = False  # the app left a large body unread: say the connection ends
        if self.body_mode != "none" and self.expect_continue:
            self.keep_alive = False
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("ascii")


class HTTPServer:
    def __init__(self, app: ASGIApp, host: str, port: int, timeouts: Timeouts | None = None,
                 limits: Limits | None = None, stats: ConnectionStats | None = None,
                 ssl: ssl_module.SSLContext | None = None,
                 own_headers: Callable[[], list[tuple[str, str]]] | None = None) -> None:
        self.app = app
        # Headers the server's own answers (431, 503, ...) carry besides the app's: the node's epoch,
        # which every answer names (docs/epochs.md). A callable, so that httpd knows nothing of epochs.
        self.own_headers = own_headers
        self.ssl = ssl  # TLS (walrusfs.protocol.tls): the loop's TLS layer decrypts into get_buffer()'s buffers too
        self.host = host
        self.port = port
        self.timeouts = timeouts or Timeouts()
        self.limits = limits or Limits()
        self.stats = stats or ConnectionStats()
        self.connections: set[_Connection] = set()
        self.per_peer: dict[str | None, int] = {}
        self.refusing: set[_Connection] = set()  # refused, waiting for the client to close
        self.discard = memoryview(bytearray(16 * 1024))  # what refused connections send goes here, unread
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._refusals_logged = 0
        self._refusal_logged_at = 0.0

    def own_header_lines(self) -> bytes:
        """``own_headers`` as header lines; none if it fails (a refusal must still go out)."""
        if self.own_headers is None:
            return b""
        try:
            return b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in self.own_headers())
        except Exception:
            log.exception("own_headers failed; answering without them")
            return b""

    def admit(self, connection: _Connection) -> str | None:
        """Count a new connection in, or say why it is refused (over a cap)."""
        limits, peer = self.limits, connection.peer
        if len(self.connections) >= limits.max_connections:
            self.stats.refused_total += 1
            return self._refusal(f"the node holds at most {limits.max_connections} connections at once and "
                                 "all are in use; retry shortly")
        if self.per_peer.get(peer, 0) >= limits.max_connections_per_peer:
            self.stats.refused_peer += 1
            return self._refusal(f"the node holds at most {limits.max_connections_per_peer} connections at "
                                 f"once from one address ({peer}); reuse connections, or retry when some close")
        connection.admitted = True
        self.connections.add(connection)
        self.per_peer[peer] = self.per_peer.get(peer, 0) + 1
        stats = self.stats
        stats.accepted += 1
        stats.open = len(self.connections)
        stats.peak = max(stats.peak, stats.open)
        return None

    def release(self, connection: _Connection) -> None:
        self.refusing.discard(connection)
        if not connection.admitted:
            return
        connection.admitted = False
        self.connections.discard(connection)
        left = self.per_peer.get(connection.peer, 0) - 1
        if left > 0:
            self.per_peer[connection.peer] = left
        else:
            self.per_peer.pop(connection.peer, None)
        self.stats.open = len(self.connections)

    def _refusal(self, message: str) -> str:
        """``message``; logged once per 10 s at most, with the number refused meanwhile."""
        now = time.monotonic()
        refused = self.stats.refused_total + self.stats.refused_peer
        if now - self._refusal_logged_at >= 10.0:
            log.warning("refusing connections (%d since the last report): %s",
                        refused - self._refusals_logged, message)
            self._refusal_logged_at, self._refusals_logged = now, refused
        return message

    async def serve(self, stop: asyncio.Event, on_listening: Callable[[], None] | None = None) -> None:
        """Bind, run the app's lifespan startup, listen, serve until ``stop`` is set, shut down."""
        self.loop = asyncio.get_running_loop()
        # Bound before the app starts: its startup begins polling peers, and an outgoing connection
        # could otherwise take this port as its local port (when the port is in the ephemeral range).
        server = await self.loop.create_server(
            lambda: _Connection(self), self.host, self.port, backlog=1024, reuse_address=True, start_serving=False,
            ssl=self.ssl, ssl_handshake_timeout=self.timeouts.head if self.ssl else None)  # watchdog starts after it
        lifespan = _Lifespan(self.app)
        try:
            await lifespan.startup()
        except BaseException:
            server.close()
            raise
        try:
            await server.start_serving()
            if on_listening is not None:
                on_listening()
            watchdog = self.loop.create_task(self._watchdog())
            try:
                await stop.wait()
            finally:
                server.close()
                await self._finish_requests()
                watchdog.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watchdog
                await server.wait_closed()
        finally:
            await lifespan.shutdown()

    async def _finish_requests(self) -> None:
        for connection in [*self.connections, *self.refusing]:
            if not connection.in_request:
                connection.close()
        deadline = time.monotonic() + self.timeouts.grace
        while any(c.in_request for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        busy = [c for c in self.connections if c.in_request]
        if busy:
            log.warning("%d requests still running after %.0f s; closing their connections",
                        len(busy), self.timeouts.grace)
        for connection in list(self.connections):
            connection.close()
        tasks = [c.task for c in busy if c.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            limits = {"idle": self.timeouts.keepalive, "head": self.timeouts.head, "body": self.timeouts.body,
                      "refused": self.timeouts.refused}
            for connection in [*self.connections, *self.refusing]:
                limit = limits.get(connection.state)  # none while the app works ("app")
                if limit is not None and now - connection.since > limit:
                    log.debug("closing a connection: %s timeout", connection.state)
                    connection.close()


class _Lifespan:
    """The ASGI lifespan protocol: startup before the first request, shutdown after the last."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())
        await self.inbox.put({"type": "lifespan.startup"})
        reply = await self.replies.get()
        if reply["type"] == "lifespan.unsupported":
            log.info("the app does not support the lifespan protocol")
        elif reply["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"the app failed to start: {reply.get('message', reply['type'])}")

    async def shutdown(self) -> None:
        if self.task is None or self.task.done():
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self.replies.get()
        await self.task

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        try:
            await self.app(scope, self.inbox.get, self.replies.put)
        except Exception as error:
            log.exception("lifespan failed")
            await self.replies.put({"type": "lifespan.startup.failed", "message": str(error)})
        else:
            await self.replies.put({"type": "lifespan.unsupported"})


def fit_file_limit(limits: Limits) -> Limits:
    """``limits``, within the process's open-file limit: the soft limit is raised (up to the hard
    one) to hold every connection and ``_FILES_RESERVED`` other files; failing that, the connection
    cap is lowered, with a warning, so that the node refuses connections (503) instead of failing
    to accept them (EMFILE) or to open its own files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limits.max_connections + limits.refusing + _FILES_RESERVED
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return limits
    fitting = max(1, soft - limits.refusing - _FILES_RESERVED)
    log.warning("the open-file limit (%d) holds only %d client connections, not max_connections = %d; "
                "raise it (LimitNOFILE in the systemd unit, ulimit -n) to serve more", soft, fitting,
                limits.max_connections)
    return Limits(fitting, min(limits.max_connections_per_peer, fitting), limits.refusing)


def run(app: ASGIApp, host: str, port: int, on_listening: Callable[[], None] | None = None,
        limits: Limits | None = None, stats: ConnectionStats | None = None,
        ssl: ssl_module.SSLContext | None = None,
        own_headers: Callable[[], list[tuple[str, str]]] | None = None) -> None:
    """Serve ``app`` on uvloop until SIGTERM or SIGINT; OSError if the address cannot be bound.
    ``own_headers``: headers for the answers the server gives itself (HTTPServer)."""
    import uvloop

    limits = fit_file_limit(limits or Limits())

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await HTTPServer(app, host, port, limits=limits, stats=stats, ssl=ssl,
                             own_headers=own_headers).serve(stop, on_listening)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    uvloop.run(main())
