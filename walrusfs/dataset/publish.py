"""``walrusfs dataset publish``: store a tree's bytes, its manifest and its index; return its ID.

The order makes a published ID mean something: data blobs first, then the manifest pages and
their locations, then the index naming every blob with its certificate, and last the locator record
on the nodes. An ID is printed only when all of it holds certificates of availability.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..client import BlobClient, StoredBlob
from ..client.roots import publish_root
from ..errors import UserError
from ..progress import Progress
from ..protocol.certificates import Certificate
from ..protocol.roots import RootRecord
from ..redstuff import BlobId
from .ids import DatasetId
from .index import Extent, Index, PageRef, encode_locations, locator_key, sign
from .manifest import Kind, Manifest, build
from .scan import READ_CHUNK, Scanned, scan

log = logging.getLogger(__name__)

DATA_BLOB_SIZE = 32 << 20  # as the mount packs: big enough that per-blob costs vanish
MANIFEST_BLOB_SIZE = 8 << 20  # pages and locations of ~80,000 entries per blob


@dataclass
class Published:
    dataset: DatasetId
    manifest: Manifest
    index_blob: BlobId
    data_blobs: int
    manifest_blobs: int
    stored_bytes: int  # unique file bytes stored (duplicates within the tree are stored once)


class _Packer:
    """Appends bytes to the blob being filled and stores it when full; returns where bytes went."""

    def __init__(self, client: BlobClient, blob_size: int, certificates: dict[BlobId, Certificate],
                 on_stored: Callable[[int], None] | None = None) -> None:
        self.client = client
        self.blob_size = blob_size
        self.certificates = certificates
        self.on_stored = on_stored
        self.buffer = bytearray()
        self.pending: list[tuple[list[Extent], int, int, int]] = []  # (extents, index, offset in buffer, length)
        self.stored = 0

    async def add(self, data: bytes, extents: list[Extent]) -> None:
        """Append ``data``; its extents are added to ``extents`` (in order) once its blob is stored."""
        view = memoryview(data)
        while view:
            room = self.blob_size - len(self.buffer)
            part = view[:room]
            extents.append(None)  # type: ignore[arg-type]  # filled in when the blob is stored
            self.pending.append((extents, len(extents) - 1, len(self.buffer), len(part)))
            self.buffer += part
            view = view[len(part):]
            if len(self.buffer) >= self.blob_size:
                await self.flush()

    async def add_whole(self, data: bytes, extents: list[Extent]) -> None:
        """Append ``data`` unsplit (a manifest page part): the blob being filled is stored first if
        ``data`` does not fit in it; a part larger than a blob gets a blob of its own size."""
        if self.buffer and len(self.buffer) + len(data) > self.blob_size:
            await self.flush()
        extents.append(None)  # type: ignore[arg-type]
        self.pending.append((extents, len(extents) - 1, len(self.buffer), len(data)))
        self.buffer += data

    async def flush(self) -> None:
        if not self.buffer and not self.pending:
            return
        stored: StoredBlob = await self.client.store(bytes(self.buffer))
        self.certificates[stored.blob_id] = stored.certificate
        for extents, position, offset, length in self.pending:
            extents[position] = Extent(stored.blob_id, offset, length)
        self.stored += 1
        if self.on_stored is not None:
            self.on_stored(len(self.buffer))
        self.buffer, self.pending = bytearray(), []


async def publish(client: BlobClient, root: Path, name: str = "", times: bool = False,
                  signer=None, data_blob_size: int = DATA_BLOB_SIZE,
                  manifest_blob_size: int = MANIFEST_BLOB_SIZE) -> Published:
    with Progress(f"hashing {root}") as hashing:
        hashed = [0]

        def counted(n: int) -> None:
            hashed[0] += n
            hashing.update(hashed[0])

        scanned = scan(root, times, counted)
    return await publish_scanned(client, scanned, name, times, signer, data_blob_size, manifest_blob_size)


async def publish_scanned(client: BlobClient, scanned: list[Scanned], name: str = "", times: bool = False,
                          signer=None, data_blob_size: int = DATA_BLOB_SIZE,
                          manifest_blob_size: int = MANIFEST_BLOB_SIZE) -> Published:
    """Publish these entries, each file's bytes read from its ``source``."""
    manifest = build((item.entry for item in scanned), name, times)
    dataset = manifest.dataset_id
    sources = {item.entry.path: item for item in scanned}
    certificates: dict[BlobId, Certificate] = {}

    # The bytes: every distinct content once, in path order.
    unique: dict[bytes, Scanned] = {}
    for entry in manifest.entries:
        if entry.kind is Kind.FILE and entry.content not in unique:
            unique[entry.content] = sources[entry.path]
    total = sum(item.entry.size for item in unique.values())
    located: dict[bytes, list[Extent]] = {}
    with Progress("storing file data", total) as storing:
        done = [0]

        def stored(n: int) -> None:
            done[0] += n
            storing.update(done[0])

        data = _Packer(client, data_blob_size, certificates, stored)
        for content, item in unique.items():
            located[content] = await _pack_file(data, item)
        await data.flush()
    located = {content: _coalesced(extents) for content, extents in located.items()}

    # The manifest pages and where each file's bytes are, packed into manifest blobs.
    pages = _Packer(client, manifest_blob_size, certificates)
    page_extents: list[tuple[list[Extent], list[Extent]]] = []
    for page, encoded in zip(manifest.pages, manifest.encoded_pages, strict=True):
        content_at: list[Extent] = []
        locations_at: list[Extent] = []
        await pages.add_whole(encoded, content_at)
        locations = encode_locations([located[e.content] if e.kind is Kind.FILE else None for e in page])
        await pages.add_whole(locations, locations_at)
        page_extents.append((content_at, locations_at))
    await pages.flush()
    refs = []
    for page, root_hash, (content_at, locations_at) in zip(manifest.pages, manifest.page_roots, page_extents,
                                                          strict=True):
        refs.append(PageRef(root_hash, len(page), content_at[0], locations_at[0]))

    index = Index(dataset, manifest.header.encode(), refs, certificates)
    if signer is not None:
        index.signatures.append(sign(dataset, signer))
    stored_index = await client.store(index.to_bytes())
    now = time.time_ns()
    # seq: the time, so that a later publication of the same tree (another copy of its bytes) replaces
    # the locator; both point to a complete, certified copy, either serves.
    record = RootRecord.create(locator_key(dataset), now, stored_index.blob_id, now)
    try:
        await publish_root(client.connections, client.committee, record)
    except Exception as error:
        raise UserError(f"dataset {dataset}: every blob is stored and certified, but its locator record did not "
                        f"reach a quorum of nodes ({error}); check the nodes (walrusfs cluster status) and publish "
                        "again: the ID stays the same", exit_code=2) from error
    return Published(dataset, manifest, stored_index.blob_id, data.stored, pages.stored, total)


def _coalesced(extents: list[Extent]) -> list[Extent]:
    """Neighbouring pieces of one blob as one extent (a file is packed chunk by chunk): a reader asks for
    each extent once, so a file read by ranges costs one read per blob, not one per chunk."""
    out: list[Extent] = []
    for extent in extents:
        if out and out[-1].blob == extent.blob and out[-1].offset + out[-1].length == extent.offset:
            out[-1] = Extent(extent.blob, out[-1].offset, out[-1].length + extent.length)
        else:
            out.append(extent)
    return out


async def _pack_file(packer: _Packer, item: Scanned) -> list[Extent]:
    """Store one file's bytes, checking they still hash to what the manifest says."""
    import blake3

    extents: list[Extent] = []
    hasher = blake3.blake3()
    size = 0
    try:
        with open(item.source, "rb") as source:
            while chunk := source.read(READ_CHUNK):
                hasher.update(chunk)
                size += len(chunk)
                await packer.add(chunk, extents)
    except OSError as error:
        raise UserError(f"cannot read {item.source}: {error.strerror}; fix it and publish again") from error
    if hasher.digest() != item.entry.content or size != item.entry.size:
        raise UserError(f"{item.source} changed while it was being published; publish again once the tree is "
                        "left alone (nothing was published)")
    return extents


__all__ = ["DATA_BLOB_SIZE", "Published", "publish", "publish_scanned"]
