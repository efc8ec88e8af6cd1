"""The mount's renewal task: keeps the nodes' claims on every blob the filesystem references alive.

Every blob a mount stores is claimed on the nodes for fs.toml's ``blob_term_days`` (docs/node-api.md,
"Claims"); nodes delete a blob once all its claims have expired. So while a writable mount runs, it
renews every referenced blob to a full term from now whenever a third of the term is left of the
last renewal (and once at mount start, since the last renewal before it is unknown here): a mount
that runs for a third of a term in every term keeps its data forever, and an abandoned filesystem
frees its space one term after its last mount.

A failed round (a node down, a clock refused) is retried after a short wait, never later than the
next due time; ``walrusfs status`` warns while the last round failed, with its error and the time of
the last success.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import trio

from ..client.client import BlobClient
from ..client.lifecycle import RENEWAL_BATCH, renew_blobs
from ..redstuff import BlobId
from .config import FsSettings, FsState
from .db import Database
from .mount_status import RenewalStatus
from .publisher import SnapshotPublisher
from .reachable import reachable_blobs

log = logging.getLogger(__name__)

RENEW_WHEN_LEFT = 1 / 3  # of the term: renew when this much of it is left
RETRY_AFTER = 60.0  # seconds after a failed round (at most a tenth of the term)
DAY = 86400.0


@dataclass
class Renewer:
    client: BlobClient
    owner: str  # the filesystem ID
    term: float  # seconds
    referenced: Callable[[], set[BlobId]]  # every blob the filesystem references now
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self.status = RenewalStatus(term_s=self.term)
        self._kept_until: float | None = None  # the earliest expiry the nodes granted in the last round

    def due_in(self) -> float:
        """Seconds until the next round."""
        if self._kept_until is None:
            return 0.0
        return max(0.0, self._kept_until - self.term * RENEW_WHEN_LEFT - self.clock())

    async def run(self) -> None:
        while True:
            await trio.sleep(self.due_in())
            if not await self.renew_once():
                await trio.sleep(min(RETRY_AFTER, self.term / 10))

    async def renew_once(self) -> bool:
        """One round over every referenced blob; whether every node granted it."""
        blobs = self.referenced()
        now = self.clock()
        self.status.blobs = len(blobs)
        if not blobs:
            self._kept_until = now + self.term
            self._succeeded(now, None)
            return True
        expires = int(now + self.term)
        log.info("renewing %d blobs on %d nodes until %s (batches of %d)", len(blobs), len(self.client.connections),
                 time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(expires)), RENEWAL_BATCH)
        try:
            outcome = await renew_blobs(self.client, self.owner, blobs, expires)
        except Exception as error:  # a renewal round must never take the mount down
            log.exception("renewal round failed")
            self._failed(now, f"{type(error).__name__}: {error}")
            return False
        if not outcome.complete:
            failed = "; ".join(f"{node}: {reason}" for node, reason in sorted(outcome.failed.items()))
            self._failed(now, f"{len(outcome.failed)} of {len(self.client.connections)} nodes did not renew: {failed}")
            return False
        granted = outcome.expires if outcome.expires is not None else expires
        if granted < expires:
            log.warning("the nodes granted claims until %d only, not %d (their [lifecycle] max_term_days is "
                        "shorter than this filesystem's blob_term_days): renewing more often", granted, expires)
        self._kept_until = granted
        self._succeeded(now, granted)
        missing = {node: len(blob_ids) for node, blob_ids in outcome.unknown.items()}
        log.info("renewed %d blobs until %d%s", len(blobs), granted,
                 f"; not stored on some nodes (repair heals them): {missing}" if missing else "")
        return True

    def _succeeded(self, now: float, granted: float | None) -> None:
        self.status.last_success = now
        self.status.expires = granted
        self.status.last_error = None

    def _failed(self, now: float, error: str) -> None:
        self.status.last_error = error
        self.status.last_error_at = now
        log.warning("renewal of the filesystem's blobs failed (retrying in %.0f s; the blobs are kept until "
                    "their last renewal runs out): %s", min(RETRY_AFTER, self.term / 10), error)


def renewer_for(client: BlobClient, settings: FsSettings, db: Database, publisher: SnapshotPublisher,
                state: FsState) -> Renewer:
    """The renewal task of a writable mount."""
    return Renewer(client, settings.fs_id, settings.blob_term_days * DAY,
                   partial(renewed_blobs, db, state, partial(snapshot_blobs, publisher)))


def snapshot_blobs(publisher: SnapshotPublisher) -> set[str]:
    """The blobs of the last metadata snapshot: its manifest, its segments, the retained manifests."""
    manifest = publisher.previous_manifest()
    if manifest is None or publisher.local.manifest is None:
        return set()
    return {publisher.local.manifest, *(s.blob for s in manifest.segments), *(r.manifest for r in manifest.history)}


def renewed_blobs(db: Database, state: FsState, manifest_ids: Callable[[], set[str]]) -> set[BlobId]:
    """What the mount keeps alive: everything gc counts as reachable (reachable.py: the live tree,
    every retained snapshot, read-only mounts, pins), and, for snapshots recorded before schema 3
    that gc has not yet recorded, every blob the database still has a row for plus the last
    snapshot's own blobs. Renewing a little too much costs a term of space; renewing too little loses
    data. Blobs on gc's to-release list are not renewed: they are on their way out."""
    releasing = {row[0] for row in db.execute("SELECT blob_id FROM gc_release")}
    rows = {row[0] for row in db.execute("SELECT blob_id FROM blobs")}
    kept = (rows | manifest_ids()) - releasing
    return reachable_blobs(db, state) | {BlobId.parse(text) for text in kept}
