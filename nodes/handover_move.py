"""Moving one blob's sliver pair of a gained shard to its new holder (nodes.handover drives it).

The pair comes from the old holder, each sliver checked against the blob's metadata (itself checked
against the blob ID) before it is stored, with the metadata and the certificate (checked against the
committee of its epoch). A sliver the old holder does not give, or gives wrong, is rebuilt from
recovery symbols by repair's one recovery (``RepairService._recover``), but only for a certified
blob: an uncertified one was never durable, and its writer retries it with the current committee.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from walrusfs.protocol.certificates import Certificate, CertificateError
from walrusfs.protocol.handover import GainedShard
from walrusfs.redstuff import (
    BlobId,
    BlobMetadata,
    FormatError,
    Sliver,
    SliverKind,
    SliverVerificationError,
    verify_sliver,
)
from walrusfs.redstuff.merkle import proof_length
from walrusfs.redstuff.sliver import HEADER_SIZE as SLIVER_HEADER_SIZE

from .core import NodeCore
from .handover_fetch import FetchError, HandoverClient, Meter
from .lifecycle_api import parse_claims
from .store import CERTIFICATE, METADATA, MissingMetadataError, sliver_name

if TYPE_CHECKING:
    from .repair import RepairService

log = logging.getLogger("nodes.handover")
# Sliver bytes fetched and not yet stored, at most (the blobs moved at once are bounded too, but blobs
# range from kilobytes to a gigabyte): beyond it a fetch waits, so memory stays bounded.
IN_FLIGHT_BYTES = 256 << 20


class ByteBudget:
    """At most ``limit`` bytes held at once; a request larger than ``limit`` waits until it is alone."""

    def __init__(self, limit: int = IN_FLIGHT_BYTES) -> None:
        self.limit = limit
        self.used = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        size = min(size, self.limit)
        async with self._changed:
            await self._changed.wait_for(lambda: self.used + size <= self.limit)
            self.used += size
        try:
            yield
        finally:
            async with self._changed:
                self.used -= size
                self._changed.notify_all()


class BlobMover:
    def __init__(self, core: NodeCore, repair: RepairService, client: HandoverClient) -> None:
        self.core = core
        self.repair = repair
        self.store = core.store
        self.client = client
        self.budget = ByteBudget()

    async def move(self, entry: GainedShard, blob_id: BlobId, from_source: bool) -> bool:
        """Store the shard's pair of one blob; True when done (stored, or nothing durable to move)."""
        blob = str(blob_id)
        if blob in self.store.tombstones:
            return True
        meter = Meter()
        try:
            metadata = await self._metadata(blob_id, entry.source if from_source else None, meter)
            if metadata is None:
                return not from_source  # no node has valid metadata: nothing certified to rebuild
            certified = blob in self.store.certified or await self._certificate(blob_id, entry.source, meter)
            pair = self.core.geometry.pair_of_shard(entry.shard, blob_id.raw)
            done = True
            for kind in SliverKind:
                if blob in self.store.invalid or self.store.has(blob_id, sliver_name(pair, kind)):
                    continue
                entry.bytes_to_move += _sliver_bytes(metadata, kind)
                if from_source and await self._copy_sliver(entry.source, metadata, pair, kind, meter):
                    continue
                if blob in self.store.invalid:
                    continue
                if not certified:
                    # Never certified: not durable, and nothing to rebuild it from. The writer retries it
                    # with the current committee.
                    log.info("blob %s is not certified and %s gave no %s sliver of it: not moved", blob,
                             entry.source, kind.name.lower())
                    continue
                rebuilt = await self.repair._recover(metadata, pair, kind)
                meter.bytes += _symbols_bytes(metadata, kind)
                if rebuilt:
                    entry.rebuilt += 1
                done = done and rebuilt
            # Always (merged with any here: another owner may have stored the blob in the new epoch), and
            # after the slivers: the claims file records what the blob costs its writers here.
            await self._claims(blob_id, entry.source, meter)
        except FetchError as error:
            log.warning("handover of blob %s (shard %d): %s", blob, entry.shard, error)
            done = False
        finally:
            entry.bytes_moved += meter.bytes
        if done:
            entry.blobs += 1
        return done

    async def _metadata(self, blob_id: BlobId, source: str | None, meter: Meter) -> BlobMetadata | None:
        """The blob's metadata: stored here, else from the old holder, else from any node; verified."""
        payload = await self.core.in_worker(self.store.get, blob_id, METADATA)
        if payload is not None:
            return BlobMetadata.from_bytes(payload)
        for node in self._sources_first(source):
            try:
                body = await self.client.metadata(node, blob_id, meter)
            except FetchError:
                continue
            if body is None:
                continue
            try:
                metadata = BlobMetadata.from_bytes(body)
                metadata.verify(blob_id)
                if metadata.n_shards != self.core.geometry.n_shards:
                    raise FormatError(f"metadata for n={metadata.n_shards}")
            except (FormatError, ValueError) as error:
                log.warning("node %s sent bad metadata for blob %s: %s", node, blob_id, error)
                continue
            await self.core.in_worker(self.store.put_metadata, blob_id, metadata.to_bytes())
            return metadata
        log.warning("no node gave valid metadata of blob %s", blob_id)
        return None

    async def _claims(self, blob_id: BlobId, source: str, meter: Meter) -> None:
        """The owners' claims on the blob follow it, from the old holder first (without them the blob
        gets the default claim at the next expiry sweep, nodes.claims)."""
        for node in self._sources_first(source):
            try:
                body = await self.client.claims(node, blob_id, meter)
                if body is not None:
                    await self.core.in_worker(self.core.claims.adopt, blob_id, parse_claims(body))
                    return
            except (FetchError, ValueError) as error:
                log.warning("claims of blob %s not copied from %s: %s", blob_id, node, error)
        log.warning("no node gave the claims of blob %s: it gets the default term here", blob_id)

    async def _certificate(self, blob_id: BlobId, source: str, meter: Meter) -> bool:
        """Fetch, verify (against the committee of its epoch) and store the blob's certificate."""
        for node in self._sources_first(source):
            try:
                body = await self.client.certificate(node, blob_id, meter)
            except FetchError:
                continue
            if body is None:
                continue
            try:
                certificate = Certificate.from_json(body)
                if certificate.blob_id != blob_id:
                    raise CertificateError(f"certificate is for {certificate.blob_id}")
                certificate.verify(self.core.committee_at(certificate.epoch))
            except (FormatError, CertificateError, ValueError) as error:
                log.warning("node %s sent a certificate of blob %s that does not verify: %s", node, blob_id, error)
                continue
            try:
                await self.core.in_worker(self.store.put_object, blob_id, CERTIFICATE, certificate.to_json().encode())
            except MissingMetadataError:
                return False
            return True
        return False

    def _sources_first(self, source: str | None) -> list[str]:
        others = [node for node in self.client.nodes if node != source]
        random.shuffle(others)
        return ([source] if source in self.client.nodes else []) + others

    async def _copy_sliver(self, source: str, metadata: BlobMetadata, pair: int, kind: SliverKind,
                           meter: Meter) -> bool:
        """Fetch one sliver from the old holder, verify it, store it. False if it must be rebuilt."""
        async with self.budget.hold(_sliver_bytes(metadata, kind)):
            return await self._copy_held(source, metadata, pair, kind, meter)

    async def _copy_held(self, source: str, metadata: BlobMetadata, pair: int, kind: SliverKind,
                         meter: Meter) -> bool:
        blob_id = metadata.blob_id
        try:
            body = await self.client.sliver(source, blob_id, pair, kind, meter)
        except FetchError as error:
            if error.status == 410:  # the old holder proved the blob invalid: take the proof, not the data
                await self._learn_invalid(source, metadata, meter)
            else:
                log.warning("%s; rebuilding it from recovery symbols", error)
            return False
        if body is None:
            return False
        index = self.core.geometry.sliver_of_pair(pair, kind)

        def check_and_store() -> None:
            sliver = Sliver.from_bytes(body)
            if sliver.blob_id != blob_id or sliver.kind is not kind or sliver.index != index:
                raise SliverVerificationError(f"asked for {kind.name.lower()} sliver {index} of {blob_id}, got "
                                              f"{sliver.kind.name.lower()} sliver {sliver.index} of {sliver.blob_id}")
            verify_sliver(metadata, sliver)
            self.store.put_sliver(blob_id, pair, kind, body)

        try:
            await self.repair.in_worker(check_and_store)
        except (FormatError, SliverVerificationError) as error:
            log.warning("old holder %s served a %s sliver of blob %s (pair %d) that fails verification (%s): "
                        "rebuilding it from recovery symbols", source, kind.name.lower(), blob_id, pair, error)
            return False
        except MissingMetadataError:
            return True  # deleted meanwhile
        return True

    async def _learn_invalid(self, source: str, metadata: BlobMetadata, meter: Meter) -> None:
        try:
            body = await self.client.inconsistency(source, metadata.blob_id, meter)
        except FetchError:
            return
        if body is None:
            return
        proof = await self.repair.verified_proof(metadata, body)
        if proof is not None:
            await self.repair.mark_invalid(metadata.blob_id, proof, learned_from=source)


def _sliver_bytes(metadata: BlobMetadata, kind: SliverKind) -> int:
    """A sliver's size on the wire (header and symbols): what moving it must cost at least."""
    return SLIVER_HEADER_SIZE + metadata.layout.sliver_size(kind is SliverKind.PRIMARY)



# A recovery symbol on the wire (RecoverySymbol format v1): a 48-byte head, the symbol, its Merkle proof.
_SYMBOL_HEAD_SIZE = 48


def _symbols_bytes(metadata: BlobMetadata, kind: SliverKind) -> int:
    """What rebuilding one sliver of ``kind`` fetches: as many symbols as recovery needs (n - f for a
    primary sliver, n - 2f for a secondary one), each with its proof. Counted as the handover's
    bytes moved; repair's own counters (``/v1/repair/status``) have the exact figure."""
    geometry = metadata.geometry
    needed = geometry.n_secondary if kind is SliverKind.PRIMARY else geometry.n_primary
    return needed * (_SYMBOL_HEAD_SIZE + metadata.layout.symbol_size + 32 * proof_length(geometry.n_shards))
