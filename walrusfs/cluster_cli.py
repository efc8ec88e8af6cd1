"""The ``walrusfs cluster init|up|status|down|repair-status`` and ``walrusfs node run|keygen|cert``
commands: argument parsing and printing over the local network's lifecycle in walrusfs.cluster."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cluster import (
    DEFAULT_BASE_PORT,
    DEFAULT_CLUSTER_DIR_HELP,
    DEFAULT_LOOPBACK_TLS,
    DEFAULT_NODES,
    DEFAULT_SHARDS_PER_NODE,
    MAX_DEFAULT_SHARDS,
    START_TIMEOUT,
    STOP_TIMEOUT,
    WRITER_KEY_FILE,
    NodeState,
    cluster_status,
    default_shards,
    init_cluster,
    repair_status,
    start_cluster,
    stop_cluster,
)
from .cluster_epochs import register_cluster_actions
from .errors import UserError
from .keys import generate_key, load_key, public_key_text, write_key
from .paths import cluster_dir
from .ports import ephemeral_range, exposed_ports
from .protocol.tls import certificate_text, node_certificate
from .protocol.wire import RepairStatus
from .tables import table as _table


def _state_rows(states: list[NodeState]) -> list[list[str]]:
    return [[s.node.info.id, s.node.info.url, ",".join(map(str, s.node.info.shards)),
             str(s.pid or "-"), s.status, "-" if s.blobs is None else str(s.blobs),
             "-" if s.bytes is None else str(s.bytes), "-" if s.free is None else str(s.free)] for s in states]


# used: bytes of the node's stored files; free: bytes free on its data disk (both from its /v1/health).
_HEADERS = ["node", "url", "shards", "pid", "status", "blobs", "used", "free"]


def ephemeral_port_warning(base_port: int, nodes: int) -> str | None:
    """A warning if node ports ``base_port``.. lie in the kernel's ephemeral range, unreserved."""
    exposed = exposed_ports(range(base_port, base_port + nodes))
    if not exposed:
        return None
    low, high = ephemeral_range()
    span = f"{exposed[0]}-{exposed[-1]}" if len(exposed) > 1 else str(exposed[0])
    return (f"warning: node ports {span} lie in the kernel's ephemeral port range ({low}-{high}), where "
            "outgoing connections take their local ports: `cluster up` may fail with 'address already in "
            f"use'. Use a --base-port below {low - nodes + 1} (the default is {DEFAULT_BASE_PORT}), or reserve "
            f"them: sysctl -w net.ipv4.ip_local_reserved_ports={span}")


def _cmd_init(args: argparse.Namespace) -> int:
    shards = args.shards if args.shards is not None else default_shards(args.nodes)
    committee = init_cluster(_dir(args), args.nodes, shards, args.base_port, args.force, args.tls)
    root = Path(_dir(args)).expanduser().resolve()
    print(f"initialised a cluster of {len(committee.nodes)} nodes, {committee.n_shards} shards in {root}")
    warning = ephemeral_port_warning(args.base_port, len(committee.nodes))
    if warning:
        print(warning, file=sys.stderr)
    print(f"writer key: {root / WRITER_KEY_FILE}; start it with `walrusfs cluster up {root}`")
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    print(_table(_HEADERS, _state_rows(start_cluster(_dir(args), args.timeout))))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    states = cluster_status(_dir(args))
    print(_table(_HEADERS, _state_rows(states)))
    return 0 if all(s.status == "up" for s in states) else 3


def _cmd_down(args: argparse.Namespace) -> int:
    for node, outcome in stop_cluster(_dir(args), args.timeout):
        print(f"{node.info.id}: {outcome}")
    return 0


_REPAIR_COLUMNS = [("certified", "certified_blobs"), ("missing", "missing_slivers"),
                   ("recovered", "recovered_slivers"), ("failed", "failed_attempts"),
                   ("fetched", "bytes_fetched"), ("lost", "bytes_lost"), ("invalid", "invalid_blobs")]


def _repair_row(node_id: str, status: dict) -> list[str]:
    if "error" in status:
        return [node_id, "down"] + ["-"] * (len(_REPAIR_COLUMNS) + 1)
    typed = RepairStatus.from_dict(status)
    scrub = typed.scrub
    return ([node_id, typed.state] + [str(status[key]) for _, key in _REPAIR_COLUMNS]
            + [f"{scrub.passes} passes, {scrub.position} blobs into this one, {scrub.rot_found} rotten"])


def _cmd_repair_status(args: argparse.Namespace) -> int:
    statuses = repair_status(_dir(args))
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
    print("its tls_cert for the committee file: `walrusfs node cert FILE`", file=sys.stderr)
    return 0


def _cmd_cert(args: argparse.Namespace) -> int:
    print(certificate_text(node_certificate(load_key(args.file))))
    return 0


def _dir(args: argparse.Namespace) -> Path:
    return args.dir if args.dir is not None else cluster_dir()


def _cmd_node_run(args: argparse.Namespace) -> int:
    from nodes.server import run

    return run(args)


def register(commands: argparse._SubParsersAction) -> None:
    cluster = commands.add_parser("cluster", help="run a local network of storage nodes on 127.0.0.1")
    actions = cluster.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)

    def with_dir(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("dir", nargs="?", type=Path, default=None,
                            help=f"cluster directory (default {DEFAULT_CLUSTER_DIR_HELP})")
        return parser

    init = with_dir(actions.add_parser("init", help="create keys, committee and node configurations"))
    init.add_argument("--nodes", type=int, default=DEFAULT_NODES, help="number of nodes (default 7)")
    init.add_argument("--shards", type=int, help=f"number of shards, fixed for the life of the network (default: "
                      f"{DEFAULT_SHARDS_PER_NODE} per node, at most {MAX_DEFAULT_SHARDS}, at least one per node, so "
                      "that nodes added later take load off every node)")
    init.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT,
                      help=f"node i listens on base port + i (default {DEFAULT_BASE_PORT}; keep them below the "
                      "kernel's ephemeral port range, 32768 and up, or `init` warns)")
    init.add_argument("--force", action="store_true", help="replace an existing cluster and its data")
    init.add_argument("--tls", action=argparse.BooleanOptionalAction, default=DEFAULT_LOOPBACK_TLS,
                      help="serve https with self-signed certificates pinned in the committee (default: "
                      f"{'on' if DEFAULT_LOOPBACK_TLS else 'off'} for this loopback network; docs/node-api.md)")
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
    register_cluster_actions(actions)  # add, retire: epoch changes

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
    cert = node_actions.add_parser("cert", help="print the tls_cert of a node key, for its committee entry")
    cert.add_argument("file", type=Path, help="the node's key file")
    cert.set_defaults(func=_cmd_cert)

