"""The one retry policy (walrusfs/retry.py): capped exponential backoff with full jitter, and which
errors are permanent. Timing on trio's mock clock."""

from __future__ import annotations

import itertools
import random

import trio
import trio.testing

from walrusfs.client.store import StoreError
from walrusfs.client.transport import NodeError
from walrusfs.retry import Backoff, Retrier, is_permanent, is_permanent_status


def test_delays_are_drawn_below_a_ceiling_that_doubles_up_to_the_cap() -> None:
    backoff = Backoff(first=1.0, cap=30.0)
    assert [backoff.ceiling(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    rng = random.Random(7)
    delays = [backoff.delay(6, rng) for _ in range(2000)]
    assert all(0 <= d <= 30 for d in delays)
    assert min(delays) < 3 and max(delays) > 27  # full jitter: spread over the whole range
    assert backoff.ceiling(10_000) == 30  # no overflow however long it fails


def test_permanent_and_transient_errors() -> None:
    assert is_permanent(NodeError("n0", "store", "HTTP 403: forbidden", transient=False))
    assert not is_permanent(NodeError("n0", "store", "HTTP 503", transient=True))
    assert is_permanent(StoreError("refused", {}, permanent=True))
    assert not is_permanent(StoreError("no quorum in time", {}))
    for error in (OSError("disk"), ConnectionError("refused"), TimeoutError(), RuntimeError("?")):
        assert not is_permanent(error)
    assert [s for s in (400, 401, 403, 404, 408, 409, 410, 422, 429, 500, 503) if is_permanent_status(s)] == \
        [400, 401, 403, 410, 422]


def test_a_loop_on_the_retrier_backs_off_until_a_success_and_stops_at_a_permanent_error() -> None:
    """Transient failures wait longer and longer (never reset by the sleep itself); a success starts
    over; a permanent error stops the loop at once."""
    script = ["t", "t", "t", "t", "ok", "t", "p", "never"]
    attempts: list[float] = []

    async def loop() -> str | None:
        retrier = Retrier(Backoff(first=1.0, cap=8.0), rng=random.Random(1))
        for outcome in script:
            attempts.append(trio.current_time())
            if outcome == "ok":
                retrier.succeeded()
                continue
            error = StoreError(outcome, {}, permanent=outcome == "p")
            delay = retrier.failed(error)
            if delay is None:
                return retrier.permanent_error
            await trio.sleep(delay)
        return None

    clock = trio.testing.MockClock(autojump_threshold=0)
    assert trio.run(loop, clock=clock) == "p"
    assert len(attempts) == 7  # "never" was not tried
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert [g <= c for g, c in zip(gaps[:4], [1, 2, 4, 8], strict=True)] == [True] * 4
    assert gaps[4] == 0  # after the success, no wait
    assert gaps[5] <= 1  # and the next failure starts from the first ceiling again


def test_a_failure_that_persists_is_not_retried_every_second_for_an_hour() -> None:
    """The defect the uploader had: the backoff went back to 0 after each sleep, so a failure that
    persisted was retried about every second. Here one that persists for an hour is tried about
    3600 / (cap / 2) times (mean wait cap/2 once at the cap), not 3600."""

    async def loop() -> int:
        retrier = Retrier(Backoff(first=1.0, cap=60.0), rng=random.Random(3))
        tries = 0
        with trio.move_on_after(3600):
            while True:
                tries += 1
                await trio.sleep(retrier.failed(OSError("still down")))
        return tries

    tries = trio.run(loop, clock=trio.testing.MockClock(autojump_threshold=0))
    assert 60 < tries < 200, tries
