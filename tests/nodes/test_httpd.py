"""nodes.httpd, the node's own HTTP/1.1 server, as a specification.

Most tests run a small ASGI app (``APP`` below) through ``nodes.httpd.run`` in a subprocess and talk to
it over raw sockets (protocol edge cases) or httpx (ordinary traffic); a few run a real node where what
the node does with a body matters. Every server is on 127.0.0.1 and is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from node_harness import Node, free_port

from walrusfs.redstuff import EncodedBlob, SliverKind, encode

REPO = Path(__file__).resolve().parents[2]

# --- the app under the server ---------------------------------------------------------------------------

APP = r'''
import asyncio
import hashlib
import json
import logging
import sys
from urllib.parse import parse_qsl

import nodes.httpd as httpd

RECORDS = {}


def port_held():
    """Whether something (the server) holds this app's port: a plain bind of it must fail."""
    import socket
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", int(sys.argv[1])))
        except OSError:
            return True
    return False


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            RECORDS["startup"] = {"port_held": port_held()}
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


async def reply(send, value, status=200, extra=()):
    body = json.dumps(value).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    path = scope["path"]
    query = dict(parse_qsl(scope["query_string"].decode()))
    headers = dict(scope["headers"])
    tag = query.get("tag")
    if path == "/echo":  # the body through receive()
        digest, length, messages, outcome = hashlib.sha256(), 0, 0, "complete"
        while True:
            message = await receive()
            messages += 1
            if message["type"] == "http.disconnect":
                outcome = "disconnect"
                break
            digest.update(message["body"])
            length += len(message["body"])
            if not message.get("more_body", False):
                break
        result = {"length": length, "sha256": digest.hexdigest(), "outcome": outcome}
        if tag:
            RECORDS[tag] = result
        if outcome == "complete":
            await reply(send, result)
        return
    if path == "/into":  # the body through receive_into, in steps of ?step= bytes
        size = int(query.get("size") or headers[b"content-length"])
        step = int(query.get("step") or max(size, 1))
        buffer = bytearray(size)
        receive_into = scope["extensions"]["walrusfs.receive_into"]
        got = 0
        while got < size:
            n = await receive_into(memoryview(buffer)[got:min(size, got + step)])
            got += n
            if n < min(step, size - (got - n)):
                break
        result = {"got": got, "sha256": hashlib.sha256(buffer[:got]).hexdigest()}
        if tag:
            RECORDS[tag] = result
        if b"content-length" in headers and got < size:
            return  # the client went away: nothing to answer
        await reply(send, result)
        return
    if path == "/record":
        if tag in RECORDS:
            await reply(send, RECORDS.pop(tag))
        else:
            await reply(send, None, 404)
        return
    if path == "/scope":
        await reply(send, {
            "method": scope["method"], "path": path, "raw_path": scope["raw_path"].decode("latin-1"),
            "query_string": scope["query_string"].decode("latin-1"), "http_version": scope["http_version"],
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        })
        return
    if path == "/slow":
        await asyncio.sleep(float(query.get("s", "1")))
        await reply(send, {"slept": True})
        return
    if path == "/raise":
        raise RuntimeError("the app failed on purpose")
    if path == "/silent":
        return
    if path == "/ignore":  # never reads the body
        await reply(send, {"ignored": True})
        return
    if path == "/hello":  # sends its body even to HEAD: the server must drop it
        body = b"hello, world"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})
        return
    if path == "/big":  # a large response, written in parts
        size, part = int(query["size"]), bytes(range(256)) * 4096
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % size)]})
        for offset in range(0, size, len(part)):
            await send({"type": "http.response.body", "body": part[:size - offset], "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/stream":  # no content-length: the body ends with the connection
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for part in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/listen":  # streams a response while another task waits for http.disconnect (Starlette's way)
        message = await receive()
        assert message == {"type": "http.request", "body": b"", "more_body": False}, message
        done = asyncio.Event()

        async def listen():
            message = await receive()
            RECORDS[tag] = {"type": message["type"], "after_response": done.is_set()}

        listener = asyncio.ensure_future(listen())
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"6")]})
        for part in (b"ab", b"cd", b"ef"):
            await asyncio.sleep(0.05)
            await send({"type": "http.response.body", "body": part, "more_body": part != b"ef"})
        done.set()
        await asyncio.wait_for(listener, 2)
        return
    await reply(send, {"error": "no route", "path": path}, 404)


async def no_lifespan_app(scope, receive, send):  # returns at once from the lifespan scope, as many apps do
    if scope["type"] != "http":
        return
    await reply(send, {"ok": True})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    port, profile = int(sys.argv[1]), sys.argv[2]
    if profile == "short":
        httpd.Timeouts.keepalive = httpd.Timeouts.head = httpd.Timeouts.body = httpd.Timeouts.grace = 1.0
    httpd.run(no_lifespan_app if profile == "no-lifespan" else app, "127.0.0.1", port)
'''


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connect(self, timeout: float = 5.0) -> Conn:
        return Conn(socket.create_connection(("127.0.0.1", self.port), timeout=timeout))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def record(self, tag: str, timeout: float = 5.0) -> dict:
        """What the app recorded under ``tag`` (waiting for it to finish with the request)."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while True:
                response = client.get("/record", params={"tag": tag})
                if response.status_code == 200:
                    return response.json()
                assert time.monotonic() < deadline, f"the app recorded nothing under {tag!r}"
                time.sleep(0.02)


def start_server(directory: Path, profile: str = "default") -> Server:
    module = directory / "httpd_test_app.py"
    if not module.exists():
        module.write_text(APP)
    port = free_port()
    log = directory / f"server-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, str(module), str(port), profile], cwd=REPO,
                                   env={**os.environ, "PYTHONPATH": str(REPO)},
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Server(process, port, log)
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}:\n{server.log_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise AssertionError(f"the server does not accept connections:\n{server.log_text()}") from None
            time.sleep(0.02)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests that do not stop it or depend on its timeouts."""
    running = start_server(tmp_path_factory.mktemp("httpd"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def short_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose keep-alive, head, body and shutdown timeouts are 1 s."""
    running = start_server(tmp_path_factory.mktemp("httpd-short"), "short")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Server]:
    """A server for one test (which may stop it)."""
    running = start_server(tmp_path)
    try:
        yield running
    finally:
        running.stop()


# --- a raw client ---------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes
    raw_head: bytes = field(repr=False)

    def json(self) -> object:
        return json.loads(self.body)


class Conn:
    """One client connection, read by hand."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 20)
        self.buffer += data
        return bool(data)

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            assert self._fill(), f"connection closed before {marker!r}; got {self.buffer[:300]!r}"
        head, _, self.buffer = self.buffer.partition(marker)
        return head + marker

    def read_exactly(self, size: int) -> bytes:
        parts, have = [self.buffer], len(self.buffer)
        while have < size:
            data = self.sock.recv(1 << 20)
            assert data, f"connection closed after {have} of {size} bytes"
            parts.append(data)
            have += len(data)
        data = b"".join(parts)
        self.buffer = data[size:]
        return data[:size]

    def response(self, head_only: bool = False) -> Response:
        """The next response; its body by Content-Length, or up to the connection's end."""
        raw_head = self.read_until(b"\r\n\r\n")
        lines = raw_head[:-4].decode("latin-1").split("\r\n")
        version, status, reason = [*lines[0].split(" ", 2), ""][:3]
        assert version == "HTTP/1.1", lines[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"header {name} twice in {raw_head!r}"
            headers[name.lower()] = value.strip()
        if head_only or int(status) in (100, 204, 304):
            body = b""
        elif "content-length" in headers:
            body = self.read_exactly(int(headers["content-length"]))
        else:
            while self._fill():
                pass
            body, self.buffer = self.buffer, b""
        return Response(int(status), reason, headers, body, raw_head)

    def closed(self, within: float = 3.0) -> bool:
        """Whether the server ends the connection within ``within`` seconds, sending nothing more."""
        self.sock.settimeout(within)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        assert not data, f"unexpected bytes {data[:200]!r}"
        return True


def request(method: str, target: str, body: bytes | None = None, headers: str = "",
            version: str = "HTTP/1.1") -> bytes:
    head = f"{method} {target} {version}\r\nHost: test\r\n{headers}"
    if body is not None:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


def chunked(*chunks: bytes, extensions: bool = False, trailer: bytes = b"") -> bytes:
    out = b""
    for i, chunk in enumerate(chunks):
        ext = b";name=value;flag" if extensions and i % 2 == 0 else b""
        out += b"%x%s\r\n%s\r\n" % (len(chunk), ext, chunk)
    return out + b"0\r\n" + trailer + b"\r\n"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_echo(response: Response, body: bytes) -> None:
    assert response.status == 200, response
    assert response.json() == {"length": len(body), "sha256": digest(body), "outcome": "complete"}


def assert_into(response: Response, body: bytes) -> None:
    assert response.status == 200, response
    assert response.json() == {"got": len(body), "sha256": digest(body)}


def assert_refused(response: Response, status: int, conn: Conn) -> None:
    assert response.status == status, response
    assert response.headers["connection"] == "close"
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"error", "message"}  # type: ignore[arg-type]
    assert conn.closed()


# --- connections ----------------------------------------------------------------------------------------


def test_keep_alive_serves_many_requests_on_one_connection(server: Server) -> None:
    with server.connect() as conn:
        for i in range(60):
            body = os.urandom(i * 97)
            route = "/into" if i % 2 else "/echo"
            conn.send(request("POST", route, body))
            response = conn.response()
            assert "connection" not in response.headers
            (assert_into if i % 2 else assert_echo)(response, body)
        conn.send(request("GET", "/scope?n=last"))
        assert conn.response().json()["query_string"] == "n=last"


def test_httpx_client_reuses_its_connection(server: Server) -> None:
    connects = []

    def trace(name: str, info: dict) -> None:
        if name == "connection.connect_tcp.complete":
            connects.append(name)

    with httpx.Client(base_url=server.url, timeout=5) as client:
        for i in range(30):
            body = os.urandom(1000 + i)
            response = client.post("/echo", content=body, extensions={"trace": trace})
            assert response.json() == {"length": len(body), "sha256": digest(body), "outcome": "complete"}
    assert len(connects) == 1  # one TCP connection for all 30


@pytest.mark.parametrize("wire", [request("POST", "/echo", b"ten bytes!", version="HTTP/1.0"),
                                  request("GET", "/echo", version="HTTP/1.0")])
def test_http_1_0_gets_its_response_and_the_connection_closes(server: Server, wire: bytes) -> None:
    with server.connect() as conn:
        conn.send(wire)
        response = conn.response()
        assert_echo(response, b"ten bytes!" if wire.startswith(b"POST") else b"")
        assert response.headers["connection"] == "close"
        assert conn.closed()


def test_http_1_0_keep_alive_is_honoured(server: Server) -> None:
    with server.connect() as conn:
        for body in (None, b"abc"):
            conn.send(request("POST", "/echo", body, headers="Connection: keep-alive\r\n", version="HTTP/1.0"))
            response = conn.response()
            assert_echo(response, body or b"")
            assert "connection" not in response.headers


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
def test_connection_close_closes_after_the_response(server: Server, method: str) -> None:
    with server.connect() as conn:
        conn.send(request(method, "/hello", b"body" if method == "POST" else None, headers="Connection: close\r\n")
                  + request("GET", "/scope?never=answered"))
        response = conn.response(head_only=method == "HEAD")
        assert response.status == 200 and response.headers["connection"] == "close"
        assert response.body == (b"" if method == "HEAD" else b"hello, world")
        assert conn.closed()


def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    bodies = [os.urandom(n) for n in (0, 1, 5000, 300_000, 17)]
    with server.connect() as conn:
        wire = b""
        for i, body in enumerate(bodies):
            wire += request("POST", "/into" if i % 2 else "/echo", body)
            wire += request("GET", f"/scope?i={i}")
        wire += request("HEAD", "/hello") + request("POST", "/echo", headers="Transfer-Encoding: chunked\r\n")
        wire += chunked(b"abc", b"defg")
        wire += request("GET", "/scope?i=end")
        conn.send(wire)
        for i, body in enumerate(bodies):
            (assert_into if i % 2 else assert_echo)(conn.response(), body)
            assert conn.response().json()["query_string"] == f"i={i}"
        head = conn.response(head_only=True)
        assert head.status == 200 and head.headers["content-length"] == "12"
        assert_echo(conn.response(), b"abcdefg")
        assert conn.response().json()["query_string"] == "i=end"


def test_empty_lines_before_a_request_are_ignored(server: Server) -> None:
    with server.connect() as conn:
        conn.send(b"\r\n\r\n" + request("GET", "/scope?a=1") + b"\r\n" + request("GET", "/scope?a=2"))
        assert conn.response().json()["query_string"] == "a=1"
        assert conn.response().json()["query_string"] == "a=2"


def test_scope(server: Server) -> None:
    with server.connect() as conn:
        conn.send(request("GET", "/scope?x=1&y=%20", headers="X-Custom:  Mixed Case\r\nx-two: 2\r\n"))
        scope = conn.response().json()
    assert scope == {
        "method": "GET", "path": "/scope", "raw_path": "/scope", "query_string": "x=1&y=%20",
        "http_version": "1.1",
        "headers": [["host", "test"], ["x-custom", "Mixed Case"], ["x-two", "2"]],
    }


def test_path_is_percent_decoded_as_utf_8(server: Server) -> None:
    with server.connect() as conn:
        conn.send(request("GET", "/caf%C3%A9/%2F%20x") + request("GET", "/scop%65?q"))
        response = conn.response()
        assert response.status == 404
        assert response.json() == {"error": "no route", "path": "/caf\u00e9// x"}
        scope = conn.response().json()
        assert (scope["path"], scope["raw_path"], scope["query_string"]) == ("/scope", "/scop%65", "q")


# --- bodies ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/echo", "/into", "/into?step=1000"])
@pytest.mark.parametrize("size", [1, 4096, 700_000])
def test_body_arriving_with_the_head_is_delivered_exactly(server: Server, route: str, size: int) -> None:
    body = os.urandom(size)
    with server.connect() as conn:
        conn.send(request("POST", route, body))
        (assert_echo if route == "/echo" else assert_into)(conn.response(), body)


@pytest.mark.parametrize("route", ["/echo", "/into", "/into?step=333"])
def test_body_in_many_small_writes_is_delivered_exactly(server: Server, route: str) -> None:
    body = os.urandom(20_000)
    with server.connect() as conn:
        conn.send(request("POST", route, body)[:-len(body)])
        offset, sizes = 0, [1, 2, 3, 7, 64, 500, 1500, 4000]
        for i in range(10_000):
            if offset >= len(body):
                break
            size = sizes[i % len(sizes)]
            conn.send(body[offset:offset + size])
            offset += size
            if i % 8 == 0:
                time.sleep(0.001)
        (assert_echo if route == "/echo" else assert_into)(conn.response(), body)


def test_head_split_across_writes(server: Server) -> None:
    wire = request("POST", "/echo", b"after a split head")
    with server.connect() as conn:
        for i in range(0, len(wire), 5):
            conn.send(wire[i:i + 5])
            time.sleep(0.001)
        assert_echo(conn.response(), b"after a split head")


def test_large_bodies_with_httpx(server: Server) -> None:
    body = os.urandom(5 << 20)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.post("/into", content=body).json() == {"got": len(body), "sha256": digest(body)}
        assert client.post("/echo", content=body).json()["sha256"] == digest(body)


@pytest.mark.parametrize("route", ["/echo", "/into?size=30"])
def test_chunked_body_with_extensions_and_trailers(server: Server, route: str) -> None:
    parts = [b"hello ", b"chunked", b" world"]
    wire = request("POST", route, headers="Transfer-Encoding: chunked\r\n") + chunked(
        *parts, extensions=True, trailer=b"X-Trailer: yes\r\n")
    body = b"".join(parts)
    with server.connect() as conn:
        conn.send(wire)
        (assert_echo if route == "/echo" else assert_into)(conn.response(), body)
        conn.send(request("GET", "/scope?again"))  # and the connection goes on
        assert conn.response().json()["query_string"] == "again"


def test_chunked_body_received_into_a_buffer_in_steps(server: Server) -> None:
    parts = [os.urandom(n) for n in (5000, 7000, 1, 7999)]
    with server.connect() as conn:
        conn.send(request("POST", "/into?size=20000&step=999", headers="Transfer-Encoding: chunked\r\n")
                  + chunked(*parts))
        assert_into(conn.response(), b"".join(parts))
        conn.send(request("POST", "/into?size=30000&step=4096", headers="Transfer-Encoding: chunked\r\n")
                  + chunked(*parts))
        assert_into(conn.response(), b"".join(parts))


def test_chunked_body_in_small_writes(server: Server) -> None:
    parts = [os.urandom(n) for n in (1, 100, 5000, 70_000, 3)]
    wire = chunked(*parts, extensions=True)
    with server.connect() as conn:
        conn.send(request("POST", "/echo", headers="Transfer-Encoding: chunked\r\n"))
        for i in range(0, len(wire), 4096):
            conn.send(wire[i:i + 4096])
        assert_echo(conn.response(), b"".join(parts))


@pytest.mark.parametrize("route", ["/echo", "/into?size=10"])
def test_zero_length_bodies(server: Server, route: str) -> None:
    with server.connect() as conn:
        conn.send(request("POST", route, headers="Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n")
        (assert_echo if route == "/echo" else assert_into)(conn.response(), b"")
        conn.send(request("POST", "/echo", b""))
        assert_echo(conn.response(), b"")
        conn.send(request("POST", "/into?size=0", b""))
        assert_into(conn.response(), b"")


def test_chunked_body_followed_by_a_pipelined_request(server: Server) -> None:
    wire = (request("POST", "/echo", headers="Transfer-Encoding: chunked\r\n") + chunked(b"x" * 10, b"\r\n\r\n")
            + request("GET", "/scope?next=1"))
    with server.connect() as conn:
        conn.send(wire)
        assert_echo(conn.response(), b"x" * 10 + b"\r\n\r\n")
        assert conn.response().json()["query_string"] == "next=1"


def test_malformed_chunked_body_is_refused(server: Server) -> None:
    with server.connect() as conn:
        conn.send(request("POST", "/echo?tag=badchunk", headers="Transfer-Encoding: chunked\r\n")
                  + b"5\r\nabcde\r\nzz\r\n")
        assert_refused(conn.response(), 400, conn)
    assert server.record("badchunk")["outcome"] == "disconnect"


# --- Expect: 100-continue -------------------------------------------------------------------------------


def test_100_continue_is_sent_when_the_app_reads_the_body(server: Server) -> None:
    body = os.urandom(50_000)
    for route in ("/echo", "/into"):
        with server.connect() as conn:
            conn.send(request("PUT", route, body, headers="Expect: 100-continue\r\n")[:-len(body)])
            assert conn.read_until(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            conn.send(body)
            (assert_echo if route == "/echo" else assert_into)(conn.response(), body)


def test_no_100_continue_when_the_app_answers_without_reading(server: Server) -> None:
    body = b"z" * 1000
    with server.connect() as conn:
        conn.send(request("PUT", "/ignore", body, headers="Expect: 100-continue\r\n")[:-len(body)])
        response = conn.response()
        assert response.status == 200 and response.json() == {"ignored": True}
        # The client may send the body or not: the connection cannot be reused either way.
        assert response.headers["connection"] == "close"
        assert conn.closed()


# --- malformed and refused requests ---------------------------------------------------------------------


@pytest.mark.parametrize("wire", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n folded: line\r\n\r\n",
    b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
])
def test_malformed_requests_get_400_and_the_connection_ends(server: Server, wire: bytes) -> None:
    with server.connect() as conn:
        conn.send(wire)
        assert_refused(conn.response(), 400, conn)


@pytest.mark.parametrize("encoding", ["gzip", "chunked, gzip", "identity"])
def test_transfer_codings_other_than_chunked_are_refused(server: Server, encoding: str) -> None:
    with server.connect() as conn:
        conn.send(f"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {encoding}\r\n\r\nhello".encode())
        response = conn.response()
        assert response.status in (400, 501), response
        assert_refused(response, response.status, conn)


def test_identical_duplicate_content_lengths_are_refused_or_served(server: Server) -> None:
    with server.connect() as conn:
        conn.send(b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello")
        response = conn.response()
        if response.status == 200:
            assert_echo(response, b"hello")
        else:
            assert_refused(response, 400, conn)


def test_http_0_9_request_line_is_refused(server: Server) -> None:
    """A request line without a version is HTTP/0.9, whose response would be a bare body: refused."""
    for wire in (b"GET /hello\r\n\r\n", b"GET /hello HTTP/0.9\r\n\r\n"):
        with server.connect() as conn:
            conn.send(wire)
            response = conn.response()
            assert_refused(response, 400, conn)
            assert "HTTP/0.9" in response.json()["message"]  # type: ignore[index]


def test_http_2_0_request_line_gets_505(server: Server) -> None:
    """llhttp lets "HTTP/2.0" through (other versions are malformed: 400); HTTP/1 framing cannot carry it."""
    with server.connect() as conn:
        conn.send(request("GET", "/hello", version="HTTP/2.0"))
        response = conn.response()
        assert_refused(response, 505, conn)
        assert response.json()["error"] == "http_version_not_supported"  # type: ignore[index]


def test_head_over_64_kib_gets_431(server: Server) -> None:
    with server.connect() as conn:  # never ending
        conn.send(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (70 * 1024))
        assert_refused(conn.response(), 431, conn)
    with server.connect() as conn:  # complete, and in the buffer at once
        conn.send(b"GET /scope HTTP/1.1\r\nX-Big: " + b"a" * (60 * 1024))
        time.sleep(0.1)
        conn.send(b"a" * (10 * 1024) + b"\r\n\r\n")
        assert_refused(conn.response(), 431, conn)
    with server.connect() as conn:  # just under the limit is fine
        conn.send(b"GET /scope HTTP/1.1\r\nX-Big: " + b"a" * (63 * 1024) + b"\r\n\r\n")
        assert conn.response().status == 200


@pytest.mark.parametrize("headers", [
    "Connection: Upgrade\r\nUpgrade: websocket\r\n",
    "Connection: upgrade, keep-alive\r\nUpgrade: h2c\r\n",
])
def test_upgrade_requests_are_refused(server: Server, headers: str) -> None:
    with server.connect() as conn:
        conn.send(request("GET", "/scope", headers=headers))
        response = conn.response()
        assert response.status in (400, 501)
        assert_refused(response, response.status, conn)
    with server.connect() as conn:
        conn.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        response = conn.response()
        assert_refused(response, response.status, conn)
        assert response.status in (400, 501)


# --- the app misbehaving --------------------------------------------------------------------------------


def test_app_exception_is_a_500_and_the_server_keeps_serving(server: Server) -> None:
    with server.connect() as bystander, server.connect() as conn:
        bystander.send(request("GET", "/scope?before"))
        assert bystander.response().status == 200
        conn.send(request("GET", "/raise"))
        response = conn.response()
        assert response.json() == {"error": "internal", "message": "internal error; see the node's log"}
        assert_refused(response, 500, conn)
        bystander.send(request("GET", "/scope?after"))
        assert bystander.response().json()["query_string"] == "after"
    with server.connect() as conn:
        conn.send(request("POST", "/echo", b"still here"))
        assert_echo(conn.response(), b"still here")
    assert "the app failed on purpose" in server.log_text()


def test_app_sending_no_response_is_a_500(server: Server) -> None:
    with server.connect() as conn:
        conn.send(request("GET", "/silent"))
        response = conn.response()
        assert response.json() == {"error": "internal", "message": "internal error; see the node's log"}
        assert_refused(response, 500, conn)


def test_small_unread_body_is_drained_and_the_connection_reused(server: Server) -> None:
    body = os.urandom(DRAIN := 1 << 20)
    assert len(body) == DRAIN
    with server.connect() as conn:
        conn.send(request("POST", "/ignore", body) + request("POST", "/ignore", b"x" * 10))
        for _ in range(2):
            response = conn.response()
            assert response.status == 200 and "connection" not in response.headers
        conn.send(request("POST", "/echo", b"next"))
        assert_echo(conn.response(), b"next")


def test_large_unread_body_closes_the_connection(server: Server) -> None:
    body = b"y" * ((1 << 20) + 1)
    with server.connect() as conn:
        conn.send(request("POST", "/ignore", body)[:-len(body)] + body[:65536])
        response = conn.response()
        assert response.status == 200 and response.headers["connection"] == "close"
        assert conn.closed()


def test_large_unread_body_with_httpx_still_gets_the_response(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(3):
            response = client.post("/ignore", content=b"q" * (8 << 20))
            assert response.status_code == 200 and response.json() == {"ignored": True}


# --- the client going away ------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/echo", "/into", "/into?step=4096"])
def test_client_disconnect_mid_body_is_seen_by_the_app(server: Server, route: str) -> None:
    tag = f"gone-{route}"
    sep = "&" if "?" in route else "?"
    log_before = len(server.log_text())
    with server.connect() as conn:
        conn.send(request("POST", f"{route}{sep}tag={tag}", b"")[:-len(b"Content-Length: 0\r\n\r\n")]
                  + b"Content-Length: 1000000\r\n\r\n" + b"p" * 100_000)
        time.sleep(0.1)
    record = server.record(tag)
    if route == "/echo":
        assert record == {"length": 100_000, "sha256": digest(b"p" * 100_000), "outcome": "disconnect"}
    else:
        assert record == {"got": 100_000, "sha256": digest(b"p" * 100_000)}
    with server.connect() as conn:
        conn.send(request("POST", "/into", b"alive"))
        assert_into(conn.response(), b"alive")
    assert "sent no response" not in server.log_text()[log_before:]  # the app knows it has no one to answer


def test_client_gone_during_a_slow_request(server: Server) -> None:
    with server.connect() as conn:
        conn.send(request("GET", "/slow?s=0.3"))
    time.sleep(0.5)
    with server.connect() as conn:
        conn.send(request("GET", "/scope?fine"))
        assert conn.response().json()["query_string"] == "fine"


# --- responses ------------------------------------------------------------------------------------------


def test_head_gets_the_headers_with_content_length_and_no_body(server: Server) -> None:
    with server.connect() as conn:
        conn.send(request("HEAD", "/hello") + request("GET", "/hello"))
        head = conn.response(head_only=True)
        assert head.status == 200
        assert head.headers == {"content-type": "text/plain", "content-length": "12"}
        get = conn.response()  # would start with the HEAD's body if it had been sent
        assert get.body == b"hello, world" and get.headers == head.headers


def test_large_response_to_a_slow_reader_arrives_whole(server: Server) -> None:
    size = 32 << 20
    with server.connect(timeout=10) as slow:
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        slow.send(request("GET", f"/big?size={size}"))
        time.sleep(0.3)
        with server.connect() as other:  # meanwhile the server serves others
            other.send(request("GET", "/scope?other"))
            assert other.response().json()["query_string"] == "other"
        response = slow.response()
    expected = (bytes(range(256)) * 4096 * 32)[:size]
    assert response.status == 200 and len(response.body) == size and response.body == expected


def test_concurrent_requests_are_served_concurrently(server: Server) -> None:
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(server.connect()) for _ in range(30)]  # connected before timing
        start = time.monotonic()
        for conn in conns:
            conn.send(request("GET", "/slow?s=0.5"))
        statuses = [conn.response().status for conn in conns]
        elapsed = time.monotonic() - start
    assert statuses == [200] * 30
    assert elapsed < 4  # one after the other would take 15 s


def test_response_without_content_length_ends_with_the_connection(server: Server) -> None:
    with server.connect() as conn:
        conn.send(request("GET", "/stream"))
        response = conn.response()
        assert response.status == 200 and response.headers["connection"] == "close"
        assert response.body == b"one two three"


def test_receive_after_the_body_waits_for_the_end_of_the_response(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=5) as client:
        response = client.get("/listen", params={"tag": "listen"})
        assert response.status_code == 200 and response.content == b"abcdef"
    assert server.record("listen") == {"type": "http.disconnect", "after_response": True}


# --- timeouts and shutdown ------------------------------------------------------------------------------


def test_idle_keep_alive_connection_is_closed(short_server: Server) -> None:
    with short_server.connect() as conn, short_server.connect() as unused:
        conn.send(request("GET", "/scope"))
        assert conn.response().status == 200
        start = time.monotonic()
        assert conn.closed(within=4)
        assert 0.9 < time.monotonic() - start < 3.5
        assert unused.closed(within=1)


def test_slow_head_is_cut_off(short_server: Server) -> None:
    with short_server.connect() as conn:
        conn.send(b"GET /scope HTTP/1.1\r\n")
        start = time.monotonic()
        conn.sock.settimeout(0.2)
        while time.monotonic() - start < 4:
            try:
                conn.send(b"X")  # one byte of a header at a time: it never ends
                data = conn.sock.recv(100)
                assert data == b""
                break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        else:
            pytest.fail("a head trickling in forever kept its connection open")
        assert time.monotonic() - start < 3.5


@pytest.mark.parametrize("route", ["/echo", "/into"])
def test_stalled_body_is_cut_off(short_server: Server, route: str) -> None:
    with short_server.connect() as conn:
        conn.send(request("POST", f"{route}?tag=stall", b"")[:-len(b"Content-Length: 0\r\n\r\n")]
                  + b"Content-Length: 1000\r\n\r\n" + b"s" * 10)
        start = time.monotonic()
        assert conn.closed(within=4)
        assert 0.9 < time.monotonic() - start < 3.5
    expected = {"length": 10, "sha256": digest(b"s" * 10), "outcome": "disconnect"} if route == "/echo" else {
        "got": 10, "sha256": digest(b"s" * 10)}
    assert short_server.record("stall") == expected


def test_slow_body_that_keeps_coming_is_not_cut_off(short_server: Server) -> None:
    body = b"t" * 12
    with short_server.connect() as conn:
        conn.send(request("POST", "/into", body)[:-len(body)])
        for i in range(0, len(body), 2):
            conn.send(body[i:i + 2])
            time.sleep(0.3)
        assert_into(conn.response(), body)


def test_sigterm_lets_an_in_flight_request_finish_and_exits_0(own_server: Server) -> None:
    with own_server.connect() as busy, own_server.connect() as idle:
        busy.send(request("GET", "/slow?s=1.5"))
        time.sleep(0.3)
        own_server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 2
        while True:  # no longer accepting
            try:
                socket.create_connection(("127.0.0.1", own_server.port), timeout=0.2).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        assert idle.closed(within=1)
        response = busy.response()
        assert response.status == 200 and response.json() == {"slept": True}
        assert own_server.process.wait(5) == 0


def test_sigterm_cuts_off_a_request_running_past_the_grace_period(tmp_path: Path) -> None:
    running = start_server(tmp_path, "short")
    try:
        with running.connect() as busy:
            busy.send(request("GET", "/slow?s=30"))
            time.sleep(0.3)
            start = time.monotonic()
            running.process.send_signal(signal.SIGTERM)
            assert busy.closed(within=4)
            assert running.process.wait(5) == 0
            assert time.monotonic() - start < 3
    finally:
        running.stop()


def test_port_is_bound_before_the_app_starts(server: Server) -> None:
    """The app's startup (where a node starts polling its peers) runs with the port already bound, so
    no outgoing connection can take it as its local port in the meantime."""
    assert server.record("startup") == {"port_held": True}


def test_app_without_lifespan_support_is_served(tmp_path: Path) -> None:
    running = start_server(tmp_path, "no-lifespan")
    try:
        with running.connect() as conn:
            conn.send(request("GET", "/"))
            assert conn.response().json() == {"ok": True}
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(5) == 0
    finally:
        running.stop()


# --- a real node ----------------------------------------------------------------------------------------


def node_conn(node: Node) -> Conn:
    host, port = node.process.url.removeprefix("http://").split(":")
    return Conn(socket.create_connection((host, int(port)), timeout=10))


def sliver_put(node: Node, blob: EncodedBlob, pair: int, kind: SliverKind) -> tuple[str, bytes, bytes]:
    path = f"/v1/blobs/{blob.blob_id}/slivers/{pair}/{kind.name.lower()}"
    body = node.sliver(blob, pair, kind).to_bytes()
    auth = node.auth("PUT", path, body=body)["Authorization"]
    return path, body, request("PUT", path, body, headers=f"Authorization: {auth}\r\n")


def test_node_pipelined_sliver_puts_are_both_stored(node: Node) -> None:
    blob = encode(os.urandom(2_000_000), 7)
    node.store(blob, pairs=[])
    pair = node.pairs(blob)[0]
    puts = [sliver_put(node, blob, pair, kind) for kind in SliverKind]
    with node_conn(node) as conn:
        conn.send(b"".join(wire for _, _, wire in puts) + request("GET", "/v1/health"))
        for _, _, _ in puts:
            response = conn.response()
            assert response.status == 201, response
        assert conn.response().json()["ok"] is True  # type: ignore[index]
        for path, body, _ in puts:  # and read back on the same connection
            conn.send(request("GET", path))
            assert conn.response().body == body


def test_node_sliver_put_cut_off_halfway_stores_nothing(node: Node) -> None:
    blob = encode(os.urandom(2_000_000), 7)
    node.store(blob, pairs=[])
    pair = node.pairs(blob)[0]
    path, body, wire = sliver_put(node, blob, pair, SliverKind.PRIMARY)
    with node_conn(node) as conn:
        conn.send(wire[:-len(body) // 2])
        time.sleep(0.2)
    assert node.http.get(path).status_code == 404
    status = node.http.get(f"/v1/blobs/{blob.blob_id}/status").json()
    assert not any(entry["primary"]["stored"] for entry in status["shards"])
    assert node.put(path, body).status_code == 201  # and the node goes on
    assert node.http.get(path).content == body
    log = node.process.log.read_text()
    assert "Traceback" not in log and "sent no response" not in log, log


def test_node_chunked_sliver_longer_than_the_sliver_gets_413(node: Node) -> None:
    """docs/node-api.md: a body without Content-Length is cut off with 413 as soon as it passes the
    sliver size; nothing is stored."""
    blob = encode(os.urandom(300_000), 7)
    node.store(blob, pairs=[])
    pair = node.pairs(blob)[0]
    path = f"/v1/blobs/{blob.blob_id}/slivers/{pair}/primary"
    body = node.sliver(blob, pair, SliverKind.PRIMARY).to_bytes()
    response = node.http.put(path, content=iter([body, b"one byte too many"]), headers=node.auth("PUT", path))
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "too_large"
    assert node.http.get(path).status_code == 404


def test_node_refuses_a_sliver_whose_header_padding_is_not_zero(node: Node) -> None:
    """The two padding bytes of a sliver header are zero: a signed PUT with anything else is refused,
    not stored and served back as sent."""
    blob = encode(os.urandom(300_000), 7)
    node.store(blob, pairs=[])
    pair = node.pairs(blob)[0]
    path = f"/v1/blobs/{blob.blob_id}/slivers/{pair}/primary"
    body = bytearray(node.sliver(blob, pair, SliverKind.PRIMARY).to_bytes())
    assert body[46:48] == b"\0\0"
    body[46:48] = b"\xab\xcd"
    response = node.put(path, bytes(body))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "bad_sliver" and "padding" in response.json()["message"]
    assert node.http.get(path).status_code == 404
    body[46:48] = b"\0\0"
    assert node.put(path, bytes(body)).status_code == 201
    assert node.http.get(path).content == bytes(body)


def test_node_keep_alive_across_many_requests(node: Node) -> None:
    blob = encode(os.urandom(300_000), 7)
    with node_conn(node) as conn:
        path = f"/v1/blobs/{blob.blob_id}/metadata"
        auth = node.auth("PUT", path, body=blob.metadata.to_bytes())["Authorization"]
        conn.send(request("PUT", path, blob.metadata.to_bytes(), headers=f"Authorization: {auth}\r\n"))
        assert conn.response().status == 201
        for pair in node.pairs(blob):
            for kind in SliverKind:
                _, _, wire = sliver_put(node, blob, pair, kind)
                conn.send(wire)
                assert conn.response().status == 201
        for _ in range(40):
            conn.send(request("GET", "/v1/health"))
            assert conn.response().json()["ok"] is True  # type: ignore[index]
        conn.send(request("GET", f"/v1/blobs/{blob.blob_id}/confirmation"))
        assert conn.response().status == 200
        other = encode(os.urandom(300_000), 7)  # chunked sliver bodies, received into the store's buffer
        node.store(other, pairs=[])
        path = f"/v1/blobs/{other.blob_id}/slivers/{node.pairs(other)[0]}/primary"
        body = node.sliver(other, node.pairs(other)[0], SliverKind.PRIMARY).to_bytes()
        for chunks, status in (((body[:1000], body[1000:], b"!"), 413), ((body[:1000], body[1000:]), 201)):
            auth = node.auth("PUT", path, body=None)["Authorization"]
            headers = f"Authorization: {auth}\r\nTransfer-Encoding: chunked\r\n"
            conn.send(request("PUT", path, headers=headers) + chunked(*chunks))
            response = conn.response()
            assert response.status == status, response
        conn.send(request("GET", path))
        assert conn.response().body == body

