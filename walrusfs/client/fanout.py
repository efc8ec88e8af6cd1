"""The one fan-out pattern the client uses: try candidates concurrently until enough succeed.

Start as many attempts as are needed; each failure starts the next candidate; and whenever
``hedge_after`` seconds pass without an answer, one more candidate starts, so a node that hangs
costs at most the hedge delay. Once enough have succeeded the rest are cancelled.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import trio

C = TypeVar("C")
R = TypeVar("R")


@dataclass
class RaceResult(Generic[C, R]):
    successes: list[tuple[C, R]] = field(default_factory=list)
    failures: list[tuple[C, BaseException]] = field(default_factory=list)
    untried: list[C] = field(default_factory=list)
    abandoned: list[C] = field(default_factory=list)  # still running when enough had succeeded
    slow: list[C] = field(default_factory=list)  # abandoned after waiting at least the hedge delay


async def race(
    candidates: Sequence[C],
    attempt: Callable[[C], Awaitable[R]],
    needed: int,
    *,
    hedge_after: float | None = None,
    parallel: int | None = None,
) -> RaceResult[C, R]:
    """Run ``attempt`` on candidates, in order, until ``needed`` succeed or all were tried.

    ``parallel`` (default ``needed``) is how many run at first. Exceptions from ``attempt`` count as
    failures (Exception only: cancellation passes through).
    """
    result: RaceResult[C, R] = RaceResult()
    queue = list(candidates)
    if needed <= 0:
        result.untried = queue
        return result
    send, receive = trio.open_memory_channel[tuple[C, R | None, BaseException | None]](math.inf)
    in_flight: list[C] = []
    started: list[float] = []  # start time of each in_flight candidate

    async with trio.open_nursery() as nursery:

        async def one(candidate: C) -> None:
            try:
                value = await attempt(candidate)
            except Exception as error:
                send.send_nowait((candidate, None, error))
            else:
                send.send_nowait((candidate, value, None))

        def launch() -> bool:
            if not queue:
                return False
            candidate = queue.pop(0)
            in_flight.append(candidate)
            started.append(trio.current_time())
            nursery.start_soon(one, candidate)
            return True

        for _ in range(parallel or needed):
            launch()
        while len(result.successes) < needed and in_flight:
            message = None
            with trio.move_on_after(math.inf if hedge_after is None else hedge_after):
                message = await receive.receive()
            if message is None:  # nobody answered in time: hedge with one more candidate
                launch()
                continue
            candidate, value, error = message
            del started[in_flight.index(candidate)]
            in_flight.remove(candidate)
            if error is None:
                result.successes.append((candidate, value))  # type: ignore[arg-type]
            else:
                result.failures.append((candidate, error))
                launch()
        nursery.cancel_scope.cancel()
    result.untried = queue
    result.abandoned = in_flight
    if hedge_after is not None:
        now = trio.current_time()
        result.slow = [c for c, t in zip(in_flight, started, strict=True) if now - t >= hedge_after]
    return result
