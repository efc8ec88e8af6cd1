"""The bundled local network: ``walrusfs cluster init|up|status|down|repair-status DIR``.

A cluster directory holds everything for N storage nodes on 127.0.0.1::

    committee.toml          epoch, n_shards, the nodes and the writer's public key
    writer.key              the writer's ed25519 key (clients sign writes with it)
    node-<i>/config.toml    node i's configuration (listen 127.0.0.1:<base port + i>)
    node-<i>/node.key       node i's signing key
    node-<i>/data/          node i's slivers
    node-<i>/node.log       node i's log (while run by ``cluster up``)
    node-<i>/node.pid       node i's process id (while run by ``cluster up``)

Nodes run as detached processes; ``down`` stops exactly the pids ``up`` recorded (checking each is
still that node), never processes found by name.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .committee import Committee, NodeInfo, round_robin_shards
from .errors import UserError
from .keys import generate_key, public_bytes, public_key_text, write_key

DEFAULT_CLUSTER_DIR = Path.home() / ".local" / "share" / "walrusfs" / "cluster"
DEFAULT_BASE_PORT = 31400
DEFAULT_NODES = 7
COMMITTEE_FILE = "committee.toml"
WRITER_KEY_FILE = "writer.key"


def bundled_file(given: Path | str | None, name: str) -> Path:
    """``given`` if the user named a file, else that file of the bundled local network; absolute."""
    return Path(given or DEFAULT_CLUSTER_DIR / name).resolve()
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
    bytes: int | None = None


# --- init --------------------------------------------------------------------------------------------


def init_cluster(root: Path, nodes: int = DEFAULT_NODES, shards: int | None = None,
                 base_port: int = DEFAULT_BASE_PORT, force: bool = False) -> Committee:
    """Create keys, committee and node configurations for ``nodes`` nodes under ``root``."""
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
    infos = []
    for i, node_shards in enumerate(round_robin_shards(nodes, shards)):
        directory = root / f"node-{i}"
        (directory / "data").mkdir(parents=True)
        key = generate_key()
        write_key(directory / "node.key", key)
        info = NodeInfo(f"node-{i}", f"http://127.0.0.1:{base_port + i}", public_bytes(key), node_shards)
        infos.append(info)
        (directory / "config.toml").write_text(
            f'node_id = "{info.id}"\n'
            f'listen = "127.0.0.1:{base_port + i}"\n'
            'data_dir = "data"\n'
            'signing_key = "node.key"\n'
            f'committee = "../{COMMITTEE_FILE}"\n'
        )
    committee = Committee(epoch=1, n_shards=shards, nodes=tuple(infos),
                          writer_keys=frozenset({public_bytes(writer)}))
    committee.write(root / COMMITTEE_FILE)
    return committee


def _remove_cluster_files(root: Path) -> None:
    committee = Committee.load(root / COMMITTEE_FILE)
    for node in committee.nodes:
        shutil.rmtree(root / node.id, ignore_errors=True)
    for name in (COMMITTEE_FILE, WRITER_KEY_FILE):
        (root / name).unlink(missing_ok=True)


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
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    if state == "Z" or str(node.config).encode() not in cmdline:
        _reap(pid)
        return None  # exited, or the pid was reused by another program
    return pid


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _spawn(node: ClusterNode) -> int:
    with open(node.log, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "nodes", "--config", str(node.config)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=node.directory,
            start_new_session=True,  # detached: survives the shell, not signalled with it
        )
    temp = node.pid_file.with_suffix(".tmp")
    temp.write_text(f"{process.pid}\n")
    os.replace(temp, node.pid_file)
    return process.pid


def _health(node: ClusterNode, timeout: float = 1.0) -> dict | None:
    import httpx

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per probe is noise
    try:
        response = httpx.get(f"{node.info.url}/v1/health", timeout=timeout)
        return response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def wait_process_healthy(url: str, process: subprocess.Popen, name: str, log: Path,
                         deadline: float) -> None:
    """Wait until a node process we started answers /v1/health; RuntimeError (pointing at its log)
    if it exits first or ``deadline`` (time.monotonic()) passes."""
    import httpx

    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with status {process.returncode}; see {log}:\n"
                               f"{log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"{url}/v1/health", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} is not healthy after waiting; see {log}")
        time.sleep(0.05)


def start_cluster(root: Path, timeout: float = START_TIMEOUT) -> list[NodeState]:
    """Start every node not already running; wait until all answer /v1/health."""
    _, nodes = load_cluster(root)
    pids = {}
    for node in nodes:
        pids[node.info.id] = _running_pid(node) or _spawn(node)
    deadline = time.monotonic() + timeout
    pending = list(nodes)
    while pending:
        for node in list(pending):
            if _health(node, timeout=0.5) is not None:
                pending.remove(node)
            elif _running_pid(node) is None:
                raise UserError(f"node {node.info.id} exited while starting; see its log {node.log}:\n"
                                + _tail(node.log))
        if pending and time.monotonic() > deadline:
            node = pending[0]
            raise UserError(f"node {node.info.id} did not become healthy at {node.info.url} within "
                            f"{timeout:.0f} s; see its log {node.log}:\n" + _tail(node.log))
        if pending:
            time.sleep(0.05)
    return cluster_status(root)


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
            states.append(NodeState(node, pid, "up", health.get("blobs"), health.get("bytes")))
    return states


def stop_cluster(root: Path, timeout: float = STOP_TIMEOUT) -> list[tuple[ClusterNode, str]]:
    """SIGTERM each recorded node, wait, SIGKILL whatever is left after ``timeout``."""
    _, nodes = load_cluster(root)
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


# --- the command line ----------------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in [headers, *rows]]
    return "\n".join(lines)


def _state_rows(states: list[NodeState]) -> list[list[str]]:
    return [[s.node.info.id, s.node.info.url, ",".join(map(str, s.node.info.shards)),
             str(s.pid or "-"), s.status, "-" if s.blobs is None else str(s.blobs),
             "-" if s.bytes is None else str(s.bytes)] for s in states]


_HEADERS = ["node", "url", "shards", "pid", "status", "blobs", "bytes"]


def _cmd_init(args: argparse.Namespace) -> int:
    committee = init_cluster(args.dir, args.nodes, args.shards, args.base_port, args.force)
    root = Path(args.dir).expanduser().resolve()
    print(f"initialised a cluster of {len(committee.nodes)} nodes, {committee.n_shards} shards in {root}")
    print(f"writer key: {root / WRITER_KEY_FILE}; start it with `walrusfs cluster up {root}`")
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    print(_table(_HEADERS, _state_rows(start_cluster(args.dir, args.timeout))))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    states = cluster_status(args.dir)
    print(_table(_HEADERS, _state_rows(states)))
    return 0 if all(s.status == "up" for s in states) else 3


def _cmd_down(args: argparse.Namespace) -> int:
    for node, outcome in stop_cluster(args.dir, args.timeout):
        print(f"{node.info.id}: {outcome}")
    return 0


_REPAIR_COLUMNS = [("certified", "certified_blobs"), ("missing", "missing_slivers"),
                   ("recovered", "recovered_slivers"), ("failed", "failed_attempts"),
                   ("fetched", "bytes_fetched"), ("lost", "bytes_lost"), ("invalid", "invalid_blobs")]


def repair_status(root: Path) -> dict[str, dict]:
    """Each node's ``/v1/repair/status`` (or ``{"error": ...}`` if it does not answer)."""
    import httpx

    _, nodes = load_cluster(root)
    out: dict[str, dict] = {}
    for node in nodes:
        try:
            response = httpx.get(f"{node.info.url}/v1/repair/status", timeout=5.0)
            out[node.info.id] = response.json() if response.status_code == 200 else {
                "error": f"HTTP {response.status_code}"}
        except (httpx.HTTPError, ValueError) as error:
            out[node.info.id] = {"error": f"{type(error).__name__}: {error}"}
    return out


def _repair_row(node_id: str, status: dict) -> list[str]:
    if "error" in status:
        return [node_id, "down"] + ["-"] * (len(_REPAIR_COLUMNS) + 1)
    scrub = status["scrub"]
    state = ("disk full" if status.get("disk_full") else "whole" if status["idle"]
             else "syncing" if status["synced_peers"] < status["peers"] else "repairing")
    return ([node_id, state] + [str(status[key]) for _, key in _REPAIR_COLUMNS]
            + [f"{scrub['passes']} passes, {scrub['position']} blobs into this one, {scrub['rot_found']} rotten"])


def _cmd_repair_status(args: argparse.Namespace) -> int:
    statuses = repair_status(args.dir)
    if args.json:
        print(json.dumps(statuses, indent=1))
    else:
        headers = ["node", "state"] + [label for label, _ in _REPAIR_COLUMNS] + ["scrub"]
        print(_table(headers, [_repair_row(node, status) for node, status in statuses.items()]))
        print("(fetched and lost in bytes since each node started; missing: slivers known missing now)")
    return 0 if all("error" not in status for status in statuses.values()) else 3


def _cmd_keygen(args: argparse.Namespace) -> int:
    key = generate_key()
    try:
        write_key(args.file, key)
    except FileExistsError:
        raise UserError(f"{args.file} already exists; refusing to overwrite a key") from None
    except OSError as error:
        raise UserError(f"cannot write {args.file}: {error.strerror}") from error
    print(public_key_text(key))
    return 0


def _cmd_node_run(args: argparse.Namespace) -> int:
    from nodes.server import run

    return run(args)


def register(commands: argparse._SubParsersAction) -> None:
    cluster = commands.add_parser("cluster", help="run a local network of storage nodes on 127.0.0.1")
    actions = cluster.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)

    def with_dir(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("dir", nargs="?", type=Path, default=DEFAULT_CLUSTER_DIR,
                            help=f"cluster directory (default {DEFAULT_CLUSTER_DIR})")
        return parser

    init = with_dir(actions.add_parser("init", help="create keys, committee and node configurations"))
    init.add_argument("--nodes", type=int, default=DEFAULT_NODES, help="number of nodes (default 7)")
    init.add_argument("--shards", type=int, help="number of shards (default: one per node)")
    init.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT,
                      help=f"node i listens on base port + i (default {DEFAULT_BASE_PORT})")
    init.add_argument("--force", action="store_true", help="replace an existing cluster and its data")
    init.set_defaults(func=_cmd_init)
    up = with_dir(actions.add_parser("up", help="start the nodes that are not running"))
    up.add_argument("--timeout", type=float, default=START_TIMEOUT, help="seconds to wait for health")
    up.set_defaults(func=_cmd_up)
    with_dir(actions.add_parser("status", help="show which nodes are up")).set_defaults(func=_cmd_status)
    down = with_dir(actions.add_parser("down", help="stop the nodes started by `up`"))
    down.add_argument("--timeout", type=float, default=STOP_TIMEOUT, help="seconds before SIGKILL")
    down.set_defaults(func=_cmd_down)
    repair = with_dir(actions.add_parser("repair-status", help="what self-healing did on each node: slivers "
                                         "missing, recovered, failed, bytes fetched and lost, scrubbing"))
    repair.add_argument("--json", action="store_true", help="print each node's status as JSON")
    repair.set_defaults(func=_cmd_repair_status)

    node = commands.add_parser("node", help="run one storage node")
    node_actions = node.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    run = node_actions.add_parser("run", help="serve one node from its configuration file")
    from nodes.server import add_arguments

    add_arguments(run)
    run.set_defaults(func=_cmd_node_run)
    keygen = node_actions.add_parser("keygen", help="create an ed25519 key file (node or writer); "
                                     "prints its public key for the committee file")
    keygen.add_argument("file", type=Path, help="where to write the key (must not exist; mode 0600)")
    keygen.set_defaults(func=_cmd_keygen)


__all__ = ["DEFAULT_CLUSTER_DIR", "cluster_status", "init_cluster", "start_cluster", "stop_cluster"]
