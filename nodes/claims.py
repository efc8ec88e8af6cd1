"""Who keeps each blob on this node, and until when: claims, their expiry and the writers' quotas.

A claim is ``owner -> (expires, writer)``: the owner is the filesystem that references the blob (its
32-hex-digit ID, or "" for a claim made without one), ``expires`` the unix time (seconds, the node's
wall clock) until which the node keeps the blob for it, ``writer`` the base64 key that made the claim
(quotas charge it). A blob stays while one claim is left and not expired; the node deletes it (with a
tombstone, so repair does not bring it back) when the last claim is released or expired. Wall-clock
time, not epochs: epochs change with membership, not on a schedule (docs/node-api.md, "Claims").

On disk, next to the blob's other objects (nodes.store, same checksummed envelope)::

    blobs/<..>/<blob id>/claims   {"format": 1, "bytes": <charged>, "claims": {"<owner>": {"expires": <unix>,
                                   "writer": "<base64 key>"}}}

``bytes`` is what the blob costs its writers' quotas on this node: its expected files when the first
claim was made (or, for a blob stored before claims existed, the files found). The file is replaced
durably before any answer that depends on it, so a granted claim survives kill -9. A blob without
the file (stored by a node before claims, or fetched by repair) gets a claim for owner "" expiring one
default term after the node first sees it so: the node keeps it at least that long.

Every method blocks (disk I/O): call from a worker thread. One lock orders claims against deletion.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from walrusfs.redstuff import BlobId

from .config import LifecycleConfig, QuotaConfig
from .store import CLAIMS, BlobStore, CorruptObjectError

log = logging.getLogger(__name__)

FILE_FORMAT = 1
UPGRADE_OWNER = ""


@dataclass(frozen=True)
class Claim:
    expires: int
    writer: str  # base64 public key; "" for a claim the node made itself (upgrade, repair)


class OverQuotaError(Exception):
    """The writer's claims would exceed its cap on this node; nothing was changed."""

    def __init__(self, writer: str, used: int, adding: int, cap: int) -> None:
        super().__init__(f"writer key {writer} has {used} bytes claimed on this node; {adding} more would exceed "
                         f"its quota of {cap} bytes. Nothing was stored: ask the node's operator for a larger "
                         "[quotas] entry, or free space (walrusfs gc)")
        self.writer, self.used, self.adding, self.cap = writer, used, adding, cap


def writer_text(writer: bytes) -> str:
    return base64.b64encode(writer).decode()


class ClaimStore:
    def __init__(self, store: BlobStore, lifecycle: LifecycleConfig, quotas: QuotaConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.quotas = quotas
        self.clock = clock
        self.lock = threading.RLock()
        self._claims: dict[str, dict[str, Claim]] = {}
        self._bytes: dict[str, int] = {}  # charged to each claiming writer, by blob
        self._usage: dict[str, int] = {}  # bytes claimed, by writer (base64)
        self._unclaimed: set[str] = set()  # stored without a claim since start (repair, handover)
        self.expired_total = 0

    # --- opening -----------------------------------------------------------------------------------

    def open(self) -> None:
        """Load every blob's claims; give those stored without any (older nodes) the upgrade claim."""
        upgraded = 0
        after: str | None = None
        while True:
            page = self.store.list_blobs(after, 10_000)
            for text in page:
                if not self._load(BlobId.parse(text)):
                    upgraded += 1
            if len(page) < 10_000:
                break
            after = page[-1]
        if upgraded:
            log.info("gave %d blobs stored without claims a claim for owner %r until %d (one default term)",
                     upgraded, UPGRADE_OWNER, self._default_expiry())
        log.info("claims: %d blobs, %d writers", len(self._claims), len(self._usage))

    def _load(self, blob_id: BlobId) -> bool:
        """Load one blob's claims into memory; False if it had none (it gets the default claim)."""
        text = str(blob_id)
        try:
            payload = self.store.get(blob_id, CLAIMS)
        except CorruptObjectError as error:
            log.error("%s: keeping the blob for owner %r for the longest term", error, UPGRADE_OWNER)
            payload, expires = None, int(self.clock() + self.lifecycle.max_term)
        else:
            expires = self._default_expiry()
        if payload is not None:
            try:
                data = json.loads(payload)
                if data.get("format") != FILE_FORMAT:
                    raise ValueError(f"claims format {data.get('format')!r}, this node reads {FILE_FORMAT}")
                claims = {str(owner): Claim(int(c["expires"]), str(c["writer"]))
                          for owner, c in data["claims"].items()}
                self._set(text, claims, int(data["bytes"]))
                return True
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                log.error("claims of blob %s are unreadable (%s): keeping it for the longest term", text, error)
                expires = int(self.clock() + self.lifecycle.max_term)
        size = self.store.blob_bytes(blob_id)
        if size == 0:
            return True  # deleted meanwhile
        claims = {UPGRADE_OWNER: Claim(expires, "")}
        self._write(blob_id, claims, size)
        self._set(text, claims, size)
        return False

    # --- granting ----------------------------------------------------------------------------------

    def _default_expiry(self) -> int:
        return int(self.clock() + self.lifecycle.default_term)

    def granted(self, requested: int | None) -> int:
        """The expiry the node grants for a request: the default term if none is asked, never more
        than the maximum term from now."""
        if requested is None:
            return self._default_expiry()
        return min(requested, int(self.clock() + self.lifecycle.max_term))

    def store_and_claim(self, blob_id: BlobId, metadata: bytes, owner: str, requested: int | None,
                        writer: bytes, size: int) -> tuple[bool, int]:
        """Store the blob's metadata (if new) and the owner's claim, both durably: (created, the
        expiry granted). OverQuotaError, with nothing changed, if the writer is over its quota."""
        with self.lock:
            text, key = str(blob_id), writer_text(writer)
            claims = dict(self._claims.get(text, {}))
            charged = self._bytes.get(text, size)
            if not any(c.writer == key for c in claims.values()):
                self._check_quota(key, charged)
            created = self.store.put_metadata(blob_id, metadata)
            if created:
                claims, charged = {}, size
            expires = self.granted(requested)
            old = claims.get(owner)
            claims[owner] = Claim(max(expires, old.expires) if old else expires, key)
            self._write(blob_id, claims, charged)
            self._set(text, claims, charged)
            return created, expires

    def _check_quota(self, writer: str, adding: int) -> None:
        cap = self.quotas.cap(base64.b64decode(writer))
        used = self._usage.get(writer, 0)
        if cap and used + adding > cap:
            raise OverQuotaError(writer, used, adding, cap)

    def renew(self, owner: str, blob_ids: Iterable[BlobId], requested: int,
              writer: bytes) -> tuple[int, list[str], list[str]]:
        """Extend (never shorten) the owner's claim on each stored blob: (granted, renewed, unknown).
        A stored blob the owner had no claim on gets one (a renewal keeps data, it never refuses it
        for quota: nothing new is stored)."""
        granted = self.granted(requested)
        renewed, unknown = [], []
        key = writer_text(writer)
        for blob_id in blob_ids:
            text = str(blob_id)
            with self.lock:
                claims = self._claims.get(text)
                if claims is None and text in self._unclaimed:
                    self._load(blob_id)
                    claims = self._claims.get(text)
                if claims is None or not self.store.has(blob_id, "metadata"):
                    unknown.append(text)
                    continue
                old = claims.get(owner)
                if old is None or old.expires < granted:
                    claims = {**claims, owner: Claim(granted, old.writer if old else key)}
                    self._write(blob_id, claims, self._bytes[text])
                    self._set(text, claims, self._bytes[text])
                renewed.append(text)
        return granted, renewed, unknown

    def adopt(self, blob_id: BlobId, claims: dict[str, Claim]) -> None:
        """Take over the claims a blob's previous holder had (the handover of a shard), merged with
        any here; no expiry beyond this node's maximum term from now."""
        limit = int(self.clock() + self.lifecycle.max_term)
        with self.lock:
            text = str(blob_id)
            if not self.store.has(blob_id, "metadata"):
                return
            # The node's own default claim (writer "": made at an upgrade, or for a blob repair or the
            # handover brought before its claims) gives way to the owners' claims.
            merged = {o: c for o, c in self._claims.get(text, {}).items() if c.writer}
            for owner, claim in claims.items():
                old = merged.get(owner)
                expires = min(claim.expires, limit)
                if old is None or old.expires < expires:
                    merged[owner] = Claim(expires, claim.writer)
            if not merged:
                return
            charged = self._bytes.get(text) or self.store.blob_bytes(blob_id)
            self._write(blob_id, merged, charged)
            self._set(text, merged, charged)

    def release(self, blob_id: BlobId, owner: str) -> tuple[bool, int] | None:
        """Remove the owner's claim; delete the blob (tombstoned) when none is left. (deleted, claims
        left), or None if the blob is not stored."""
        with self.lock:
            text = str(blob_id)
            if not self.store.has(blob_id, "metadata"):
                self._forget(text)
                return None
            claims = self._claims.get(text)
            if claims is None:
                self._load(blob_id)
                claims = self._claims.get(text, {})
            claims = {o: c for o, c in claims.items() if o != owner}
            if claims:
                self._write(blob_id, claims, self._bytes.get(text, 0))
                self._set(text, claims, self._bytes.get(text, 0))
                return False, len(claims)
            self.store.bury(blob_id)  # first: a crash between the two leaves a tombstone, never the blob back
            deleted = self.store.delete_blob(blob_id)
            self._forget(text)
            return deleted, 0

    def delete(self, blob_id: BlobId) -> bool:
        """Delete the blob whatever its claims (an operator's DELETE without owner), tombstoned."""
        with self.lock:
            self.store.bury(blob_id)
            deleted = self.store.delete_blob(blob_id)
            self._forget(str(blob_id))
            return deleted

    # --- reading -----------------------------------------------------------------------------------

    def claims_of(self, blob_id: BlobId) -> dict[str, Claim]:
        with self.lock:
            return dict(self._claims.get(str(blob_id), {}))

    def keep_until(self, blob_id: BlobId) -> int:
        """The time until which the node keeps the blob unless its owners release it: the latest claim
        (0 if it has none)."""
        return max((c.expires for c in self.claims_of(blob_id).values()), default=0)

    def usage(self) -> dict[str, int]:
        with self.lock:
            return dict(self._usage)

    def noticed(self, blob_id: BlobId) -> None:
        """A blob was stored without a claim (repair, handover): the next sweep gives it the default."""
        with self.lock:
            if str(blob_id) not in self._claims:
                self._unclaimed.add(str(blob_id))

    # --- expiry ------------------------------------------------------------------------------------

    def sweep(self) -> list[str]:
        """Delete (tombstoned) every blob whose claims have all expired, strictly after the latest
        expiry: never before the time the node signed for. The blobs deleted."""
        with self.lock:
            for text in list(self._unclaimed):
                self._unclaimed.discard(text)
                if text not in self._claims:
                    self._load(BlobId.parse(text))
            now = self.clock()
            doomed = [text for text, claims in self._claims.items()
                      if claims and max(c.expires for c in claims.values()) < now]
        deleted = []
        for text in doomed:
            with self.lock:  # checked again: a renewal may have come in between
                claims = self._claims.get(text)
                if not claims or max(c.expires for c in claims.values()) >= self.clock():
                    continue
                blob_id = BlobId.parse(text)
                self.store.bury(blob_id)
                if self.store.delete_blob(blob_id):
                    deleted.append(text)
                self._forget(text)
        self.expired_total += len(deleted)
        return deleted

    # --- bookkeeping -------------------------------------------------------------------------------

    def _write(self, blob_id: BlobId, claims: dict[str, Claim], charged: int) -> None:
        payload = {"format": FILE_FORMAT, "bytes": charged,
                   "claims": {owner: {"expires": c.expires, "writer": c.writer} for owner, c in claims.items()}}
        self.store.put_claims(blob_id, json.dumps(payload, sort_keys=True).encode())

    def _set(self, text: str, claims: dict[str, Claim], charged: int) -> None:
        self._forget(text)
        self._claims[text] = claims
        self._bytes[text] = charged
        for writer in {c.writer for c in claims.values()}:
            self._usage[writer] = self._usage.get(writer, 0) + charged

    def _forget(self, text: str) -> None:
        claims = self._claims.pop(text, None)
        charged = self._bytes.pop(text, 0)
        self._unclaimed.discard(text)
        for writer in {c.writer for c in (claims or {}).values()}:
            left = self._usage.get(writer, 0) - charged
            if left > 0:
                self._usage[writer] = left
            else:
                self._usage.pop(writer, None)
