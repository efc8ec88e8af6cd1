"""The storage node's HTTP API (raw ASGI), documented route by route in docs/node-api.md.

Reads are public; writes and deletions need a committee writer's signature (walrusfs.protocol).
Everything uploaded is verified against the blob ID in the path before it is stored; everything
served was checksum-verified as it was read from disk. Hashing, erasure coding and disk I/O run in a
thread pool so the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from walrusfs.committee import Committee
from walrusfs.keys import public_key_text
from walrusfs.protocol import AUTH_SCHEME, AuthError, Confirmation, ReplayGuard, SignedRequest, verify_request
from walrusfs.redstuff import (
    BlobId,
    BlobMetadata,
    FormatError,
    Sliver,
    SliverKind,
    SliverVerificationError,
    verify_sliver,
)
from walrusfs.redstuff.sliver import HEADER_SIZE as SLIVER_HEADER_SIZE
from walrusfs.roots import MAX_RECORD_BYTES, RootRecord, RootRecordError, is_fs_id

from . import metrics as metrics_format
from .buffers import ImagePool, ObjectImage
from .config import NodeConfig
from .expansions import ExpansionCache
from .http import (
    OCTETS,
    ClientDisconnected,
    HTTPError,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    byte_range,
    error_response,
    json_response,
)
from .httpd import ConnectionStats
from .lease_api import LeaseAPI, fenced_error
from .leases import FencedError, LeaseStore
from .memory import MemoryKeeper
from .metrics import Metrics, family
from .nonces import JournalError, NonceJournal
from .peers import REPAIR_HEADER
from .repair import RepairService
from .repair_api import RepairAPI
from .roots import RootStore, StaleRecordError
from .store import (
    CERTIFICATE,
    INCONSISTENCY,
    METADATA,
    BlobStore,
    CorruptObjectError,
    MissingMetadataError,
    StoreFullError,
    sliver_name,
)
from .store import HEADER_SIZE as STORED_HEADER_SIZE

log = logging.getLogger("nodes.app")
T = TypeVar("T")
Handler = Callable[..., Awaitable[Response]]

MAX_INVENTORY_PAGE = 10_000


class NodeApp:
    def __init__(self, config: NodeConfig, committee: Committee, key: Ed25519PrivateKey,
                 store: BlobStore, workers: int = 8) -> None:
        self.config = config
        self.committee = committee
        self.key = key
        self.public_key = public_key_text(key)
        self.store = store
        self.geometry = committee.geometry
        self.shards = committee.shards_of(config.node_id)
        self.metrics = Metrics()
        self.connections = ConnectionStats()  # kept by nodes.httpd
        self.memory = MemoryKeeper(self.connections)
        self.replay = ReplayGuard()
        self.expansions = ExpansionCache()
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="node-worker")
        self.images = ImagePool()
        self._metadata_cache: OrderedDict[BlobId, BlobMetadata] = OrderedDict()
        self.repair = RepairService(self)
        self.repair_api = RepairAPI(self, self.repair)
        largest = self.geometry.layout(min(config.max_blob_size, self.geometry.max_blob_length))
        # The largest sliver any blob this node accepts can have: the bound checked on Content-Length.
        self.max_sliver_body = SLIVER_HEADER_SIZE + largest.primary_sliver_size
        self.metadata_body = BlobMetadata.wire_size(self.geometry.n_shards)
        self.roots = RootStore(store.root)
        self.roots.open()
        self.journal = NonceJournal(store.root)
        self.journal.open()
        self.leases = LeaseStore(store.root)
        self.leases.open()
        self.lease_api = LeaseAPI(self, self.leases)

    # --- ASGI entry point --------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, self.repair, self.memory)
            return
        if scope["type"] != "http":
            return
        route, request = "unmatched", None
        try:
            request = Request.from_scope(scope, receive)
            route, handler, args = self._route(request)
            response = await handler(request, *args)
        except HTTPError as error:
            response = error_response(error)
        except ClientDisconnected:
            self.metrics.request(route, scope["method"], 499, request.received if request else 0, 0)
            return
        except Exception:
            log.exception("%s %s failed", scope["method"], scope.get("path"))
            response = error_response(HTTPError(500, "internal", "internal error; see the node's log"))
        sent = await response.send(send, head_only=scope["method"] == "HEAD")
        received = request.received if request else 0
        self.metrics.request(route, scope["method"], response.status, received, sent)

    def _route(self, request: Request) -> tuple[str, Handler, tuple[Any, ...]]:
        s = request.segments
        table: dict[str, Handler]
        args: tuple[Any, ...] = ()
        if s == ["v1", "health"]:
            route, table = "/v1/health", {"GET": self.health}
        elif s == ["metrics"]:
            route, table = "/metrics", {"GET": self.prometheus}
        elif s == ["v1", "certified"] or s[:2] == ["v1", "repair"]:
            route, table, args = self.repair_api.route(s)
        elif s == ["v1", "inventory"]:
            route, table = "/v1/inventory", {"GET": self.inventory}
        elif len(s) == 3 and s[:2] == ["v1", "roots"]:
            route, table, args = "/v1/roots/{fs_id}", {"GET": self.get_root, "PUT": self.put_root}, (s[2],)
        elif len(s) == 3 and s[:2] == ["v1", "leases"]:
            route, table, args = self.lease_api.route(s[2])
        elif len(s) >= 3 and s[:2] == ["v1", "blobs"]:
            route, table, args = self._blob_route(s[2:])
        else:
            raise HTTPError(404, "no_route", f"no route {request.target[:100]}")
        if request.method == "HEAD" and "GET" in table:
            return route, table["GET"], args
        if request.method not in table:
            allowed = ", ".join(sorted(table))
            raise HTTPError(405, "method_not_allowed", f"{route} allows {allowed}", [("allow", allowed)])
        return route, table[request.method], args

    def _blob_route(self, s: list[str]) -> tuple[str, dict[str, Handler], tuple[Any, ...]]:
        blob_id = _parse_blob_id(s[0])
        rest = s[1:]
        if not rest:
            return "/v1/blobs/{id}", {"DELETE": self.delete_blob}, (blob_id,)
        if rest == ["metadata"]:
            return ("/v1/blobs/{id}/metadata", {"GET": self.get_metadata, "PUT": self.put_metadata},
                    (blob_id,))
        if rest in (["certificate"], ["inconsistency"]):
            return self.repair_api.blob_route(rest[0], blob_id)
        if rest == ["status"]:
            return "/v1/blobs/{id}/status", {"GET": self.status}, (blob_id,)
        if rest == ["confirmation"]:
            return "/v1/blobs/{id}/confirmation", {"GET": self.confirmation}, (blob_id,)
        if len(rest) in (3, 5) and rest[0] == "slivers":
            pair, kind = self._parse_index(rest[1], "pair index"), _parse_kind(rest[2])
            if len(rest) == 3:
                return ("/v1/blobs/{id}/slivers/{pair}/{kind}",
                        {"GET": self.get_sliver, "PUT": self.put_sliver}, (blob_id, pair, kind))
            if rest[3] == "recovery":
                target = self._parse_index(rest[4], "target index")
                return ("/v1/blobs/{id}/slivers/{pair}/{kind}/recovery/{target}",
                        {"GET": self.recovery_symbol}, (blob_id, pair, kind, target))
        raise HTTPError(404, "no_route", f"no route /v1/blobs/{s[0]}/{'/'.join(rest)[:80]}")

    def _parse_index(self, text: str, what: str) -> int:
        if not text.isdigit() or len(text) > 5 or int(text) >= self.geometry.n_shards:
            raise HTTPError(400, "bad_index",
                            f"{what} {text[:20]!r} is not an integer in [0, {self.geometry.n_shards})")
        return int(text)

    # --- helpers -----------------------------------------------------------------------------------

    async def _in_worker(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    async def _authorize(self, request: Request, *, body_bound: bool = True,
                         durable: bool = False) -> SignedRequest:
        """Check the writer's signature (made for this node, within the clock window) and that its
        nonce is new. ``durable``: the write is dangerous to replay (docs/threat-model.md), so its
        nonce goes to the on-disk journal before the write takes effect and is refused after a
        restart too; otherwise it is remembered in memory. ``body_bound=False``: the route's body
        certifies itself, so the signature may leave it unbound."""
        try:
            signed = verify_request(request.headers.get("authorization"), request.method, request.target,
                                    self.committee, self.config.node_id, body_bound=body_bound,
                                    replay=None if durable else self.replay)
        except AuthError as error:
            raise _unauthorized(error) from None
        if durable:
            try:
                fresh = await self._in_worker(self.journal.remember, signed.nonce, signed.expiry)
            except JournalError as error:
                log.error("%s", error)
                raise HTTPError(503, "replay_journal", str(error), [("retry-after", "60")]) from None
            if not fresh:
                raise _unauthorized(AuthError("Authorization nonce was already used (replayed request)"))
        return signed

    @staticmethod
    def _check_body(signed: SignedRequest, body: bytes | bytearray | memoryview) -> None:
        try:
            signed.check_body(body)
        except AuthError as error:
            raise _unauthorized(error) from None

    def _check_shard(self, blob_id: BlobId, pair: int) -> int:
        shard = self.geometry.shard_of_pair(pair, blob_id.raw)
        if shard not in self.shards:
            holder = self.committee.node_for_shard(shard)
            raise HTTPError(421, "shard_not_held",
                            f"pair {pair} of this blob belongs to shard {shard}, held by {holder.id!r} "
                            f"({holder.url}), not by this node", shard=shard, node=holder.id)
        return shard

    async def _read(self, blob_id: BlobId, name: str) -> bytes | None:
        return await self.read_object(blob_id, name)

    async def read_object(self, blob_id: BlobId, name: str, executor: ThreadPoolExecutor | None = None) -> bytes | None:
        """A stored object, checksum-verified in ``executor`` (default: the foreground pool). 410 for
        the slivers of a blob proven invalid; 404 ``quarantined`` (and repair told) for a bad checksum."""
        if name not in (METADATA, CERTIFICATE, INCONSISTENCY):
            self.repair_api.refuse_if_invalid(blob_id)
        try:
            return await asyncio.get_running_loop().run_in_executor(executor or self.executor, self.store.get,
                                                                    blob_id, name)
        except CorruptObjectError as error:
            self.metrics.checksum_failures += 1
            self.forget_cached(blob_id)
            if self.repair.knows_certified(str(blob_id)):
                self.repair.enqueue(str(blob_id))
            raise HTTPError(404, "quarantined", f"{error}; this node no longer holds it") from None

    def forget_cached(self, blob_id: BlobId) -> None:
        self._metadata_cache.pop(blob_id, None)
        self.expansions.invalidate(lambda key: key[0] == blob_id)

    async def _metadata(self, blob_id: BlobId) -> BlobMetadata | None:
        cached = self._metadata_cache.get(blob_id)
        if cached is not None:
            self._metadata_cache.move_to_end(blob_id)
            return cached
        payload = await self._read(blob_id, METADATA)
        if payload is None:
            return None
        metadata = BlobMetadata.from_bytes(payload)  # verified before it was stored
        self._metadata_cache[blob_id] = metadata
        if len(self._metadata_cache) > 4096:
            self._metadata_cache.popitem(last=False)
        return metadata

    async def _require_metadata(self, blob_id: BlobId) -> BlobMetadata:
        metadata = await self._metadata(blob_id)
        if metadata is None:
            raise HTTPError(409, "metadata_missing",
                            f"this node has no metadata for blob {blob_id}: PUT its metadata first")
        return metadata

    def _disk_full(self) -> HTTPError:
        self.metrics.disk_full += 1
        log.error("disk full under %s: refusing writes", self.store.root)
        return HTTPError(507, "disk_full", "the node's disk is full; nothing was stored")

    # --- routes ------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        stats = self.store.stats
        return json_response({
            # public_key: lets `walrusfs cluster up` tell this node from another network's node
            # that answers on the same port (both are called node-0).
            "ok": True, "node_id": self.config.node_id, "public_key": self.public_key, "epoch": self.committee.epoch,
            "n_shards": self.geometry.n_shards, "shards": list(self.shards),
            "blobs": stats.blobs, "bytes": stats.bytes, "quarantined": stats.quarantined,
        })

    async def prometheus(self, request: Request) -> Response:
        stats = self.store.stats
        text = self.metrics.render(
            {
                "walrusfs_node_stored_blobs": ("Blobs with metadata stored.", stats.blobs),
                "walrusfs_node_stored_bytes": ("Bytes in stored files.", stats.bytes),
                "walrusfs_node_quarantined_files": ("Files quarantined for failing their checksum.",
                                                    stats.quarantined),
            },
            {"node_id": self.config.node_id, "epoch": str(self.committee.epoch)},
            self.repair_api.metrics_lines() + self._connection_lines(),
        )
        return Response(200, text.encode(), metrics_format.CONTENT_TYPE)

    def _connection_lines(self) -> list[str]:
        stats, lines = self.connections, []
        family(lines, "walrusfs_node_http_connections", "gauge", "Client connections open.", [({}, stats.open)])
        family(lines, "walrusfs_node_http_refused_connections_total", "counter",
               "Connections answered 503 and closed because a cap was reached (total or per address).",
               [({"cap": "total"}, stats.refused_total), ({"cap": "peer"}, stats.refused_peer)])
        family(lines, "walrusfs_node_memory_trims_total", "counter",
               "Times freed heap memory was returned to the kernel after a burst.", [({}, self.memory.trims)])
        return lines

    async def inventory(self, request: Request) -> Response:
        after = request.query.get("after")
        if after is not None:
            after = str(_parse_blob_id(after))
        limit_text = request.query.get("limit", "1000")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_INVENTORY_PAGE:
            raise HTTPError(400, "bad_limit", f"limit must be an integer in [1, {MAX_INVENTORY_PAGE}]")
        limit = int(limit_text)
        blob_ids = await self._in_worker(self.store.list_blobs, after, limit)
        return json_response({"blob_ids": blob_ids, "next": blob_ids[-1] if len(blob_ids) == limit else None})

    async def get_root(self, request: Request, fs_id: str) -> Response:
        record = await self._in_worker(self.roots.get, _parse_fs_id(fs_id))
        if record is None:
            raise HTTPError(404, "not_found", f"this node holds no root record for filesystem {fs_id}")
        return Response(200, record.to_json(), "application/json")

    async def put_root(self, request: Request, fs_id: str) -> Response:
        # Not journalled: a record certifies itself and a replayed older one is refused as stale.
        signed = await self._authorize(request)
        fs_id = _parse_fs_id(fs_id)
        body = await request.read_body(MAX_RECORD_BYTES)
        self._check_body(signed, body)
        try:
            record = RootRecord.from_json(body)
            record.verify(fs_id)
        except RootRecordError as error:
            raise HTTPError(422, "bad_root_record", str(error)) from None
        try:
            replaced = await self._in_worker(self.leases.put_fenced, self.roots, record)
        except FencedError as error:
            raise fenced_error(error) from None
        except StaleRecordError as error:
            raise HTTPError(409, "stale_root_record", str(error), seq=error.stored.seq) from None
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._disk_full() from None
            raise
        return json_response({"fs_id": fs_id, "seq": record.seq}, 201 if replaced else 200)

    async def put_metadata(self, request: Request, blob_id: BlobId) -> Response:
        # Journalled: storing metadata (re)creates a blob, so a replay after a later DELETE would bring
        # the deleted blob back; slivers and certificates are refused (409) without it.
        signed = await self._authorize(request, durable=True)
        body = await request.read_body(self.metadata_body)
        self._check_body(signed, body)
        try:
            metadata = BlobMetadata.from_bytes(body)
        except FormatError as error:
            self.metrics.verification_failures["metadata"] += 1
            raise HTTPError(400, "bad_metadata", str(error)) from None
        if metadata.n_shards != self.geometry.n_shards:
            raise HTTPError(422, "wrong_committee",
                            f"metadata is for n={metadata.n_shards} shards; this committee has "
                            f"{self.geometry.n_shards}")
        if metadata.blob_length > self.config.max_blob_size:
            raise HTTPError(413, "blob_too_large",
                            f"blob of {metadata.blob_length} bytes; this node accepts at most "
                            f"{self.config.max_blob_size}")
        if metadata.blob_id != blob_id:
            self.metrics.verification_failures["metadata"] += 1
            raise HTTPError(422, "metadata_mismatch", f"this metadata is for blob {metadata.blob_id}, "
                            f"not {blob_id}")
        try:
            created = await self._in_worker(self.store.put_metadata, blob_id, bytes(body))
        except StoreFullError:
            raise self._disk_full() from None
        self.repair.touch(blob_id)
        if created:
            log.info("stored metadata of blob %s (%d bytes)", blob_id, metadata.blob_length)
        return json_response({"blob_id": str(blob_id), "stored": True}, 201 if created else 200)

    async def get_metadata(self, request: Request, blob_id: BlobId) -> Response:
        payload = await self._read(blob_id, METADATA)
        if payload is None:
            raise HTTPError(404, "not_found", f"no metadata for blob {blob_id}")
        return Response(200, payload, OCTETS)

    async def put_sliver(self, request: Request, blob_id: BlobId, pair: int, kind: SliverKind) -> Response:
        # Slivers certify themselves against the stored metadata: the signature may leave them unbound.
        signed = await self._authorize(request, body_bound=False)
        length = request.content_length()
        if length is not None and length > self.max_sliver_body:
            raise HTTPError(413, "too_large", f"body of {length} bytes; no sliver of a blob this node "
                            f"accepts exceeds {self.max_sliver_body}")
        self._check_shard(blob_id, pair)
        metadata = await self._require_metadata(blob_id)
        expected = SLIVER_HEADER_SIZE + metadata.layout.sliver_size(kind is SliverKind.PRIMARY)
        if length is not None and length != expected:
            raise HTTPError(413 if length > expected else 400, "wrong_size",
                            f"a {kind.name.lower()} sliver of this blob is {expected} bytes, not {length}")
        name = sliver_name(pair, kind)
        try:
            with self.images.image(STORED_HEADER_SIZE, expected) as image:
                await request.read_body_into(image.payload)
                created, complete = await self._in_worker(self._verify_and_store, blob_id, pair, kind,
                                                          metadata, image, signed)
        except StoreFullError:
            raise self._disk_full() from None
        except HTTPError:
            self.metrics.verification_failures["sliver"] += 1
            raise
        except MissingMetadataError:
            raise HTTPError(409, "metadata_missing", f"blob {blob_id} was deleted meanwhile") from None
        self.repair.touch(blob_id)
        log.debug("stored %s of blob %s", name, blob_id)
        answer = {"blob_id": str(blob_id), "pair": pair, "kind": kind.name.lower(), "stored": True}
        # With the last of its slivers the writer gets the confirmation, sparing a round trip.
        if complete:
            answer["confirmation"] = self._confirmation(blob_id).to_dict()
        return json_response(answer, 201 if created else 200)

    def _verify_and_store(self, blob_id: BlobId, pair: int, kind: SliverKind, metadata: BlobMetadata,
                          image: ObjectImage, signed: SignedRequest) -> tuple[bool, bool]:
        """Verify the sliver received into ``image`` and store it unless it is already stored;
        whether it was new, and whether the node now holds every sliver of the blob it should."""
        self._check_body(signed, image.payload)  # a no-op unless the writer chose to sign the body
        try:
            sliver = Sliver.from_bytes(image.payload)
        except FormatError as error:
            raise HTTPError(400, "bad_sliver", str(error)) from None
        index = pair if kind is SliverKind.PRIMARY else self.geometry.secondary_of_pair(pair)
        if sliver.blob_id != blob_id or sliver.kind is not kind or sliver.index != index:
            raise HTTPError(422, "wrong_sliver",
                            f"pair {pair} {kind.name.lower()} of blob {blob_id} is {kind.name.lower()} "
                            f"sliver {index}; the body is {sliver.kind.name.lower()} sliver "
                            f"{sliver.index} of blob {sliver.blob_id}")
        try:
            verify_sliver(metadata, sliver)
        except SliverVerificationError as error:
            log.warning("refused %s sliver %d of blob %s: %s", kind.name.lower(), index, blob_id, error)
            raise HTTPError(422, "verification_failed", str(error)) from None
        name = sliver_name(pair, kind)
        del sliver  # a view of the image, whose memory is reused after the request
        created = not self.store.has(blob_id, name)  # else the same verified bytes are durable
        if created:
            self.store.put_sliver(blob_id, pair, kind, image)
        return created, not self._missing(blob_id)

    async def get_sliver(self, request: Request, blob_id: BlobId, pair: int, kind: SliverKind) -> Response:
        self._check_shard(blob_id, pair)
        payload = await self._read(blob_id, sliver_name(pair, kind))
        if payload is None:
            raise _sliver_not_found(blob_id, pair, kind)
        span = byte_range(request.headers.get("range"), len(payload))
        if span is None:
            return Response(200, payload, OCTETS, [("accept-ranges", "bytes")])
        start, end = span
        content_range = f"bytes {start}-{end - 1}/{len(payload)}"
        return Response(206, payload[start:end], OCTETS,
                        [("accept-ranges", "bytes"), ("content-range", content_range)])

    async def recovery_symbol(self, request: Request, blob_id: BlobId, pair: int, kind: SliverKind,
                              target: int) -> Response:
        self._check_shard(blob_id, pair)
        if REPAIR_HEADER in request.headers:  # a peer repairing: its own bounded pool, may get 429
            return await self.repair_api.serve_symbol(blob_id, pair, kind, target)
        expansion = await self.repair.expansion(blob_id, pair, kind, self.executor)
        return Response(200, expansion.symbol_for(target).to_bytes(), OCTETS)

    def _pairs(self, blob_id: BlobId) -> list[tuple[int, int]]:
        """(shard, pair) for each shard of this node, for one blob."""
        return [(shard, self.geometry.pair_of_shard(shard, blob_id.raw)) for shard in self.shards]

    def _missing(self, blob_id: BlobId) -> list[str]:
        return [f"pair {pair} {kind.name.lower()}" for _, pair in self._pairs(blob_id) for kind in SliverKind
                if not self.store.has(blob_id, sliver_name(pair, kind))]

    async def status(self, request: Request, blob_id: BlobId) -> Response:
        def collect() -> dict[str, Any]:
            store = self.store
            shards = []
            for shard, pair in self._pairs(blob_id):
                entry: dict[str, Any] = {"shard": shard, "pair": pair}
                for kind in SliverKind:
                    state = store.object_state(blob_id, sliver_name(pair, kind))
                    index = pair if kind is SliverKind.PRIMARY else self.geometry.secondary_of_pair(pair)
                    entry[kind.name.lower()] = {"index": index, "stored": state in ("ok", "unread"),
                                                "state": state}
                shards.append(entry)
            metadata_state = store.object_state(blob_id, METADATA)
            metadata_stored = metadata_state in ("ok", "unread")
            return {
                "blob_id": str(blob_id), "node_id": self.config.node_id, "epoch": self.committee.epoch,
                "metadata": {"stored": metadata_stored, "state": metadata_state},
                "shards": shards, "complete": metadata_stored and not self._missing(blob_id),
            }

        return json_response(await self._in_worker(collect))

    async def confirmation(self, request: Request, blob_id: BlobId) -> Response:
        if await self._metadata(blob_id) is None:
            raise HTTPError(404, "not_found", f"no metadata for blob {blob_id}")
        missing = await self._in_worker(self._missing, blob_id)
        if missing:
            raise HTTPError(409, "incomplete", f"this node lacks {len(missing)} slivers of blob {blob_id}",
                            missing=missing)
        return Response(200, self._confirmation(blob_id).to_json().encode())

    def _confirmation(self, blob_id: BlobId) -> Confirmation:
        unsigned = Confirmation(self.committee.epoch, blob_id, self.config.node_id, self.shards)
        return unsigned.signed_by(self.key)

    async def delete_blob(self, request: Request, blob_id: BlobId) -> Response:
        # Journalled: replayed later (after the blob was stored again) it would destroy data.
        signed = await self._authorize(request, durable=True)
        self._check_body(signed, b"")  # the body is ignored; the signature must say there was none
        await self._in_worker(self.store.bury, blob_id)  # so that repair does not bring it back
        deleted = await self._in_worker(self.store.delete_blob, blob_id)
        self.forget_cached(blob_id)
        if not deleted:
            raise HTTPError(404, "not_found", f"blob {blob_id} is not stored here")
        log.info("deleted blob %s", blob_id)
        return json_response({"blob_id": str(blob_id), "deleted": True})


def _unauthorized(error: AuthError) -> HTTPError:
    status = 403 if error.forbidden else 401
    return HTTPError(status, "unauthorized" if status == 401 else "forbidden", str(error),
                     [("www-authenticate", AUTH_SCHEME)])


def _parse_fs_id(text: str) -> str:
    if not is_fs_id(text):
        raise HTTPError(400, "bad_fs_id", f"not a filesystem ID: {text[:40]!r} (expected 32 hex digits)")
    return text


def _parse_blob_id(text: str) -> BlobId:
    if not text.isascii():  # BlobId.parse lets non-ASCII letters through to base64 (a ValueError)
        raise HTTPError(400, "bad_blob_id", f"not a blob ID: {text[:60]!r}")
    try:
        return BlobId.parse(text)
    except FormatError as error:
        raise HTTPError(400, "bad_blob_id", str(error)) from None


def _sliver_not_found(blob_id: BlobId, pair: int, kind: SliverKind) -> HTTPError:
    return HTTPError(404, "not_found", f"pair {pair} {kind.name.lower()} of blob {blob_id} is not stored")


def _parse_kind(text: str) -> SliverKind:
    if text not in ("primary", "secondary"):
        raise HTTPError(400, "bad_kind", f"sliver kind is 'primary' or 'secondary', not {text[:20]!r}")
    return SliverKind.parse(text)


async def _lifespan(receive: Receive, send: Send, repair: RepairService, memory: MemoryKeeper) -> None:
    """Repair and the memory keeper run in the server's event loop from startup to shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            repair.start()
            memory.start()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await memory.stop()
            await repair.stop()
            await send({"type": "lifespan.shutdown.complete"})
            return
