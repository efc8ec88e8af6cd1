"""The mount's writer lease: one writer per filesystem across machines (docs/writer-lease.md).

A writable mount acquires the filesystem's lease from the nodes before it serves, renews it in the
background well before it expires, and releases it at a clean unmount. Durability is reported only
while the lease is provably held: fsync, the umount flush and snapshots fail with EIO once it has
lapsed (and cannot be renewed in time) or another writer has taken it over. What a deposed writer
staged stays in its state directory; nothing is dropped.

The holder is the state directory's own random ID (<state>/writer-id): the same directory mounting
again after a crash is the same writer (the state lock already keeps it to one process), any other
directory, here or on another machine, is another writer.
"""

from __future__ import annotations

import errno
import logging
import secrets
import socket
import time
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..client import BlobClient
from ..client.lease import LeaseQuorumError, LeaseRound, read_leases, send_lease
from ..client.quorum import shards_of
from ..client.roots import RootQuorumError, find_root
from ..durable import replace_durably
from ..errors import UserError
from ..protocol.lease import MAX_TERM_MS, MIN_TERM_MS, LeaseRecord, LeaseState
from ..protocol.roots import fs_id_of_key, is_fs_id
from .config import FsState
from .publisher import LocalSnapshotState

log = logging.getLogger(__name__)

DEFAULT_TERM = 30.0  # seconds; a writer that died blocks others this long unless taken over
# The writer counts its lease from the moment it sent the request, and only for this part of the
# term: the nodes count from when they received it, so the margin covers clocks that run at
# slightly different rates.
SAFE_FRACTION = 0.8
RENEWALS_PER_TERM = 4


class NotDurableError(OSError):
    """The writer does not provably hold the filesystem: nothing may be reported durable."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


def writer_id(state: FsState) -> str:
    """The state directory's writer identity, created at its first writable mount."""
    path = state.root / "writer-id"
    try:
        text = path.read_text().strip()
        if is_fs_id(text):
            return text
        log.warning("%s is damaged: this state directory gets a new writer identity", path)
    except FileNotFoundError:
        pass
    text = secrets.token_hex(16)
    replace_durably(path, f"{text}\n".encode(), 0o644)
    return text


def describe_holder(lease: LeaseState, expiry: bool = True) -> str:
    record = lease.record
    where = record.label or f"writer {record.holder}"
    if not expiry:
        return f"{where} (lease generation {record.generation})"
    if lease.held:
        return f"{where} (lease generation {record.generation}, expires in {lease.expires_in_ms / 1000:.0f} s)"
    return f"{where} (lease generation {record.generation}, expired)"


def parse_term(text: str) -> float:
    try:
        term = float(text)
    except ValueError:
        raise UserError(f"lease_term={text!r}: give seconds, e.g. lease_term=30") from None
    if not MIN_TERM_MS / 1000 <= term <= MAX_TERM_MS / 1000:
        raise UserError(f"lease_term={text}: between {MIN_TERM_MS / 1000:.0f} and {MAX_TERM_MS / 1000:.0f} seconds")
    return term


class WriterLease:
    def __init__(self, client: BlobClient, fs_key: Ed25519PrivateKey, holder: str, label: str,
                 term: float = DEFAULT_TERM, name: str = "") -> None:
        self.client = client
        self.key = fs_key
        self.fs_id = fs_id_of_key(fs_key)
        self.holder = holder
        self.label = label
        self.term = term
        self.name = name or self.fs_id  # how the user names the filesystem, for messages
        self.generation = 0
        self.valid_until = -1.0  # trio clock
        self.deposed_by: LeaseState | None = None
        self.last_error: str | None = None
        self._renewal = 0
        self._last_round = (-1.0, False)  # when the last renewal round was sent, and whether it reached a quorum
        self._poke = trio.Event()
        self._round_done = trio.Event()
        self._lapsed_logged = False

    # --- state -------------------------------------------------------------------------------------

    @property
    def fence(self) -> tuple[str, int]:
        """What a root record published under this lease names."""
        return self.holder, self.generation

    def held(self) -> bool:
        return self.deposed_by is None and self.generation > 0 and trio.current_time() < self.valid_until

    def not_durable_message(self) -> str:
        if self.deposed_by is not None:
            return (f"another writer took over filesystem {self.name}: {describe_holder(self.deposed_by, False)}. "
                    "Nothing written through this mount since the takeover is durable or will be published. "
                    "It stays in this machine's state directory; to continue from the network's state, unmount and run "
                    f"'walrusfs restore {self.name} --force' (it sets this state aside)")
        why = self.last_error or "no quorum of nodes"
        return (f"the writer lease of filesystem {self.name} could not be renewed in time ({why}): durability "
                "cannot be promised until it is; the data stays staged")

    async def ensure_held(self, wait: float | None = None) -> None:
        """Return once nodes covering n-f shards have renewed the lease in answer to a request sent
        after this call began; raise NotDurableError if deposed, if that renewal round fails, or if
        none completes within ``wait`` (default: one term).

        A takeover needs a quorum of grants too, and the two quorums share an honest node, which
        refuses the old holder once it has granted the new one: so an fsync that returns happened
        before any takeover. Concurrent callers share renewal rounds."""
        asked = trio.current_time()
        deadline = asked + (self.term if wait is None else wait)
        while True:
            sent, renewed = self._last_round
            if self.deposed_by is None and sent >= asked and renewed and self.held():
                return
            if self.deposed_by is not None or sent >= asked or trio.current_time() >= deadline:
                message = self.not_durable_message()
                log.error("not durable: %s", message)
                raise NotDurableError(message)
            self._poke.set()  # renew now rather than at the next interval
            with trio.move_on_at(deadline):
                await self._round_done.wait()

    def status(self) -> dict[str, Any]:
        deposed = None
        if self.deposed_by is not None:
            record = self.deposed_by.record
            deposed = {"holder": record.holder, "label": record.label, "generation": record.generation}
        return {"holder": self.holder, "label": self.label, "generation": self.generation, "held": self.held(),
                "valid_for_s": max(0.0, self.valid_until - trio.current_time()), "term_s": self.term,
                "deposed_by": deposed, "last_error": self.last_error,
                "message": None if self.held() else self.not_durable_message()}

    # --- talking to the nodes ----------------------------------------------------------------------

    def _record(self, term: float, takeover: bool = False) -> LeaseRecord:
        self._renewal = max(time.time_ns(), self._renewal + 1)
        return LeaseRecord.create(self.key, self.holder, self.generation, self._renewal, int(term * 1000),
                                  takeover=takeover, label=self.label)

    def _quorum(self, round_: LeaseRound) -> bool:
        return shards_of(self.client.committee, round_.granted) >= self.client.committee.geometry.quorum

    async def acquire(self, takeover: bool = False) -> None:
        """Hold the lease, or raise UserError saying who holds it and what to do."""
        committee = self.client.committee
        try:
            leases = await read_leases(self.client.connections, committee, self.fs_id)
        except LeaseQuorumError as error:
            raise UserError(f"cannot mount {self.name} writable: {error}") from None
        known = [lease for lease in leases.values() if lease is not None]
        others = [lease for lease in known if lease.record.holder != self.holder and lease.held]
        if others and not takeover:
            raise self._held_elsewhere(max(others, key=lambda lease: lease.record.generation))
        top = max(known, key=lambda lease: lease.record.generation, default=None)
        if top is not None and top.record.holder == self.holder:
            self.generation = top.record.generation  # this state directory wrote last: same writer
        else:
            self.generation = (top.record.generation if top else 0) + 1
        self._renewal = max([self._renewal, *(lease.record.renewal for lease in known)])
        for _ in range(4):
            sent = trio.current_time()
            round_ = await send_lease(self.client.connections, self._record(self.term, takeover), deadline=15.0)
            if self._quorum(round_):
                self.valid_until = sent + self.term * SAFE_FRACTION
                if takeover and others:
                    log.warning("took over filesystem %s from %s", self.name, describe_holder(others[0]))
                log.info("writer lease of %s held: generation %d, term %.0f s", self.name, self.generation, self.term)
                return
            await self._release_on(round_.granted)
            held = round_.refusals("lease_held")
            if held and not takeover:
                raise self._held_elsewhere(max((a.current for a in held.values() if a.current),
                                               key=lambda lease: lease.record.generation))
            stale = [a.current for a in round_.refusals().values() if a.current is not None]
            if not round_.refusals("stale_generation") and not round_.refusals("stale_renewal"):
                if not round_.failures:
                    break
                await trio.sleep(0.5)  # nodes that did not answer: one more round
                continue
            # Raced with another writer, or a node knew more than the read quorum: go above it.
            if any(a.code == "stale_generation" for a in round_.refusals().values()):
                self.generation = max(lease.record.generation for lease in stale) + 1
            self._renewal = max([self._renewal, *(lease.record.renewal for lease in stale)])
        raise UserError(f"cannot mount {self.name} writable: the writer lease was not granted by nodes covering "
                        f"{committee.geometry.quorum} shards ({round_.detail()}). Check the nodes "
                        "(walrusfs cluster status) and mount again.")

    def _held_elsewhere(self, lease: LeaseState) -> UserError:
        return UserError(
            f"filesystem {self.name} is mounted writable elsewhere: {describe_holder(lease)}. One writer at a "
            "time: unmount it there first, or mount read-only here (-o ro). If that writer is dead (its machine "
            f"is gone), wait for its lease to expire, or take over now with 'walrusfs mount {self.name} DIR "
            "-o takeover' (what it wrote and had not published in a snapshot then stays on its machine, outside the "
            "filesystem).")

    async def renew(self) -> None:
        try:
            await self._renew()
        finally:
            done, self._round_done = self._round_done, trio.Event()
            done.set()

    async def _renew(self) -> None:
        sent = trio.current_time()
        round_ = await send_lease(self.client.connections, self._record(self.term),
                                  deadline=max(1.0, self.term / RENEWALS_PER_TERM))
        renewed = self._quorum(round_)
        self._last_round = (sent, renewed)
        if renewed:
            self.valid_until = sent + self.term * SAFE_FRACTION
            self.last_error = None
            if self._lapsed_logged:
                log.info("writer lease of %s renewed again", self.name)
                self._lapsed_logged = False
            return
        self.last_error = round_.detail()
        newer = [(node, lease) for node, lease in round_.others(self.holder)
                 if lease.record.generation > self.generation]
        # Nodes covering f+1 shards include an honest one: the takeover is real, not one node's claim.
        faulty = self.client.committee.geometry.max_faulty
        if shards_of(self.client.committee, [node for node, _ in newer]) > faulty:
            self.deposed_by = max((lease for _, lease in newer), key=lambda lease: lease.record.generation)
            log.error("DEPOSED: %s", self.not_durable_message())
            return
        if not self.held() and not self._lapsed_logged:
            log.error("writer lease of %s lapsed: %s", self.name, self.last_error)
            self._lapsed_logged = True

    async def run(self) -> None:
        """Renew in the background, RENEWALS_PER_TERM times a term, until deposed."""
        while self.deposed_by is None:
            with trio.move_on_after(self.term / RENEWALS_PER_TERM):
                await self._poke.wait()
            self._poke = trio.Event()
            try:
                await self.renew()
            except Exception as error:  # a bug here must not stop renewals for good
                self.last_error = f"{type(error).__name__}: {error}"
                log.exception("renewing the writer lease failed")
                await trio.sleep(1)

    async def release(self) -> None:
        """Give the lease back (a clean unmount), so another machine may mount at once."""
        if self.deposed_by is not None or self.generation == 0:
            return
        round_ = await send_lease(self.client.connections, self._record(0), deadline=10.0)
        self.valid_until = -1.0
        log.info("writer lease of %s released on %d nodes", self.name, len(round_.granted))

    async def _release_on(self, nodes: list[str]) -> None:
        """Undo a grant that did not reach a quorum, so it blocks nobody for a term."""
        if nodes:
            connections = {node: self.client.connections[node] for node in nodes}
            await send_lease(connections, self._record(0), deadline=5.0)

    async def check_not_stale(self, state: FsState) -> None:
        """Refuse to write on from local state older than what the network holds: another writer
        published since this state directory's last snapshot."""
        local = LocalSnapshotState.load(state)
        try:
            network = await find_root(self.client.connections, self.client.committee, self.fs_id)
        except RootQuorumError as error:
            raise UserError(f"cannot mount {self.name} writable: {error}") from None
        # Ordered as records are: a later lease generation wins whatever its number, so a successor's
        # snapshot with a lower number than one this state attempted is still newer.
        if network is not None and network.order > local.newest:
            raise UserError(
                f"filesystem {self.name} was written elsewhere since this machine's state: the network holds "
                f"snapshot {network.seq}, this state directory ({state.root}) knows {local.seq or 'none'}. "
                f"Mounting it writable would fork the filesystem. Run 'walrusfs restore {self.name} --force' to "
                "continue from the network's state (it sets this one aside and lists what it held that the "
                "network does not), or mount read-only (-o ro).")


def label_of(state: FsState) -> str:
    return f"{socket.gethostname()}:{state.root}"


async def acquire_for_mount(state: FsState, client: BlobClient, fs_key: Ed25519PrivateKey, *,
                            takeover: bool, term: float) -> WriterLease:
    """The lease of a writable mount, held, on state that is not behind the network (UserError
    otherwise, saying who holds it and what to do)."""
    lease = WriterLease(client, fs_key, writer_id(state), label_of(state), term, state.root.name)
    await lease.check_not_stale(state)  # before a takeover deposes anyone
    await lease.acquire(takeover)
    try:
        await lease.check_not_stale(state)
    except BaseException:
        with trio.move_on_after(10):
            await lease.release()
        raise
    return lease


def deposed_message(status: dict[str, Any]) -> str | None:
    """For 'walrusfs umount': why nothing may ever be claimed durable, if another writer took over."""
    lease = status.get("lease")
    if not lease or not lease.get("deposed_by"):
        return None
    return lease.get("message") or "another writer took over this filesystem's writer lease"
