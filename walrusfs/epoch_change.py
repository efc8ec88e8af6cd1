"""An operator's side of an epoch change, over the node API (docs/epochs.md): propose the next
committee, collect the nodes' signatures, hand the signed link to every node, and watch the handover.

Nothing here knows about cluster directories (walrusfs.cluster_epochs drives it for the bundled
network); a real deployment's tooling can use it with any committee and operator key.

- ``collect_signatures``: ``POST /v1/committee/proposals`` to every node of the current committee,
  signed (request format v2) by the operator key, until the valid signatures cover n - f shards. A
  node busy with the previous handover answers 409 ``handover_incomplete`` and is asked again.
- ``send_links``: ``POST /v1/committee/next`` to every node of both committees; a node further
  behind gets every link it lacks.
- ``fetch_chain``: walk forward from a trusted committee with the links nodes serve, verifying each.
- ``handover_progress``: per shard that moved into the current epoch, whether its new holder has
  it (``GET /v1/handover`` on each new holder).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .errors import UserError
from .protocol import routes
from .protocol.auth import sign_request
from .protocol.chain import CHAIN_VERSION, ChainError, CommitteeChain, CommitteeLink
from .protocol.committee import Committee, NodeInfo
from .protocol.handover import HandoverError, HandoverStatus
from .protocol.rebalance import shard_moves
from .protocol.tls import client_context

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0
RETRY_DELAY = 1.0  # seconds between asking a node again (down, or busy with the last handover)


class EpochChangeError(UserError):
    """An epoch change that cannot go on: too few signatures, a refusal, nodes that do not answer."""


def _client(node: NodeInfo, timeout: float = REQUEST_TIMEOUT) -> httpx.Client:
    return httpx.Client(verify=client_context(node.tls_cert), timeout=timeout)


def _reason(response: httpx.Response) -> str:
    """What a node said when it refused: its error message, else the status line."""
    try:
        body = response.json()
        return f"{body.get('error', response.status_code)}: {body.get('message', '')}".rstrip(": ")
    except ValueError:
        return f"HTTP {response.status_code} {response.text[:200]}"


# --- signatures ------------------------------------------------------------------------------------------


@dataclass
class SignatureRound:
    """Who signed a proposed link, who refused and why (for the error message when it falls short)."""

    link: CommitteeLink
    previous: Committee
    refusals: dict[str, str] = field(default_factory=dict)  # node id -> the node's reason, final
    waiting: dict[str, str] = field(default_factory=dict)  # node id -> why it is asked again
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def covered(self) -> set[int]:
        return self.link.signed_shards(self.previous)

    @property
    def quorum_reached(self) -> bool:
        return len(self.covered) >= self.previous.geometry.quorum

    def still_possible(self) -> bool:
        """Whether the nodes not refusing hold enough shards for n - f."""
        refused = {shard for node_id in self.refusals for shard in self.previous.shards_of(node_id)}
        return self.previous.n_shards - len(refused) >= self.previous.geometry.quorum

    def add(self, node_id: str, signature: bytes) -> bool:
        """Keep ``signature`` if it verifies (a node answering with garbage counts for nothing)."""
        with self.lock:
            candidate = self.link.with_signature(node_id, signature)
            if not set(self.previous.shards_of(node_id)) <= candidate.signed_shards(self.previous):
                self.refusals[node_id] = "answered with a signature that does not verify under its committee key"
                return False
            self.link = candidate
            self.waiting.pop(node_id, None)
            return True


def collect_signatures(previous: Committee, link: CommitteeLink, operator: Ed25519PrivateKey, *,
                       timeout: float = 600.0, on_change: Callable[[SignatureRound], None] | None = None,
                       clock: Callable[[], float] = time.monotonic) -> CommitteeLink:
    """``link`` (unsigned, its committee the successor of ``previous``) signed by nodes of
    ``previous`` holding at least n - f shards; EpochChangeError, naming each node's answer, when
    that cannot be reached or ``timeout`` seconds pass."""
    round_ = SignatureRound(link, previous)
    body = link.to_json().encode()
    done = threading.Event()
    deadline = clock() + timeout

    def ask(node: NodeInfo) -> None:
        with _client(node) as http:
            while not done.is_set() and clock() < deadline:
                outcome = _ask_once(http, node, body, operator, previous.epoch)
                if isinstance(outcome, bytes):
                    round_.add(node.id, outcome)
                    break
                final, reason = outcome
                with round_.lock:
                    (round_.refusals if final else round_.waiting)[node.id] = reason
                if final:
                    break
                if on_change:
                    on_change(round_)
                done.wait(RETRY_DELAY)
        if round_.quorum_reached or not round_.still_possible():
            done.set()
        if on_change:
            on_change(round_)

    with ThreadPoolExecutor(max_workers=min(32, len(previous.nodes)), thread_name_prefix="propose") as pool:
        for future in [pool.submit(ask, node) for node in previous.nodes]:
            future.result()
    if round_.quorum_reached:
        return round_.link
    answers = {**round_.waiting, **round_.refusals}
    listing = "; ".join(f"{node_id}: {reason}" for node_id, reason in sorted(answers.items()))
    raise EpochChangeError(
        f"the committee proposed for epoch {link.epoch} is signed by nodes holding {len(round_.covered)} shards of "
        f"epoch {previous.epoch}; it needs {previous.geometry.quorum} of {previous.n_shards} (n - f). "
        f"The nodes said: {listing or 'nothing'}. Nothing changed yet: bring the nodes that are down back up and run "
        f"the same command again (the nodes that signed sign this same committee again, never another)")


def _ask_once(http: httpx.Client, node: NodeInfo, body: bytes, operator: Ed25519PrivateKey,
              epoch: int) -> bytes | tuple[bool, str]:
    """The node's signature, or (final, reason): final when asking again cannot help. ``epoch``: the
    proposal's predecessor's."""
    target = routes.COMMITTEE_PROPOSALS
    headers = {"Authorization": sign_request(operator, "POST", target, node, body),
               "Content-Type": "application/json"}
    try:
        response = http.post(node.url + target, content=body, headers=headers)
    except httpx.HTTPError as error:
        return False, f"does not answer ({type(error).__name__}: {error})"
    if response.status_code == 200:
        try:
            return base64.b64decode(response.json()["signature"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
            return True, f"answered 200 without a signature: {response.text[:200]}"
    reason = _reason(response)
    # 409 handover_incomplete: the node is still taking in the shards of the last change; a node behind
    # the epoch of the proposal's predecessor catches up from its peers; 429/503: busy
    node_epoch = _epoch_of(response)
    behind = node_epoch is not None and node_epoch < epoch
    busy = response.status_code in (429, 503) or (response.status_code == 409 and (
        "handover_incomplete" in reason or ("proposal_does_not_follow" in reason and behind)))
    return not busy, reason


# --- handing the link to the nodes -------------------------------------------------------------------------


def send_links(chain: CommitteeChain, nodes: Iterable[NodeInfo], attempts: int = 5) -> dict[str, str]:
    """Give every node the links up to ``chain.current`` (``POST /v1/committee/next``). Returns, per
    node that did not take them, why; those catch up by themselves from their peers later."""
    unique = {node.id: node for node in nodes}
    failures: dict[str, str] = {}

    def send(node: NodeInfo) -> None:
        after = chain.current.epoch - 1
        reason = ""
        with _client(node) as http:
            for _ in range(attempts):
                body = json.dumps({"version": CHAIN_VERSION,
                                   "links": [link.to_dict() for link in chain.links_after(after)]}).encode()
                try:
                    response = http.post(node.url + routes.COMMITTEE_NEXT, content=body,
                                         headers={"Content-Type": "application/json"})
                except httpx.HTTPError as error:
                    reason = f"does not answer ({type(error).__name__})"
                    time.sleep(RETRY_DELAY)
                    continue
                if response.status_code == 200:
                    return
                reason = _reason(response)
                node_epoch = _epoch_of(response)
                if response.status_code == 409 and node_epoch is not None and node_epoch < after:
                    after = max(node_epoch, chain.anchor.epoch)  # further behind: send it every link it lacks
                    continue
                break
        failures[node.id] = reason

    with ThreadPoolExecutor(max_workers=min(32, max(1, len(unique))), thread_name_prefix="links") as pool:
        for future in [pool.submit(send, node) for node in unique.values()]:
            future.result()
    return failures


def _epoch_of(response: httpx.Response) -> int | None:
    text = response.headers.get(routes.EPOCH_HEADER)
    return int(text) if text is not None and text.isdigit() else None


def fetch_chain(chain: CommitteeChain, nodes: Sequence[NodeInfo] | None = None) -> CommitteeChain:
    """``chain`` extended with the verified links that the nodes (default: the current committee's)
    serve after its current epoch; links that do not verify are ignored (the longest verified wins)."""
    best = chain
    for node in nodes if nodes is not None else chain.current.nodes:
        try:
            with _client(node, timeout=5.0) as http:
                response = http.get(node.url + routes.COMMITTEE_CHAIN, params={"after": best.current.epoch})
            if response.status_code != 200:
                continue
            links = [CommitteeLink.from_dict(entry) for entry in response.json()["links"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError, ChainError) as error:
            log.debug("no committee links from %s: %s", node.id, error)
            continue
        try:
            longer = CommitteeChain(best.anchor, best.links)
            longer.extend_from(links)
        except ChainError as error:
            log.warning("node %s serves committee links that do not verify: %s", node.id, error)
            continue
        if longer.current.epoch > best.current.epoch:
            best = longer
    return best


# --- the handover ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardProgress:
    """One shard that changed holder at ``epoch``, as its new holder reports it.

    state: ``synced`` (every sliver there, verified), ``copying``, ``waiting`` (the new holder has
    not started on it: it has not adopted the epoch yet), ``unknown`` (the new holder does not answer).
    """

    shard: int
    source: str
    target: str
    epoch: int
    state: str
    released: bool = False
    bytes_moved: int = 0
    bytes_to_move: int = 0

    @property
    def synced(self) -> bool:
        return self.state == "synced"

    def to_dict(self) -> dict[str, Any]:
        return {"shard": self.shard, "from": self.source, "to": self.target, "state": self.state,
                "released": self.released, "bytes_moved": self.bytes_moved, "bytes_to_move": self.bytes_to_move}


@dataclass(frozen=True)
class HandoverProgress:
    """The handover into committee ``epoch`` from the one before it."""

    epoch: int
    shards: tuple[ShardProgress, ...]
    unreachable: dict[str, str]  # node id -> why its /v1/handover gave nothing

    @property
    def complete(self) -> bool:
        return all(shard.synced for shard in self.shards)

    @property
    def released(self) -> bool:
        return all(shard.released for shard in self.shards)

    @property
    def synced_count(self) -> int:
        return sum(shard.synced for shard in self.shards)

    @property
    def bytes_moved(self) -> int:
        return sum(shard.bytes_moved for shard in self.shards)

    @property
    def bytes_to_move(self) -> int:
        return sum(shard.bytes_to_move for shard in self.shards)

    @property
    def bytes_left(self) -> int:
        """Bytes of the shards not yet synced still to fetch, as far as their listings went so far."""
        return sum(max(0, s.bytes_to_move - s.bytes_moved) for s in self.shards if not s.synced)

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "complete": self.complete, "shards_moving": len(self.shards),
                "shards_synced": self.synced_count, "bytes_moved": self.bytes_moved,
                "bytes_to_move": self.bytes_to_move, "bytes_left": self.bytes_left,
                "shards": [shard.to_dict() for shard in self.shards], "unreachable": self.unreachable}


def _get_json(node: NodeInfo, route: str, timeout: float = 5.0) -> dict[str, Any]:
    try:
        with _client(node, timeout=timeout) as http:
            response = http.get(node.url + route)
    except httpx.HTTPError as error:
        raise EpochChangeError(f"{node.id} does not answer ({type(error).__name__}: {error})") from error
    if response.status_code != 200:
        raise EpochChangeError(f"{node.id} answered {route} with {_reason(response)}")
    try:
        answer = response.json()
        if not isinstance(answer, dict):
            raise ValueError("not a JSON object")
        return answer
    except ValueError as error:
        raise EpochChangeError(f"{node.id} answered {route} with no JSON object: {error}") from None


def node_handover(node: NodeInfo, timeout: float = 5.0) -> dict[str, Any]:
    """A node's ``GET /v1/handover`` (docs/epochs.md); EpochChangeError if it gives none."""
    status = _get_json(node, routes.HANDOVER, timeout)
    try:  # the format's one reader (HandoverStatus, v1) checks it; what comes back is its canonical form
        return HandoverStatus.from_json(json.dumps(status)).to_dict()
    except HandoverError as error:
        raise EpochChangeError(f"{node.id} answered {routes.HANDOVER} with {error}") from None


def handover_progress(previous: Committee, current: Committee,
                      statuses: dict[str, dict[str, Any] | EpochChangeError] | None = None) -> HandoverProgress:
    """Per shard that moved from ``previous`` to ``current``, what its new holder reports (``statuses``:
    node id -> its /v1/handover, fetched from the new holders when not given)."""
    moves = shard_moves(previous, current)
    targets = sorted({move.target for move in moves})
    if statuses is None:
        statuses = fetch_statuses([current.node(target) for target in targets])
    unreachable = {node_id: str(answer) for node_id, answer in statuses.items()
                   if isinstance(answer, EpochChangeError) and node_id in targets}
    shards = []
    for move in moves:
        status = statuses.get(move.target)
        if not isinstance(status, dict):
            shards.append(ShardProgress(move.shard, move.source, move.target, current.epoch, "unknown"))
            continue
        entry = _gained(status, move.shard, current.epoch)
        if entry is None:
            shards.append(ShardProgress(move.shard, move.source, move.target, current.epoch, "waiting"))
            continue
        shards.append(ShardProgress(move.shard, move.source, move.target, current.epoch, str(entry.get("state")),
                                    bool(entry.get("released")), int(entry.get("bytes_moved", 0)),
                                    int(entry.get("bytes_to_move", 0))))
    return HandoverProgress(current.epoch, tuple(shards), unreachable)


def _gained(status: dict[str, Any], shard: int, epoch: int) -> dict[str, Any] | None:
    for entry in status.get("gaining", []):
        if entry.get("shard") == shard and entry.get("epoch") == epoch:
            return entry
    return None


def fetch_statuses(nodes: Sequence[NodeInfo],
                   route: str = routes.HANDOVER) -> dict[str, dict[str, Any] | EpochChangeError]:
    """Every node's /v1/handover (or ``route``: /v1/health...), asked at once; an EpochChangeError in
    place of the ones that fail."""
    def one(node: NodeInfo) -> dict[str, Any] | EpochChangeError:
        try:
            return node_handover(node) if route == routes.HANDOVER else _get_json(node, route)
        except EpochChangeError as error:
            return error

    if not nodes:
        return {}
    with ThreadPoolExecutor(max_workers=min(32, len(nodes)), thread_name_prefix="handover") as pool:
        return dict(zip((node.id for node in nodes), pool.map(one, nodes), strict=True))


__all__ = ["EpochChangeError", "HandoverProgress", "ShardProgress", "collect_signatures", "fetch_chain",
           "fetch_statuses", "handover_progress", "node_handover", "send_links"]
