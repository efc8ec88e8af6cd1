"""Clients follow the committee chain (docs/epochs.md, "Reads and writes during a change").

A client trusts one committee: the file a filesystem was made with (its *anchor*). When a node
answers with a newer epoch (the ``walrusfs-epoch`` header) or ``421 shard_not_held``, the client asks
nodes for the links after the newest committee it has verified (``GET /v1/committee/chain?after=E``):
nodes of the newest committee known first, then those of older ones. Every answer is untrusted:
each link is checked against the committee before it (walrusfs.protocol.chain), so a node serving
garbage or a forged link is skipped and named in the log, and the chain still comes from honest nodes.

The verified chain is saved (``CommitteeChain.to_json``, format v1) where the caller says: a
filesystem keeps it in its state directory as ``committee-chain.json`` next to fs.toml. Loading it
re-verifies every link from the trusted committee file, so the file is never trusted more than that.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import trio

from ..durable import replace_durably
from ..protocol.certificates import Certificate, CertificateError
from ..protocol.chain import ChainError, CommitteeChain, CommitteeLink, committee_digest
from ..protocol.committee import Committee, NodeInfo
from .transport import NodeConnection, NodeError

log = logging.getLogger(__name__)

# The bundled cluster keeps its whole chain beside its committee file, which it rewrites at each change
# (walrusfs cluster add/retire): DIR/chain.json next to DIR/committee.toml.
CLUSTER_CHAIN = "chain.json"
ASK_TIMEOUT = 5.0  # seconds one node gets to serve its links before the next is asked
# After a refresh that did not reach the epoch a node claimed, the next one waits this long: a node
# that names a made-up epoch in its headers does not get every request followed by a round of asking.
RETRY_AFTER = 5.0

ChangeListener = Callable[[Committee, Committee], None]  # (previous current committee, new current one)


class EpochFollower:
    """A verified committee chain that grows as nodes announce newer epochs.

    ``connect(node)`` gives a connection to a node of any committee of the chain (the blob client's
    pools); ``save(chain)`` keeps the chain once it grew (None: kept in memory only).
    """

    def __init__(self, chain: CommitteeChain, connect: Callable[[NodeInfo], NodeConnection],
                 save: Callable[[CommitteeChain], None] | None = None,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.chain = chain
        self.connect = connect
        self.save = save
        self.clock = clock
        self.seen_epoch = chain.current.epoch  # the newest epoch a node named (not yet verified)
        self.seen_from = ""
        self.rejected: dict[str, str] = {}  # node id -> why its last chain answer was refused
        self._listeners: list[ChangeListener] = []
        self._lock = trio.Lock()
        self._not_before = -math.inf  # no refresh for an unproven claim before this time

    @property
    def current(self) -> Committee:
        return self.chain.current

    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def saw(self, node_id: str, epoch: int) -> None:
        """A node answered naming ``epoch`` as its current one."""
        if epoch > self.seen_epoch:
            self.seen_epoch = epoch
            self.seen_from = node_id

    @property
    def behind(self) -> bool:
        """A node named a newer epoch than the newest verified committee (and it is time to ask again)."""
        return self.seen_epoch > self.current.epoch and self.clock() >= self._not_before

    def committee_at(self, epoch: int) -> Committee:
        return self.chain.committee_at(epoch)

    def verify_certificate(self, certificate: Certificate) -> None:
        """CertificateError unless the certificate holds against the committee of its own epoch."""
        verify_in_chain(self.chain, certificate)

    def previous_holders(self, shard: int, epochs: int = 2) -> list[NodeInfo]:
        """Who held ``shard`` in the ``epochs`` committees before the current one, newest first, without
        the current holder: a new holder may not have the shard's slivers until its handover is done."""
        committees = self.chain.committees()
        current = self.current.node_for_shard(shard)
        holders: list[NodeInfo] = []
        for committee in reversed(committees[-1 - epochs:-1]):
            node = committee.node_for_shard(shard)
            if node.id != current.id and all(node.id != seen.id for seen in holders):
                holders.append(node)
        return holders

    async def refresh(self, reason: str = "") -> bool:
        """Fetch and verify the links after the current epoch; True if the chain grew. Never raises
        for what nodes answer: a node that cannot be reached, or serves links that do not verify, is
        skipped (and logged), and the chain stays as it was if no node helps."""
        async with self._lock:
            before = self.current
            asked: set[tuple[str, str]] = set()
            failures: dict[str, str] = {}
            claimed = self.seen_epoch
            while True:
                node = self._next_to_ask(asked)
                if node is None:
                    break
                asked.add((node.id, node.url))
                epoch = await self._ask(node, failures)
                if epoch is None:
                    continue
                claimed = max(claimed, epoch)
                if self.current.epoch >= claimed:
                    break  # an honest node at the newest epoch anyone named: nothing more to learn
            if self.current.epoch < claimed:
                self._not_before = self.clock() + RETRY_AFTER
                detail = "; ".join(f"{node}: {why}" for node, why in sorted(failures.items()))
                log.warning("the nodes name epoch %d but the committee chain could be verified only up to epoch "
                            "%d%s (%s); going on with it and asking again later", claimed, self.current.epoch,
                            f" ({reason})" if reason else "", detail or "no node served the links")
            if self.current.epoch == before.epoch:
                return False
            if self.save is not None:
                try:
                    self.save(self.chain)
                except OSError as error:  # the chain can be fetched again: losing this copy loses no data
                    log.warning("could not save the committee chain (epoch %d): %s", self.current.epoch, error)
            log.info("committee chain: epoch %d -> %d (verified%s)", before.epoch, self.current.epoch,
                     f"; {reason}" if reason else "")
            for listener in self._listeners:
                listener(before, self.current)
            return True

    def _next_to_ask(self, asked: set[tuple[str, str]]) -> NodeInfo | None:
        """A node not asked yet: of the newest committee first, then of older ones."""
        for committee in reversed(self.chain.committees()):
            for node in committee.nodes:
                if (node.id, node.url) not in asked:
                    return node
        return None

    async def _ask(self, node: NodeInfo, failures: dict[str, str]) -> int | None:
        """Extend the chain with what ``node`` serves; the epoch it names as current (None: no use)."""
        after = self.current.epoch
        answer: dict | None = None
        with trio.move_on_after(ASK_TIMEOUT):
            try:
                answer = await self.connect(node).get_chain(after)
            except NodeError as error:
                failures[node.id] = error.reason
                return None
        if answer is None:
            failures[node.id] = f"no answer within {ASK_TIMEOUT:.0f} s"
            return None
        try:
            if answer.get("version") != 1:
                raise ChainError(f"chain answer version {answer.get('version')!r} is not one this walrusfs reads")
            epoch = answer["epoch"]
            if not isinstance(epoch, int) or isinstance(epoch, bool):
                raise ChainError(f"'epoch' is {epoch!r}, not a number")
            links = [CommitteeLink.from_dict(entry) for entry in answer["links"]]
            self.chain.extend_from(links)  # each link verified before it is added; a bad one stops here
        except (ChainError, KeyError, TypeError) as error:
            why = str(error) if isinstance(error, ChainError) else f"not a chain answer: {error!r}"
            self.rejected[node.id] = why
            failures[node.id] = f"refused: {why}"
            log.warning("node %s (%s) served a committee chain that does not verify, skipping it and asking the "
                        "other nodes: %s. A node that keeps doing this is faulty or compromised: tell its operator",
                        node.id, node.url, why)
            return None
        return epoch


def verify_in_chain(chain: CommitteeChain, certificate: Certificate) -> None:
    """CertificateError unless ``certificate`` holds against the committee of its epoch in ``chain``
    (a blob certified in epoch 1 stays certified at epoch 5)."""
    try:
        committee = chain.committee_at(certificate.epoch)
    except ChainError as error:
        raise CertificateError(f"certificate of {certificate.blob_id}: {error}") from None
    certificate.verify(committee)


def certificate_from_confirmations(chain: CommitteeChain, certificate_of: Callable[[int], Certificate],
                                   epochs: Iterable[int]) -> Certificate | None:
    """The first certificate, built per epoch by ``certificate_of`` (confirmations of one epoch each,
    newest epoch first), that verifies; None if none does."""
    for epoch in sorted(set(epochs), reverse=True):
        certificate = certificate_of(epoch)
        try:
            verify_in_chain(chain, certificate)
        except CertificateError:
            continue
        return certificate
    return None


def load_chain(anchor: Committee, path: Path | None, beside: Path | None = None) -> CommitteeChain:
    """The chain to start from, for a holder of the committee file ``anchor``:

    - the chain saved at ``path``, re-verified link by link, if it contains ``anchor``, or if it ends
      before ``anchor``'s epoch (the committee file was since replaced by a newer committee, as the
      bundled cluster does at each change: the saved chain was verified from the file's earlier
      content, and walking it forward reaches the new one);
    - else a chain kept ``beside`` the committee file (the bundled cluster's DIR/chain.json), if it
      verifies and contains ``anchor``: it reaches back to the epochs before the file's, so older
      certificates stay checkable;
    - else ``anchor`` alone.

    A saved chain that does not verify, or holds another committee at ``anchor``'s epoch, is set aside
    (``.rejected``) with a warning: the nodes serve the chain again."""
    if path is not None and path.exists():
        try:
            saved = CommitteeChain.from_json(path.read_bytes(), source=str(path))
        except (OSError, ChainError) as error:
            _set_aside(path, str(error))
        else:
            if _contains(saved, anchor) or saved.current.epoch < anchor.epoch:
                return saved
            _set_aside(path, f"it holds another committee of epoch {anchor.epoch} than the committee file "
                             "this filesystem trusts")
    if beside is not None and beside.exists():
        try:
            kept = CommitteeChain.from_json(beside.read_bytes(), source=str(beside))
        except (OSError, ChainError) as error:
            log.warning("ignoring the committee chain %s beside the committee file: %s", beside, error)
        else:
            if _contains(kept, anchor):
                return kept
            log.warning("ignoring the committee chain %s: it does not contain the committee of epoch %d in the "
                        "committee file beside it", beside, anchor.epoch)
    return CommitteeChain(anchor)


def _contains(chain: CommitteeChain, committee: Committee) -> bool:
    try:
        return committee_digest(chain.committee_at(committee.epoch)) == committee_digest(committee)
    except ChainError:
        return False


def _set_aside(path: Path, why: str) -> None:
    log.warning("ignoring the saved committee chain %s: %s; it is fetched from the nodes again", path, why)
    try:
        os.replace(path, path.with_name(path.name + ".rejected"))
    except OSError as error:
        log.warning("could not set %s aside: %s", path, error)


def chain_saver(path: Path) -> Callable[[CommitteeChain], None]:
    """Save a chain durably at ``path``: a crash leaves the old file or the new one."""
    def save(chain: CommitteeChain) -> None:
        replace_durably(path, chain.to_json().encode(), mode=0o644)

    return save


__all__ = ["CLUSTER_CHAIN", "EpochFollower", "certificate_from_confirmations", "chain_saver",
           "load_chain", "verify_in_chain"]
