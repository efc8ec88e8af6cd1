"""Real storage-node processes on 127.0.0.1 for the tests, always stopped by pid at teardown.

(Not a package: ``tests/nodes`` is on sys.path while its tests run, and a package here would
shadow the real ``nodes``.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from network import _LIVE, START_TIMEOUT, free_port_range

from walrusfs.cluster import init_cluster
from walrusfs.committee import Committee
from walrusfs.protocol import sign_request
from walrusfs.redstuff import EncodedBlob, Sliver, SliverKind, encode


def free_port(count: int = 1) -> int:
    """The first of ``count`` consecutive free ports, below the kernel's ephemeral range. (A port
    from ``bind(0)`` lies in that range, where any outgoing connection, a health probe or a peer's
    poll, may take it as its local port before the node binds it.) From this test process's own
    window of ports, as every network the tests start (tests/support/network.py)."""
    return free_port_range(count)


@dataclass
class NodeProcess:
    """One node started with ``python -m nodes``; the test owns its pid."""

    config: Path
    url: str
    log: Path
    process: subprocess.Popen | None = None

    def start(self, timeout: float = START_TIMEOUT, preexec: Callable[[], None] | None = None) -> None:
        """Start the node (``preexec`` runs in the child first, e.g. to set resource limits) and wait
        until it answers; one that does not within ``timeout`` is stopped before the error is raised
        (the caller has no process to stop yet)."""
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "nodes", "--config", str(self.config)],
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            preexec_fn=preexec)
        _LIVE[self.process.pid] = self.process  # stopped at exit, should a test lose track of it
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.stop(timeout=5.0)
            raise

    def _wait_healthy(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=0.5) as http:  # one client: httpx.get would make one, TLS context and all, per probe
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"node exited with {self.process.returncode}:\n{self.log.read_text()}")
                try:
                    if http.get(f"{self.url}/v1/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)
        raise AssertionError(f"node not healthy after {timeout} s:\n{self.log.read_text()}")

    def kill9(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        _LIVE.pop(self.process.pid, None)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None
        finally:
            _LIVE.pop(self.process.pid, None)


@dataclass
class Node:
    """A running node under test, the committee it belongs to and the writer's key."""

    process: NodeProcess
    committee: Committee
    node_id: str
    writer_key: object
    http: httpx.Client

    @property
    def shards(self) -> tuple[int, ...]:
        return self.committee.shards_of(self.node_id)

    def auth(self, method: str, path: str, key: object | None = None, now: float | None = None,
             body: bytes | None = b"") -> dict[str, str]:
        """Signed for this node and ``body`` (None: unbound, as a client sends slivers)."""
        return {"Authorization": sign_request(key or self.writer_key, method, path,  # type: ignore[arg-type]
                                              self.committee.node(self.node_id), body, now=now)}

    def put(self, path: str, body: bytes, key: object | None = None,
            now: float | None = None) -> httpx.Response:
        return self.http.put(path, content=body, headers=self.auth("PUT", path, key, now, body))

    def delete(self, path: str) -> httpx.Response:
        return self.http.delete(path, headers=self.auth("DELETE", path))

    def pairs(self, blob: EncodedBlob) -> list[int]:
        """The sliver pairs of ``blob`` this node holds."""
        geometry = self.committee.geometry
        return [geometry.pair_of_shard(shard, blob.blob_id.raw) for shard in self.shards]

    def foreign_pair(self, blob: EncodedBlob) -> int:
        mine = set(self.pairs(blob))
        return next(p for p in range(self.committee.n_shards) if p not in mine)

    def sliver(self, blob: EncodedBlob, pair: int, kind: SliverKind) -> Sliver:
        if kind is SliverKind.PRIMARY:
            return blob.primary_sliver(pair)
        return blob.secondary_sliver(self.committee.geometry.secondary_of_pair(pair))

    def store(self, blob: EncodedBlob, pairs: list[int] | None = None) -> None:
        """Upload metadata and both slivers of every pair this node holds (or ``pairs``)."""
        blob_id = blob.blob_id
        assert self.put(f"/v1/blobs/{blob_id}/metadata", blob.metadata.to_bytes()).status_code in (200, 201)
        for pair in self.pairs(blob) if pairs is None else pairs:
            for kind in SliverKind:
                path = f"/v1/blobs/{blob_id}/slivers/{pair}/{kind.name.lower()}"
                response = self.put(path, self.sliver(blob, pair, kind).to_bytes())
                assert response.status_code in (200, 201), response.text


def make_cluster(root: Path, nodes: int = 2, shards: int = 7) -> Committee:
    return init_cluster(root, nodes=nodes, shards=shards, base_port=free_port(nodes))


def node_process(root: Path, index: int = 0) -> NodeProcess:
    committee = Committee.load(root / "committee.toml")
    info = committee.nodes[index]
    return NodeProcess(root / info.id / "config.toml", info.url, root / info.id / "node.log")


def other_blob(size: int = 50_000) -> EncodedBlob:
    return encode(os.urandom(size), 7)
