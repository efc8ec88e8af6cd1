"""The certified-blob feed: how nodes tell each other which blobs are certified (and which invalid).

Each node numbers the blobs it knows to be certified in the order it learned them, and serves
``GET /v1/certified?since=SEQ&limit=N`` with their certificates. The numbering lives in memory and
is tagged with a random ``instance`` chosen at start: a peer that sees the instance change (the node
restarted) reads the feed again from 0, so no cursor survives a restart that it should not. Peers
poll each feed from where they stopped, so a poll with nothing new costs one small request.

A blob found invalid is appended again with ``"invalid": true``; peers then fetch its proof and
check it themselves before believing it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
from typing import TYPE_CHECKING

from walrusfs.protocol.certificates import CertificateError
from walrusfs.protocol.wire import FeedEntry, FeedPage
from walrusfs.redstuff import BlobId, FormatError

from .peers import PeerError
from .ratelimit import jittered
from .store import CERTIFICATE, CorruptObjectError

if TYPE_CHECKING:
    from .core import Healer

log = logging.getLogger("nodes.feed")
MAX_PAGE = 1000


class Feed:
    def __init__(self, service: Healer) -> None:
        self.service = service
        self.store = service.store
        self.instance = secrets.token_hex(8)
        self.entries: list[str] = sorted(self.store.certified | self.store.invalid)
        self._cursors: dict[str, tuple[str, int]] = {}  # peer -> (its instance, next seq)
        self._synced: set[str] = set()  # peers whose whole feed was read since this node started
        self.bytes_received = 0

    def append(self, blob: str) -> None:
        self.entries.append(blob)

    def synced_peers(self) -> int:
        """Current peers whose whole feed was read (peers that left the committee do not count)."""
        peers = self.service.peers
        return len(self._synced & set(peers.nodes)) if peers is not None else 0

    # --- serving -------------------------------------------------------------------------------------

    async def page(self, since: int, limit: int) -> FeedPage:
        blobs = self.entries[since : since + limit]
        store = self.store

        def load() -> list[FeedEntry]:
            out = []
            for offset, blob in enumerate(blobs):
                try:
                    text = store.get(BlobId.parse(blob), CERTIFICATE)
                except CorruptObjectError:
                    continue  # the scrubber or the next heal fetches it again from a peer
                if text is not None:  # None: deleted since
                    out.append(FeedEntry(since + offset, blob, text.decode(), blob in store.invalid))
            return out

        entries = await self.service.in_worker(load)
        following = since + len(blobs)
        return FeedPage(self.instance, entries, following, following < len(self.entries))

    # --- reading the peers' feeds --------------------------------------------------------------------

    async def sync_forever(self) -> None:
        service = self.service
        assert service.peers is not None
        await asyncio.sleep(random.uniform(0, 0.3))
        while True:
            peers = list(service.peers.nodes)  # read each round: they follow the committee (epochs)
            await asyncio.gather(*(self.sync_peer(peer) for peer in peers if service.backoff.ready(peer)))
            interval = service.config.sync_interval
            if self.synced_peers() < len(peers):  # until every peer was read once, look again soon
                interval = min(interval, 1.0)
            await asyncio.sleep(jittered(interval))

    async def sync_peer(self, peer: str) -> None:
        service = self.service
        assert service.peers is not None
        instance, since = self._cursors.get(peer, ("", 0))
        while True:
            try:
                body = await service.peers.feed(peer, since, MAX_PAGE)
                self.bytes_received += len(body)
                page = FeedPage.from_dict(json.loads(body))
                if page.instance != instance:
                    restarted = since != 0
                    instance, since = page.instance, 0
                    if restarted:
                        continue  # the peer restarted: its numbering is new, read it from the start
                for entry in page.entries:
                    await self._consider(peer, entry)
                since = page.next
                self._cursors[peer] = (instance, since)
                if not page.more:
                    break
            except PeerError as error:
                service._peer_failed(error)
                return
            except (ValueError, KeyError, TypeError) as error:
                log.warning("peer %s sent a malformed feed page: %s", peer, error)
                service.backoff.failed(peer)
                return
        self._synced.add(peer)
        service.backoff.succeeded(peer)

    async def _consider(self, peer: str, entry: FeedEntry) -> None:
        service = self.service
        blob = entry.blob_id
        blob_id = BlobId.parse(blob)
        if blob in self.store.tombstones:
            return  # a writer deleted it here; that peer has not heard yet
        if not service.knows_certified(blob):
            try:
                text = await service.in_worker(service.verify_certificate, blob_id, entry.certificate)
            except (FormatError, CertificateError) as error:
                log.warning("peer %s listed blob %s with a certificate that does not verify: %s",
                            peer, blob, error)
                return
            if blob in self.store.tombstones:
                return  # buried while its certificate was checked: kept, it would keep repair busy forever
            service.pending_certificates[blob] = text
            service.enqueue(blob)
        if entry.invalid and blob not in self.store.invalid:
            service.invalid_hints[blob] = peer
            service.enqueue(blob)
