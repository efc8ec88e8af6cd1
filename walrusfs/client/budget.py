"""A weighted semaphore for bytes: bounds the memory of encodes and uploads in flight."""

from __future__ import annotations

import trio


class ByteBudget:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._waiters = trio.lowlevel.ParkingLot()

    async def acquire(self, amount: int) -> int:
        """Wait until ``amount`` fits; returns what was taken (an amount above the capacity takes
        the whole budget, so one huge request still runs, alone)."""
        amount = min(amount, self.capacity)
        while self.used + amount > self.capacity:
            await self._waiters.park()
        self.used += amount
        return amount

    def try_acquire(self, amount: int) -> int | None:
        """Take ``amount`` if it fits now; None if it does not."""
        amount = min(amount, self.capacity)
        if self.used + amount > self.capacity:
            return None
        self.used += amount
        return amount

    def release(self, taken: int) -> None:
        self.used -= taken
        self._waiters.unpark_all()
