"""Just enough ASGI for the node: requests, responses, bounded bodies, byte ranges.

The node speaks raw ASGI rather than through a framework so that it decides, from the headers alone,
to refuse a body (size, authorisation) before a byte of it is read, and so that bodies are read into
one preallocated buffer.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from walrusfs.protocol.wire import ErrorBody

from .httpd import RECEIVE_INTO

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = "application/json"
OCTETS = "application/octet-stream"


class HTTPError(Exception):
    """Answered as ``{"error": code, "message": message, **details}`` (walrusfs.protocol.wire.ErrorBody)
    with ``status``."""

    def __init__(self, status: int, code: str, message: str,
                 headers: list[tuple[str, str]] | None = None, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or []
        self.details = details


class ClientDisconnected(Exception):
    pass


@dataclass
class Request:
    method: str
    segments: list[str]
    target: str  # the request target as sent: what write authorisation signs
    query: dict[str, str]
    headers: dict[str, str]
    receive: Receive
    received: int = 0
    # The server's way to receive a body straight into a buffer (nodes.httpd), if it has one.
    receive_into: Callable[[memoryview], Awaitable[int]] | None = None

    @classmethod
    def from_scope(cls, scope: Scope, receive: Receive) -> Request:
        raw = scope.get("raw_path") or scope["path"].encode()
        try:
            path = raw.decode("ascii")
        except UnicodeDecodeError:
            raise HTTPError(400, "bad_path", "the path must be ASCII") from None
        query_string = scope.get("query_string", b"").decode("latin-1")
        target = path + (f"?{query_string}" if query_string else "")
        if not path.startswith("/"):
            raise HTTPError(400, "bad_path", "the path must start with /")
        segments = path[1:].split("/")
        for segment in segments:
            # Nothing in the API needs escaping, so '%' only ever hides a '/' or a '..'.
            if segment in ("", ".", "..") or "%" in segment or "\\" in segment:
                raise HTTPError(400, "bad_path",
                                "path segments may not be empty, '.', '..', or percent-encoded")
        headers: dict[str, str] = {}
        for name, value in scope.get("headers", []):
            headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        receive_into = scope.get("extensions", {}).get(RECEIVE_INTO)
        return cls(scope["method"], segments, target, dict(parse_qsl(query_string)), headers, receive,
                   receive_into=receive_into)

    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        if value is None:
            return None
        if not value.isdigit():
            raise HTTPError(400, "bad_content_length", f"Content-Length {value[:40]!r} is not a number")
        return int(value)

    async def read_body(self, limit: int) -> bytearray:
        """The whole body, refusing (413) one beyond ``limit`` bytes before reading it when the
        Content-Length says so, and as soon as it passes the limit otherwise."""
        length = self.content_length()
        if length is not None and length > limit:
            raise HTTPError(413, "too_large", f"body of {length} bytes exceeds the limit of {limit}")
        if length is None:
            return await self._read_unsized(limit)
        buffer = bytearray(length)
        await self.read_body_into(memoryview(buffer))
        return buffer

    async def read_body_into(self, view: memoryview) -> None:
        """A body of exactly ``len(view)`` bytes, received into ``view`` (400 if it is not)."""
        length = self.content_length()
        if length is not None and length != len(view):
            raise HTTPError(400, "bad_content_length", f"body of {length} bytes, expected {len(view)}")
        if self.receive_into is not None:
            got = await self.receive_into(view)
            self.received = got
            if got != len(view):
                if length is not None:  # the body stopped short of its Content-Length
                    raise ClientDisconnected
                raise HTTPError(400, "bad_content_length", f"body of {got} bytes, expected {len(view)}")
            if length is None and (await self.receive()).get("body"):
                raise _longer_than(len(view))
            return
        got = 0
        more = True
        while more:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk = message.get("body", b"")
            if got + len(chunk) > len(view):
                raise _longer_than(len(view))
            view[got : got + len(chunk)] = chunk
            got += len(chunk)
            more = message.get("more_body", False)
        self.received = got
        if got != len(view):
            raise HTTPError(400, "bad_content_length", f"body of {got} bytes, expected {len(view)}")

    async def _read_unsized(self, limit: int) -> bytearray:
        buffer = bytearray()
        more = True
        while more:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            buffer += message.get("body", b"")
            if len(buffer) > limit:
                raise HTTPError(413, "too_large", f"body exceeds the limit of {limit} bytes")
            more = message.get("more_body", False)
        self.received = len(buffer)
        return buffer


def _longer_than(size: int) -> HTTPError:
    """A body without Content-Length (chunked) that ran past the ``size`` it must have: 413, as for
    a Content-Length over the limit, and the rest of it is not read."""
    return HTTPError(413, "too_large", f"body longer than {size} bytes, the most this request takes; "
                     "nothing was stored")


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)

    async def send(self, send: Send, head_only: bool = False) -> int:
        headers = [(b"content-type", self.content_type.encode()),
                   (b"content-length", str(len(self.body)).encode())]
        headers += [(name.encode(), value.encode()) for name, value in self.headers]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        body = b"" if head_only else self.body
        await send({"type": "http.response.body", "body": body})
        return len(body)


def json_response(value: Any, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, json.dumps(value).encode(), JSON, headers or [])


def error_response(error: HTTPError) -> Response:
    return json_response(ErrorBody(error.code, error.message, error.details).to_dict(), error.status, error.headers)


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The [start, end) a single-range ``Range: bytes=...`` header asks for, or None for the whole
    body (no header, or one we may ignore: other units, several ranges). HTTPError 416 when the
    range lies outside the body."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        raise HTTPError(416, "bad_range", f"malformed Range {header[:60]!r}",
                        [("content-range", f"bytes */{size}")])
    if first == "":  # suffix: the last N bytes
        if last == "" or int(last) == 0:
            raise HTTPError(416, "bad_range", "empty suffix range", [("content-range", f"bytes */{size}")])
        return max(0, size - int(last)), size
    start = int(first)
    end = size if last == "" else min(size, int(last) + 1)
    if start >= size or end <= start:
        raise HTTPError(416, "range_not_satisfiable", f"range {spec} outside a body of {size} bytes",
                        [("content-range", f"bytes */{size}")])
    return start, end
