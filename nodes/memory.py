"""Handing memory back to the kernel after bursts.

The node keeps freed buffers in its heap for reuse (``walrusfs.malloc.keep_freed_buffers``): a
sliver-sized buffer that is reused costs no page faults. glibc only returns free memory at the top
of the heap, and only beyond that keep threshold, so after a burst (thousands of connections, many
large requests at once) the freed memory scattered through the heap would stay resident for good.
Once a second the keeper looks, and trims the heap (``malloc_trim``, in a worker thread) when

- a burst of connections has ended: at least ``BURST`` fewer open than at the peak since the last
  trim, and at most half of it; or
- the heap holds more than ``free_budget`` bytes of freed memory (at most every 10 s).

docs/node-api.md ("Memory") states what bounds a node's resident memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from walrusfs import malloc

from .httpd import ConnectionStats

log = logging.getLogger("nodes.memory")

BURST = 256  # connections
FREE_BUDGET = 256 << 20  # freed heap kept for reuse, bytes
_BUDGET_TRIM_EVERY = 10.0  # seconds


class MemoryKeeper:
    def __init__(self, connections: ConnectionStats, free_budget: int = FREE_BUDGET, interval: float = 1.0,
                 free_heap: Callable[[], int | None] = malloc.free_heap_bytes,
                 trim: Callable[[], bool] = malloc.trim, clock: Callable[[], float] = time.monotonic) -> None:
        self.connections = connections
        self.free_budget = free_budget
        self.interval = interval
        self.trims = 0
        self._free_heap = free_heap
        self._trim = trim
        self._clock = clock
        self._trimmed_at = -_BUDGET_TRIM_EVERY
        self._task: asyncio.Task[None] | None = None

    def due(self) -> str | None:
        """Why the heap should be trimmed now, or None."""
        stats = self.connections
        if stats.peak - stats.open >= BURST and stats.open <= stats.peak // 2:
            return f"a burst of {stats.peak} connections ended ({stats.open} open)"
        if self._clock() - self._trimmed_at >= _BUDGET_TRIM_EVERY:
            free = self._free_heap()
            if free is not None and free > self.free_budget:
                return f"{free >> 20} MiB of freed heap, over the {self.free_budget >> 20} MiB kept for reuse"
        return None

    async def check(self) -> None:
        reason = self.due()
        if reason is None:
            return
        self.connections.peak = self.connections.open
        self._trimmed_at = self._clock()
        await asyncio.get_running_loop().run_in_executor(None, self._trim)
        self.trims += 1
        log.info("returned freed memory to the kernel: %s", reason)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="memory-keeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:
                log.exception("memory check failed")
