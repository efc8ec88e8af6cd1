"""A lying reverse proxy for tests: ``python lying_proxy.py UPSTREAM_URL KINDS``.

Listens on 127.0.0.1 (a port of its own choosing, printed as ``READY <port>`` on stdout) and passes
every request to UPSTREAM_URL, except that in successful responses of the kinds listed in KINDS
(comma-separated: ``sliver``, ``symbol``, ``metadata``, ``confirmation``, ``chain``) it flips bits: one
byte in the middle of a sliver, recovery symbol or metadata body; one byte of a confirmation's signature
(also of the confirmation a sliver PUT's answer carries). ``chain`` forges the committee links a node
serves: the newest link's first node is pointed at another URL (what an attacker would redirect
clients with), its signatures left as they were.
Writes pass through untouched, so the node behind stores correct data and only its answers lie,
unless KINDS has ``upload``: then the bodies of sliver PUTs are corrupted on their way to the node.
``GET /_proxy/requests`` answers (itself, not the node) how many requests of each kind it received.

A raw ASGI app on uvicorn (the node's own stack) with an httpx client upstream.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import sys

import httpx
import uvicorn

_ROUTES = {
    "sliver": re.compile(r"^/v1/blobs/[^/]+/slivers/\d+/(primary|secondary)$"),
    "symbol": re.compile(r"^/v1/blobs/[^/]+/slivers/\d+/(primary|secondary)/recovery/\d+$"),
    "metadata": re.compile(r"^/v1/blobs/[^/]+/metadata$"),
    "confirmation": re.compile(r"^/v1/blobs/[^/]+/confirmation$"),
    "chain": re.compile(r"^/v1/committee/chain$"),
}
_HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
               b"proxy-authorization", b"proxy-authenticate", b"host", b"content-length"}


def corrupt(kind: str, body: bytes) -> bytes:
    if kind == "chain":
        answer = json.loads(body)
        if answer.get("links"):
            answer["links"][-1]["committee"]["nodes"][0]["url"] = "http://203.0.113.9:31400"
        return json.dumps(answer).encode()
    if kind == "confirmation":
        data = json.loads(body)
        signature = bytearray(base64.b64decode(data["signature"]))
        signature[len(signature) // 2] ^= 0x01
        data["signature"] = base64.b64encode(bytes(signature)).decode()
        return json.dumps(data).encode()
    if not body:
        return body
    flipped = bytearray(body)
    flipped[len(flipped) // 2] ^= 0xFF
    return bytes(flipped)


class Proxy:
    def __init__(self, upstream: str, kinds: set[str]) -> None:
        self.upstream = upstream.rstrip("/")
        self.kinds = kinds
        self.http: httpx.AsyncClient | None = None
        self.requests: dict[str, int] = {}  # "GET sliver", "PUT other"...: what clients asked

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.http = httpx.AsyncClient(timeout=60.0)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self.http is not None:
                        await self.http.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert scope["type"] == "http" and self.http is not None
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        path = scope["raw_path"].decode()
        if path == "/_proxy/requests":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": json.dumps(self.requests).encode()})
            return
        kind = next((name for name, route in _ROUTES.items() if route.match(path)), "other")
        self.requests[f"{scope['method']} {kind}"] = self.requests.get(f"{scope['method']} {kind}", 0) + 1
        target = path + ("?" + scope["query_string"].decode() if scope["query_string"] else "")
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP]
        try:
            request_body = b"".join(chunks)
            if scope["method"] == "PUT" and "upload" in self.kinds and _ROUTES["sliver"].match(path):
                request_body = corrupt("upload", request_body)
            response = await self.http.request(scope["method"], self.upstream + target, headers=headers,
                                               content=request_body)
        except httpx.HTTPError as error:
            body = json.dumps({"error": "upstream", "message": str(error)}).encode()
            await send({"type": "http.response.start", "status": 502,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        body = response.content
        if scope["method"] == "GET" and 200 <= response.status_code < 300:
            for kind in self.kinds - {"upload"}:
                if _ROUTES[kind].match(path):
                    body = corrupt(kind, body)
        if (scope["method"] == "PUT" and "confirmation" in self.kinds and _ROUTES["sliver"].match(path)
                and 200 <= response.status_code < 300):
            answer = json.loads(body)  # a node's last sliver brings its confirmation along
            if "confirmation" in answer:
                answer["confirmation"] = json.loads(corrupt("confirmation", json.dumps(answer["confirmation"])))
                body = json.dumps(answer).encode()
        out_headers = [(k.encode(), v.encode()) for k, v in response.headers.items()
                       if k.lower().encode() not in _HOP_BY_HOP]
        out_headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": response.status_code, "headers": out_headers})
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    upstream, kinds = sys.argv[1], {k for k in sys.argv[2].split(",") if k}
    unknown = kinds - _ROUTES.keys() - {"upload"}
    if unknown:
        sys.exit(f"unknown kinds {sorted(unknown)}; choose from {sorted(_ROUTES)}")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    config = uvicorn.Config(Proxy(upstream, kinds), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                await task
                return
            await asyncio.sleep(0.01)
        print(f"READY {sock.getsockname()[1]}", flush=True)
        await task

    asyncio.run(serve())


if __name__ == "__main__":
    main()
