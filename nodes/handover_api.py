"""The HTTP side of the handover (docs/node-api.md): the handover status, a shard's blob listing
(for its new holder) and the new holder's synced statement (for its old holder)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from walrusfs.errors import UserError
from walrusfs.protocol import routes
from walrusfs.protocol.handover import BlobListing, HandoverError, ShardSynced
from walrusfs.protocol.roots import is_fs_id
from walrusfs.redstuff import BlobId, FormatError

from .core import NodeCore
from .handover import HandoverService
from .http import HTTPError, Request, Response, json_response

Handler = Callable[..., Awaitable[Response]]
MAX_LISTING_PAGE = 1000
MAX_STATEMENT_BODY = 4096


class HandoverAPI:
    def __init__(self, core: NodeCore, service: HandoverService) -> None:
        self.core = core
        self.service = service

    def routes(self) -> dict[str, dict[str, Handler]]:
        return {
            routes.HANDOVER: {"GET": self.status},
            routes.SHARD_BLOBS: {"GET": self.shard_blobs},
            routes.SHARD_SYNCED: {"POST": self.synced},
            routes.HANDOVER_ROOTS: {"GET": self.root_ids},
            routes.HANDOVER_TOMBSTONES: {"GET": self.tombstone_ids},
            routes.HANDOVER_LEASES: {"GET": self.lease_ids},
        }

    async def status(self, request: Request) -> Response:
        return json_response(self.service.status.to_dict())

    def _shard(self, request: Request) -> int:
        """The shard in the path (``/v1/shards/{shard}/...``)."""
        text, n_shards = request.segments[2], self.core.geometry.n_shards
        if not text.isdigit() or len(text) > 5 or int(text) >= n_shards:
            raise HTTPError(400, "bad_index", f"shard {text[:20]!r} is not an integer in [0, {n_shards})")
        return int(text)

    async def shard_blobs(self, request: Request) -> Response:
        shard = self._shard(request)
        after = request.query.get("after")
        if after is not None:
            try:
                after = str(BlobId.parse(after))
            except FormatError as error:
                raise HTTPError(400, "bad_query", f"after: {error}") from None
        limit = request.query.get("limit", "200")
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_LISTING_PAGE:
            raise HTTPError(400, "bad_query", f"limit must be an integer in [1, {MAX_LISTING_PAGE}]")
        blobs, following = await self.core.in_worker(self.service.shard_blobs, shard, after, int(limit))
        return json_response(BlobListing(shard, tuple(blobs), following).to_dict())

    async def root_ids(self, request: Request) -> Response:
        """The filesystems whose root records this node holds (what a node new to them copies)."""
        return await self._id_page(request, "fs_ids", is_fs_id, "a filesystem ID",
                                   lambda: self.service.roots.files.ids())

    async def tombstone_ids(self, request: Request) -> Response:
        """The blobs a writer deleted here (nodes.handover_records takes those f + 1 shards' nodes list)."""
        return await self._id_page(request, "blob_ids", _is_blob_id, "a blob ID",
                                   lambda: sorted(self.core.store.tombstones))

    async def lease_ids(self, request: Request) -> Response:
        """The filesystems this node holds a writer lease of (each one is ``GET /v1/leases/{fs_id}``)."""
        leases = self.service.leases
        return await self._id_page(request, "fs_ids", is_fs_id, "a filesystem ID",
                                   lambda: leases.files.ids() if leases is not None else [])

    async def _id_page(self, request: Request, field: str, valid: Callable[[str], bool], what: str,
                       every: Callable[[], list[str]]) -> Response:
        """One page of a sorted ID listing: ``{"version": 1, field: [...], "next": cursor or null}``."""
        after = request.query.get("after")
        if after is not None and not valid(after):
            raise HTTPError(400, "bad_query", f"after: not {what}: {after[:80]!r}")
        limit = request.query.get("limit", "1000")
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_LISTING_PAGE:
            raise HTTPError(400, "bad_query", f"limit must be an integer in [1, {MAX_LISTING_PAGE}]")
        ids = [i for i in await self.core.in_worker(every) if after is None or i > after][:int(limit)]
        return json_response({"version": 1, field: ids, "next": ids[-1] if len(ids) == int(limit) else None})

    async def synced(self, request: Request) -> Response:
        shard = self._shard(request)
        # The statement certifies itself (signed by the shard's new holder): no request signature.
        body = await request.read_body(MAX_STATEMENT_BODY)
        try:
            statement = ShardSynced.from_json(bytes(body))
        except HandoverError as error:
            raise HTTPError(400, "bad_statement", str(error)) from None
        if statement.shard != shard:
            raise HTTPError(400, "bad_statement", f"the statement is about shard {statement.shard}, posted for "
                            f"shard {shard}")
        try:
            committee = self.core.committee_at(statement.epoch)
        except UserError as error:  # ChainError: an epoch this node has not adopted (yet)
            raise HTTPError(409, "unknown_epoch", f"{error}; send this node the committee links it lacks "
                            f"(POST {routes.COMMITTEE_NEXT}) and retry", epoch=statement.epoch) from None
        try:
            statement.verify(committee)
        except HandoverError as error:
            raise HTTPError(403, "forged_statement", str(error)) from None
        me = self.core.node_id
        try:
            before = self.core.committee_at(statement.epoch - 1)
        except UserError:
            before = None  # the epoch of this node's anchor: it held nothing before it
        if before is None or not before.has_node(me) or shard not in before.shards_of(me):
            raise HTTPError(409, "not_old_holder", f"this node did not hold shard {shard} in epoch "
                            f"{statement.epoch - 1}: it has nothing of it to hand over")
        if shard in self.core.shards:
            raise HTTPError(409, "shard_held", f"this node holds shard {shard} again in its current epoch "
                            f"{self.core.committee.epoch}: it keeps its slivers")
        return json_response(await self.service.release(statement))


def _is_blob_id(text: str) -> bool:
    try:
        BlobId.parse(text)
    except FormatError:
        return False
    return True
