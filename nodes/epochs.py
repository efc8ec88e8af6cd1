"""The node's committee chain (docs/epochs.md): kept in DATA/epochs/, extended only by verified links,
followed from peers, and what the node signs when an operator proposes the next committee.

Files (each replaced durably: fsynced, renamed, directory fsynced):

- ``DATA/epochs/chain.json``: the chain (``CommitteeChain.to_json``, format v1). Its anchor is the
  committee of the node's config at its first start; every later committee came through a link
  that verified against the one before. Loading re-verifies every link.
- ``DATA/epochs/signed.json``: ``{"version": 1, "signed": {"<epoch>": "<hex digest>"}}``, the one
  successor the node signed per epoch, written before the signature leaves the node: signing two
  successors of one epoch could let both reach n - f and fork the chain.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from walrusfs.durable import replace_durably
from walrusfs.errors import UserError
from walrusfs.protocol import routes
from walrusfs.protocol.chain import ChainError, CommitteeChain, CommitteeLink, committee_digest, sign_link
from walrusfs.protocol.committee import Committee, NodeInfo
from walrusfs.protocol.tls import node_certificate
from walrusfs.protocol.transport import node_mounts, tls_context

from .core import NodeCore, shards_in
from .http import HTTPError
from .ratelimit import jittered

log = logging.getLogger("nodes.epochs")

EPOCHS_DIR = "epochs"
CHAIN_FILE = "chain.json"
SIGNED_FILE = "signed.json"
SIGNED_VERSION = 1
FETCH_TIMEOUT = 5.0  # seconds for one peer's chain (start-up and following)
CHASE_INTERVAL = 5.0  # seconds between two fetches prompted by one peer naming a newer epoch


def epochs_dir(data_dir: Path) -> Path:
    return Path(data_dir) / EPOCHS_DIR


def save_chain(data_dir: Path, chain: CommitteeChain) -> None:
    directory = epochs_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    replace_durably(directory / CHAIN_FILE, chain.to_json().encode(), mode=0o644)


# --- the chain at start ------------------------------------------------------------------------------


def open_chain(data_dir: Path, configured: Committee, committee_path: Path, node_id: str,
               public_key: bytes) -> CommitteeChain:
    """The node's chain: created from the config's committee at the first start, else loaded (and
    re-verified) from DATA/epochs/chain.json and checked against the config's committee. UserError,
    saying what to do, when they disagree."""
    path = epochs_dir(data_dir) / CHAIN_FILE
    if not path.exists():
        chain = CommitteeChain(configured)
        save_chain(data_dir, chain)
        log.info("committee chain anchored at epoch %d (%s), in %s", configured.epoch, committee_path, path)
    else:
        try:
            chain = CommitteeChain.from_json(path.read_bytes(), source=str(path))
        except OSError as error:
            raise UserError(f"cannot read the committee chain {path}: {error.strerror}") from error
        except ChainError as error:
            raise UserError(f"{error}; this node will not start on a chain it cannot verify: restore "
                            f"{path} from a backup (or move it away to anchor the chain at {committee_path} "
                            f"again)") from error
        if configured.epoch > chain.current.epoch:
            chain = _catch_up(data_dir, chain, configured, committee_path)
        _check_configured(chain, configured, committee_path, path)
    _check_key(chain, node_id, public_key)
    return chain


def _check_configured(chain: CommitteeChain, configured: Committee, committee_path: Path, path: Path) -> None:
    """An older committee file is normal (the chain moved on); one that contradicts the chain is not."""
    if configured.epoch < chain.anchor.epoch:
        return
    if committee_digest(chain.committee_at(configured.epoch)) != committee_digest(configured):
        raise UserError(f"committee file {committee_path} (epoch {configured.epoch}) differs from the committee "
                        f"of epoch {configured.epoch} in this node's verified chain {path}: the file was edited "
                        f"or comes from another network; restore it (the chain is what the node trusts)")


def _check_key(chain: CommitteeChain, node_id: str, public_key: bytes) -> None:
    current = chain.current
    if current.has_node(node_id) and current.node(node_id).public_key != public_key:
        raise UserError(f"the committee of epoch {current.epoch} lists {node_id!r} with another public key than "
                        f"this node's signing key: start it with the key that committee names")


def _catch_up(data_dir: Path, chain: CommitteeChain, configured: Committee, committee_path: Path) -> CommitteeChain:
    """The config names a newer committee than the chain: take the links from peers, or refuse."""
    nodes = _unique_nodes([*configured.nodes, *chain.current.nodes])
    try:
        longer = asyncio.run(_fetch_extension(chain, nodes, configured.epoch))
    except Exception as error:  # no event loop trouble may hide the real message below
        log.warning("could not fetch committee links: %s", error)
        longer = chain
    if longer.current.epoch < configured.epoch:
        raise UserError(f"committee file {committee_path} is for epoch {configured.epoch}, but this node's chain "
                        f"({epochs_dir(data_dir) / CHAIN_FILE}) ends at epoch {chain.current.epoch} and no node "
                        f"served verified links up to epoch {configured.epoch}: the node trusts committees only "
                        f"through signed links. Start it with the committee file it had (epoch "
                        f"{chain.current.epoch}) and send it the links (POST {routes.COMMITTEE_NEXT}), or bring "
                        f"up a node that has them")
    save_chain(data_dir, longer)
    log.info("caught up from epoch %d to %d with links from peers", chain.current.epoch, longer.current.epoch)
    return longer


async def _fetch_extension(chain: CommitteeChain, nodes: Sequence[NodeInfo], epoch: int) -> CommitteeChain:
    best = chain
    for node in nodes:
        if best.current.epoch >= epoch:
            break
        links = await fetch_links(node, best.current.epoch)
        if links:
            try:
                best = _extended(best, _after(links, best.current.epoch))
            except ChainError as error:
                log.warning("node %s served committee links that do not verify: %s", node.id, error)
    return best


def _extended(chain: CommitteeChain, links: Iterable[CommitteeLink]) -> CommitteeChain:
    longer = chain.copy()
    for link in links:
        longer.extend(link)
    return longer


def _after(links: Iterable[CommitteeLink], epoch: int) -> list[CommitteeLink]:
    return sorted((link for link in links if link.epoch > epoch), key=lambda link: link.epoch)


def _unique_nodes(nodes: Iterable[NodeInfo]) -> list[NodeInfo]:
    seen: dict[str, NodeInfo] = {}
    for node in nodes:
        seen.setdefault(node.id, node)
    return list(seen.values())


async def fetch_links(node: NodeInfo, after: int) -> list[CommitteeLink]:
    """The links a node serves after ``after`` (unverified: the caller verifies); [] if it cannot."""
    try:
        async with httpx.AsyncClient(verify=tls_context(), timeout=FETCH_TIMEOUT, mounts=node_mounts([node])) as http:
            response = await http.get(node.url + routes.COMMITTEE_CHAIN, params={"after": after})
        if response.status_code != 200:
            return []
        return [CommitteeLink.from_dict(entry) for entry in response.json()["links"]]
    except (httpx.HTTPError, ValueError, KeyError, TypeError, ChainError) as error:
        log.debug("no committee links from %s: %s", node.id, error)
        return []


def own_entry(chain: CommitteeChain, node_id: str) -> NodeInfo | None:
    """This node's entry in the newest committee that names it (its URL and TLS certificate)."""
    for committee in reversed(chain.committees()):
        if committee.has_node(node_id):
            return committee.node(node_id)
    return None


def served_certificate(chain: CommitteeChain, node_id: str, key: Ed25519PrivateKey) -> bytes | None:
    """The TLS certificate the node serves (None: plain HTTP): the one of its newest committee entry;
    a node no committee named yet (joining) serves its key's certificate if the nodes of its current
    committee serve TLS, since the committee that admits it will pin that certificate."""
    entry = own_entry(chain, node_id)
    if entry is not None:
        return entry.tls_cert
    if any(node.tls_cert is not None for node in chain.current.nodes):
        return node_certificate(key)
    return None


# --- what the node signed ----------------------------------------------------------------------------


class SignedRecord:
    """DATA/epochs/signed.json: per epoch, the digest of the one successor this node signed."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = epochs_dir(data_dir) / SIGNED_FILE
        self.signed: dict[int, str] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_bytes())
                if data["version"] != SIGNED_VERSION:
                    raise ValueError(f"version {data['version']} (this walrusfs reads {SIGNED_VERSION})")
                self.signed = {int(epoch): str(digest) for epoch, digest in data["signed"].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
                raise UserError(f"cannot read {self.path}: {error}; it says which committees this node signed, "
                                f"and without it the node could sign two: restore it from a backup") from error

    def get(self, epoch: int) -> str | None:
        return self.signed.get(epoch)

    def remember(self, epoch: int, digest: str) -> None:
        """Durably, before the signature is handed out."""
        signed = {**self.signed, epoch: digest}
        epochs_dir(self.data_dir).mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"version": SIGNED_VERSION, "signed": {str(e): d for e, d in sorted(signed.items())}},
                             indent=1)
        replace_durably(self.path, payload.encode(), mode=0o644)
        self.signed = signed


# --- the running node ---------------------------------------------------------------------------------


class EpochService:
    """Adopts verified links (from a proposer's POST, or followed from peers), signs proposals by
    the node's policy, and tells the node's parts of each new committee (core.add_epoch_listener)."""

    def __init__(self, core: NodeCore) -> None:
        self.core = core
        self.data_dir = core.store.root
        self.signed = SignedRecord(self.data_dir)
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._chasing: asyncio.Task[None] | None = None
        self._chased: dict[str, float] = {}  # peer -> when its naming a newer epoch last prompted a fetch
        core.on_peer_epoch = self.peer_epoch

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name="epochs")]

    async def stop(self) -> None:
        if self._chasing is not None:
            self._tasks.append(self._chasing)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self) -> None:
        chain = self.core.chain
        if chain.links:  # the last change's work may be unfinished: its listeners decide
            async with self._lock:
                await self.core.notify_epoch(chain.committee_at(chain.current.epoch - 1), chain.current)
        if self.core.standby:
            log.warning("node %s is in no committee of epoch %d: standby (no shards) until a committee that "
                        "names it is adopted", self.core.node_id, chain.current.epoch)
        await self._follow_forever()

    async def _follow_forever(self) -> None:
        """Ask a peer now and then for links this node lacks: a node that was down, or joining, during
        an epoch change catches up by itself."""
        while True:
            await asyncio.sleep(jittered(self.core.config.repair.sync_interval))
            try:
                await self.follow_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a full disk, say: try again next time, the node keeps serving
                log.exception("following the committee chain failed; will try again")

    async def follow_once(self) -> None:
        current = self.core.committee
        peers = [node for node in current.nodes if node.id != self.core.node_id]
        if peers:
            await self._follow(random.choice(peers))

    def peer_epoch(self, peer: str, epoch: int) -> None:
        """A peer's answer named ``epoch``: if it is newer than this node's, fetch the links from that
        peer now rather than at the next round (one fetch at a time)."""
        if epoch <= self.core.committee.epoch or (self._chasing is not None and not self._chasing.done()):
            return
        now = time.monotonic()
        if now - self._chased.get(peer, -CHASE_INTERVAL) < CHASE_INTERVAL:
            return  # a peer that names an epoch it cannot prove does not get a fetch per answer
        self._chased[peer] = now
        node = next((committee.node(peer) for committee in reversed(self.core.chain.committees())
                     if committee.has_node(peer)), None)
        if node is not None:
            self._chasing = asyncio.get_running_loop().create_task(self._follow(node), name="epochs-chase")

    async def _follow(self, node: NodeInfo) -> None:
        links = await fetch_links(node, self.core.committee.epoch)
        if not links:
            return
        try:
            await self.adopt(links)
        except HTTPError as error:
            log.warning("node %s served committee links this node refuses: %s", node.id, error.message)
        except OSError as error:
            log.error("could not store the committee chain: %s; will try again", error)

    # --- adopting links ------------------------------------------------------------------------------

    async def adopt(self, links: Sequence[CommitteeLink]) -> list[Committee]:
        """Verify ``links``, persist the longer chain, make its newest committee current and tell the
        listeners, step by step. All or nothing: HTTPError (409: a gap or a fork, 422: a link that
        does not verify) leaves the chain as it was. Links the node already has are skipped."""
        async with self._lock:
            chain = self.core.chain
            new = self._new_links(chain, links)
            if not new:
                return []
            try:  # only the new links are verified: a POST of junk costs little however long the chain
                longer = await self.core.in_worker(_extended, chain, new)
            except ChainError as error:
                raise HTTPError(422, "link_refused", str(error), epoch=chain.current.epoch) from None
            await self._durably(save_chain, self.data_dir, longer)
            self.core.chain = longer
            added = [longer.committee_at(link.epoch) for link in new]
            for committee in added:
                shards = shards_in(committee, self.core.node_id, self.core.public_key_bytes)
                log.info("adopted the committee of epoch %d (%d nodes); this node's shards: %s", committee.epoch,
                         len(committee.nodes), list(shards) or "none (standby)")
                await self.core.notify_epoch(longer.committee_at(committee.epoch - 1), committee)
            return added

    def _new_links(self, chain: CommitteeChain, links: Sequence[CommitteeLink]) -> list[CommitteeLink]:
        current = chain.current.epoch
        new: list[CommitteeLink] = []
        for link in sorted(links, key=lambda link: link.epoch):
            if link.epoch <= current:
                if link.epoch > chain.anchor.epoch and \
                        committee_digest(chain.committee_at(link.epoch)) != committee_digest(link.committee):
                    raise HTTPError(409, "link_conflicts",
                                    f"the committee of epoch {link.epoch} in this link differs from the one this "
                                    f"node adopted for epoch {link.epoch}: a fork; refusing it", epoch=current)
                continue  # already adopted (or before the anchor, where nothing can be checked)
            expected = current + 1 + len(new)
            if link.epoch != expected:
                raise HTTPError(409, "link_does_not_follow",
                                f"this node is at epoch {current + len(new)} and the next link it can take is for "
                                f"epoch {expected}, not {link.epoch}: send every link after epoch {current} "
                                f"(GET {routes.COMMITTEE_CHAIN}?after={current} on a node that has them)",
                                epoch=current)
            new.append(link)
        return new

    # --- signing proposals ---------------------------------------------------------------------------

    async def sign_proposal(self, link: CommitteeLink) -> bytes:
        """This node's signature on the proposed successor, if the policy of docs/epochs.md allows it
        (the caller checked the proposer's request signature); else HTTPError 409 with the reason."""
        async with self._lock:
            current = self.core.committee
            if not shards_in(current, self.core.node_id, self.core.public_key_bytes):
                raise HTTPError(409, "not_in_committee",
                                f"this node holds no shards in epoch {current.epoch}, so its signature counts for "
                                f"nothing: ask the nodes of the epoch {current.epoch} committee", epoch=current.epoch)
            if link.epoch != current.epoch + 1 or link.previous_digest != committee_digest(current):
                raise HTTPError(409, "proposal_does_not_follow",
                                f"this node is at epoch {current.epoch} and signs only a successor of its current "
                                f"committee (epoch {current.epoch + 1}, previous_digest "
                                f"{committee_digest(current).hex()}); the proposal is for epoch {link.epoch} after "
                                f"{link.previous_digest.hex()}", epoch=current.epoch)
            successor = link.committee
            if successor.n_shards != current.n_shards:
                raise HTTPError(409, "shard_count_changed",
                                f"the proposed committee has {successor.n_shards} shards and epoch {current.epoch} "
                                f"has {current.n_shards}: the shard count never changes", epoch=current.epoch)
            digest = committee_digest(successor).hex()
            signed = self.signed.get(link.epoch)
            if signed is not None and signed != digest:
                raise HTTPError(409, "signed_another",
                                f"this node already signed another committee ({signed}) as epoch {link.epoch}: it "
                                f"never signs two successors of one epoch (they could fork the chain); finish the "
                                f"stuck change by proposing that same committee again", epoch=current.epoch,
                                signed=signed)
            if not self.core.handover_complete():
                raise HTTPError(409, "handover_incomplete",
                                f"this node's handover into epoch {current.epoch} is not complete (shards it gained "
                                f"are still being synced): shards must land before they move again; propose again "
                                f"when GET /v1/handover shows it done", [("retry-after", "10")],
                                epoch=current.epoch)
            if signed is None:
                await self._durably(self.signed.remember, link.epoch, digest)
            log.info("signed the committee proposed for epoch %d (%s)", link.epoch, digest)
            return sign_link(self.core.key, current, successor)

    async def _durably(self, function: Callable[..., None], *args: Any) -> None:
        """Write one of DATA/epochs/'s files; 507 for a full disk (nothing changed), as every write."""
        try:
            await self.core.in_worker(function, *args)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self.core.disk_full() from None
            raise
