"""The one fan-out pattern the client uses: try candidates concurrently until enough succeed.

Start as many attempts as are needed; each failure starts the next candidate. With ``hedge_after``,
an attempt whose node has not begun to answer within that many seconds is overdue, and each overdue
attempt starts one more candidate: a node that hangs costs at most the hedge delay. An attempt
whose node is answering (a large body on its way) is overdue only after ``patience`` more seconds,
so healthy nodes sharing a busy link are neither raced nor blamed. Once enough have succeeded the
rest are cancelled.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import trio

C = TypeVar("C")
R = TypeVar("R")

Answered = Callable[[], None]  # an attempt calls it when its node begins to answer


@dataclass
class RaceResult(Generic[C, R]):
    successes: list[tuple[C, R]] = field(default_factory=list)
    failures: list[tuple[C, BaseException]] = field(default_factory=list)
    untried: list[C] = field(default_factory=list)
    abandoned: list[C] = field(default_factory=list)  # still running when enough had succeeded
    slow: list[C] = field(default_factory=list)  # abandoned while overdue


@dataclass
class _InFlight:
    started: float
    answered: bool = False
    hedged: bool = False  # it has already started one more candidate


async def race(
    candidates: Sequence[C],
    attempt: Callable[[C, Answered], Awaitable[R]],
    needed: int,
    *,
    hedge_after: float | None = None,
    patience: float = 0.0,
    parallel: int | None = None,
) -> RaceResult[C, R]:
    """Run ``attempt`` on candidates, in order, until ``needed`` succeed or all were tried.

    ``parallel`` (default ``needed``) is how many run at first. Exceptions from ``attempt`` count as
    failures (Exception only: cancellation passes through). Candidates must be distinct.
    """
    result: RaceResult[C, R] = RaceResult()
    queue = list(candidates)
    if needed <= 0:
        result.untried = queue
        return result
    send, receive = trio.open_memory_channel[tuple[C, R | None, BaseException | None]](math.inf)
    in_flight: dict[C, _InFlight] = {}

    def due(flight: _InFlight) -> float:
        assert hedge_after is not None
        return flight.started + hedge_after + (patience if flight.answered else 0.0)

    async with trio.open_nursery() as nursery:

        async def one(candidate: C, flight: _InFlight) -> None:
            def answered() -> None:
                flight.answered = True

            try:
                value = await attempt(candidate, answered)
            except Exception as error:
                send.send_nowait((candidate, None, error))
            else:
                send.send_nowait((candidate, value, None))

        def launch() -> None:
            if queue:
                candidate = queue.pop(0)
                in_flight[candidate] = flight = _InFlight(trio.current_time())
                nursery.start_soon(one, candidate, flight)

        for _ in range(parallel or needed):
            launch()
        while len(result.successes) < needed and in_flight:
            waiting = [due(f) for f in in_flight.values() if not f.hedged] if hedge_after is not None else []
            message = None
            with trio.move_on_at(min(waiting, default=math.inf)):
                message = await receive.receive()
            if message is None:  # overdue: each such attempt starts one more candidate
                now = trio.current_time()
                for flight in list(in_flight.values()):
                    if not flight.hedged and due(flight) <= now:
                        flight.hedged = True
                        launch()
                continue
            candidate, value, error = message
            del in_flight[candidate]
            if error is None:
                result.successes.append((candidate, value))  # type: ignore[arg-type]
            else:
                result.failures.append((candidate, error))
                launch()
        nursery.cancel_scope.cancel()
    result.untried = queue
    result.abandoned = list(in_flight)
    if hedge_after is not None:
        now = trio.current_time()
        result.slow = [c for c, flight in in_flight.items() if due(flight) <= now]
    return result
