"""HTTP calls to one storage node (the /v1 API of docs/node-api.md), with health bookkeeping.

Every answer is parsed into the codec's types here; whether the bytes are *right* (verify against
metadata) is the caller's business, because that is where it knows what to do about a liar.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import h11
import httpx
from httpcore._async.http11 import AsyncHTTP11Connection

from ..protocol import Confirmation, routes, sign_request
from ..protocol.committee import Committee, NodeInfo
from ..protocol.lease import LeaseRecord, LeaseState
from ..protocol.roots import RootRecord
from ..protocol.transport import node_mounts, tls_context  # noqa: F401 (re-exported: callers import them from here)
from ..protocol.wire import ErrorBody, WireError
from ..redstuff import BlobId, BlobMetadata, FormatError, InconsistencyProof, RecoverySymbol, Sliver, SliverKind
from .health import HealthBook

T = TypeVar("T")

# httpcore reads responses 64 KiB at a time; slivers are MiB-sized, and every read is a trip
# through h11 and the event loop. 1 MiB reads cut that cost per sliver by 16.
AsyncHTTP11Connection.READ_NUM_BYTES = 1 << 20


async def _send_event_without_copy(self: AsyncHTTP11Connection, event: h11.Event,
                                   timeout: float | None = None) -> None:
    """httpcore sends what ``h11.Connection.send`` returns: the event's bytes joined into one new
    object, a copy of every sliver uploaded. h11's ``send_with_data_passthrough`` exists to avoid
    exactly that; the pieces go out as they are (measured: 3-4% of a blob put's client CPU)."""
    for data in self._h11_state.send_with_data_passthrough(event) or ():
        await self._network_stream.write(data, timeout=timeout)


AsyncHTTP11Connection._send_event = _send_event_without_copy  # httpcore 1.x (pinned below 2)


class NodeError(Exception):
    """A node did not give a usable answer. ``transient`` errors are worth retrying; ``invalid``
    means the node holds a proof that the blob is inconsistently encoded (HTTP 410);
    ``unreachable`` that no connection could be made (refused, or no answer to connecting): the node
    is not there, as opposed to one that is there and slow."""

    def __init__(self, node_id: str, what: str, reason: str, *, transient: bool = True,
                 lie: bool = False, invalid: bool = False, unreachable: bool = False,
                 status: int | None = None, epoch: int | None = None) -> None:
        super().__init__(f"node {node_id}: {what}: {reason}")
        self.node_id = node_id
        self.reason = reason
        self.transient = transient
        self.lie = lie
        self.invalid = invalid
        self.unreachable = unreachable
        self.status = status  # the HTTP status the node answered with, if it answered
        self.epoch = epoch  # the node's current epoch, if it named one (walrusfs-epoch)

    @property
    def moved(self) -> bool:
        """The node does not hold the shard asked about in its epoch (421 shard_not_held, or
        not_in_committee): the committee changed, and either the node or the client is behind."""
        return self.status == 421

    def behind(self, epoch: int) -> bool:
        """The node answered from an older epoch than ``epoch``: it has not adopted the newer committee
        yet (links reach nodes one by one), so asking it again soon is worth it."""
        return self.epoch is not None and self.epoch < epoch

    @property
    def missing(self) -> bool:
        """The node does not have what was asked for (404): a new holder before its handover is done."""
        return self.status == 404


@dataclass(frozen=True)
class LeaseAnswer:
    """A node's answer to a lease request: ``code`` is "granted" or the refusal's error code;
    ``current`` the lease that stands on that node."""

    granted: bool
    code: str
    message: str
    current: LeaseState | None


class NodeConnection:
    def __init__(self, http: httpx.AsyncClient, committee: Committee, node: NodeInfo,
                 health: HealthBook, writer_key: object | None = None) -> None:
        self.http = http
        self.committee = committee
        self.node = node
        self.health = health
        self.writer_key = writer_key
        self.base = node.url.rstrip("/")
        # Called with (node id, epoch) of every answer that names the node's epoch (its walrusfs-epoch
        # header): a client that sees a newer epoch than it knows fetches the committee links it lacks.
        self.on_epoch: Callable[[str, int], None] | None = None

    @property
    def node_id(self) -> str:
        return self.node.id

    async def _call(self, what: str, send: Callable[[], Awaitable[httpx.Response]],
                    parse: Callable[[httpx.Response], T], ok: tuple[int, ...] = (200, 206)) -> T:
        start = time.monotonic()
        try:
            response = await send()
        except httpx.HTTPError as error:
            reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            self.health.failure(self.node_id, reason)
            raise NodeError(self.node_id, what, reason,
                            unreachable=isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout))) from error
        epoch = self._note_epoch(response)
        if response.status_code not in ok:
            reason = f"HTTP {response.status_code}: {_reason(response)}"
            if response.status_code != 421:  # a node that moved on to a new epoch is not failing
                self.health.failure(self.node_id, reason)
            raise NodeError(self.node_id, what, reason, transient=response.status_code >= 500
                            or response.status_code in (404, 409, 429), invalid=response.status_code == 410,
                            status=response.status_code, epoch=epoch)
        try:
            value = parse(response)
        except (FormatError, ValueError) as error:
            self.health.lie(self.node_id, str(error))
            raise NodeError(self.node_id, what, f"malformed answer: {error}", lie=True) from error
        self.health.success(self.node_id, time.monotonic() - start)
        return value

    def _note_epoch(self, response: httpx.Response) -> int | None:
        """The epoch the node names in its answer (None: a node without epochs, or a garbled header)."""
        try:
            epoch = int(response.headers.get(routes.EPOCH_HEADER, ""))
        except ValueError:
            return None
        if self.on_epoch is not None:
            self.on_epoch(self.node_id, epoch)
        return epoch

    def _auth(self, method: str, path: str, body: bytes | None = b"") -> dict[str, str]:
        """Signed for this node and this body (None: a self-certifying sliver, left unbound)."""
        if self.writer_key is None:
            raise NodeError(self.node_id, f"{method} {path}", "no writer key: writes need one",
                            transient=False)
        return {"Authorization": sign_request(self.writer_key, method, path, self.node, body)}  # type: ignore[arg-type]

    # Reads (public)

    async def get_metadata(self, blob_id: BlobId) -> BlobMetadata:
        path = routes.metadata(blob_id)

        def parse(response: httpx.Response) -> BlobMetadata:
            metadata = BlobMetadata.from_bytes(response.content)
            metadata.verify(blob_id)
            return metadata

        return await self._call("get metadata", lambda: self.http.get(self.base + path), parse)

    async def get_sliver(self, blob_id: BlobId, pair: int, kind: SliverKind,
                         on_head: Callable[[], None] | None = None) -> Sliver:
        """``on_head`` is called once the node's response head has arrived (before the body)."""
        path = routes.sliver(blob_id, pair, kind)

        async def send() -> httpx.Response:
            async with self.http.stream("GET", self.base + path) as response:
                if on_head is not None:
                    on_head()
                await response.aread()
            return response

        def parse(response: httpx.Response) -> Sliver:
            sliver = Sliver.from_bytes(response.content)
            expected = self.committee.geometry.sliver_of_pair(pair, kind)
            if sliver.blob_id != blob_id or sliver.kind is not kind or sliver.index != expected:
                raise FormatError(f"asked for {kind.name.lower()} sliver {expected} of {blob_id}, "
                                  f"got {sliver.kind.name.lower()} sliver {sliver.index} of {sliver.blob_id}")
            return sliver

        return await self._call(f"get {kind.name.lower()} sliver of pair {pair}", send, parse)

    async def get_recovery_symbol(self, blob_id: BlobId, pair: int, kind: SliverKind,
                                  target: int) -> RecoverySymbol:
        path = routes.recovery_symbol(blob_id, pair, kind, target)
        return await self._call(f"get recovery symbol {target} from pair {pair}",
                                lambda: self.http.get(self.base + path),
                                lambda r: RecoverySymbol.from_bytes(r.content))

    async def get_chain(self, after: int) -> dict:
        """The node's committee links after epoch ``after``: ``{"version", "epoch", "links"}``, as JSON
        (unverified: walrusfs.client.epochs checks every link from the committee it trusts)."""
        def parse(response: httpx.Response) -> dict:
            answer = response.json()
            if not isinstance(answer, dict):
                raise ValueError("the committee chain answer is not a JSON object")
            return answer

        return await self._call("get committee chain", lambda: self.http.get(
            self.base + routes.COMMITTEE_CHAIN, params={"after": after}), parse)

    async def get_status(self, blob_id: BlobId) -> dict:
        path = routes.status(blob_id)
        return await self._call("get status", lambda: self.http.get(self.base + path),
                                lambda r: r.json())

    async def get_inconsistency(self, blob_id: BlobId) -> InconsistencyProof:
        """The node's proof that the blob is inconsistently encoded (the caller checks it)."""
        path = routes.inconsistency(blob_id)
        return await self._call("get inconsistency proof", lambda: self.http.get(self.base + path),
                                lambda r: InconsistencyProof.from_bytes(r.content))

    async def get_confirmation(self, blob_id: BlobId) -> Confirmation:
        path = routes.confirmation(blob_id)
        return await self._call("get confirmation", lambda: self.http.get(self.base + path),
                                lambda r: Confirmation.from_json(r.content))

    async def get_root(self, fs_id: str) -> RootRecord | None:
        """This node's root record of a filesystem (verified), or None if it holds none."""
        path = routes.root(fs_id)

        def parse(response: httpx.Response) -> RootRecord | None:
            if response.status_code == 404:
                return None
            record = RootRecord.from_json(response.content)
            record.verify(fs_id)
            return record

        return await self._call("get root record", lambda: self.http.get(self.base + path), parse,
                                ok=(200, 404))

    async def get_lease(self, fs_id: str) -> LeaseState | None:
        """This node's writer lease of a filesystem (verified), or None if it holds none."""
        path = routes.lease(fs_id)

        def parse(response: httpx.Response) -> LeaseState | None:
            return None if response.status_code == 404 else LeaseState.from_dict(response.json(), fs_id)

        return await self._call("get writer lease", lambda: self.http.get(self.base + path), parse, ok=(200, 404))

    # Writes (authorised)

    async def put_lease(self, record: LeaseRecord) -> LeaseAnswer:
        """Ask for (renew, take over, release) a writer lease: granted, or refused with the lease
        that stands (HTTP 409). Other failures raise NodeError."""
        path = routes.lease(record.fs_id)
        body = record.to_json()

        def parse(response: httpx.Response) -> LeaseAnswer:
            answer = response.json()
            if response.status_code == 200:
                return LeaseAnswer(True, "granted", "", LeaseState.from_dict(answer, record.fs_id))
            refusal = ErrorBody.from_dict(answer)
            current = refusal.extra.get("current")
            return LeaseAnswer(False, refusal.code, refusal.message,
                               None if current is None else LeaseState.from_dict(current, record.fs_id))

        return await self._call("writer lease", lambda: self.http.put(
            self.base + path, content=body, headers=self._auth("PUT", path, body)), parse, ok=(200, 409))


    async def put_root(self, record: RootRecord) -> None:
        path = routes.root(record.fs_id)
        body = record.to_json()
        await self._call(f"store root record {record.seq}", lambda: self.http.put(
            self.base + path, content=body, headers=self._auth("PUT", path, body)), lambda r: None,
            ok=(200, 201))

    async def put_certificate(self, blob_id: BlobId, certificate_json: str) -> None:
        """Tell the node the blob is certified, so that it keeps (and repairs) its slivers."""
        path = routes.certificate(blob_id)
        body = certificate_json.encode()
        await self._call("store certificate", lambda: self.http.put(
            self.base + path, content=body, headers=self._auth("PUT", path, body)),
            lambda r: None, ok=(200, 201))

    async def put_metadata(self, metadata: BlobMetadata, owner: str = "", expires: int | None = None) -> None:
        """Store the metadata, claiming the blob for ``owner`` (a filesystem ID) until ``expires``
        (unix seconds; the node caps it at its maximum term, docs/node-api.md "Claims")."""
        path = routes.metadata(metadata.blob_id) + claim_query(owner, expires)
        body = metadata.to_bytes()
        await self._call("store metadata", lambda: self.http.put(
            self.base + path, content=body, headers=self._auth("PUT", path, body)), lambda r: None,
            ok=(200, 201))

    async def renew(self, owner: str, blob_ids: list[BlobId], expires: int) -> dict[str, Any]:
        """Extend ``owner``'s claims on these blobs (at most 1000) to ``expires``: the node's answer,
        ``{"format": 1, "granted": <unix>, "renewed": [...], "unknown": [...]}``."""
        path = routes.owner_renewals(owner)
        body = json.dumps({"format": 1, "expires": expires, "blobs": [str(b) for b in blob_ids]}).encode()

        def parse(response: httpx.Response) -> dict[str, Any]:
            answer = response.json()
            if not isinstance(answer, dict) or not isinstance(answer.get("granted"), int) \
                    or not isinstance(answer.get("unknown"), list):
                raise ValueError(f"not a renewal answer: {str(answer)[:100]}")
            return answer

        return await self._call(f"renew {len(blob_ids)} blobs", lambda: self.http.post(
            self.base + path, content=body, headers=self._auth("POST", path, body)), parse)

    async def put_sliver(self, pair: int, sliver: Sliver) -> Confirmation | None:
        """Store one sliver; the node's confirmation if this completed its slivers of the blob
        (unverified: the caller checks it as it would a fetched one)."""
        path = routes.sliver(sliver.blob_id, pair, sliver.kind)
        header = sliver.header()
        symbols = memoryview(sliver.data).cast("B")  # type: ignore[arg-type]

        async def body() -> AsyncIterator[bytes | memoryview]:
            # Header and symbols go out as they are: no copy of a sliver that may be many MiB.
            yield header
            yield symbols

        def send() -> Awaitable[httpx.Response]:
            headers = self._auth("PUT", path, None)
            headers["Content-Length"] = str(len(header) + symbols.nbytes)
            return self.http.put(self.base + path, content=body(), headers=headers)

        def parse(response: httpx.Response) -> Confirmation | None:
            answer = response.json()
            confirmation = answer.get("confirmation") if isinstance(answer, dict) else None
            return None if confirmation is None else Confirmation.from_dict(confirmation)

        return await self._call(f"store {sliver.kind.name.lower()} sliver of pair {pair}", send, parse,
                                ok=(200, 201))


def claim_query(owner: str, expires: int | None) -> str:
    """The query of a claiming metadata PUT ("" for none: the node's default claim)."""
    parts = ([f"owner={owner}"] if owner else []) + ([f"expires={expires}"] if expires is not None else [])
    return "?" + "&".join(parts) if parts else ""


def _reason(response: httpx.Response) -> str:
    """What the node said: its error code and its explanation (``{"error": code, "message": why}``,
    docs/node-api.md), which says what to do ("check the clocks"); the code alone does not."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    try:
        error = ErrorBody.from_dict(body)
    except WireError:  # not a node's error body (a proxy's, or another server's on that port)
        pass
    else:
        return f"{error.code}: {error.message}"[:500]
    if not isinstance(body, dict):
        return str(body)[:300]
    code, message = body.get("error"), body.get("message") or body.get("detail")
    if code and message:
        return f"{code}: {message}"[:500]
    return str(code or message or body)[:300]


def connections(http: httpx.AsyncClient, committee: Committee, health: HealthBook,
                writer_key: object | None = None) -> dict[str, NodeConnection]:
    return {node.id: NodeConnection(http, committee, node, health, writer_key)
            for node in committee.nodes}
