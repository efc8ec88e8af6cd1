"""What moves at a handover besides slivers (docs/epochs.md, Handover): the records every node keeps,
which a node that gains shards takes from the nodes of the epoch before.

- **Tombstones** (blobs a writer deleted; nodes.store ``tombstones/``). A tombstone is an empty file,
  nothing a peer could prove, so one is taken only when nodes holding at least f + 1 shards of the
  epoch before list it: then at least one honest node saw the writer's signed DELETE. Taking it buries
  the blob here and deletes any copy of it (its repair feed may have fetched one in standby from a node
  that missed the DELETE). They are taken *before* any shard is copied (``ready``): the old holder of a
  shard may have missed the DELETE and still list the blob.
- **Writer leases** (nodes.leases): each node lists the filesystems it holds a lease of; the lease
  itself is signed by the filesystem's key, so the newest one any node shows (highest generation,
  then renewal) is taken, with the longest time left any node gives it, at most one term.
- **Root records** (nodes.roots): verified against their filesystem ID; the highest wins.

Each is idempotent, so the whole copy is simply done again at every start and epoch; a node that does
not answer is logged and skipped (its records come from the others).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter

from walrusfs.protocol.committee import Committee
from walrusfs.protocol.lease import LeaseRecordError, LeaseState
from walrusfs.protocol.roots import RootRecord, RootRecordError, is_fs_id
from walrusfs.redstuff import BlobId, FormatError

from .core import NodeCore
from .handover_fetch import FetchError, HandoverClient, Meter
from .leases import LeaseStore
from .roots import RootStore, StaleRecordError

log = logging.getLogger("nodes.handover")


class RecordCopier:
    def __init__(self, core: NodeCore, client: HandoverClient, roots: RootStore, leases: LeaseStore | None) -> None:
        self.core = core
        self.client = client
        self.roots = roots
        self.leases = leases
        self.ready = asyncio.Event()  # set once the tombstones are taken: the shards' copies wait for it

    async def copy(self, previous: Committee) -> None:
        """Tombstones, then (``ready`` set, the shards' copies go on meanwhile) root records and leases.
        A failure is logged, not raised: it is all done again at the next start."""
        try:
            await self.copy_tombstones(previous)
            self.ready.set()
            await self.copy_roots(previous)
            await self.copy_leases(previous)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("records of epoch %d not all taken; taken again at the next start", previous.epoch)
        finally:
            self.ready.set()

    def _others(self, previous: Committee) -> list[str]:
        return [node.id for node in previous.nodes if node.id != self.core.node_id]

    # --- tombstones ----------------------------------------------------------------------------------

    async def copy_tombstones(self, previous: Committee) -> int:
        """Bury every blob that nodes holding f + 1 shards of ``previous`` list as deleted; the count."""
        shards: Counter[str] = Counter()

        async def count(node: str) -> None:
            try:
                for blob in set(await self._all_ids(node, self.client.tombstones)):
                    shards[blob] += len(previous.shards_of(node))
            except (FetchError, ValueError, KeyError, TypeError) as error:
                log.warning("tombstones of %s not taken: %s", node, error)

        # All at once: the shards' copies wait for this, so a node that does not answer costs one
        # request timeout, not one per node.
        await asyncio.gather(*(count(node) for node in self._others(previous)))
        needed = previous.geometry.max_faulty + 1
        buried = 0
        for blob, count in sorted(shards.items()):
            if count < needed or blob in self.core.store.tombstones:
                continue
            try:
                blob_id = BlobId.parse(blob)
            except FormatError:
                continue
            await self.core.in_worker(self._bury, blob_id)
            buried += 1
        log.info("tombstones: %d taken from the nodes of epoch %d (each listed by nodes holding at least %d "
                 "shards)", buried, previous.epoch, needed)
        return buried

    def _bury(self, blob_id: BlobId) -> None:
        store = self.core.store
        store.bury(blob_id)
        if store.delete_blob(blob_id):
            log.info("blob %s was deleted by its writer before this node took it: deleted here too", blob_id)
        self.core.forget_cached(blob_id)

    # --- writer leases -------------------------------------------------------------------------------

    async def copy_leases(self, previous: Committee) -> int:
        if self.leases is None:
            return 0
        newest: dict[str, LeaseState] = {}
        for node in self._others(previous):
            try:
                for fs_id in await self._all_ids(node, self.client.lease_ids):
                    if not is_fs_id(fs_id):
                        continue
                    body = await self.client.lease(node, fs_id, Meter())
                    if body is None:
                        continue
                    try:
                        state = LeaseState.from_dict(json.loads(body), fs_id)
                    except LeaseRecordError as error:
                        log.warning("node %s sent a lease of %s that does not verify: %s", node, fs_id, error)
                        continue
                    newest[fs_id] = _newer(newest.get(fs_id), state)
            except (FetchError, ValueError, KeyError, TypeError) as error:
                log.warning("writer leases of %s not taken: %s", node, error)
        taken = 0
        for state in newest.values():
            taken += await self.core.in_worker(self.leases.adopt, state)
        log.info("writer leases: %d taken or renewed from the nodes of epoch %d", taken, previous.epoch)
        return taken

    # --- root records --------------------------------------------------------------------------------

    async def copy_roots(self, previous: Committee) -> int:
        copied = 0
        for node in self._others(previous):
            try:
                for fs_id in await self._all_ids(node, self.client.root_ids):
                    copied += await self._copy_root(node, fs_id)
            except (FetchError, ValueError, KeyError, TypeError) as error:
                log.warning("root records of %s not copied: %s", node, error)
        log.info("root records: %d copied or updated from the nodes of epoch %d", copied, previous.epoch)
        return copied

    async def _copy_root(self, node: str, fs_id: str) -> int:
        if not is_fs_id(fs_id):
            return 0
        body = await self.client.root(node, fs_id, Meter())
        if body is None:
            return 0
        try:
            record = RootRecord.from_json(body)
            record.verify(fs_id)
            return int(await self.core.in_worker(self.roots.put, record))
        except RootRecordError as error:
            log.warning("node %s sent a root record of %s that does not verify: %s", node, fs_id, error)
        except StaleRecordError:
            pass  # this node holds that one or a later one already
        return 0

    @staticmethod
    async def _all_ids(node: str, page_of) -> list[str]:  # type: ignore[no-untyped-def]
        """Every ID of a paged listing (``page_of(node, after, meter)``)."""
        ids: list[str] = []
        after: str | None = None
        while True:
            page, after = await page_of(node, after, Meter())
            ids += page
            if after is None:
                return ids


def _newer(known: LeaseState | None, state: LeaseState) -> LeaseState:
    """The newer lease of two (generation, then renewal); of the same one, the longer time left."""
    if known is None:
        return state
    order, known_order = (state.record.generation, state.record.renewal), \
        (known.record.generation, known.record.renewal)
    if order != known_order:
        return state if order > known_order else known
    return state if state.expires_in_ms > known.expires_in_ms else known
