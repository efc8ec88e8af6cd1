"""The feed reader (nodes/feed.py) against a tombstone that lands while a peer's certificate is
being checked: one layer, in-process, the race made certain instead of likely.

A peer that has not heard of a deletion still lists the blob. The check of its certificate runs in
a worker thread; if the writer's tombstone arrives meanwhile, the certificate must not be kept as
pending: nothing would ever heal a buried blob, so repair status would never become idle (as
tests/epochs/test_handover_records.py once saw after 180 s)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from nodes.feed import Feed
from walrusfs.protocol.wire import FeedEntry

BLOB = "A" * 43  # a well-formed blob ID (base64url of 32 bytes)


class Service(SimpleNamespace):
    def __init__(self, tombstone_during_check: bool) -> None:
        super().__init__(store=SimpleNamespace(certified=set(), invalid=set(), tombstones=set()),
                         pending_certificates={}, invalid_hints={}, enqueued=[], peers=None)
        self.tombstone_during_check = tombstone_during_check

    def knows_certified(self, blob: str) -> bool:
        return blob in self.pending_certificates

    def verify_certificate(self, blob_id: object, text: str) -> str:
        return text

    async def in_worker(self, function, *args):  # type: ignore[no-untyped-def]
        if self.tombstone_during_check:
            self.store.tombstones.add(BLOB)  # the writer's DELETE lands while the check runs
        return function(*args)

    def enqueue(self, blob: str) -> None:
        if blob not in self.store.tombstones:  # as RepairService.enqueue: buried blobs are not healed
            self.enqueued.append(blob)


def consider(service: Service) -> None:
    asyncio.run(Feed(service)._consider("node-1", FeedEntry(0, BLOB, '{"certificate": "..."}')))


def test_a_listed_certificate_is_kept_and_the_blob_queued_for_healing() -> None:
    service = Service(tombstone_during_check=False)
    consider(service)
    assert service.pending_certificates == {BLOB: '{"certificate": "..."}'}
    assert service.enqueued == [BLOB]


def test_a_blob_buried_while_its_certificate_is_checked_leaves_nothing_pending() -> None:
    service = Service(tombstone_during_check=True)
    consider(service)
    assert service.pending_certificates == {}
    assert service.enqueued == []
