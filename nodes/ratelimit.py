"""Pacing background work (repair fetches, scrub reads) to a byte rate, and backing off from peers.

Background work on a storage node must leave room for what clients ask of it now; and when many
nodes repair at once, each of them must slow down rather than all retry in step (docs/repair.md).
"""

from __future__ import annotations

import asyncio
import random
import time


class TokenBucket:
    """At most ``rate`` bytes per second on average, in bursts of at most one second's worth.

    ``take`` waits until the bytes may go; a request larger than the burst waits for its share
    of time and then goes alone, so a huge sliver is paced rather than refused.
    """

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self._tokens = self.rate
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, amount: int) -> None:
        async with self._lock:  # first come, first served: no waiter is overtaken by later small ones
            now = time.monotonic()
            self._tokens = min(self.rate, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= amount
            if self._tokens < 0:
                await asyncio.sleep(-self._tokens / self.rate)


class Backoff:
    """Per-peer exponential backoff with full jitter: a peer that failed or said 429 is asked
    again only after a random delay in [0, base * 2^failures), capped, so that many nodes retrying
    the same peer spread out instead of arriving together."""

    def __init__(self, base: float = 0.5, cap: float = 60.0) -> None:
        self.base = base
        self.cap = cap
        self._failures: dict[str, int] = {}
        self._until: dict[str, float] = {}

    def ready(self, peer: str) -> bool:
        return time.monotonic() >= self._until.get(peer, 0.0)

    def failed(self, peer: str, at_least: float = 0.0) -> None:
        count = self._failures.get(peer, 0) + 1
        self._failures[peer] = count
        delay = max(at_least, random.uniform(0, min(self.cap, self.base * 2 ** count)))
        self._until[peer] = time.monotonic() + delay

    def succeeded(self, peer: str) -> None:
        self._failures.pop(peer, None)
        self._until.pop(peer, None)


def jittered(seconds: float) -> float:
    """``seconds`` give or take half: periodic work of many nodes does not stay in phase."""
    return seconds * random.uniform(0.5, 1.5)
