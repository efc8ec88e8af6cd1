"""The storage node's HTTP API (raw ASGI), documented route by route in docs/node-api.md.

Reads are public; writes and deletions need a committee writer's signature (walrusfs.protocol).
Everything uploaded is verified against the blob ID in the path before it is stored; everything
served was checksum-verified as it was read from disk. Hashing, erasure coding and disk I/O run in a
thread pool so the event loop only moves bytes.

Length: the routing and the blob, sliver, root and inventory routes, which share the request checks;
every other family of routes (repair, leases, epochs, handover) is its own ``*_api`` module, wired in
here. The next cut is the sliver routes (PUT, GET, recovery symbols) into their own module.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from walrusfs.protocol import SignedRequest, routes
from walrusfs.protocol.chain import CommitteeChain
from walrusfs.protocol.committee import Committee
from walrusfs.protocol.roots import MAX_RECORD_BYTES, RootRecord, RootRecordError
from walrusfs.protocol.wire import Health
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

from . import metrics as metrics_format
from .buffers import ImagePool, ObjectImage
from .claims import OverQuotaError
from .config import NodeConfig
from .core import NodeCore
from .epochs import EpochService
from .epochs_api import EpochsAPI
from .fs_records import parse_fs_id, read_record, store_record
from .handover import HandoverService
from .handover_api import HandoverAPI
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
from .lifecycle_api import LifecycleAPI, over_quota, parse_claim_query, release_owner
from .memory import MemoryKeeper
from .metrics import family
from .repair import RepairService
from .repair_api import RepairAPI
from .roots import RootStore, StaleRecordError
from .store import HEADER_SIZE as STORED_HEADER_SIZE
from .store import (
    METADATA,
    BlobStore,
    MissingMetadataError,
    StoreFullError,
    sliver_name,
)

log = logging.getLogger("nodes.app")
Handler = Callable[..., Awaitable[Response]]

MAX_INVENTORY_PAGE = 10_000


class NodeApp:
    def __init__(self, config: NodeConfig, chain: CommitteeChain | Committee, key: Ed25519PrivateKey,
                 store: BlobStore, workers: int = 8) -> None:
        if isinstance(chain, Committee):  # a node that was never told of another epoch
            chain = CommitteeChain(chain)
        self.core = core = NodeCore(config, chain, key, store, workers)
        # The core's parts under the names the server and the tests know them by.
        self.config, self.key, self.public_key = config, key, core.public_key
        self.store, self.geometry = store, core.geometry
        self.metrics, self.replay, self.expansions = core.metrics, core.replay, core.expansions
        self.executor, self.journal = core.executor, core.journal
        self.connections = ConnectionStats()  # kept by nodes.httpd
        self.memory = MemoryKeeper(self.connections)
        self.images = ImagePool()
        self.repair = RepairService(core)
        self.repair_api = RepairAPI(core, self.repair)
        core.on_quarantine = self._quarantined
        largest = self.geometry.layout(min(config.max_blob_size, self.geometry.max_blob_length))
        # The largest sliver any blob this node accepts can have: the bound checked on Content-Length.
        self.max_sliver_body = SLIVER_HEADER_SIZE + largest.primary_sliver_size
        self.metadata_body = BlobMetadata.wire_size(self.geometry.n_shards)
        self.roots = RootStore(store.root)
        self.roots.open()
        self.leases = LeaseStore(store.root)
        self.leases.open()
        self.lease_api = LeaseAPI(core, self.leases)
        self.epochs = EpochService(core)
        self.epochs_api = EpochsAPI(core, self.epochs)
        self.handover = HandoverService(core, self.repair, self.roots, self.leases)  # registers itself with the core
        self.handover_api = HandoverAPI(core, self.handover)
        self.lifecycle_api = LifecycleAPI(core)
        self._handlers = self._routes()

    @property
    def committee(self) -> Committee:
        return self.core.committee

    @property
    def shards(self) -> tuple[int, ...]:
        return self.core.shards

    # --- ASGI entry point --------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, self.core, self.repair, self.memory, self.epochs, self.handover,
                            self.lifecycle_api)
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
        # Every answer says the node's epoch: a client that sees a newer one fetches the chain.
        response.headers = [*response.headers, (routes.EPOCH_HEADER, str(self.core.committee.epoch))]
        sent = await response.send(send, head_only=scope["method"] == "HEAD")
        received = request.received if request else 0
        self.metrics.request(route, scope["method"], response.status, received, sent)

    def _routes(self) -> dict[str, dict[str, Handler]]:
        """The handlers of each route (walrusfs.protocol.routes), by method."""
        return {
            routes.HEALTH: {"GET": self.health},
            routes.METRICS: {"GET": self.prometheus},
            routes.INVENTORY: {"GET": self.inventory},
            routes.ROOT: {"GET": self.get_root, "PUT": self.put_root},
            routes.BLOB: {"DELETE": self.delete_blob},
            routes.BLOB_METADATA: {"GET": self.get_metadata, "PUT": self.put_metadata},
            routes.BLOB_STATUS: {"GET": self.status},
            routes.BLOB_CONFIRMATION: {"GET": self.confirmation},
            routes.BLOB_SLIVER: {"GET": self.get_sliver, "PUT": self.put_sliver},
            routes.BLOB_RECOVERY: {"GET": self.recovery_symbol},
            **self.repair_api.routes(),
            **self.lease_api.routes(),
            **self.epochs_api.routes(),
            **self.handover_api.routes(),
            **self.lifecycle_api.routes(),
        }

    def _route(self, request: Request) -> tuple[str, Handler, tuple[Any, ...]]:
        found = routes.match(request.segments)
        if found is None:
            self._explain_no_route(request)
        route, params = found.route, found.params
        table = self._handlers[route]
        args: tuple[Any, ...] = ()
        if "fs_id" in params:
            args = (params["fs_id"],)
        elif "id" in params:  # parsed in this order, so a path wrong in several ways gets the first error
            args = (_parse_blob_id(params["id"]),)
            if "pair" in params:
                args += (self._parse_index(params["pair"], "pair index"), _parse_kind(params["kind"]))
            if "target" in params:
                args += (self._parse_index(params["target"], "target index"),)
        if request.method == "HEAD" and "GET" in table:
            return route, table["GET"], args
        if request.method not in table:
            allowed = ", ".join(sorted(table))
            raise HTTPError(405, "method_not_allowed", f"{route} allows {allowed}", [("allow", allowed)])
        return route, table[request.method], args

    def _explain_no_route(self, request: Request) -> NoReturn:
        """404 for a path that is no route; but a bad blob ID, pair index or sliver kind in a path
        under /v1/blobs/ is answered 400 for what is wrong with it."""
        s = request.segments
        if len(s) >= 3 and s[:2] == ["v1", "blobs"]:
            _parse_blob_id(s[2])
            rest = s[3:]
            if len(rest) in (3, 5) and rest[0] == "slivers":
                self._parse_index(rest[1], "pair index")
                _parse_kind(rest[2])
            raise HTTPError(404, "no_route", f"no route /v1/blobs/{s[2]}/{'/'.join(rest)[:80]}")
        raise HTTPError(404, "no_route", f"no route {request.target[:100]}")

    def _parse_index(self, text: str, what: str) -> int:
        if not text.isdigit() or len(text) > 5 or int(text) >= self.geometry.n_shards:
            raise HTTPError(400, "bad_index",
                            f"{what} {text[:20]!r} is not an integer in [0, {self.geometry.n_shards})")
        return int(text)

    # --- helpers -----------------------------------------------------------------------------------

    def _quarantined(self, blob_id: BlobId) -> None:
        """An object of the blob failed its checksum: repair rebuilds it if the blob is certified."""
        if self.repair.knows_certified(str(blob_id)):
            self.repair.enqueue(str(blob_id))

    # --- routes ------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        stats = self.store.stats
        return json_response(Health(
            # public_key: lets `walrusfs cluster up` tell this node from another network's node
            # that answers on the same port (both are called node-0).
            ok=True, node_id=self.config.node_id, public_key=self.public_key, epoch=self.committee.epoch,
            n_shards=self.geometry.n_shards, shards=list(self.shards), standby=self.core.standby,
            blobs=stats.blobs, bytes=stats.bytes, quarantined=stats.quarantined,
            free_bytes=self.lifecycle_api.space()["free_bytes"],
        ).to_dict())

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
            self.repair_api.metrics_lines() + self._connection_lines() + self.lifecycle_api.metrics_lines(),
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
        blob_ids = await self.core.in_worker(self.store.list_blobs, after, limit)
        return json_response({"blob_ids": blob_ids, "next": blob_ids[-1] if len(blob_ids) == limit else None})

    async def get_root(self, request: Request, fs_id: str) -> Response:
        record = await self.core.in_worker(self.roots.get, parse_fs_id(fs_id))
        if record is None:
            raise HTTPError(404, "not_found", f"this node holds no root record for filesystem {fs_id}")
        return Response(200, record.to_json(), "application/json")

    async def put_root(self, request: Request, fs_id: str) -> Response:
        fs_id, record = await read_record(self.core, request, fs_id, MAX_RECORD_BYTES, _verified_root,
                                          RootRecordError, "bad_root_record")
        try:
            replaced = await store_record(self.core, self.leases.put_fenced, self.roots, record)
        except FencedError as error:
            raise fenced_error(error) from None
        except StaleRecordError as error:
            raise HTTPError(409, "stale_root_record", str(error), seq=error.stored.seq) from None
        return json_response({"fs_id": fs_id, "seq": record.seq}, 201 if replaced else 200)

    async def put_metadata(self, request: Request, blob_id: BlobId) -> Response:
        # Journalled: storing metadata (re)creates a blob, so a replay after a later DELETE would bring
        # the deleted blob back; slivers and certificates are refused (409) without it.
        signed = await self.core.authorize(request, durable=True)
        owner, expires = parse_claim_query(request)
        body = await request.read_body(self.metadata_body)
        self.core.check_body(signed, body)
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
            created, granted = await self.core.in_worker(self.core.claims.store_and_claim, blob_id, bytes(body),
                                                         owner, expires, signed.writer, self._charge(metadata))
        except StoreFullError:
            raise self.core.disk_full() from None
        except OverQuotaError as error:
            log.warning("refused blob %s: %s", blob_id, error)
            raise over_quota(error) from None
        except MissingMetadataError:
            raise HTTPError(409, "metadata_missing", f"blob {blob_id} was deleted meanwhile: PUT its metadata "
                            "again") from None
        self.repair.touch(blob_id)
        if created:
            log.info("stored metadata of blob %s (%d bytes)", blob_id, metadata.blob_length)
        return json_response({"blob_id": str(blob_id), "stored": True, "owner": owner, "expires": granted},
                             201 if created else 200)

    def _charge(self, metadata: BlobMetadata) -> int:
        """What a blob costs its writers' quotas here: its metadata and this node's slivers, stored."""
        layout = metadata.layout
        slivers = sum(2 * (STORED_HEADER_SIZE + SLIVER_HEADER_SIZE) + layout.sliver_size(True)
                      + layout.sliver_size(False) for _ in self.core.shards)
        return STORED_HEADER_SIZE + self.metadata_body + slivers

    async def get_metadata(self, request: Request, blob_id: BlobId) -> Response:
        payload = await self.core.read_object(blob_id, METADATA)
        if payload is None:
            raise HTTPError(404, "not_found", f"no metadata for blob {blob_id}")
        return Response(200, payload, OCTETS)

    async def put_sliver(self, request: Request, blob_id: BlobId, pair: int, kind: SliverKind) -> Response:
        # Slivers certify themselves against the stored metadata: the signature may leave them unbound.
        signed = await self.core.authorize(request, body_bound=False)
        length = request.content_length()
        if length is not None and length > self.max_sliver_body:
            raise HTTPError(413, "too_large", f"body of {length} bytes; no sliver of a blob this node "
                            f"accepts exceeds {self.max_sliver_body}")
        shards = self.core.shards
        self.core.check_shard(blob_id, pair)
        metadata = await self.core.require_metadata(blob_id)
        expected = SLIVER_HEADER_SIZE + metadata.layout.sliver_size(kind is SliverKind.PRIMARY)
        if length is not None and length != expected:
            raise HTTPError(413 if length > expected else 400, "wrong_size",
                            f"a {kind.name.lower()} sliver of this blob is {expected} bytes, not {length}")
        name = sliver_name(pair, kind)
        try:
            with self.images.image(STORED_HEADER_SIZE, expected) as image:
                await request.read_body_into(image.payload)
                created, complete = await self.core.in_worker(self._verify_and_store, blob_id, pair, kind,
                                                          metadata, image, signed)
        except StoreFullError:
            raise self.core.disk_full() from None
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
            with contextlib.suppress(HTTPError):  # the epoch changed meanwhile: the writer asks again
                answer["confirmation"] = self.core.confirmation(blob_id, shards).to_dict()
        return json_response(answer, 201 if created else 200)

    def _verify_and_store(self, blob_id: BlobId, pair: int, kind: SliverKind, metadata: BlobMetadata,
                          image: ObjectImage, signed: SignedRequest) -> tuple[bool, bool]:
        """Verify the sliver received into ``image`` and store it unless it is already stored;
        whether it was new, and whether the node now holds every sliver of the blob it should."""
        self.core.check_body(signed, image.payload)  # a no-op unless the writer chose to sign the body
        try:
            sliver = Sliver.from_bytes(image.payload)
        except FormatError as error:
            raise HTTPError(400, "bad_sliver", str(error)) from None
        index = self.geometry.sliver_of_pair(pair, kind)
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
        return created, not self.core.missing(blob_id)

    async def get_sliver(self, request: Request, blob_id: BlobId, pair: int, kind: SliverKind) -> Response:
        self.core.check_serving(blob_id, pair)
        payload = await self.core.read_object(blob_id, sliver_name(pair, kind))
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
        self.core.check_serving(blob_id, pair)
        if routes.REPAIR_HEADER in request.headers:  # a peer repairing: its own bounded pool, may get 429
            return await self.repair_api.serve_symbol(blob_id, pair, kind, target)
        expansion = await self.repair.expansion(blob_id, pair, kind, self.executor)
        return Response(200, expansion.symbol_for(target).to_bytes(), OCTETS)

    def _pairs(self, blob_id: BlobId) -> list[tuple[int, int]]:
        """(shard, pair) for each shard of this node, for one blob."""
        return [(shard, self.geometry.pair_of_shard(shard, blob_id.raw)) for shard in self.shards]

    def _missing(self, blob_id: BlobId) -> list[str]:
        return [f"pair {pair} {kind.name.lower()}" for _, pair in self.core.pairs(blob_id) for kind in SliverKind
                if not self.store.has(blob_id, sliver_name(pair, kind))]

    async def status(self, request: Request, blob_id: BlobId) -> Response:
        def collect() -> dict[str, Any]:
            store = self.store
            shards = []
            for shard, pair in self.core.pairs(blob_id):
                entry: dict[str, Any] = {"shard": shard, "pair": pair}
                for kind in SliverKind:
                    state = store.object_state(blob_id, sliver_name(pair, kind))
                    index = self.geometry.sliver_of_pair(pair, kind)
                    entry[kind.name.lower()] = {"index": index, "stored": state in ("ok", "unread"),
                                                "state": state}
                shards.append(entry)
            metadata_state = store.object_state(blob_id, METADATA)
            metadata_stored = metadata_state in ("ok", "unread")
            return {
                "blob_id": str(blob_id), "node_id": self.config.node_id, "epoch": self.committee.epoch,
                "metadata": {"stored": metadata_stored, "state": metadata_state},
                "shards": shards, "complete": metadata_stored and not self.core.missing(blob_id),
            }

        return json_response(await self.core.in_worker(collect))

    async def confirmation(self, request: Request, blob_id: BlobId) -> Response:
        shards = self.core.shards
        if not shards:
            self.core.confirmation(blob_id)  # 421: this node confirms nothing in this epoch
        if await self.core.metadata(blob_id) is None:
            raise HTTPError(404, "not_found", f"no metadata for blob {blob_id}")
        missing = await self.core.in_worker(self.core.missing, blob_id)
        if missing:
            raise HTTPError(409, "incomplete", f"this node lacks {len(missing)} slivers of blob {blob_id}",
                            missing=missing)
        return Response(200, self.core.confirmation(blob_id, shards).to_json().encode())

    async def delete_blob(self, request: Request, blob_id: BlobId) -> Response:
        # Journalled: replayed later (after the blob was stored again) it would destroy data.
        signed = await self.core.authorize(request, durable=True)
        self.core.check_body(signed, b"")  # the body is ignored; the signature must say there was none
        owner = release_owner(request)
        if owner is None:  # everything goes, whoever claims it (an operator's tool); tombstoned
            deleted = await self.core.in_worker(self.core.claims.delete, blob_id)
            self.core.forget_cached(blob_id)
            if not deleted:
                raise HTTPError(404, "not_found", f"blob {blob_id} is not stored here")
            log.info("deleted blob %s", blob_id)
            return json_response({"blob_id": str(blob_id), "deleted": True, "claims_left": 0})
        outcome = await self.core.in_worker(self.core.claims.release, blob_id, owner)
        if outcome is None:
            raise HTTPError(404, "not_found", f"blob {blob_id} is not stored here")
        deleted, left = outcome
        if deleted:
            self.core.forget_cached(blob_id)
            log.info("deleted blob %s: its last claim (%s) was released", blob_id, owner)
        return json_response({"blob_id": str(blob_id), "deleted": deleted, "claims_left": left})


def _verified_root(body: bytes, fs_id: str) -> RootRecord:
    record = RootRecord.from_json(body)
    record.verify(fs_id)
    return record


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


async def _lifespan(receive: Receive, send: Send, core: NodeCore, repair: RepairService, memory: MemoryKeeper,
                    epochs: EpochService, handover: HandoverService, lifecycle: LifecycleAPI) -> None:
    """Repair, the memory keeper, the epoch follower and the handover run in the server's event loop
    from startup to shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            repair.start()
            memory.start()
            epochs.start()
            lifecycle.start()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await lifecycle.stop()
            await epochs.stop()
            await handover.stop()
            await memory.stop()
            await repair.stop()
            core.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
