"""Blob claims over HTTP (docs/node-api.md, "Claims"), the expiry sweeper, and space figures.

    PUT    /v1/blobs/{id}/metadata?owner=<fs id>&expires=<unix>   claim at store (nodes.app)
    DELETE /v1/blobs/{id}?owner=<fs id>                           release one owner's claim (nodes.app)
    POST   /v1/owners/{fs_id}/renewals                            extend an owner's claims (here)

The sweeper deletes, every ``[lifecycle] sweep_interval`` seconds, the blobs whose claims have all
expired (nodes.claims.ClaimStore.sweep).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
from typing import Any
from urllib.parse import parse_qsl

from walrusfs.protocol import routes
from walrusfs.redstuff import BlobId, FormatError

from .claims import FILE_FORMAT as CLAIMS_FORMAT
from .claims import Claim, OverQuotaError
from .core import NodeCore
from .fs_records import parse_fs_id
from .http import HTTPError, Request, Response, json_response
from .metrics import family

log = logging.getLogger("nodes.lifecycle")

RENEWAL_FORMAT = 1
MAX_RENEWAL_BLOBS = 1000
MAX_RENEWAL_BODY = 64 + MAX_RENEWAL_BLOBS * 64  # a blob ID is 43 characters, quoted and separated
MAX_EXPIRY = (1 << 63) - 1


def parse_claim_query(request: Request) -> tuple[str, int | None]:
    """(owner, requested expiry) of a metadata PUT: ("", None) without them (the node's default)."""
    owner = request.query.get("owner", "")
    if owner:
        parse_fs_id(owner)
    text = request.query.get("expires")
    if text is None:
        return owner, None
    if not text.isdigit() or int(text) > MAX_EXPIRY:
        raise HTTPError(400, "bad_expires", f"expires must be a unix time in seconds, not {text[:30]!r}")
    return owner, int(text)


def release_owner(request: Request) -> str | None:
    """The owner a DELETE releases, None for a DELETE without ``owner`` (everything goes). An empty
    or malformed owner is refused (400): it must never fall back to deleting everything."""
    query = request.target.partition("?")[2]
    values = [value for name, value in parse_qsl(query, keep_blank_values=True) if name == "owner"]
    if not values:
        return None
    if len(values) > 1:
        raise HTTPError(400, "bad_owner", "name one owner per DELETE")
    return parse_fs_id(values[0])


def over_quota(error: OverQuotaError) -> HTTPError:
    return HTTPError(403, "over_quota", str(error), used=error.used, cap=error.cap, writer=error.writer)


class LifecycleAPI:
    def __init__(self, core: NodeCore) -> None:
        self.core = core
        self.claims = core.claims
        self._sweeper: asyncio.Task | None = None

    def routes(self) -> dict[str, dict[str, Any]]:
        return {routes.OWNER_RENEWALS: {"POST": self.renew}, routes.BLOB_CLAIMS: {"GET": self.get_claims}}

    async def get_claims(self, request: Request, blob_id: BlobId) -> Response:
        claims = await self.core.in_worker(self.claims.claims_of, blob_id)
        if not claims:
            raise HTTPError(404, "not_found", f"this node holds no claims on blob {blob_id} (it does not store it)")
        return json_response(claims_json(blob_id, claims))

    async def renew(self, request: Request, fs_id: str) -> Response:
        # Not journalled: a replay extends claims to a time the writer signed for, nothing more.
        signed = await self.core.authorize(request)
        owner = parse_fs_id(fs_id)
        body = await request.read_body(MAX_RENEWAL_BODY)
        self.core.check_body(signed, body)
        expires, blob_ids = _parse_renewal(bytes(body))
        granted, renewed, unknown = await self.core.in_worker(self.claims.renew, owner, blob_ids, expires,
                                                              signed.writer)
        log.info("renewed %d blobs of %s until %d (%d unknown here)", len(renewed), owner, granted, len(unknown))
        return json_response({"format": RENEWAL_FORMAT, "granted": granted, "renewed": renewed, "unknown": unknown})

    # --- the sweeper -------------------------------------------------------------------------------

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep_forever(self) -> None:
        interval = self.core.config.lifecycle.sweep_interval
        while True:
            await asyncio.sleep(interval)
            try:
                deleted = await self.core.in_worker(self.claims.sweep)
            except Exception:  # a failing pass must not end the sweeper: the next one tries again
                log.exception("expiry sweep failed; retrying in %.0f s", interval)
                continue
            for text in deleted:
                self.core.forget_cached(BlobId.parse(text))
            if deleted:
                log.info("expired %d blobs whose claims all ran out: %s", len(deleted),
                         ", ".join(deleted[:10]) + (" ..." if len(deleted) > 10 else ""))

    # --- space -------------------------------------------------------------------------------------

    def space(self) -> dict[str, Any]:
        """Bytes used by stored files, bytes free on the data directory's filesystem, and bytes
        claimed per writer key."""
        disk = shutil.disk_usage(self.core.store.root)
        return {"used_bytes": self.core.store.stats.bytes, "free_bytes": disk.free,
                "writers": self.claims.usage()}

    def metrics_lines(self) -> list[str]:
        space, lines = self.space(), []
        family(lines, "walrusfs_node_used_bytes", "gauge", "Bytes in stored files (as walrusfs_node_stored_bytes).",
               [({}, space["used_bytes"])])
        family(lines, "walrusfs_node_free_bytes", "gauge", "Bytes free on the filesystem of the data directory.",
               [({}, space["free_bytes"])])
        family(lines, "walrusfs_node_writer_claimed_bytes", "gauge",
               "Bytes of blobs claimed by each writer key (what [quotas] caps).",
               [({"writer": writer}, used) for writer, used in sorted(space["writers"].items())])
        family(lines, "walrusfs_node_expired_blobs_total", "counter",
               "Blobs deleted because all their claims expired.", [({}, self.claims.expired_total)])
        return lines


def claims_json(blob_id: BlobId, claims: dict[str, Claim]) -> dict[str, Any]:
    return {"format": CLAIMS_FORMAT, "blob_id": str(blob_id),
            "claims": {owner: {"expires": c.expires, "writer": c.writer} for owner, c in sorted(claims.items())}}


def parse_claims(body: bytes) -> dict[str, Claim]:
    """A peer's ``GET /v1/blobs/{id}/claims`` answer; ValueError if it is not one."""
    try:
        data = json.loads(body)
        if data.get("format") != CLAIMS_FORMAT:
            raise ValueError(f"claims format {data.get('format')!r}")
        return {str(owner): Claim(int(c["expires"]), str(c["writer"])) for owner, c in data["claims"].items()}
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"not a claims answer: {error}") from None


def _parse_renewal(body: bytes) -> tuple[int, list[BlobId]]:
    try:
        data = json.loads(body)
        if not isinstance(data, dict) or data.get("format") != RENEWAL_FORMAT:
            raise ValueError(f"format must be {RENEWAL_FORMAT}")
        expires, texts = data["expires"], data["blobs"]
        if not isinstance(expires, int) or isinstance(expires, bool) or not 0 <= expires <= MAX_EXPIRY:
            raise ValueError("expires must be a unix time in seconds")
        if not isinstance(texts, list) or len(texts) > MAX_RENEWAL_BLOBS:
            raise ValueError(f"blobs must be a list of at most {MAX_RENEWAL_BLOBS} blob IDs")
        return expires, [BlobId.parse(text) for text in texts]
    except (ValueError, KeyError, TypeError, AttributeError, FormatError) as error:
        raise HTTPError(400, "bad_renewal", f"not a renewal request ({error}): send "
                        '{"format": 1, "expires": <unix seconds>, "blobs": [<blob id>, ...]}') from None
