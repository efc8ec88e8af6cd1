"""The HTTP side of self-healing (docs/node-api.md): certificates, the certified feed, inconsistency
proofs, repair status, and recovery symbols for peers served from their own bounded pool."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from walrusfs.client.certificate import CertificateError
from walrusfs.redstuff import BlobId, FormatError, SliverKind

from .feed import MAX_PAGE
from .http import OCTETS, HTTPError, Request, Response, json_response
from .metrics import family
from .store import CERTIFICATE, INCONSISTENCY, MissingMetadataError, StoreFullError

if TYPE_CHECKING:
    from .app import NodeApp
    from .repair import RepairService

Handler = Callable[..., Awaitable[Response]]
MAX_CERTIFICATE_BODY = 256 << 10  # 256 confirmations of ~300 bytes of JSON, with room to spare


class RepairAPI:
    def __init__(self, app: NodeApp, service: RepairService) -> None:
        self.app = app
        self.service = service
        self.store = app.store
        # Peers' symbol requests wait for these threads, never for the foreground pool; beyond
        # ``serve_queue`` waiting they are refused with 429 so that the asking nodes back off.
        self.serve_executor = ThreadPoolExecutor(service.config.serve_workers, thread_name_prefix="node-symbols")
        self._serve_slots = asyncio.Semaphore(service.config.serve_workers)
        self._serve_waiting = 0
        self.served_symbols = 0
        self.refused_symbols = 0

    def route(self, s: list[str]) -> tuple[str, dict[str, Handler], tuple[Any, ...]]:
        if s == ["v1", "certified"]:
            return "/v1/certified", {"GET": self.certified}, ()
        if s == ["v1", "repair", "status"]:
            return "/v1/repair/status", {"GET": self.repair_status}, ()
        raise HTTPError(404, "no_route", f"no route /{'/'.join(s)[:80]}")

    def blob_route(self, name: str, blob_id: BlobId) -> tuple[str, dict[str, Handler], tuple[Any, ...]]:
        if name == CERTIFICATE:
            return ("/v1/blobs/{id}/certificate", {"GET": self.get_certificate, "PUT": self.put_certificate},
                    (blob_id,))
        return "/v1/blobs/{id}/inconsistency", {"GET": self.get_inconsistency}, (blob_id,)

    def refuse_if_invalid(self, blob_id: BlobId) -> None:
        if str(blob_id) in self.store.invalid:
            raise HTTPError(410, "blob_invalid",
                            f"blob {blob_id} is inconsistently encoded: it has no content and is never "
                            f"served; GET /v1/blobs/{blob_id}/inconsistency for the proof",
                            proof=f"/v1/blobs/{blob_id}/inconsistency")

    async def _object(self, blob_id: BlobId, name: str, what: str) -> bytes:
        payload = await self.app.read_object(blob_id, name)
        if payload is None:
            raise HTTPError(404, "not_found", f"no {what} for blob {blob_id} on this node")
        return payload

    # --- routes --------------------------------------------------------------------------------------

    async def certified(self, request: Request) -> Response:
        since, limit = request.query.get("since", "0"), request.query.get("limit", "500")
        if not since.isdigit() or not limit.isdigit() or not 1 <= int(limit) <= MAX_PAGE:
            raise HTTPError(400, "bad_query", f"since must be an integer >= 0 and limit one in [1, {MAX_PAGE}]")
        return json_response(await self.service.feed.page(int(since), int(limit)))

    async def repair_status(self, request: Request) -> Response:
        return json_response(self.service.status())

    async def get_certificate(self, request: Request, blob_id: BlobId) -> Response:
        return Response(200, await self._object(blob_id, CERTIFICATE, "certificate"))

    async def get_inconsistency(self, request: Request, blob_id: BlobId) -> Response:
        return Response(200, await self._object(blob_id, INCONSISTENCY, "inconsistency proof"), OCTETS)

    async def put_certificate(self, request: Request, blob_id: BlobId) -> Response:
        # Not journalled: a certificate certifies itself and needs the blob's metadata stored (409).
        signed = await self.app._authorize(request)
        body = await request.read_body(MAX_CERTIFICATE_BODY)
        self.app._check_body(signed, body)
        service = self.service
        try:
            text = await self.app._in_worker(service.verify_certificate, blob_id, bytes(body))
        except (FormatError, CertificateError) as error:
            raise HTTPError(422, "not_certified", str(error)) from None
        blob = str(blob_id)
        if blob in self.store.certified:
            return json_response({"blob_id": blob, "stored": True}, 200)
        try:
            await self.app._in_worker(self.store.bury, blob_id, True)
            await self.app._in_worker(self.store.put_object, blob_id, CERTIFICATE, text.encode())
        except MissingMetadataError:
            raise HTTPError(409, "metadata_missing",
                            f"this node has no metadata for blob {blob_id}: PUT its metadata first") from None
        except StoreFullError:
            raise self.app._disk_full() from None
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
                expansion = await self.service.expansion(blob_id, pair, kind, self.serve_executor)
        finally:
            self._serve_waiting -= 1
        self.served_symbols += 1
        return Response(200, expansion.symbol_for(target).to_bytes(), OCTETS)

    # --- metrics -------------------------------------------------------------------------------------

    def metrics_lines(self) -> list[str]:
        status = self.service.status()
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
