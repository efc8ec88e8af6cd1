"""A real local network for tests: 7 storage-node processes on 127.0.0.1, plus misbehaving helpers.

    with LocalNetwork(tmp_path) as net:          # init + start + wait for health; stops all at exit
        net.stop("node-3")                       # SIGTERM (graceful), by the pid we started
        net.kill9("node-4"); net.start("node-4") # crash and come back
        path = net.client_committee({"node-1": proxy.url})   # the client sees node-1 at another URL

Every process here is started by this module and stopped by its own pid, also when the test fails
(and at interpreter exit, as a last resort). Nothing is ever signalled by name.

(Not a package: ``tests/support`` is put on sys.path by tests/conftest.py.)
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from walrusfs.cluster import init_cluster
from walrusfs.committee import Committee, NodeInfo
from walrusfs.keys import load_key

SUPPORT_DIR = Path(__file__).resolve().parent
# Generous: a node answers in milliseconds on an idle machine, so these bounds cost nothing there,
# but seven Python processes importing numpy on a loaded 2-core machine can take half a minute.
START_TIMEOUT = 90.0
HEALTH_PROBE_TIMEOUT = 3.0

# Every child process any LocalNetwork/helper started and has not yet reaped: stopped at exit.
_LIVE: dict[int, subprocess.Popen] = {}


def _stop_leftovers() -> None:
    for process in list(_LIVE.values()):
        _terminate(process, timeout=3.0)


atexit.register(_stop_leftovers)


def _terminate(process: subprocess.Popen, timeout: float = 10.0, signum: int = signal.SIGTERM) -> int | None:
    """Signal our own child by pid, wait, SIGKILL if it lingers; returns the exit status."""
    try:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signum)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait()
        return process.returncode
    finally:
        _LIVE.pop(process.pid, None)


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_window() -> tuple[int, int]:
    """The ports this test process draws from: 20000-32700, below the kernel's ephemeral range
    (32768+), where ports handed out by ``bind(0)`` elsewhere never land. Under pytest-xdist each
    worker gets its own slice, so two workers never pick the same free port between the probe and
    the node's bind."""
    low, high = 20000, 32700
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if worker.startswith("gw") and worker[2:].isdigit() and workers > 1:
        width = (high - low) // workers
        low += int(worker[2:]) % workers * width
        high = low + width
    return low, high


def free_port_range(count: int) -> int:
    """A base port such that base..base+count-1 are free now, drawn at random from this process's
    window (_port_window)."""
    rng = random.SystemRandom()
    low, high = _port_window()
    for _ in range(200):
        base = rng.randrange(low, high - count)
        if all(_port_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found in {low}-{high}")


def _healthy(url: str, http: httpx.Client) -> bool:
    try:
        return http.get(f"{url}/v1/health").status_code == 200
    except httpx.HTTPError:
        return False


@functools.cache
def polling_client() -> httpx.Client:
    """One client for the helpers that poll nodes in a loop (wait for a handover, for repair...), for the
    same reason as health_prober. No keep-alive: tests kill and restart nodes on the same ports, and a
    connection pooled from before must never be what a request meets. Give each request its timeout."""
    return httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0))


def health_prober() -> httpx.Client:
    """One client for a whole wait for health. ``httpx.get`` makes a client per call, and with it a TLS
    context from the CA bundle: some 15-50 ms of CPU per probe, which a loop probing every few
    milliseconds takes from the very node processes it waits for (on 2 cores, a third of the machine)."""
    return httpx.Client(timeout=HEALTH_PROBE_TIMEOUT)


class LocalNetwork:
    """A cluster directory under ``root`` and one ``python -m nodes`` process per node."""

    def __init__(self, root: Path, nodes: int = 7, shards: int | None = None) -> None:
        self.root = Path(root)
        for attempt in range(5):
            try:
                self.committee = init_cluster(self.root, nodes=nodes, shards=shards,
                                              base_port=free_port_range(nodes), force=attempt > 0)
                break
            except OSError:
                if attempt == 4:
                    raise
        self.committee_path = self.root / "committee.toml"
        self.writer_key_path = self.root / "writer.key"
        self.writer_key = load_key(self.writer_key_path)
        self.processes: dict[str, subprocess.Popen] = {}

    # --- names ----------------------------------------------------------------------------------

    @property
    def node_ids(self) -> list[str]:
        return [node.id for node in self.committee.nodes]

    def _id(self, node: str | int) -> str:
        return self.node_ids[node] if isinstance(node, int) else node

    def info(self, node: str | int) -> NodeInfo:
        return self.committee.node(self._id(node))

    def url(self, node: str | int) -> str:
        return self.info(node).url

    def config(self, node: str | int) -> Path:
        return self.root / self._id(node) / "config.toml"

    def log(self, node: str | int) -> Path:
        return self.root / self._id(node) / "node.log"

    def pid(self, node: str | int) -> int | None:
        process = self.processes.get(self._id(node))
        return process.pid if process is not None and process.poll() is None else None

    def running(self) -> list[str]:
        return [node for node in self.node_ids if self.pid(node) is not None]

    # --- processes ------------------------------------------------------------------------------

    def _spawn(self, node_id: str, clock_offset: float = 0.0) -> subprocess.Popen:
        if self.pid(node_id) is not None:
            raise RuntimeError(f"{node_id} is already running (pid {self.pid(node_id)})")
        # A node whose wall clock is off runs under skewed_clock.py (its clock moves, not the machine's).
        skew = [str(SUPPORT_DIR / "skewed_clock.py"), str(clock_offset)] if clock_offset else []
        with open(self.log(node_id), "ab") as log:
            process = subprocess.Popen([sys.executable, *skew, "-m", "nodes", "--config", str(self.config(node_id))],
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       cwd=self.root / node_id)
        _LIVE[process.pid] = process
        self.processes[node_id] = process
        return process

    def _wait_healthy(self, node_ids: list[str], timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        pending = list(node_ids)
        with health_prober() as http:
            while pending:
                for node_id in list(pending):
                    process = self.processes[node_id]
                    if process.poll() is not None:
                        _LIVE.pop(process.pid, None)
                        raise RuntimeError(f"{node_id} exited with {process.returncode} while starting:\n"
                                           + self.log(node_id).read_text(errors="replace")[-3000:])
                    if _healthy(self.url(node_id), http):
                        pending.remove(node_id)
                if pending and time.monotonic() > deadline:
                    raise RuntimeError(f"{pending} not healthy after {timeout} s:\n"
                                       + self.log(pending[0]).read_text(errors="replace")[-3000:])
                if pending:
                    time.sleep(0.03)

    def start(self, *nodes: str | int, clock_offset: float = 0.0) -> None:
        """Start the given nodes (all not running, if none given) and wait until they are healthy;
        with ``clock_offset``, each node's wall clock is that many seconds off."""
        node_ids = [self._id(n) for n in nodes] or [n for n in self.node_ids if self.pid(n) is None]
        for node_id in node_ids:
            self._spawn(node_id, clock_offset)
        self._wait_healthy(node_ids)

    def stop(self, *nodes: str | int, timeout: float = 10.0) -> None:
        """SIGTERM (a graceful stop), wait for exit; SIGKILL after ``timeout``."""
        for node in nodes:
            process = self.processes.get(self._id(node))
            if process is not None:
                _terminate(process, timeout)

    def kill9(self, *nodes: str | int) -> None:
        for node in nodes:
            process = self.processes.get(self._id(node))
            if process is not None:
                _terminate(process, signum=signal.SIGKILL)

    def restart(self, *nodes: str | int) -> None:
        self.stop(*nodes)
        self.start(*nodes)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            _terminate(process, timeout=10.0)

    def ensure_all_up(self) -> None:
        """Start whichever nodes a test left stopped (for shared networks)."""
        if len(self.running()) < len(self.node_ids):
            self.start()

    def __enter__(self) -> LocalNetwork:
        try:
            self.start()
        except BaseException:
            self.stop_all()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    # --- what clients see -----------------------------------------------------------------------

    def client_committee(self, urls: dict[str, str] | None = None, *, epoch: int | None = None,
                         name: str | None = None) -> Path:
        """Write a committee file for a client in which node ``id`` is reached at ``urls[id]`` (a
        proxy, a black hole...). The nodes keep using the real committee."""
        urls = urls or {}
        nodes = tuple(NodeInfo(n.id, urls.get(n.id, n.url), n.public_key, n.shards) for n in self.committee.nodes)
        committee = Committee(epoch=self.committee.epoch if epoch is None else epoch,
                              n_shards=self.committee.n_shards, nodes=nodes,
                              writer_keys=self.committee.writer_keys)
        directory = self.root / "client-committees"
        directory.mkdir(exist_ok=True)
        path = directory / (name or f"committee-{time.monotonic_ns()}.toml")
        committee.write(path)
        return path


# --- misbehaving helpers, each its own process ------------------------------------------------------



@contextlib.contextmanager
def down(network: LocalNetwork, *nodes: str) -> Iterator[None]:
    """Nodes stopped (SIGTERM) for the duration; started again afterwards, whatever happened."""
    network.stop(*nodes)
    try:
        yield
    finally:
        network.start(*nodes)


class Helper:
    """A helper process that binds its own port (0) and prints ``READY <port>`` when it listens."""

    def __init__(self, script: str, *args: str, timeout: float = 15.0) -> None:
        self.process = subprocess.Popen([sys.executable, str(SUPPORT_DIR / script), *args],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None, text=True)
        _LIVE[self.process.pid] = self.process
        try:
            line = _read_line(self.process, timeout)
            if not line.startswith("READY "):
                raise RuntimeError(f"{script} did not start: {line!r}")
            self.port = int(line.split()[1])
        except BaseException:
            self.close()
            raise
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def close(self) -> None:
        _terminate(self.process, timeout=5.0)
        if self.process.stdout:
            self.process.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _read_line(process: subprocess.Popen, timeout: float) -> str:
    import selectors

    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise RuntimeError(f"helper pid {process.pid} printed nothing within {timeout} s")
    return process.stdout.readline().strip()


class LyingProxy(Helper):
    """A reverse proxy in front of ``upstream`` that passes everything through except that it
    flips bytes in the bodies of the responses named in ``corrupt`` (any of ``sliver``, ``symbol``,
    ``metadata``, ``confirmation``)."""

    def __init__(self, upstream: str, corrupt: tuple[str, ...] = ("sliver", "symbol", "metadata")) -> None:
        self.upstream = upstream
        super().__init__("lying_proxy.py", upstream, ",".join(corrupt))

    def requests(self) -> dict[str, int]:
        """How many requests the proxy received, by method and kind ("GET sliver", "GET metadata", ...)."""
        return httpx.get(f"{self.url}/_proxy/requests", timeout=5).json()


class BlackHole(Helper):
    """A listening socket that accepts connections and never answers."""

    def __init__(self) -> None:
        super().__init__("black_hole.py")
