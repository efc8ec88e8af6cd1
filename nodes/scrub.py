"""Scrubbing: re-read and verify everything the node stores, on a schedule, at a bounded rate.

Every object is read with its checksum (a mismatch quarantines it, as any read does), and every
sliver of a certified blob is verified against the blob's metadata root, which also catches a
sliver whose checksum was rewritten with it. A bad or missing sliver is quarantined and handed to
repair; the first pass starts one (jittered) interval after the node does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from walrusfs.protocol.wire import ScrubStatus
from walrusfs.redstuff import (
    BlobId,
    BlobMetadata,
    FormatError,
    Sliver,
    SliverKind,
    SliverVerificationError,
    verify_sliver,
)

from .ratelimit import TokenBucket, jittered
from .store import METADATA, CorruptObjectError, sliver_name

if TYPE_CHECKING:
    from .core import Healer

log = logging.getLogger("nodes.scrub")


@dataclass
class ScrubStats:
    passes: int = 0  # completed passes
    objects: int = 0  # objects read and verified since start
    bytes: int = 0
    rot_found: int = 0  # objects found corrupt (checksum or Merkle root) and quarantined
    missing_found: int = 0  # slivers of certified blobs found absent
    position: int = 0  # blobs done in the current pass
    last_pass_seconds: float = 0.0


class Scrubber:
    def __init__(self, service: Healer) -> None:
        self.service = service
        self.store = service.store
        self.stats = ScrubStats()
        self.bucket = TokenBucket(service.config.scrub_rate)

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(jittered(self.service.config.scrub_interval))
            started = time.monotonic()
            await self.scrub_pass()
            self.stats.passes += 1
            self.stats.last_pass_seconds = time.monotonic() - started

    async def scrub_pass(self) -> None:
        self.stats.position = 0
        after: str | None = None
        while True:
            page = await self.service.in_worker(self.store.list_blobs, after, 256)
            for blob in page:
                await self.scrub_blob(BlobId.parse(blob))
                self.stats.position += 1
            if len(page) < 256:
                return
            after = page[-1]

    async def scrub_blob(self, blob_id: BlobId) -> None:
        service = self.service
        blob = str(blob_id)
        if blob in self.store.tombstones or blob in self.store.invalid:
            return
        metadata_bytes = await self._read(blob_id, METADATA)
        broken = metadata_bytes is None
        if not broken and service.knows_certified(blob):
            metadata = BlobMetadata.from_bytes(metadata_bytes)  # type: ignore[arg-type]
            for shard in service.core.shards:
                pair = self.store_pair(shard, blob_id)
                for kind in SliverKind:
                    broken |= not await self._check_sliver(metadata, pair, kind)
        if broken and service.knows_certified(blob):
            service.enqueue(blob)

    def store_pair(self, shard: int, blob_id: BlobId) -> int:
        return self.service.geometry.pair_of_shard(shard, blob_id.raw)

    async def _read(self, blob_id: BlobId, name: str) -> bytes | None:
        """The object, checksum-verified, paced; None if it is absent or was just quarantined."""
        try:
            payload = await self.service.in_worker(self.store.get, blob_id, name)
        except CorruptObjectError:
            self._rotten(blob_id, name, "failed its checksum")
            return None
        if payload is not None:
            self.stats.objects += 1
            self.stats.bytes += len(payload)
            await self.bucket.take(len(payload))
        return payload

    async def _check_sliver(self, metadata: BlobMetadata, pair: int, kind: SliverKind) -> bool:
        blob_id = metadata.blob_id
        name = sliver_name(pair, kind)
        if not self.store.has(blob_id, name):
            self.stats.missing_found += 1
            return False
        payload = await self._read(blob_id, name)
        if payload is None:
            return False

        def verify() -> str | None:
            try:
                verify_sliver(metadata, Sliver.from_bytes(payload))
            except (SliverVerificationError, FormatError) as error:
                self.store.quarantine(blob_id, name)
                return str(error)
            return None

        problem = await self.service.in_worker(verify)
        if problem is not None:
            self._rotten(blob_id, name, f"does not match the metadata ({problem})")
            return False
        return True

    def _rotten(self, blob_id: BlobId, name: str, why: str) -> None:
        self.stats.rot_found += 1
        self.service.core.forget_cached(blob_id)
        log.error("scrub: %s of blob %s %s; quarantined, repair will rebuild it", name, blob_id, why)

    def status(self) -> ScrubStatus:
        s = self.stats
        return ScrubStatus(interval=self.service.config.scrub_interval, passes=s.passes, objects=s.objects,
                           bytes=s.bytes, rot_found=s.rot_found, missing_found=s.missing_found,
                           position=s.position, last_pass_seconds=round(s.last_pass_seconds, 3))
