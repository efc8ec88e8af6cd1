"""A short-lived LRU of sliver expansions: repair asks one sliver for many targets in a row, and
extending + hashing the sliver costs far more than handing out one symbol of it."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable

from walrusfs.redstuff import SliverExpansion

_Entry = tuple[float, int, "asyncio.Future[SliverExpansion]"]  # expiry, bytes, the expansion


class ExpansionCache:
    def __init__(self, max_bytes: int = 256 << 20, ttl: float = 60.0) -> None:
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._max_bytes = max_bytes
        self._ttl = ttl
        self._bytes = 0

    async def get(self, key: Hashable, build: Callable[[], Awaitable[SliverExpansion]]) -> SliverExpansion:
        """The cached expansion for ``key``, building it once even when asked concurrently."""
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            self._entries.move_to_end(key)
            return await asyncio.shield(entry[2])
        if entry is not None:
            self._drop(key)
        future: asyncio.Future[SliverExpansion] = asyncio.ensure_future(build())
        self._entries[key] = (now + self._ttl, 0, future)
        try:
            expansion = await asyncio.shield(future)
        except BaseException:
            if self._entries.get(key, (0, 0, None))[2] is future:
                self._drop(key)
            raise
        if self._entries.get(key, (0, 0, None))[2] is future:
            size = expansion.cells.nbytes + expansion.sliver.nbytes
            self._entries[key] = (now + self._ttl, size, future)
            self._bytes += size
            while self._bytes > self._max_bytes and len(self._entries) > 1:
                self._drop(next(iter(self._entries)))
        return expansion

    def invalidate(self, predicate: Callable[[Hashable], bool]) -> None:
        for key in [k for k in self._entries if predicate(k)]:
            self._drop(key)

    def _drop(self, key: Hashable) -> None:
        _, size, _ = self._entries.pop(key)
        self._bytes -= size
