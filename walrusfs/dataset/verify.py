"""``walrusfs dataset verify``: everything a dataset ID promises, checked from the network alone.

1. The manifest: found through the locator records, its header hashed to the ID, page roots to the
   tree root, every page read to its root (fetch.py).
2. Every blob: its certificate against the committee of its epoch (walking the committee chain), and
   who holds it now: each node's fresh signed confirmation. A blob that nodes covering more than f
   shards say they do not hold is no longer stored as its certificate promised: a failure, even
   while it can still be read.
3. Every byte (or a random sample of files): read, verified against its blob ID by the blob client,
   and hashed against the file's content hash.
"""

from __future__ import annotations

import base64
import math
import random
import time
from dataclasses import asdict, dataclass, field

import blake3
import trio

from ..client import BlobClient, ReadError
from ..client.epochs import verify_in_chain
from ..client.transport import NodeError
from ..progress import Progress
from ..protocol.certificates import CertificateError, Confirmation
from ..redstuff import BlobId
from .fetch import BlobCache, Located, Sightings, load_page, locate
from .ids import DatasetId
from .index import IndexFormatError, signature_valid
from .manifest import Entry, Kind, ManifestError

CONFIDENCE = 0.99
CONFIRM_DEADLINE = 15.0


@dataclass
class Problem:
    kind: str  # "manifest", "blob", "file", "signature"
    name: str  # the page, blob ID or path
    why: str


@dataclass
class BlobState:
    certificate: str = ""  # "" when it verified, else why not
    held_shards: int = 0  # shards of nodes that confirmed, signed, that they hold it now
    missing_shards: int = 0  # shards of nodes that said they do not
    unknown_shards: int = 0  # shards of nodes that could not be asked
    quorum: int = 0  # n - f of the current committee
    missing: dict[str, str] = field(default_factory=dict)  # node -> "does not hold it"
    unknown: dict[str, str] = field(default_factory=dict)  # node -> why it could not be asked


@dataclass
class VerifyReport:
    dataset: str
    name: str = ""
    index_blob: str = ""
    entries: int = 0
    files: int = 0
    file_bytes: int = 0
    blobs: int = 0
    epoch: int = 0  # the committee's epoch verify reached (walking the chain from the committee file)
    certificates_verified: int = 0  # stored certificates that hold against the committee of their epoch
    files_checked: int = 0
    bytes_checked: int = 0
    bytes_read: int = 0
    sample: float | None = None
    confidence: str = ""
    publisher: str = ""
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    liars: dict[str, str] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)
    refused_indexes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        value = asdict(self)
        value["ok"] = self.ok
        return value


async def verify(client: BlobClient, dataset: DatasetId, sample: float | None = None,
                 publisher: bytes | None = None, rng: random.Random | None = None) -> VerifyReport:
    """The report (``ok`` false names every problem); DatasetNotFound if no manifest matches the ID."""
    started = time.monotonic()
    sightings = Sightings()
    cache = BlobCache(client, sightings)
    await client.refresh_chain("verifying a dataset")
    located = await locate(client, dataset, cache)
    header = located.header
    report = VerifyReport(str(dataset), header.name, str(located.index_blob), header.entries, header.files,
                          header.file_bytes, len(located.index.certificates) + 1, sample=sample,
                          refused_indexes=located.refused)
    _check_signatures(located, publisher, report)
    states = await _check_blobs(client, located, report)
    report.epoch = client.committee.epoch
    report.certificates_verified = sum(1 for blob_id, state in states.items()
                                       if blob_id in located.index.certificates and not state.certificate)

    users: dict[BlobId, list[str]] = {}
    files = await _read_manifest(located, cache, report, users)
    if sample is not None:
        rng = rng or random.SystemRandom()
        files = rng.sample(files, min(len(files), max(1, math.ceil(sample * len(files))))) if files else []
        files.sort(key=lambda item: item[0].path)  # in order: the blobs are read in the order they were filled
    with Progress("verifying", sum(entry.size for entry, _ in files)) as progress:
        for entry, extents in files:
            why = await _check_file(entry, extents, located, cache, whole=sample is None)
            report.files_checked += 1
            report.bytes_checked += entry.size
            if why:
                report.problems.append(Problem("file", entry.display, why))
            progress.update(report.bytes_checked)
    _blob_problems(located, states, users, report)
    if sample is not None:
        report.confidence = _confidence(report.files_checked, header.files)
    report.liars = sightings.liars
    report.unreachable = {node: why for node, why in sightings.failures.items() if node not in sightings.liars}
    for state in states.values():
        for node, why in state.unknown.items():
            report.unreachable.setdefault(node, why)
    report.bytes_read = cache.bytes_read
    report.seconds = time.monotonic() - started
    return report


async def _read_manifest(located: Located, cache: BlobCache, report: VerifyReport,
                         users: dict[BlobId, list[str]]) -> list[tuple[Entry, list]]:
    """Every page, checked against the ID (a sampled verify too: the manifest is small beside the data);
    the files with their extents, and which files each blob carries."""
    files: list[tuple[Entry, list]] = []
    last_path: bytes | None = None  # the previous page's last path: pages must follow each other in order
    for number, ref in enumerate(located.index.pages):
        for part in (ref.content, ref.locations):
            if part.blob not in located.index.certificates:
                report.problems.append(Problem("manifest", f"page {number}", f"uncertified: blob {part.blob} "
                                               "holding it has no certificate in the index"))
        try:
            page = await load_page(located, number, cache)
        except (ReadError, ManifestError, IndexFormatError) as error:
            report.problems.append(Problem("manifest", f"page {number}", str(error)))
            last_path = None
            continue
        if last_path is not None and page.entries and not last_path < page.entries[0].path:
            report.problems.append(Problem("manifest", f"page {number}", "not sorted after the page before it"))
        last_path = page.entries[-1].path if page.entries else None
        for entry, extents in zip(page.entries, page.locations, strict=True):
            if entry.kind is Kind.FILE and extents is not None:
                files.append((entry, extents))
                for extent in extents:
                    users.setdefault(extent.blob, []).append(entry.display)
    if not any(problem.kind == "manifest" for problem in report.problems):
        header = located.header
        found = (len(files), sum(entry.size for entry, _ in files))
        if found != (header.files, header.file_bytes):
            report.problems.append(Problem("manifest", "header", f"it counts {header.files} files of "
                                           f"{header.file_bytes} bytes, the pages hold {found[0]} of {found[1]}"))
    return files


def _confidence(checked: int, files: int) -> str:
    if files == 0 or checked >= files:
        return "every file was checked"
    # A sample of m files misses every damaged one with probability at most (1 - p)^m if a fraction p is damaged.
    bound = 1 - (1 - CONFIDENCE) ** (1 / checked) if checked else 1.0
    return (f"{checked} of {files} files read and hashed: with {CONFIDENCE:.0%} confidence fewer than "
            f"{bound:.1%} of the files are damaged (every blob's availability was checked in full)")


def _check_signatures(located: Located, publisher: bytes | None, report: VerifyReport) -> None:
    valid = [key for key, signature in located.index.signatures
             if signature_valid(located.dataset, key, signature)]
    if publisher is not None:
        if publisher in valid:
            report.publisher = base64.b64encode(publisher).decode()
        else:
            signers = ", ".join(base64.b64encode(key).decode() for key in valid) or "none"
            report.problems.append(Problem("signature", "publisher", f"no valid signature by the publisher key "
                                           f"given (valid signatures by: {signers})"))


async def _check_file(entry: Entry, extents, located: Located, cache: BlobCache, whole: bool) -> str:
    """Why the file's bytes do not verify ("" when they do)."""
    if sum(extent.length for extent in extents) != entry.size:
        return f"its locations hold {sum(e.length for e in extents)} bytes, the manifest says {entry.size}"
    hasher = blake3.blake3()
    for extent in extents:
        if extent.blob not in located.index.certificates:
            return f"uncertified: blob {extent.blob} has no certificate in the index"
        try:
            hasher.update(await cache.extent(extent, whole))
        except ReadError as error:
            return f"missing: blob {extent.blob} cannot be read ({error})"
    if hasher.digest() != entry.content:
        return "wrong bytes: what the blobs hold does not hash to the file's content hash"
    return ""


async def _check_blobs(client: BlobClient, located: Located, report: VerifyReport) -> dict[BlobId, BlobState]:
    """Each blob's certificate against its epoch's committee, and each node's fresh confirmation."""
    states: dict[BlobId, BlobState] = {}
    blobs = [located.index_blob, *located.index.certificates]
    limiter = trio.CapacityLimiter(8)

    async def one(blob_id: BlobId) -> None:
        state = states[blob_id] = BlobState()
        certificate = located.index.certificates.get(blob_id)
        if certificate is not None:
            try:
                verify_in_chain(client.chain, certificate)
            except CertificateError as error:
                state.certificate = str(error)
        async with limiter:
            await _confirmations(client, blob_id, state)

    async with trio.open_nursery() as nursery:
        for blob_id in blobs:
            nursery.start_soon(one, blob_id)
    return states


async def _confirmations(client: BlobClient, blob_id: BlobId, state: BlobState) -> None:
    committee = client.committee
    covered: set[int] = set()

    async def ask(node_id: str) -> None:
        connection = client.connections[node_id]
        try:
            with trio.fail_after(CONFIRM_DEADLINE):
                confirmation: Confirmation = await connection.get_confirmation(blob_id)
        except NodeError as error:
            if error.status in (404, 409):  # no metadata here, or slivers missing (the node says which)
                state.missing[node_id] = error.reason
            else:
                state.unknown[node_id] = error.reason
            return
        except trio.TooSlowError:
            state.unknown[node_id] = f"no answer within {CONFIRM_DEADLINE:.0f} s"
            return
        node = committee.node(node_id)
        if (confirmation.epoch == committee.epoch and confirmation.blob_id == blob_id
                and confirmation.node_id == node_id and confirmation.verify(node.public_key)):
            covered.update(set(confirmation.shards) & set(node.shards))
        else:
            state.unknown[node_id] = "served a confirmation that does not verify"

    async with trio.open_nursery() as nursery:
        for node_id in client.connections:
            nursery.start_soon(ask, node_id)
    state.held_shards = len(covered)
    state.missing_shards = sum(len(committee.shards_of(node)) for node in state.missing)
    state.unknown_shards = sum(len(committee.shards_of(node)) for node in state.unknown)
    state.quorum = committee.geometry.quorum


def _blob_problems(located: Located, states: dict[BlobId, BlobState], users: dict[BlobId, list[str]],
                   report: VerifyReport) -> None:
    """A problem per blob whose availability does not hold, naming the files it carries. A blob is
    certified if its certificate verifies in its epoch or the nodes' fresh confirmations make one now;
    it is under-stored once nodes saying they do not hold it leave fewer than n - f shards that might."""
    for blob_id, state in states.items():
        what = "the dataset's index" if blob_id == located.index_blob else _files_of(users.get(blob_id, []))
        fresh = state.held_shards >= state.quorum
        if state.certificate and not fresh:
            report.problems.append(Problem("blob", str(blob_id), f"uncertified: {state.certificate} ({what})"))
        elif state.held_shards + state.unknown_shards < state.quorum:
            nodes = ", ".join(sorted(state.missing))
            report.problems.append(Problem(
                "blob", str(blob_id),
                f"under-stored: nodes holding {state.held_shards} shards confirm it now, {state.quorum} are "
                f"needed; {nodes} say they do not hold it ({what}); "
                f"{'; '.join(f'{n}: {w}' for n, w in sorted(state.missing.items()))}"))
        elif not fresh:
            asked = "; ".join(f"{node}: {why}" for node, why in sorted(state.unknown.items()))
            report.warnings.append(f"blob {blob_id}: nodes holding {state.held_shards} shards confirm it now, "
                                   f"{state.quorum} make a certificate; the others could not be asked ({asked})")


def _files_of(paths: list[str]) -> str:
    unique = sorted(set(paths))
    if not unique:
        return "no file of the pages read"
    shown = ", ".join(unique[:20])
    return f"files: {shown}" + (f" and {len(unique) - 20} more" if len(unique) > 20 else "")


__all__ = ["Problem", "VerifyReport", "verify"]
