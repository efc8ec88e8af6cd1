"""Waiting for several things at once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio


async def all_of(*waits: Callable[[], Awaitable[Any]]) -> None:
    """Run ``waits`` concurrently and return when all have. The first to raise cancels the others,
    and its exception itself (not an ExceptionGroup) reaches the caller."""
    if len(waits) <= 1:
        for wait in waits:
            await wait()
        return
    failures: list[Exception] = []

    async def one(wait: Callable[[], Awaitable[Any]], scope: trio.CancelScope) -> None:
        try:
            await wait()
        except Exception as error:
            failures.append(error)
            scope.cancel()

    async with trio.open_nursery() as nursery:
        for wait in waits:
            nursery.start_soon(one, wait, nursery.cancel_scope)
    if failures:
        raise failures[0]
