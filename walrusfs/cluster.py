"""The bundled local network: ``walrusfs cluster init|up|status|down|repair-status DIR``.

A cluster directory holds everything for N storage nodes on 127.0.0.1::

    committee.toml          epoch, n_shards, the nodes and the writer's public key
    writer.key              the writer's ed25519 key (clients sign writes with it)
    operator.key            the operator's ed25519 key: nodes sign the next committee it proposes
    chain.json              the committee chain, once the committee changed (walrusfs.cluster_epochs)
    first-committee.toml    the chain's first committee: what nodes added later are configured with
    node-<i>/config.toml    node i's configuration (listen 127.0.0.1:<base port + i>)
    node-<i>/node.key       node i's signing key
    node-<i>/data/          node i's slivers
    node-<i>/node.log       node i's log (while run by ``cluster up``)
    node-<i>/node.pid       node i's process id (while run by ``cluster up``)

Nodes run as detached processes; ``down`` stops exactly the pids ``up`` recorded (checking each is
still that node), never processes found by name.

The ``walrusfs cluster`` and ``walrusfs node`` commands that drive it are in walrusfs.cluster_cli;
``cluster add`` and ``cluster retire`` (epoch changes) in walrusfs.cluster_epochs.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import tomli_w

from .errors import UserError
from .keys import generate_key, public_bytes, public_key_text, write_key
from .paths import cluster_dir
from .protocol import routes
from .protocol.committee import Committee, NodeInfo, round_robin_shards
from .protocol.tls import client_context, node_certificate
from .protocol.wire import Health, RepairStatus, WireError
from .redstuff.geometry import MIN_SHARDS

# The bundled network's directory when none is named: walrusfs.paths.cluster_dir(), resolved when a
# command runs (it follows $WALRUSFS_HOME, which `walrusfs --home` sets after this module is loaded).
DEFAULT_CLUSTER_DIR_HELP = "$WALRUSFS_HOME/cluster, else ~/.local/share/walrusfs/cluster"
# Below the kernel's ephemeral range (32768-60999 on Linux), where outgoing connections take their
# local ports: a node port in that range can be taken just before the node binds it (walrusfs.ports).
DEFAULT_BASE_PORT = 31400
DEFAULT_NODES = 7
# `walrusfs cluster init` without --shards: two shards per node (7 nodes: 14 shards), at most 32.
# The shard count is fixed for the life of a network and a node holds at least one shard, so it
# bounds how far the network can grow: with one shard per node no node could ever join. Two per
# node let 7 nodes grow to 14, each newcomer taking a shard off a loaded node. Not more, because the
# codec's work per byte grows with the shard count (`walrusfs bench codec --size 32`, MB encoded per
# CPU-second: 253-267 at n=7, 147-173 at 14, 119-124 at 21, 74 at 28; docs/epochs.md, "Choosing the
# shard count"), and on the bundled network the mount's writes are CPU-bound (docs/performance.md:
# about 10 CPU-seconds per GiB, 4 of them the client's encoding): 21 shards would add ~5 CPU-seconds
# per GiB to the writer alone, 14 about 2.5. Past 28 encoding costs 3.5x what it does at n=7.
DEFAULT_SHARDS_PER_NODE = 2
MAX_DEFAULT_SHARDS = 32
COMMITTEE_FILE = "committee.toml"
# Whether `cluster init` makes nodes serve TLS: plain HTTP on loopback, where nobody is on the path and
# TLS measurably costs speed (docs/performance.md: `walrusfs bench blob --transport both`). Deployments use TLS.
DEFAULT_LOOPBACK_TLS = False
WRITER_KEY_FILE = "writer.key"
# The key whose proposals of the next committee every node of the bundled network considers
# (its public key is each node config's [epochs] proposers; docs/epochs.md).
OPERATOR_KEY_FILE = "operator.key"


def bundled_file(given: Path | str | None, name: str) -> Path:
    """``given`` if the user named a file, else that file of the bundled local network; absolute."""
    return Path(given or cluster_dir() / name).resolve()
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class ClusterNode:
    """Where one node of a cluster directory keeps its files."""

    info: NodeInfo
    directory: Path

    @property
    def config(self) -> Path:
        return self.directory / "config.toml"

    @property
    def log(self) -> Path:
        return self.directory / "node.log"

    @property
    def pid_file(self) -> Path:
        return self.directory / "node.pid"


@dataclass(frozen=True)
class NodeState:
    node: ClusterNode
    pid: int | None
    status: str  # "up", "starting", "down", "unhealthy"
    blobs: int | None = None
    bytes: int | None = None  # used by stored files
    free: int | None = None  # free on the data disk (None from a node that does not say)


# --- init --------------------------------------------------------------------------------------------


def default_shards(nodes: int) -> int:
    """The shard count ``walrusfs cluster init --nodes N`` gives a network (never fewer than N)."""
    return max(nodes, MIN_SHARDS, min(DEFAULT_SHARDS_PER_NODE * nodes, MAX_DEFAULT_SHARDS))


def init_cluster(root: Path, nodes: int = DEFAULT_NODES, shards: int | None = None,
                 base_port: int = DEFAULT_BASE_PORT, force: bool = False, tls: bool = False) -> Committee:
    """Create keys, committee and node configurations for ``nodes`` nodes under ``root``. ``tls``:
    the nodes serve https with their self-signed certificates, pinned in the committee (walrusfs.protocol.tls).
    ``shards`` None: one per node, the smallest network (what tests build); the command's default
    is ``default_shards``."""
    shards = nodes if shards is None else shards
    if nodes < 1:
        raise UserError("--nodes must be at least 1")
    if shards < nodes:
        raise UserError(f"--shards ({shards}) must be at least --nodes ({nodes}): every node holds a shard")
    if not (base_port >= 1024 and base_port + nodes - 1 <= 65535):
        raise UserError(f"--base-port {base_port}: ports {base_port}..{base_port + nodes - 1} must lie in "
                        "1024..65535")
    root = Path(root).expanduser().resolve()
    if (root / COMMITTEE_FILE).exists():
        if not force:
            raise UserError(f"{root} already holds a cluster; pass --force to replace it (this deletes its "
                            "keys and stored data)")
        running = [state.node.info.id for state in cluster_status(root, probe=False) if state.pid]
        if running:
            raise UserError(f"nodes {', '.join(running)} of {root} are running: `walrusfs cluster down "
                            f"{root}` first")
        _remove_cluster_files(root)
    root.mkdir(parents=True, exist_ok=True)
    writer = generate_key()
    write_key(root / WRITER_KEY_FILE, writer)
    operator = generate_key()
    write_key(root / OPERATOR_KEY_FILE, operator)
    infos = []
    for i, node_shards in enumerate(round_robin_shards(nodes, shards)):
        directory = root / f"node-{i}"
        (directory / "data").mkdir(parents=True)
        key = generate_key()
        write_key(directory / "node.key", key)
        info = NodeInfo(f"node-{i}", f"{'https' if tls else 'http'}://127.0.0.1:{base_port + i}", public_bytes(key),
                        node_shards, node_certificate(key) if tls else None)
        infos.append(info)
        write_node_config(directory, info.id, base_port + i, public_key_text(operator))
    committee = Committee(epoch=1, n_shards=shards, nodes=tuple(infos),
                          writer_keys=frozenset({public_bytes(writer)}))
    committee.write(root / COMMITTEE_FILE)
    return committee


def write_node_config(directory: Path, node_id: str, port: int, operator: str,
                      committee: str = COMMITTEE_FILE) -> None:
    """A bundled node's config.toml: it reads the cluster's ``committee`` file (committee.toml; a
    node added later the first committee, its chain's anchor), and signs the next committee when the
    operator key (base64 public key ``operator``) proposes it."""
    (directory / "config.toml").write_text(tomli_w.dumps({
        "node_id": node_id, "listen": f"127.0.0.1:{port}", "data_dir": "data", "signing_key": "node.key",
        "committee": f"../{committee}", "epochs": {"proposers": [operator]}}))


def _remove_cluster_files(root: Path) -> None:
    committee = Committee.load(root / COMMITTEE_FILE)
    for node_id in {node.id for node in committee.nodes} | _former_node_ids(root):
        shutil.rmtree(root / node_id, ignore_errors=True)
    for name in (COMMITTEE_FILE, WRITER_KEY_FILE, OPERATOR_KEY_FILE, "chain.json", "proposal.json",
                 "first-committee.toml"):
        (root / name).unlink(missing_ok=True)


def _former_node_ids(root: Path) -> set[str]:
    """Ids of nodes that committees before the current one named (DIR/chain.json; retired nodes
    whose directories were kept), for ``init --force`` to remove with the rest."""
    try:
        chain = json.loads((root / "chain.json").read_text())
        committees = [chain["anchor"], *(link["committee"] for link in chain["links"])]
        return {str(node["id"]) for committee in committees for node in committee["nodes"]
                if "/" not in str(node["id"]) and str(node["id"]) not in ("", ".", "..")}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def load_cluster(root: Path) -> tuple[Committee, list[ClusterNode]]:
    root = Path(root).expanduser().resolve()
    if not (root / COMMITTEE_FILE).exists():
        raise UserError(f"{root} is not a cluster directory (no {COMMITTEE_FILE}): run "
                        f"`walrusfs cluster init {root}` first")
    committee = Committee.load(root / COMMITTEE_FILE)
    return committee, [ClusterNode(info, root / info.id) for info in committee.nodes]


def writer_key_path(root: Path) -> Path:
    return Path(root).expanduser().resolve() / WRITER_KEY_FILE


# --- processes ---------------------------------------------------------------------------------------


def _running_pid(node: ClusterNode) -> int | None:
    """The pid in the node's pid file if that process is alive and still this node."""
    try:
        pid = int(node.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    process = _CHILDREN.get(pid)
    if process is not None:
        # Started by this process, so no other program can have its pid until it is reaped. Its
        # cmdline would not do: just after exec it can read empty for a moment (the kernel sets the
        # new arguments after closing the close-on-exec pipe Popen waits on); on a loaded machine a
        # node just started was once taken for one that "exited while starting", with an empty log.
        return pid if process.poll() is None else None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    if state == "Z" or str(node.config).encode() not in cmdline:
        _reap(pid)
        return None  # exited, or the pid was reused by another program
    return pid


# The node processes this process started, kept so that their exit status can be told ("killed
# by signal 9", not only "exited"): a dropped Popen reaps its exited child when it is collected.
_CHILDREN: dict[int, subprocess.Popen] = {}


def _reap(pid: int) -> None:
    if pid in _CHILDREN:
        _CHILDREN[pid].poll()
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _how_it_ended(node: ClusterNode) -> str:
    try:
        process = _CHILDREN.get(int(node.pid_file.read_text().strip()))
    except (OSError, ValueError):
        process = None
    if process is None or process.poll() is None:
        return "exited"
    if process.returncode < 0:
        return f"was killed by signal {-process.returncode}"
    return f"exited with status {process.returncode}"


def _spawn(node: ClusterNode) -> int:
    with open(node.log, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "nodes", "--config", str(node.config)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=node.directory,
            start_new_session=True,  # detached: survives the shell, not signalled with it
        )
    _CHILDREN[process.pid] = process
    temp = node.pid_file.with_suffix(".tmp")
    temp.write_text(f"{process.pid}\n")
    os.replace(temp, node.pid_file)
    return process.pid


def _health(node: ClusterNode, timeout: float = 1.0) -> Health | None:
    """The node's /v1/health if this node answers at its URL (its public key is the committee's);
    None if nothing, or another process, answers there."""
    answer = _probe(node.info, timeout)
    return answer if answer is not None and _is_this_node(node, answer) else None


def _probe(info: NodeInfo, timeout: float) -> Health | None:
    import httpx

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per probe is noise
    try:
        response = httpx.get(info.url + routes.HEALTH, timeout=timeout, verify=client_context(info.tls_cert))
        return Health.from_dict(response.json()) if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):  # WireError too: what answers there is no node of ours
        return None


def _is_this_node(node: ClusterNode, health: Health) -> bool:
    return health.public_key == base64.b64encode(node.info.public_key).decode()


def _check_port_free(node: ClusterNode) -> None:
    """Before starting a node: its address must be free. Another network's nodes answer health
    checks just like ours (same ids, same API), so one left on these ports would otherwise be
    reported as this cluster, up."""
    address = urlsplit(node.info.url)
    host, port = address.hostname or "127.0.0.1", address.port or 80
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the node binds: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
            return
        except OSError as error:
            reason = error.strerror
    other = _probe(node.info, timeout=2.0)
    if other is not None:  # a walrusfs node's health (anything else there is no Health)
        raise UserError(f"{node.info.id} cannot start: {host}:{port} is already served by another walrusfs node "
                        f"({other.node_id} with a different key: another cluster on the same ports). "
                        "Stop that cluster (`walrusfs cluster down ITS_DIR`), or give this one other ports: "
                        "`walrusfs cluster init DIR --force --base-port N`.")
    raise UserError(f"{node.info.id} cannot start: cannot listen on {host}:{port} ({reason}). "
                    f"See what holds it with `ss -ltnp 'sport = :{port}'`, or give this cluster other ports: "
                    "`walrusfs cluster init DIR --force --base-port N`.")


def wait_process_healthy(node: NodeInfo, process: subprocess.Popen, log: Path, deadline: float) -> None:
    """Wait until a node process we started answers /v1/health; RuntimeError (pointing at its log)
    if it exits first or ``deadline`` (time.monotonic()) passes."""
    import httpx

    url, name = node.url, node.id

    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with status {process.returncode}; see {log}:\n"
                               f"{log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(url + routes.HEALTH, timeout=0.5, verify=client_context(node.tls_cert)).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} is not healthy after waiting; see {log}")
        time.sleep(0.05)


def start_cluster(root: Path, timeout: float = START_TIMEOUT) -> list[NodeState]:
    """Start every node not already running; wait until all answer /v1/health."""
    _, nodes = load_cluster(root)
    start_nodes(nodes, timeout)
    return cluster_status(root)


def start_nodes(nodes: list[ClusterNode], timeout: float = START_TIMEOUT) -> None:
    """Start those of ``nodes`` not already running; wait until all answer /v1/health."""
    stopped = [node for node in nodes if _running_pid(node) is None]
    for node in stopped:  # all checked before any starts: a taken port leaves nothing half started
        _check_port_free(node)
    for node in stopped:
        _spawn(node)
    deadline = time.monotonic() + timeout
    pending = list(nodes)
    while pending:
        for node in list(pending):
            answer = _probe(node.info, timeout=0.5)
            if answer is not None and _is_this_node(node, answer):
                pending.remove(node)
            elif answer is not None and _running_pid(node) is None:
                raise UserError(f"{node.info.id} did not start: {node.info.url} is served by another walrusfs "
                                "node (a different key: another cluster took the port meanwhile); see its log "
                                f"{node.log}:\n" + _tail(node.log))
            elif _running_pid(node) is None:
                raise UserError(f"node {node.info.id} {_how_it_ended(node)} while starting; see its log {node.log}:\n"
                                + _tail(node.log))
        if pending and time.monotonic() > deadline:
            node = pending[0]
            raise UserError(f"node {node.info.id} did not become healthy at {node.info.url} within "
                            f"{timeout:.0f} s; see its log {node.log}:\n" + _tail(node.log))
        if pending:
            time.sleep(0.05)


def cluster_status(root: Path, probe: bool = True) -> list[NodeState]:
    _, nodes = load_cluster(root)
    states = []
    for node in nodes:
        pid = _running_pid(node)
        health = _health(node) if probe and pid else None
        if pid is None:
            states.append(NodeState(node, None, "down"))
        elif health is None:
            states.append(NodeState(node, pid, "unhealthy" if probe else "running"))
        else:
            states.append(NodeState(node, pid, "up", health.blobs, health.bytes, health.free_bytes))
    return states


def stop_cluster(root: Path, timeout: float = STOP_TIMEOUT) -> list[tuple[ClusterNode, str]]:
    """SIGTERM each recorded node, wait, SIGKILL whatever is left after ``timeout``."""
    _, nodes = load_cluster(root)
    return stop_nodes(nodes, timeout)


def stop_nodes(nodes: list[ClusterNode], timeout: float = STOP_TIMEOUT) -> list[tuple[ClusterNode, str]]:
    """``stop_cluster`` for the given nodes (each by the pid it recorded)."""
    running = {node.info.id: (node, pid) for node in nodes if (pid := _running_pid(node))}
    outcome = {node.info.id: "not running" for node in nodes}
    for node_id, (_, pid) in running.items():
        _signal(pid, signal.SIGTERM)
        outcome[node_id] = "stopped"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_running_pid(node) for node, _ in running.values()):
        time.sleep(0.05)
    for node_id, (node, pid) in running.items():
        if _running_pid(node):
            _signal(pid, signal.SIGKILL)
            outcome[node_id] = "killed after timeout"
    for node in nodes:
        while _running_pid(node):  # SIGKILL is not instantaneous either
            time.sleep(0.02)
        node.pid_file.unlink(missing_ok=True)
    return [(node, outcome[node.info.id]) for node in nodes]


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "  (no log)"
    return "\n".join("  " + line for line in text)


def repair_status(root: Path) -> dict[str, dict]:
    """Each node's ``/v1/repair/status`` (or ``{"error": ...}`` if it does not answer)."""
    import httpx

    _, nodes = load_cluster(root)
    out: dict[str, dict] = {}
    for node in nodes:
        try:
            response = httpx.get(node.info.url + routes.REPAIR_STATUS, timeout=5.0,
                                 verify=client_context(node.info.tls_cert))
            out[node.info.id] = RepairStatus.from_dict(response.json()).to_dict() if response.status_code == 200 \
                else {"error": f"HTTP {response.status_code}"}
        except WireError as error:
            out[node.info.id] = {"error": f"malformed answer: {error}"}
        except (httpx.HTTPError, ValueError) as error:
            out[node.info.id] = {"error": f"{type(error).__name__}: {error}"}
    return out


__all__ = ["cluster_status", "init_cluster", "repair_status", "start_cluster", "stop_cluster"]
