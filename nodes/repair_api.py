"""The HTTP side of self-healing (docs/node-api.md): certificates, the certified feed, inconsistency
proofs, repair status, and recovery symbols for peers served from their own bounded pool."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from walrusfs.protocol import routes
from walrusfs.protocol.certificates import CertificateError
from walrusfs.redstuff import BlobId, FormatError, SliverKind

from .core import NodeCore
from .feed import MAX_PAGE
from .http import OCTETS, HTTPError, Request, Response, json_response
from .metrics import family
from .store import CERTIFICATE, INCONSISTENCY, MissingMetadataError, StoreFullError

if TYPE_CHECKING:
    from .repair import RepairService

Handler = Callable[..., Awaitable[Response]]
MAX_CERTIFICATE_BODY = 256 << 10  # 256 confirmations of ~300 bytes of JSON, with room to spare


class RepairAPI:
    def __init__(self, core: NodeCore, service: RepairService) -> None:
        self.core = core
        self.service = service
        self.store = core.store
        # Peers' symbol requests wait for the core's serve_executor, never for the foreground pool;
        # beyond ``serve_queue`` waiting they are refused with 429 so that the asking nodes back off.
        self._serve_slots = asyncio.Semaphore(service.config.serve_workers)
        self._serve_waiting = 0
        self.served_symbols = 0
        self.refused_symbols = 0

    def routes(self) -> dict[str, dict[str, Handler]]:
        return {
            routes.CERTIFIED: {"GET": self.certified},
            routes.REPAIR_STATUS: {"GET": self.repair_status},
            routes.BLOB_CERTIFICATE: {"GET": self.get_certificate, "PUT": self.put_certificate},
            routes.BLOB_INCONSISTENCY: {"GET": self.get_inconsistency},
        }

    async def _object(self, blob_id: BlobId, name: str, what: str) -> bytes:
        payload = await self.core.read_object(blob_id, name)
        if payload is None:
            raise HTTPError(404, "not_found", f"no {what} for blob {blob_id} on this node")
        return payload

    # --- routes --------------------------------------------------------------------------------------

    async def certified(self, request: Request) -> Response:
        since, limit = request.query.get("since", "0"), request.query.get("limit", "500")
        if not since.isdigit() or not limit.isdigit() or not 1 <= int(limit) <= MAX_PAGE:
            raise HTTPError(400, "bad_query", f"since must be an integer >= 0 and limit one in [1, {MAX_PAGE}]")
        return json_response((await self.service.feed.page(int(since), int(limit))).to_dict())

    async def repair_status(self, request: Request) -> Response:
        return json_response(self.service.status().to_dict())

    async def get_certificate(self, request: Request, blob_id: BlobId) -> Response:
        return Response(200, await self._object(blob_id, CERTIFICATE, "certificate"))

    async def get_inconsistency(self, request: Request, blob_id: BlobId) -> Response:
        return Response(200, await self._object(blob_id, INCONSISTENCY, "inconsistency proof"), OCTETS)

    async def put_certificate(self, request: Request, blob_id: BlobId) -> Response:
        # Not journalled: a certificate certifies itself and needs the blob's metadata stored (409).
        signed = await self.core.authorize(request)
        body = await request.read_body(MAX_CERTIFICATE_BODY)
        self.core.check_body(signed, body)
        service = self.service
        try:
            text = await self.core.in_worker(service.verify_certificate, blob_id, bytes(body))
        except (FormatError, CertificateError) as error:
            raise HTTPError(422, "not_certified", str(error)) from None
        blob = str(blob_id)
        if blob in self.store.certified:
            return json_response({"blob_id": blob, "stored": True}, 200)
        try:
            await self.core.in_worker(self.store.bury, blob_id, True)
            await self.core.in_worker(self.store.put_object, blob_id, CERTIFICATE, text.encode())
        except MissingMetadataError:
            raise HTTPError(409, "metadata_missing",
                            f"this node has no metadata for blob {blob_id}: PUT its metadata first") from None
        except StoreFullError:
            raise self.core.disk_full() from None
        service.feed.append(blob)
        service.enqueue(blob)  # anything the writer did not deliver here is recovered after the grace
        return json_response({"blob_id": blob, "stored": True}, 201)

    async def serve_symbol(self, blob_id: BlobId, pair: int, kind: SliverKind, target: int) -> Response:
        if self._serve_waiting >= self.service.config.serve_queue:
            self.refused_symbols += 1
            raise HTTPError(429, "busy", "this node is serving as many recovery symbols as it will; retry later",
                            [("retry-after", "1")])
        self._serve_waiting += 1
        try:
            async with self._serve_slots:
                expansion = await self.service.expansion(blob_id, pair, kind, self.core.serve_executor)
        finally:
            self._serve_waiting -= 1
        self.served_symbols += 1
        return Response(200, expansion.symbol_for(target).to_bytes(), OCTETS)

    # --- metrics -------------------------------------------------------------------------------------

    def metrics_lines(self) -> list[str]:
        status = self.service.status().to_dict()
        scrub = status["scrub"]
        lines: list[str] = []
        counters = [
            ("walrusfs_node_repair_recovered_slivers_total", "Slivers rebuilt from recovery symbols.",
             status["recovered_slivers"]),
            ("walrusfs_node_repair_failed_attempts_total", "Sliver recoveries that failed (retried later).",
             status["failed_attempts"]),
            ("walrusfs_node_repair_fetched_bytes_total", "Recovery symbol and metadata bytes fetched.",
             status["bytes_fetched"]),
            ("walrusfs_node_repair_lost_bytes_total", "Bytes of the slivers found missing.", status["bytes_lost"]),
            ("walrusfs_node_repair_disk_full_attempts_total",
             "Repair attempts that found the node's disk full (counted in failed attempts too).",
             status["disk_full_attempts"]),
            ("walrusfs_node_repair_served_symbols_total", "Recovery symbols served to repairing peers.",
             self.served_symbols),
            ("walrusfs_node_repair_refused_symbols_total", "Symbol requests of peers refused with 429.",
             self.refused_symbols),
            ("walrusfs_node_scrub_objects_total", "Objects re-read and verified by the scrubber.", scrub["objects"]),
            ("walrusfs_node_scrub_rot_found_total", "Objects the scrubber found corrupt.", scrub["rot_found"]),
            ("walrusfs_node_scrub_passes_total", "Completed scrub passes.", scrub["passes"]),
        ]
        gauges = [
            ("walrusfs_node_repair_missing_slivers", "Slivers known missing, not yet recovered.",
             status["missing_slivers"]),
            ("walrusfs_node_repair_disk_full", "1 while repair cannot store what it rebuilds: the disk is full.",
             int(status["disk_full"])),
            ("walrusfs_node_certified_blobs", "Blobs with a stored availability certificate.",
             status["certified_blobs"]),
            ("walrusfs_node_invalid_blobs", "Blobs proven inconsistently encoded.", status["invalid_blobs"]),
        ]
        for name, help_text, value in counters:
            family(lines, name, "counter", help_text, [({}, value)])
        for name, help_text, value in gauges:
            family(lines, name, "gauge", help_text, [({}, value)])
        return lines
