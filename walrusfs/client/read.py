"""Reading a blob: verified metadata, then slivers from whichever nodes answer, then decode.

Order of preference: the n_p systematic primary slivers (the blob's own bytes: no decode, each
checked against its Merkle root); any n_p primary slivers (decode, then re-encode to check the blob
ID); any n_s secondary slivers (the same). A node that answers with bytes that do not verify is
named a liar and skipped, and later reads do not ask it while it is avoided (client.health) unless
too few other nodes are left; a node that hangs is overtaken after the hedge delay.

A byte range that touches only a few symbols fetches just those symbols, each with a Merkle proof
against its row's root, from the nodes holding the systematic rows.

During an epoch change a shard's new holder may not have its slivers yet (404, or 421 from a node
that no longer holds it): the sliver is asked of the shard's previous holders, which keep serving
it until the handover is done; failing that, the read decodes from the other slivers as always.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from ..redstuff import (
    BlobId,
    BlobMetadata,
    InconsistentBlobError,
    RecoverySymbol,
    Sliver,
    SliverKind,
    SliverVerificationError,
    decode,
    decode_and_verify,
    verify_inconsistency_proof,
    verify_sliver,
)
from ..redstuff.encodings import ENCODING_REDSTUFF_GF256_V1
from .fanout import Answered, race
from .transport import NodeConnection, NodeError

C = TypeVar("C")

MIN_BODY_RATE = 10e6  # bytes/s: a node answering slower than this is overtaken like a silent one

log = logging.getLogger(__name__)


class ReadError(Exception):
    """The blob could not be read from the committee: says which nodes failed and how."""


class BlobInvalidError(ReadError):
    """The blob was proven inconsistently encoded by its writer: it has no content to read."""


@dataclass
class ReadReport:
    """What a read saw, for callers that want to show or log it."""

    liars: dict[str, str] = field(default_factory=dict)  # node id -> what did not verify
    failures: dict[str, str] = field(default_factory=dict)  # node id -> last error
    avoided: dict[str, str] = field(default_factory=dict)  # node id -> why it was not asked
    slivers_fetched: int = 0
    bytes_fetched: int = 0
    path: str = ""

    def note(self, node_id: str, error: BaseException) -> None:
        if isinstance(error, NodeError) and error.lie:
            self.liars[node_id] = error.reason
        else:
            self.failures[node_id] = getattr(error, "reason", None) or str(error)

    def describe(self) -> str:
        parts = [f"{node}: {why}" for node, why in sorted(self.failures.items())]
        parts += [f"{node} (served bad data): {why}" for node, why in sorted(self.liars.items())]
        parts += [f"{node}: {why}" for node, why in sorted(self.avoided.items()) if node not in self.liars]
        return "; ".join(parts) or "no node answered"


class BlobReader:
    def __init__(self, connections: dict[str, NodeConnection], n_shards: int, shard_owner,
                 order_key, hedge_after: float, avoided_for: Callable[[str], float] | None = None,
                 previous_holders: Callable[[int], list[NodeConnection]] | None = None) -> None:
        self.connections = connections
        # shard -> connections to its holders of earlier epochs, newest first (walrusfs.client.epochs)
        self.previous_holders = previous_holders or (lambda shard: [])
        self.n_shards = n_shards
        self.shard_owner = shard_owner  # shard -> node id
        self.order_key = order_key  # node id -> sort key (healthy, fast first)
        self.hedge_after = hedge_after
        self.avoided_for = avoided_for or (lambda node: 0.0)  # node id -> seconds it is still avoided

    def _unless_avoided(self, candidates: Sequence[C], node_of: Callable[[C], str], needed: int,
                        report: ReadReport) -> list[C]:
        """The candidates without the nodes avoided for serving bad data, as long as the others are
        enough in number to answer; otherwise all of them, the avoided ones last."""
        avoided = {c: self.avoided_for(node_of(c)) for c in candidates}
        trusted = [c for c in candidates if avoided[c] <= 0]
        if len(trusted) == len(candidates):
            return trusted
        shunned = [c for c in candidates if avoided[c] > 0]
        if len(trusted) < needed:
            return trusted + shunned
        for c in shunned:
            report.avoided[node_of(c)] = (f"not asked: it served bad data recently (avoided for "
                                          f"{avoided[c]:.0f} s more)")
        return trusted

    async def metadata(self, blob_id: BlobId, report: ReadReport) -> BlobMetadata:
        nodes = self._unless_avoided(sorted(self.connections, key=self.order_key), lambda node: node, 1, report)
        result = await race(nodes, lambda node, _answered: self.connections[node].get_metadata(blob_id), 1,
                            hedge_after=self.hedge_after)
        for node, error in result.failures:
            report.note(node, error)
        self._note_slow(result.slow, report)
        if not result.successes:
            raise ReadError(f"blob {blob_id}: no node gave its metadata ({report.describe()})")
        return result.successes[0][1]

    def _note_slow(self, nodes: Sequence[str], report: ReadReport) -> None:
        """Nodes overtaken after the hedge delay count as failed, so the next reads ask others first."""
        for node in nodes:
            reason = f"no answer within the hedge delay ({self.hedge_after:.2f} s)"
            self.connections[node].health.failure(node, reason)
            report.failures.setdefault(node, reason)

    def _node_of_pair(self, metadata: BlobMetadata, pair: int) -> str:
        return self.shard_owner(metadata.geometry.shard_of_pair(pair, metadata.blob_id.raw))

    async def read(self, blob_id: BlobId, offset: int = 0, length: int | None = None,
                   report: ReadReport | None = None) -> bytes | memoryview:
        report = report or ReadReport()
        metadata = await self.metadata(blob_id, report)
        size = metadata.blob_length
        if offset < 0 or offset > size:
            raise ReadError(f"blob {blob_id}: offset {offset} outside [0, {size}]")
        end = size if length is None else min(size, offset + max(length, 0))
        if end == offset:
            return b""
        # The symbol path maps bytes to cells by encoding 1's plane-major layout; RS16 ranges are
        # read from whole slivers until it learns the symbol-major one.
        if (offset > 0 or end < size) and metadata.encoding == ENCODING_REDSTUFF_GF256_V1:
            cells = _cells_for_range(metadata, offset, end)
            holders = {self._node_of_pair(metadata, row) for row, _ in cells}
            # Only from healthy row holders: the symbol path has one source per symbol, no hedging.
            if (len(cells) <= metadata.geometry.source_symbols // 4
                    and all(self.order_key(node)[0] == 0 for node in holders)):
                try:
                    return await self._read_cells(metadata, offset, end, cells, report)
                except ReadError as error:
                    log.info("range read of %s fell back to a whole-blob read: %s", blob_id, error)
        blob = await self.read_whole(metadata, report)
        return blob if (offset, end) == (0, size) else bytes(blob[offset:end])

    async def read_whole(self, metadata: BlobMetadata, report: ReadReport) -> memoryview:
        geometry = metadata.geometry
        n, n_p = geometry.n_shards, geometry.n_primary
        systematic = list(range(n_p))

        def preference(i: int) -> tuple:
            # Healthy nodes first; among them the systematic rows (no decode), then the fastest.
            penalty, latency = self.order_key(self._node_of_pair(metadata, i))
            return (penalty, i >= n_p, latency if i >= n_p else i)

        candidates = sorted(range(n), key=preference)
        good = await self._collect(metadata, SliverKind.PRIMARY, candidates, n_p, report)
        if len(good) >= n_p:
            if all(i in good for i in systematic):
                report.path = "systematic"
                # Each systematic sliver was checked against its root: they are the committed bytes.
                return await trio.to_thread.run_sync(
                    lambda: decode(metadata, [good[i] for i in systematic], verify=False))
            report.path = "primary decode"
            return await self._decode_checked(metadata, list(good.values()))
        secondary = sorted(range(n), key=lambda j: self.order_key(
            self._node_of_pair(metadata, geometry.pair_of_secondary(j))))
        good_secondary = await self._collect(metadata, SliverKind.SECONDARY, secondary,
                                             geometry.n_secondary, report)
        if len(good_secondary) >= geometry.n_secondary:
            report.path = "secondary decode"
            return await self._decode_checked(metadata, list(good_secondary.values()))
        raise ReadError(
            f"blob {metadata.blob_id}: only {len(good)} of {n_p} primary and {len(good_secondary)} "
            f"of {geometry.n_secondary} secondary slivers could be read and verified "
            f"({report.describe()}); at most {geometry.max_faulty} of {n} shards may fail"
        )

    async def _decode_checked(self, metadata: BlobMetadata, slivers: list[Sliver]) -> memoryview:
        try:
            return await trio.to_thread.run_sync(
                lambda: decode_and_verify(metadata, slivers, verify=False))
        except InconsistentBlobError as error:
            raise ReadError(f"blob {metadata.blob_id} cannot be read: {error}") from error

    async def _collect(self, metadata: BlobMetadata, kind: SliverKind, indices: Sequence[int],
                       needed: int, report: ReadReport) -> dict[int, Sliver]:
        """Fetch and verify slivers of ``kind`` (by sliver index, in order) until ``needed`` pass."""
        geometry = metadata.geometry

        def pair_of(index: int) -> int:
            return geometry.pair_of_sliver(index, kind)

        def node_of(index: int) -> str:
            return self._node_of_pair(metadata, pair_of(index))

        async def fetch_verified(index: int, answered: Answered) -> Sliver:
            node = node_of(index)
            try:
                node, sliver = await self._get_sliver(metadata, pair_of(index), kind, node, answered, report)
                report.slivers_fetched += 1
                report.bytes_fetched += sliver.nbytes
                await trio.to_thread.run_sync(verify_sliver, metadata, sliver)
            except SliverVerificationError as error:
                self.connections[node].health.lie(node, str(error))
                raise NodeError(node, f"{kind.name.lower()} sliver {index}", str(error), lie=True) from error
            return sliver

        # A node sending its sliver is not hung: it is raced only if its body arrives slower than
        # MIN_BODY_RATE (slivers of big blobs take a while when several share the link).
        body = metadata.layout.sliver_size(kind is SliverKind.PRIMARY)
        candidates = self._unless_avoided(indices, node_of, needed, report)
        result = await race(candidates, fetch_verified, needed, hedge_after=self.hedge_after,
                            patience=body / MIN_BODY_RATE)

        for index, error in result.failures:
            report.note(node_of(index), error)
            if isinstance(error, NodeError) and error.invalid:
                await self._raise_if_proven_invalid(metadata, node_of(index))
        self._note_slow([node_of(index) for index in result.slow], report)
        return dict(result.successes)

    async def _get_sliver(self, metadata: BlobMetadata, pair: int, kind: SliverKind, node: str,
                          answered: Answered, report: ReadReport) -> tuple[str, Sliver]:
        """The sliver and the node that served it: the shard's current holder, or if that does not
        have it (yet) or holds the shard no longer, a previous holder (a handover in progress)."""
        try:
            return node, await self.connections[node].get_sliver(metadata.blob_id, pair, kind, on_head=answered)
        except NodeError as error:
            if not (error.missing or error.moved):
                raise
            first = error
        shard = metadata.geometry.shard_of_pair(pair, metadata.blob_id.raw)
        for previous in self.previous_holders(shard):
            try:
                sliver = await previous.get_sliver(metadata.blob_id, pair, kind, on_head=answered)
            except NodeError as error:
                report.note(previous.node_id, error)
                continue
            log.debug("blob %s: %s sliver of pair %d from %s, the previous holder of shard %d (%s: %s)",
                      metadata.blob_id, kind.name.lower(), pair, previous.node_id, shard, node, first.reason)
            return previous.node_id, sliver
        raise first

    async def _raise_if_proven_invalid(self, metadata: BlobMetadata, node: str) -> None:
        """A node says the blob is invalid (410): BlobInvalidError if its proof checks out against
        the metadata, else the node is lying and the read goes on without it."""
        connection = self.connections[node]
        try:
            proof = await connection.get_inconsistency(metadata.blob_id)
        except NodeError:
            return
        if await trio.to_thread.run_sync(verify_inconsistency_proof, metadata, proof):
            raise BlobInvalidError(
                f"blob {metadata.blob_id} is invalid: its writer encoded it inconsistently ({node} holds a "
                f"proof, checked here: {proof.target_kind.name.lower()} sliver {proof.target_index} rebuilds "
                "to bytes the metadata does not commit to); it has no content and is never served")
        connection.health.lie(node, "inconsistency proof that does not verify")

    async def _read_cells(self, metadata: BlobMetadata, offset: int, end: int,
                          cells: list[tuple[int, int]], report: ReadReport) -> bytes:
        """Fetch only the symbols (row, column) that hold [offset, end), each proven."""
        layout = metadata.layout
        fetched: dict[tuple[int, int], bytes] = {}
        errors: list[ReadError] = []
        pending = set(cells)

        async def fetch(cell: tuple[int, int], cancel: trio.CancelScope) -> None:
            row, column = cell
            node = self._node_of_pair(metadata, row)
            try:
                symbol: RecoverySymbol = await self.connections[node].get_recovery_symbol(
                    metadata.blob_id, row, SliverKind.PRIMARY, column)
            except NodeError as error:
                report.note(node, error)
                errors.append(ReadError(str(error)))
                cancel.cancel()
                return
            if (symbol.target_kind is not SliverKind.SECONDARY or symbol.source_index != row
                    or symbol.target_index != column or not symbol.is_valid_for(metadata)):
                self.connections[node].health.lie(node, "symbol failed its Merkle proof")
                report.liars[node] = f"symbol ({row}, {column}) failed its Merkle proof"
                errors.append(ReadError(f"node {node} served a symbol that fails its proof"))
                cancel.cancel()
                return
            report.bytes_fetched += len(symbol.data)
            fetched[cell] = symbol.data
            pending.discard(cell)

        # One source per symbol, so no hedging: a holder that has not answered well after the hedge
        # delay (plus transfer time at a modest 50 MB/s) is overtaken by a whole-blob read instead.
        patience = 4 * self.hedge_after + len(cells) * layout.symbol_size / 50e6
        with trio.move_on_after(patience) as timer:
            async with trio.open_nursery() as nursery:
                for cell in cells:
                    nursery.start_soon(fetch, cell, nursery.cancel_scope)
        if timer.cancelled_caught and pending:
            self._note_slow(sorted({self._node_of_pair(metadata, row) for row, _ in pending}), report)
            raise ReadError(f"symbols {sorted(pending)} not served within {patience:.1f} s")
        if errors:
            raise errors[0]
        report.path = "symbols"
        return _assemble_range(metadata, offset, end, fetched, layout.symbol_size)


def _plane_bytes(metadata: BlobMetadata) -> int:
    layout = metadata.layout
    return metadata.geometry.n_secondary * layout.symbol_size // 8


def _cells_for_range(metadata: BlobMetadata, offset: int, end: int) -> list[tuple[int, int]]:
    """The (row, column) symbols whose bytes cover blob bytes [offset, end).

    Row a holds blob bytes [a*R, (a+1)*R); inside a row, plane c holds packet c of every symbol,
    each packet s/8 bytes (see redstuff.sliver.as_line).
    """
    layout = metadata.layout
    row_bytes, packet = layout.row_length, layout.symbol_size // 8
    plane = _plane_bytes(metadata)
    cells: set[tuple[int, int]] = set()
    position = offset
    while position < end:
        row, in_row = divmod(position, row_bytes)
        in_plane = in_row % plane
        column = in_plane // packet
        cells.add((row, column))
        position += packet - in_plane % packet
        if len(cells) > metadata.geometry.source_symbols:
            break
    return sorted(cells)


def _assemble_range(metadata: BlobMetadata, offset: int, end: int,
                    symbols: dict[tuple[int, int], bytes], symbol_size: int) -> bytes:
    layout = metadata.layout
    row_bytes, packet = layout.row_length, symbol_size // 8
    plane = _plane_bytes(metadata)
    out = bytearray()
    position = offset
    while position < end:
        row, in_row = divmod(position, row_bytes)
        c, in_plane = divmod(in_row, plane)
        column, in_packet = divmod(in_plane, packet)
        take = min(packet - in_packet, end - position)
        start = c * packet + in_packet  # canonical symbol bytes are packets 0..7 in order
        out += symbols[(row, column)][start : start + take]
        position += take
    return bytes(out)


__all__ = ["BlobInvalidError", "BlobReader", "ReadError", "ReadReport"]
