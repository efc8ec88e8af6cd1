"""Waiting for several things at once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio


async def all_of(*waits: Callable[[], Awaitable[Any]]) -> None:
    """Run ``waits`` concurrently until every one has returned or raised, then raise the exception of
    the first in argument order that raised, if any (itself, not an ExceptionGroup). Nothing is cut
    short: a caller sees the same outcome as from awaiting them one after the other, only sooner."""
    failures: list[Exception | None] = [None] * len(waits)

    async def one(index: int, wait: Callable[[], Awaitable[Any]]) -> None:
        try:
            await wait()
        except Exception as error:
            failures[index] = error

    async with trio.open_nursery() as nursery:
        for index, wait in enumerate(waits):
            nursery.start_soon(one, index, wait)
    for error in failures:
        if error is not None:
            raise error
