"""``walrusfs committee status|plan|propose``: the committee of storage nodes, for operators.

- ``status [DIR] [--json]``: the current epoch (the chain walked forward from DIR's committee, every
  link verified), each node's shards and state, and the handover into the current epoch: per shard
  that moved, synced or not, bytes moved and still to move (each new holder's ``GET /v1/handover``).
- ``plan --committee FILE [--join ID URL KEY [CERT]]... [--retire ID]...``: the next committee,
  rebalanced (walrusfs.protocol.rebalance), as TOML to review and hand to ``propose``.
- ``propose NEXT --committee FILE --operator-key KEY``: collect the nodes' signatures on NEXT, give
  every node the signed link and wait for the handover (walrusfs.epoch_change). The bundled network
  does all of this in one step with ``walrusfs cluster add|retire`` (walrusfs.cluster_epochs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .cluster import DEFAULT_CLUSTER_DIR_HELP, load_cluster
from .cluster_epochs import FORCE_HELP, load_chain, wait_for_handover, wait_for_landing
from .errors import UserError
from .keys import decode_public_key, load_key
from .paths import cluster_dir
from .protocol import routes
from .protocol.chain import CommitteeChain, propose
from .protocol.committee import Committee, NodeInfo
from .protocol.rebalance import rebalance, shard_moves
from .protocol.tls import decode_certificate
from .tables import table


def _start(where: Path) -> CommitteeChain:
    """The chain to walk from: a cluster directory's (chain.json), or a committee file alone."""
    where = Path(where).expanduser().resolve()
    if where.is_dir():
        return load_chain(where, load_cluster(where)[0])
    return CommitteeChain(Committee.load(where))


def committee_status(where: Path) -> dict[str, Any]:
    """What ``committee status --json`` prints (docs/epochs.md, "Operators")."""
    from .epoch_change import EpochChangeError, fetch_chain, fetch_statuses, handover_progress

    chain = fetch_chain(_start(where))
    current = chain.current
    statuses = fetch_statuses(list(current.nodes))
    health = fetch_statuses(list(current.nodes), routes.HEALTH)
    nodes = []
    for node in current.nodes:
        answer = health[node.id]
        entry: dict[str, Any] = {"id": node.id, "url": node.url, "shards": list(node.shards)}
        if isinstance(answer, EpochChangeError):
            entry.update(state="down", error=str(answer))
        else:
            epoch = int(answer.get("epoch", 0))
            entry.update(state="up" if epoch == current.epoch else f"behind (epoch {epoch})", epoch=epoch)
        nodes.append(entry)
    result: dict[str, Any] = {"version": 1, "epoch": current.epoch, "n_shards": current.n_shards,
                              "first_epoch": chain.anchor.epoch, "nodes": nodes, "handover": None}
    if current.epoch > chain.anchor.epoch:
        previous = chain.committee_at(current.epoch - 1)
        result["handover"] = {"from_epoch": previous.epoch,
                              **handover_progress(previous, current, statuses).to_dict()}
    return result


def _print_status(status: dict[str, Any]) -> None:
    print(f"epoch {status['epoch']}, {status['n_shards']} shards, {len(status['nodes'])} nodes")
    print(table(["node", "url", "shards", "state"],
                [[n["id"], n["url"], ",".join(map(str, n["shards"])), n["state"]] for n in status["nodes"]]))
    handover = status["handover"]
    if handover is None:
        print(f"no handover: epoch {status['epoch']} is the first committee known here")
        return
    state = "complete" if handover["complete"] else "in progress"
    print(f"handover from epoch {handover['from_epoch']}: {state}, {handover['shards_synced']} of "
          f"{handover['shards_moving']} shards synced, {handover['bytes_moved']} bytes moved, "
          f"{handover['bytes_left']} still to move (of {handover['bytes_to_move']} listed so far)")
    if handover["shards"]:
        print(table(["shard", "from", "to", "state", "moved", "to move"],
                    [[str(s["shard"]), s["from"], s["to"], s["state"], str(s["bytes_moved"]),
                      str(s["bytes_to_move"])] for s in handover["shards"]]))
    for node_id, reason in sorted(handover["unreachable"].items()):
        print(f"{node_id}: no handover status: {reason}")


def _cmd_status(args: argparse.Namespace) -> int:
    status = committee_status(args.dir if args.dir is not None else cluster_dir())
    if args.json:
        print(json.dumps(status, indent=1))
    else:
        _print_status(status)
    complete = status["handover"] is None or status["handover"]["complete"]
    return 0 if complete and all(node["state"] == "up" for node in status["nodes"]) else 3


def _joining(entries: list[list[str]]) -> list[NodeInfo]:
    nodes = []
    for entry in entries:
        if len(entry) not in (3, 4):
            raise UserError(f"--join takes ID URL PUBLIC_KEY [TLS_CERT], not {' '.join(entry)!r}")
        node_id, url, key = entry[:3]
        try:
            cert = decode_certificate(entry[3]) if len(entry) == 4 else None
            nodes.append(NodeInfo(node_id, url.rstrip("/"), decode_public_key(key), (), cert))
        except ValueError as error:
            raise UserError(f"--join {node_id}: {error}") from error
    return nodes


def _cmd_plan(args: argparse.Namespace) -> int:
    from .epoch_change import fetch_chain

    current = fetch_chain(_start(args.committee)).current
    successor = rebalance(current, joining=_joining(args.join or []), retiring=args.retire or [])
    text = successor.dumps()
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    moves = shard_moves(current, successor)
    print(f"epoch {successor.epoch}: {len(moves)} of {current.n_shards} shards move"
          + (f" ({', '.join(f'{m.shard}: {m.source} -> {m.target}' for m in moves)})" if moves else "")
          + f"; propose it with `walrusfs committee propose FILE --committee {args.committee} --operator-key KEY`",
          file=sys.stderr)
    return 0


def _cmd_propose(args: argparse.Namespace) -> int:
    from .epoch_change import collect_signatures, fetch_chain, send_links

    chain = fetch_chain(_start(args.committee))
    successor = Committee.load(args.next)
    if successor.epoch != chain.current.epoch + 1:
        raise UserError(f"{args.next} is a committee for epoch {successor.epoch}, and the network is at epoch "
                        f"{chain.current.epoch}: propose a committee for epoch {chain.current.epoch + 1} "
                        f"(`walrusfs committee plan` writes one)")
    if not args.force:
        wait_for_landing(chain, timeout=args.timeout)
    previous = chain.current
    link = collect_signatures(previous, propose(previous, successor), load_key(args.operator_key),
                              timeout=args.timeout or 600.0)
    chain.extend(link)
    if args.chain_out:
        args.chain_out.write_text(chain.to_json())
    print(f"epoch {successor.epoch} is signed by nodes holding {len(link.signed_shards(previous))} of "
          f"{previous.n_shards} shards of epoch {previous.epoch}", file=sys.stderr)
    for node_id, reason in sorted(send_links(chain, [*previous.nodes, *successor.nodes]).items()):
        print(f"warning: {node_id} did not take the new committee ({reason}); it catches up from its peers",
              file=sys.stderr)
    wait_for_handover(previous, successor, timeout=args.timeout)
    gone = [node.id for node in previous.nodes if not successor.has_node(node.id)]
    print(f"epoch {successor.epoch}: the handover is complete"
          + (f"; {', '.join(gone)} hold nothing the network needs and can be shut down" if gone else ""))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    committee = commands.add_parser("committee", help="the committee of storage nodes: epoch, shards, handover")
    actions = committee.add_subparsers(dest="committee_command", metavar="ACTION", required=True)
    status = actions.add_parser(
        "status", help="the current epoch, each node's shards, and the handover into it (per shard: synced or "
        "not; bytes moved and still to move)",
        description="Walks the committee chain from DIR's committee to the current one (verifying every link) "
        "and asks every node of it for its handover. Exit 0: the handover is complete and every node answers; "
        "3 otherwise.")
    status.add_argument("dir", nargs="?", type=Path, default=None,
                        help=f"cluster directory, or a committee file (default {DEFAULT_CLUSTER_DIR_HELP})")
    status.add_argument("--json", action="store_true", help="print the status as one JSON object")
    status.set_defaults(func=_cmd_status)

    plan = actions.add_parser("plan", help="write the next committee: shards rebalanced over the nodes that "
                              "stay and join, moving as few as possible")
    plan.add_argument("--committee", type=Path, required=True,
                      help="a committee file (any epoch: the chain is walked to the current one) or cluster directory")
    plan.add_argument("--join", nargs="+", action="append", metavar="ARG",
                      help="a joining node: ID URL PUBLIC_KEY [TLS_CERT] (`walrusfs node keygen` and `walrusfs "
                      "node cert` print the key and the certificate); repeat for more")
    plan.add_argument("--retire", action="append", metavar="NODE_ID", help="a node to retire; repeat for more")
    plan.add_argument("-o", "--output", type=Path, help="write it here (default: stdout)")
    plan.set_defaults(func=_cmd_plan)

    proposal = actions.add_parser("propose", help="have the current nodes sign the next committee, hand it to "
                                  "every node and wait for the handover")
    proposal.add_argument("next", type=Path, help="the next committee's file (`walrusfs committee plan` writes one)")
    proposal.add_argument("--committee", type=Path, required=True,
                          help="a committee file you trust (any epoch) or cluster directory")
    proposal.add_argument("--operator-key", type=Path, required=True,
                          help="a key listed in the nodes' [epochs] proposers")
    proposal.add_argument("--chain-out", type=Path, help="also write the verified chain, ending at the new committee")
    proposal.add_argument("--timeout", type=float, default=None,
                          help="seconds to wait for signatures, then for the handover (default: as long as it takes)")
    proposal.add_argument("--force", action="store_true", help=FORCE_HELP)
    proposal.set_defaults(func=_cmd_propose)


__all__ = ["committee_status", "register"]
