"""Epoch changes of the bundled network: ``walrusfs cluster add DIR [--nodes K]`` and ``walrusfs cluster
retire DIR NODE_ID...`` (docs/epochs.md, "Operators"; ``walrusfs committee ...`` is walrusfs.committee_cli).

Besides walrusfs.cluster's files, a cluster directory holds::

    operator.key     the operator's key: every node config lists its public key as [epochs] proposers
    chain.json       the committee chain (walrusfs.protocol.chain, format v1) from the first committee to
                     the current one; committee.toml is always its current committee
    first-committee.toml  the chain's first committee, which nodes added later are configured with
    proposal.json    a change under way: {"version": 1, "action": "add"|"retire"|"change", "count": K, "nodes":
                     [ids retiring], "link": <the unsigned link>}; present from before the first node is
                     asked to sign until the signed link is saved

A change: start the new nodes (in standby: their config's committee, the first, does not name them),
propose the rebalanced committee (walrusfs.protocol.rebalance) to the current nodes, collect signatures covering
n - f shards, save the chain and committee.toml, give every node the link, then wait until every
shard that moved is synced on its new holder, with a progress bar. Interrupted anywhere, the same
command finishes it: the proposal is kept, because nodes that signed it sign no other for that epoch.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .cluster import (
    COMMITTEE_FILE,
    DEFAULT_CLUSTER_DIR_HELP,
    OPERATOR_KEY_FILE,
    ClusterNode,
    load_cluster,
    start_nodes,
    stop_nodes,
    write_node_config,
)
from .durable import replace_durably
from .errors import UserError
from .keys import generate_key, load_key, public_bytes, public_key_text, write_key
from .paths import cluster_dir
from .protocol.chain import ChainError, CommitteeChain, CommitteeLink, committee_digest, propose
from .protocol.committee import Committee, NodeInfo
from .protocol.rebalance import rebalance, shard_moves
from .protocol.tls import node_certificate
from .tables import table

if TYPE_CHECKING:
    from .epoch_change import HandoverProgress

CHAIN_FILE = "chain.json"
FIRST_COMMITTEE_FILE = "first-committee.toml"
PROPOSAL_FILE = "proposal.json"
PROPOSAL_VERSION = 1
POLL_INTERVAL = 0.5  # seconds between two looks at the handover
RELEASE_GRACE = 30.0  # seconds to wait, once every shard is synced, for the old holders to let go of theirs
# How long to keep asking for signatures when no --timeout is given: nodes still taking in the last
# change's shards answer "not yet" (they sign only once it has landed), and a node may be restarting.
SIGNATURE_TIMEOUT = 600.0


# --- the chain and the pending change in the cluster directory ------------------------------------------------


def load_chain(root: Path, committee: Committee | None = None) -> CommitteeChain:
    """DIR/chain.json re-verified, or a chain of committee.toml alone (a cluster that never changed)."""
    root = Path(root)
    committee = committee or Committee.load(root / COMMITTEE_FILE)
    path = root / CHAIN_FILE
    if not path.exists():
        return CommitteeChain(committee)
    chain = CommitteeChain.from_json(path.read_bytes(), source=str(path))
    if committee.epoch > chain.current.epoch or \
            committee_digest(chain.committee_at(committee.epoch)) != committee_digest(committee):
        raise ChainError(f"{root / COMMITTEE_FILE} (epoch {committee.epoch}) is not a committee of {path} (epochs "
                         f"{chain.anchor.epoch} to {chain.current.epoch}): one of them was edited or copied from "
                         f"another network; restore it")
    return chain


def save_chain(root: Path, chain: CommitteeChain) -> None:
    """chain.json first, then committee.toml: a crash between them leaves a chain ahead of the file,
    which load_chain accepts, never a committee file that no verified link backs."""
    replace_durably(Path(root) / CHAIN_FILE, chain.to_json().encode(), mode=0o644)
    replace_durably(Path(root) / COMMITTEE_FILE, chain.current.dumps().encode(), mode=0o644)


@dataclass(frozen=True)
class Change:
    """What an operator asked for: ``add`` (``count`` new nodes), ``retire`` (``node_ids``), or
    ``change``: both in one epoch change (``cluster change --add K --retire ID...``), so that the
    shards of the nodes leaving go straight to the nodes joining instead of moving twice."""

    action: str
    count: int = 0
    node_ids: tuple[str, ...] = ()

    def describe(self) -> str:
        adding = f"adding {self.count} node{'s' if self.count != 1 else ''}"
        retiring = f"retiring {', '.join(self.node_ids)}"
        if self.action == "add":
            return adding
        if self.action == "retire":
            return retiring
        return " and ".join(part for part, wanted in ((adding, self.count), (retiring, self.node_ids)) if wanted)


@dataclass(frozen=True)
class Pending:
    """DIR/proposal.json: a proposed committee, kept until its signed link is saved."""

    change: Change
    link: CommitteeLink  # unsigned

    def save(self, root: Path) -> None:
        data = {"version": PROPOSAL_VERSION, "action": self.change.action, "count": self.change.count,
                "nodes": list(self.change.node_ids), "link": self.link.to_dict()}
        replace_durably(Path(root) / PROPOSAL_FILE, json.dumps(data, indent=1).encode(), mode=0o644)

    @classmethod
    def load(cls, root: Path) -> Pending | None:
        path = Path(root) / PROPOSAL_FILE
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_bytes())
            if data["version"] != PROPOSAL_VERSION:
                raise ValueError(f"version {data['version']} (this walrusfs reads {PROPOSAL_VERSION})")
            change = Change(str(data["action"]), int(data["count"]), tuple(map(str, data["nodes"])))
            return cls(change, CommitteeLink.from_dict(data["link"]))
        except (OSError, ValueError, KeyError, TypeError, ChainError) as error:
            raise UserError(f"cannot read {path}, the committee change under way: {error}. Nodes that signed it "
                            f"sign no other committee for its epoch: restore the file, or if no node signed "
                            f"anything yet, delete it and run the command again") from error


def operator_key(root: Path) -> Ed25519PrivateKey:
    path = Path(root) / OPERATOR_KEY_FILE
    if not path.exists():
        raise UserError(
            f"{path} does not exist: this cluster was made before epoch changes, and its nodes accept proposals "
            f"from no key. Create one with `walrusfs node keygen {path}`, add the public key it prints to every "
            f"node's config.toml as `[epochs]` `proposers = [\"KEY\"]`, restart the nodes (`walrusfs cluster down "
            f"{root}`, `walrusfs cluster up {root}`), then run this again")
    return load_key(path)


# --- new nodes ---------------------------------------------------------------------------------------------


def create_nodes(root: Path, chain: CommitteeChain, count: int, operator: str) -> list[NodeInfo]:
    """``count`` node directories (key, config, data) with ids and ports after every one any committee
    of the chain used (a retired node's id is never given to another key); they hold no shards yet.

    Their config names the chain's first committee (DIR/first-committee.toml), not the current one:
    a node checks a certificate against the committee of its epoch, and knows only the epochs from
    its chain's anchor on, which is its config's committee at its first start. That committee does
    not name them either, so they start in standby; the links up to now are sent to them."""
    if count < 1:
        raise UserError(f"--nodes must be at least 1, not {count}")
    root = Path(root)
    first_committee = root / FIRST_COMMITTEE_FILE
    if not first_committee.exists():
        replace_durably(first_committee, chain.anchor.dumps().encode(), mode=0o644)
    current = chain.current
    used = {node.id for committee in chain.committees() for node in committee.nodes}
    used |= {path.name for path in root.glob("node-*")}
    first = 1 + max((int(name[5:]) for name in used if name[5:].isdigit()), default=-1)
    ports = [_port(node.url) for committee in chain.committees() for node in committee.nodes]
    tls = any(node.tls_cert for node in current.nodes)
    infos = []
    port = max(ports) + 1
    for index in range(first, first + count):
        port = _free_port_from(port)
        directory = root / f"node-{index}"
        (directory / "data").mkdir(parents=True)
        key = generate_key()
        write_key(directory / "node.key", key)
        write_node_config(directory, f"node-{index}", port, operator, FIRST_COMMITTEE_FILE)
        infos.append(NodeInfo(f"node-{index}", f"{'https' if tls else 'http'}://127.0.0.1:{port}", public_bytes(key),
                              (), node_certificate(key) if tls else None))
        port += 1
    return infos


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _free_port_from(port: int) -> int:
    """``port``, or the next one up that nothing listens on now."""
    for candidate in range(port, min(port + 1000, 65536)):
        if _bindable(candidate):
            return candidate
    raise UserError(f"no free port for a new node from {port} up: stop what listens there")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the node binds: TIME_WAIT is no obstacle
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# --- one change, start to finish ------------------------------------------------------------------------------


def change_committee(root: Path, change: Change, *, timeout: float | None = None, stream: Any = None,
                     force: bool = False) -> tuple[Committee, Committee]:
    """Carry out ``change`` on the cluster at ``root`` (or first finish the one an earlier run left
    under way); returns (previous, current committee) once the handover is complete. A new change
    waits for the handover into the current epoch first (``wait_for_landing``), unless ``force``."""
    from .epoch_change import collect_signatures, fetch_chain, send_links

    stream = stream if stream is not None else sys.stderr
    root = Path(root).expanduser().resolve()
    committee, members = load_cluster(root)
    operator = operator_key(root)
    leaving = set(change.node_ids)
    start_nodes([member for member in members if member.info.id not in leaving])
    _start_if_possible([member for member in members if member.info.id in leaving], stream)
    chain = load_chain(root, committee)
    longer = fetch_chain(chain)
    if longer.current.epoch > chain.current.epoch:  # an earlier run got the link out, then stopped
        save_chain(root, longer)
        chain = longer
    step = _next_step(root, chain, change, stream)
    if step is None:
        if not force:
            wait_for_landing(chain, timeout=timeout, stream=stream)
        pending = _plan(root, chain, change, public_key_text(operator))
        step = _Step(pending.change, chain.current, pending.link.committee, pending)
    previous, successor = step.previous, step.successor
    if step.pending is not None:  # not signed yet
        joining = [ClusterNode(node, root / node.id) for node in successor.nodes if not previous.has_node(node.id)]
        start_nodes(joining)
        try:
            link = collect_signatures(previous, step.pending.link, operator, timeout=timeout or SIGNATURE_TIMEOUT)
        except UserError:
            stop_nodes(joining)  # they hold nothing yet; the same command starts them again
            raise
        chain.extend(link)
        save_chain(root, chain)
        (root / PROPOSAL_FILE).unlink(missing_ok=True)
        print(f"epoch {successor.epoch}: the committee is signed by nodes holding {len(link.signed_shards(previous))} "
              f"of {previous.n_shards} shards of epoch {previous.epoch}", file=stream)
    for node_id, reason in sorted(send_links(chain, [*previous.nodes, *successor.nodes]).items()):
        print(f"warning: {node_id} did not take the new committee ({reason}); it catches up from its peers",
              file=stream)
    wait_for_handover(previous, successor, timeout=timeout, stream=stream)
    # Every node that left, at this change or at one an earlier run did not see to its end: the
    # network no longer needs them, and `cluster down` (which reads committee.toml) would not stop them.
    retired = {node.id: node for old in chain.committees() for node in old.nodes if not successor.has_node(node.id)}
    stop_nodes([ClusterNode(node, root / node.id) for node in retired.values() if (root / node.id).exists()])
    if step.change != change:
        raise UserError(f"finished the change an earlier run had started ({step.change.describe()}); the one "
                        f"asked for now ({change.describe()}) was not started: run the command again")
    return previous, successor


@dataclass(frozen=True)
class _Step:
    """The change to carry out: ``pending`` is its unsigned proposal, None once its link is in the chain."""

    change: Change
    previous: Committee
    successor: Committee
    pending: Pending | None


def _next_step(root: Path, chain: CommitteeChain, change: Change, stream: Any) -> _Step | None:
    """A change an earlier run left unfinished (its proposal not yet signed, or its handover not seen
    to its end), else None: plan ``change`` afresh."""
    current = chain.current
    pending = Pending.load(root)
    if pending is not None:
        link = pending.link
        if link.epoch == current.epoch + 1 and link.previous_digest == committee_digest(current):
            print(f"finishing the committee change an earlier run started ({pending.change.describe()}, epoch "
                  f"{link.epoch})", file=stream)
            return _Step(pending.change, current, link.committee, pending)
        (root / PROPOSAL_FILE).unlink()
        if link.epoch <= current.epoch and \
                committee_digest(chain.committee_at(link.epoch)) == committee_digest(link.committee):
            # adopted: an earlier run sent the link and stopped before it saved the chain
            print(f"finishing the committee change an earlier run started ({pending.change.describe()}, epoch "
                  f"{link.epoch}): waiting for its handover", file=stream)
            return _Step(pending.change, chain.committee_at(link.epoch - 1), link.committee, None)
        unused = [node.id for node in link.committee.nodes if not any(c.has_node(node.id) for c in chain.committees())]
        print(f"the change an earlier run proposed ({pending.change.describe()}) was overtaken by another committee "
              f"of epoch {link.epoch}; dropped" + (f" (directories never used: {', '.join(unused)})" if unused else ""),
              file=stream)
    if change.action in ("retire", "change") and current.epoch > chain.anchor.epoch and change.node_ids and \
            all(not current.has_node(i) and chain.committee_at(current.epoch - 1).has_node(i) for i in change.node_ids):
        print(f"{', '.join(change.node_ids)} left the committee at epoch {current.epoch}; waiting for that handover",
              file=stream)
        return _Step(change, chain.committee_at(current.epoch - 1), current, None)
    return None


def _start_if_possible(nodes: list[ClusterNode], stream: Any) -> None:
    """Start nodes that are about to retire, if they can be: their shards are handed over best from
    them, but a node that is gone for good is rebuilt from the others' recovery symbols instead."""
    for node in nodes:
        try:
            start_nodes([node])
        except (UserError, OSError) as error:
            print(f"warning: {node.info.id} (retiring) does not start; its shards are rebuilt from the other nodes: "
                  f"{str(error).splitlines()[0]}", file=stream)


def _plan(root: Path, chain: CommitteeChain, change: Change, operator: str) -> Pending:
    current = chain.current
    if change.action == "retire" or not change.count:
        successor = rebalance(current, retiring=change.node_ids)
    else:
        # Checked before any directory is made: the new nodes must fit (a node holds at least one shard).
        rebalance(current, joining=[NodeInfo(f"new-{i}", "http://127.0.0.1:1", b"", ()) for i in range(change.count)],
                  retiring=change.node_ids)
        successor = rebalance(current, joining=create_nodes(root, chain, change.count, operator),
                              retiring=change.node_ids)
    pending = Pending(change, propose(current, successor))
    pending.save(root)  # before the first signature: the nodes that sign will sign only this committee
    return pending


def wait_for_landing(chain: CommitteeChain, *, timeout: float | None = None, stream: Any = None) -> None:
    """A new change waits for the handover into the current epoch (is queued behind it): a shard that
    moved again before it landed on its new holder would be listed from a node that does not have it
    yet, and rebuilt from recovery symbols at a cost, while the margin of f faulty shards is spent.
    Raises EpochChangeError, saying so and what to do, if it is not complete within ``timeout``."""
    from .epoch_change import EpochChangeError, handover_progress

    stream = stream if stream is not None else sys.stderr
    current = chain.current
    if current.epoch <= chain.anchor.epoch:
        return
    previous = chain.committee_at(current.epoch - 1)
    progress = handover_progress(previous, current)
    if progress.complete:
        return
    print(f"the handover into epoch {current.epoch} is not complete ({progress.synced_count} of "
          f"{len(progress.shards)} shards synced): waiting for it before proposing epoch {current.epoch + 1}, so that "
          f"no shard moves again before it has landed", file=stream)
    try:
        wait_for_handover(previous, current, timeout=timeout, stream=stream)
    except EpochChangeError as error:
        raise EpochChangeError(
            f"epoch {current.epoch + 1} was not proposed: {error}. A second change before the first has landed "
            f"would move shards that are not on their new holder yet; run the command again once `walrusfs "
            f"committee status` shows the handover into epoch {current.epoch} complete (or, if a new holder is "
            f"gone for good, with --force: its shards are then rebuilt from recovery symbols)") from None


def wait_for_handover(previous: Committee, current: Committee, *, timeout: float | None = None,
                      stream: Any = None, clock: Any = time.monotonic) -> HandoverProgress:
    """Poll the new holders until every shard that moved is synced (and, for a while longer, released
    by its old holder), drawing a progress bar: bytes moved, shards synced, rate."""
    from .epoch_change import EpochChangeError, handover_progress
    from .progress import Progress

    started = clock()
    synced_at: float | None = None
    with Progress(f"handover into epoch {current.epoch}", None, unit="B", stream=stream) as bar:
        while True:
            progress = handover_progress(previous, current)
            total = max(progress.bytes_to_move, progress.bytes_moved)
            bar.update(progress.bytes_moved, total=total or None,
                       note=f"{progress.synced_count}/{len(progress.shards)} shards synced")
            if progress.complete:
                synced_at = clock() if synced_at is None else synced_at
                if progress.released or clock() - synced_at > RELEASE_GRACE:
                    return progress
            elif timeout is not None and clock() - started > timeout:
                raise EpochChangeError(
                    f"the handover into epoch {current.epoch} is not complete after {timeout:.0f} s "
                    f"({progress.synced_count} of {len(progress.shards)} shards synced); it goes on by itself: "
                    f"watch it with `walrusfs committee status`")
            time.sleep(POLL_INTERVAL)


# --- the command line --------------------------------------------------------------------------------------


def _dir(args: argparse.Namespace) -> Path:
    return args.dir if args.dir is not None else cluster_dir()


def _report(previous: Committee, current: Committee) -> None:
    moves = shard_moves(previous, current)
    print(f"epoch {current.epoch}: {len(moves)} shard{'s' if len(moves) != 1 else ''} moved and synced")
    print(table(["node", "url", "shards"], [[n.id, n.url, ",".join(map(str, n.shards))] for n in current.nodes]))


def _cmd_add(args: argparse.Namespace) -> int:
    previous, current = change_committee(_dir(args), Change("add", count=args.nodes), timeout=args.timeout,
                                         force=args.force)
    _report(previous, current)
    added = [node.id for node in current.nodes if not previous.has_node(node.id)]
    print(f"added {', '.join(added)}")
    return 0


def _cmd_retire(args: argparse.Namespace) -> int:
    root = Path(_dir(args)).expanduser().resolve()
    previous, current = change_committee(root, Change("retire", node_ids=tuple(args.node_ids)), timeout=args.timeout,
                                         force=args.force)
    _report(previous, current)
    gone = [node.id for node in previous.nodes if not current.has_node(node.id)]
    print(f"retired and stopped {', '.join(gone)}: the network holds everything they held elsewhere now; "
          f"their directories can be deleted: rm -r {' '.join(str(root / node_id) for node_id in gone)}")
    return 0


def _cmd_change(args: argparse.Namespace) -> int:
    root = Path(_dir(args)).expanduser().resolve()
    retiring = tuple(args.retire or ())
    if args.add < 0 or (args.add == 0 and not retiring):
        raise UserError("`cluster change` needs --add K (K >= 1) or --retire NODE_ID, or both")
    previous, current = change_committee(root, Change("change", count=args.add, node_ids=retiring),
                                         timeout=args.timeout, force=args.force)
    _report(previous, current)
    added = [node.id for node in current.nodes if not previous.has_node(node.id)]
    gone = [node.id for node in previous.nodes if not current.has_node(node.id)]
    if added:
        print(f"added {', '.join(added)}")
    if gone:
        print(f"retired and stopped {', '.join(gone)}: their directories can be deleted: "
              f"rm -r {' '.join(str(root / node_id) for node_id in gone)}")
    return 0


FORCE_HELP = ("propose even if the handover into the current epoch is not complete (only for a new holder that "
              "is gone for good: the shards it did not get are rebuilt from recovery symbols by their next holder)")


def register_cluster_actions(actions: argparse._SubParsersAction) -> None:
    """``cluster add`` and ``cluster retire``, registered by walrusfs.cluster_cli under ``cluster``."""
    timeout_help = ("seconds to wait for the nodes' signatures, and then for the handover, before giving up "
                    "(the handover goes on regardless; default: as long as it takes)")
    add = actions.add_parser("add", help="create, start and admit new nodes: the next epoch's committee "
                             "spreads the shards over them; returns when the handover is complete")
    add.add_argument("dir", nargs="?", type=Path, default=None,
                     help=f"cluster directory (default {DEFAULT_CLUSTER_DIR_HELP})")
    add.add_argument("--nodes", type=int, default=1, help="how many nodes to add (default 1)")
    add.add_argument("--timeout", type=float, default=None, help=timeout_help)
    add.add_argument("--force", action="store_true", help=FORCE_HELP)
    add.set_defaults(func=_cmd_add)
    retire = actions.add_parser("retire", help="move every shard off the named nodes into the next epoch's "
                                "committee, then stop them; their directories can be deleted afterwards")
    retire.add_argument("dir", type=Path, help="cluster directory")
    retire.add_argument("node_ids", nargs="+", metavar="NODE_ID", help="the nodes to retire (e.g. node-3)")
    retire.add_argument("--timeout", type=float, default=None, help=timeout_help)
    retire.add_argument("--force", action="store_true", help=FORCE_HELP)
    retire.set_defaults(func=_cmd_retire)
    change = actions.add_parser("change", help="add nodes and retire others in ONE epoch change: the leaving "
                                "nodes' shards go straight to the new ones; returns when the handover is complete")
    change.add_argument("dir", nargs="?", type=Path, default=None,
                        help=f"cluster directory (default {DEFAULT_CLUSTER_DIR_HELP})")
    change.add_argument("--add", type=int, default=0, metavar="K", help="how many nodes to add (default 0)")
    change.add_argument("--retire", action="append", metavar="NODE_ID",
                        help="a node to retire (e.g. node-3); repeat for more")
    change.add_argument("--timeout", type=float, default=None, help=timeout_help)
    change.add_argument("--force", action="store_true", help=FORCE_HELP)
    change.set_defaults(func=_cmd_change)


__all__ = ["CHAIN_FILE", "PROPOSAL_FILE", "Change", "change_committee", "create_nodes", "load_chain",
           "register_cluster_actions", "save_chain", "wait_for_handover", "wait_for_landing"]
