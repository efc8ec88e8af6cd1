"""Finding a dataset's manifest on the network from its ID alone, and checking every part of it
against the ID before anything in it is believed (docs/datasets.md, "Checking a manifest")."""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from ..client import BlobClient, ReadError, ReadReport
from ..client.quorum import ask_every_node
from ..client.transport import NodeConnection
from ..protocol.roots import RootRecord, fs_id_of_key
from ..redstuff import BlobId
from .ids import DatasetId
from .index import Extent, Index, IndexFormatError, decode_locations, locator_key
from .manifest import Entry, Header, Kind, ManifestError, decode_page, merkle_root

log = logging.getLogger(__name__)

ASK_DEADLINE = 20.0


class DatasetNotFound(Exception):
    """No index on the network matches the ID; says what was found and why each was refused."""


@dataclass
class Sightings:
    """What the nodes did wrong while we read: served bad bytes (liars), or did not answer."""

    liars: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def merge(self, report: ReadReport) -> None:
        self.liars.update(report.liars)
        for node, why in report.failures.items():
            self.failures.setdefault(node, why)


@dataclass
class Located:
    dataset: DatasetId
    index_blob: BlobId
    index: Index
    header: Header
    refused: list[str]  # other indexes the nodes pointed to, and why each was refused


class BlobCache:
    """Whole blobs read once and kept (up to ``capacity`` bytes, least recently used out), so a file
    after file walk through the same blob reads it once; a blob that could not be read is remembered
    with its error, not asked for again."""

    def __init__(self, client: BlobClient, sightings: Sightings, capacity: int = 256 << 20) -> None:
        self.client = client
        self.sightings = sightings
        self.capacity = capacity
        self.blobs: OrderedDict[BlobId, bytes | memoryview] = OrderedDict()
        self.failed: dict[BlobId, str] = {}
        self.bytes_read = 0

    async def blob(self, blob_id: BlobId) -> bytes | memoryview:
        if blob_id in self.failed:
            raise ReadError(self.failed[blob_id])
        if blob_id in self.blobs:
            self.blobs.move_to_end(blob_id)
            return self.blobs[blob_id]
        report = ReadReport()
        try:
            data = await self.client.read(blob_id, report=report)
        except ReadError as error:
            self.failed[blob_id] = str(error)
            raise
        finally:
            self.sightings.merge(report)
        self.bytes_read += len(data)
        self.blobs[blob_id] = data
        while sum(len(b) for b in self.blobs.values()) > self.capacity and len(self.blobs) > 1:
            self.blobs.popitem(last=False)
        return data

    async def extent(self, extent: Extent, whole: bool = True) -> bytes | memoryview:
        """The extent's bytes; ``whole``: by reading (and keeping) its whole blob, else a range read."""
        if whole or extent.blob in self.blobs:
            data = await self.blob(extent.blob)
        else:
            if extent.blob in self.failed:
                raise ReadError(self.failed[extent.blob])
            report = ReadReport()
            try:
                data = await self.client.read(extent.blob, extent.offset, extent.length, report)
            finally:
                self.sightings.merge(report)
            self.bytes_read += len(data)
            if len(data) != extent.length:
                raise ReadError(f"blob {extent.blob} is shorter than the extent at {extent.offset}+{extent.length}")
            return data
        if extent.offset + extent.length > len(data):
            raise ReadError(f"blob {extent.blob} holds {len(data)} bytes, the extent ends at "
                            f"{extent.offset + extent.length}")
        return memoryview(data)[extent.offset:extent.offset + extent.length]


async def locator_records(client: BlobClient, dataset: DatasetId) -> dict[str, RootRecord]:
    """Every node's locator record of the dataset (verified as records: signed by the ID's key)."""
    fs_id = fs_id_of_key(locator_key(dataset))

    async def ask(connection: NodeConnection) -> RootRecord | None:
        return await connection.get_root(fs_id)

    found = await ask_every_node(client.connections, client.committee, ask, ASK_DEADLINE, grace=1.0)
    return {node: record for node, record in found.answers.items() if record is not None}


def check_index(dataset: DatasetId, index: Index) -> Header:
    """The header, once the index's header hashes to the ID and its page roots to the tree root."""
    if DatasetId.of_header(index.header) != dataset:
        raise ManifestError("its manifest header does not hash to the dataset ID")
    header = Header.decode(index.header)
    if len(index.pages) != header.pages:
        raise ManifestError(f"it lists {len(index.pages)} pages, the header's {header.entries} entries make "
                            f"{header.pages}")
    for number, page in enumerate(index.pages):
        expected = min(header.page_entries, header.entries - number * header.page_entries)
        if page.entries != expected:
            raise ManifestError(f"page {number} is listed with {page.entries} entries, {expected} expected")
    if merkle_root([page.root for page in index.pages]) != header.tree_root:
        raise ManifestError("its page roots do not hash to the tree root the ID covers")
    return header


async def locate(client: BlobClient, dataset: DatasetId, cache: BlobCache) -> Located:
    """The index of ``dataset``, found through the nodes' locator records and checked against the ID.
    A record pointing to anything else (forged, stale, unreadable) is refused and the next is tried."""
    records = await locator_records(client, dataset)
    pointers: dict[BlobId, tuple[tuple[int, int], list[str]]] = {}
    for node, record in records.items():
        order, nodes = pointers.get(record.snapshot, (record.order, []))
        pointers[record.snapshot] = (max(order, record.order), [*nodes, node])
    refused: list[str] = []
    for blob_id, (_, nodes) in sorted(pointers.items(), key=lambda item: item[1][0], reverse=True):
        served_by = ", ".join(sorted(nodes))
        try:
            index = Index.from_bytes(await cache.blob(blob_id))
            header = check_index(dataset, index)
        except ReadError as error:
            refused.append(f"index blob {blob_id} (named by {served_by}) cannot be read: {error}")
            continue
        except (IndexFormatError, ManifestError) as error:
            refused.append(f"index blob {blob_id} (named by {served_by}) is refused: {error}")
            continue
        return Located(dataset, blob_id, index, header, refused)
    if not records:
        raise DatasetNotFound(f"no node holds a locator record of dataset {dataset}: it was never published on "
                              "this network, or the nodes asked are not this network's (check --committee)")
    raise DatasetNotFound(f"no manifest on the network matches dataset {dataset}: " + "; ".join(refused))


@dataclass
class Page:
    entries: list[Entry]
    locations: list[list[Extent] | None]


async def load_page(located: Located, number: int, cache: BlobCache) -> Page:
    """Page ``number``: its entries checked against its root (so against the ID), its locations
    checked for shape (their bytes are checked against the content hashes by whoever reads them)."""
    ref = located.index.pages[number]
    header = located.header
    entries, root = decode_page(await cache.extent(ref.content), header.times)
    if root != ref.root or len(entries) != ref.entries:
        raise ManifestError(f"manifest page {number} does not match its root: the blob holding it was altered")
    for before, after in itertools.pairwise(entries):
        if not before.path < after.path:
            raise ManifestError(f"manifest page {number} is not sorted by path ({after.display!r} after "
                                f"{before.display!r})")
    locations = decode_locations(await cache.extent(ref.locations))
    if len(locations) != len(entries):
        raise IndexFormatError(f"location page {number} has {len(locations)} entries, its page {len(entries)}")
    for entry, extents in zip(entries, locations, strict=True):
        if (entry.kind is Kind.FILE) != (extents is not None):
            raise IndexFormatError(f"location page {number}: {entry.display!r} has locations only if it is a file")
    return Page(entries, locations)


__all__ = ["BlobCache", "DatasetNotFound", "Located", "Page", "Sightings", "check_index", "load_page", "locate"]
