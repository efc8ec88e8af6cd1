"""One retry policy for every loop that retries a failed call: capped exponential backoff with full
jitter, and one rule for which errors are worth retrying at all.

Full jitter (a delay drawn uniformly from [0, min(cap, first * 2**attempt)]) keeps many clients
that failed together (a node restarting) from coming back together. The attempt count grows until
a success resets it: a loop that resets it after each sleep retries a permanent failure every few
seconds forever.

*Permanent* errors are those a retry cannot fix until someone changes something: a node refusing
the writer's key (HTTP 403), a bad signature (401), a request it cannot parse (other 4xx), an
encoding it proved inconsistent (410). *Transient* ones pass by themselves: connection errors,
timeouts, 5xx, 429 (rate limited), 404/409 (not there yet). Unknown errors count as transient.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# 4xx answers that say "not now" rather than "never".
TRANSIENT_STATUSES = frozenset({404, 408, 409, 425, 429})


def is_permanent_status(status: int) -> bool:
    """Whether an HTTP answer with this status means the same request will keep failing."""
    return 400 <= status < 500 and status not in TRANSIENT_STATUSES


def is_permanent(error: BaseException) -> bool:
    """Whether retrying ``error``'s call unchanged cannot succeed. Errors that know say so with a
    ``permanent`` attribute (StoreError) or a ``transient`` one (NodeError); everything else (OSError,
    timeouts, connection errors) is transient."""
    permanent = getattr(error, "permanent", None)
    if isinstance(permanent, bool):
        return permanent
    transient = getattr(error, "transient", None)
    if isinstance(transient, bool):
        return not transient
    return False


@dataclass(frozen=True)
class Backoff:
    """The delays between attempts: attempt n (0-based) waits uniform(0, min(cap, first * 2**n))."""

    first: float = 0.5
    cap: float = 30.0

    def ceiling(self, attempt: int) -> float:
        return min(self.cap, self.first * 2.0 ** min(attempt, 64))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        return (rng or random).uniform(0.0, self.ceiling(attempt))


@dataclass
class Retrier:
    """The state of one retrying loop: how many attempts in a row failed, and what the last said.

    ``failed`` returns the delay before the next attempt, or None for a permanent error (stop, and
    say why: ``permanent_error``). ``succeeded`` starts over."""

    backoff: Backoff = field(default_factory=Backoff)
    rng: random.Random | None = None
    failures: int = 0  # in a row
    permanent_error: str | None = None

    def failed(self, error: BaseException) -> float | None:
        self.failures += 1
        if is_permanent(error):
            self.permanent_error = str(error)
            return None
        self.permanent_error = None
        return self.backoff.delay(self.failures - 1, self.rng)

    def succeeded(self) -> None:
        self.failures = 0
        self.permanent_error = None

    @property
    def stopped(self) -> bool:
        """The last failure was permanent: no further automatic attempt."""
        return self.permanent_error is not None
