"""What the client remembers about each node between calls: recent failures and latency.

Requests go to healthy, fast nodes first; a node that failed recently is tried last, and is tried
again once its penalty has decayed, so a node that comes back is used again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# Weight of the newest sample in the moving averages.
_ALPHA = 0.3
# A failure's penalty halves every this many seconds.
_FAILURE_HALF_LIFE = 30.0


@dataclass
class NodeHealth:
    latency: float | None = None  # moving average of seconds per successful request
    failure_score: float = 0.0  # decays with time; +1 per failure
    failures: int = 0
    successes: int = 0
    lies: int = 0  # answers with bytes that did not verify
    last_error: str | None = None
    _updated: float = field(default_factory=time.monotonic)

    def _decay(self, now: float) -> None:
        self.failure_score *= 0.5 ** ((now - self._updated) / _FAILURE_HALF_LIFE)
        self._updated = now

    def penalty(self, now: float | None = None) -> float:
        self._decay(time.monotonic() if now is None else now)
        return self.failure_score


class HealthBook:
    def __init__(self) -> None:
        self._nodes: dict[str, NodeHealth] = {}

    def __getitem__(self, node_id: str) -> NodeHealth:
        return self._nodes.setdefault(node_id, NodeHealth())

    def success(self, node_id: str, seconds: float) -> None:
        health = self[node_id]
        health.successes += 1
        health.latency = seconds if health.latency is None else (
            _ALPHA * seconds + (1 - _ALPHA) * health.latency)

    def failure(self, node_id: str, error: str) -> None:
        health = self[node_id]
        health._decay(time.monotonic())
        health.failure_score += 1.0
        health.failures += 1
        health.last_error = error

    def lie(self, node_id: str, error: str) -> None:
        """A node answered with bytes that do not verify: worse than silence."""
        self.failure(node_id, error)
        health = self[node_id]
        health.failure_score += 4.0
        health.lies += 1

    def order_key(self, node_id: str) -> tuple[float, float]:
        health = self[node_id]
        return (round(health.penalty(), 1), health.latency if health.latency is not None else 0.05)

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {
            node_id: {"latency_ms": None if h.latency is None else round(h.latency * 1e3, 2),
                      "failure_score": round(h.penalty(), 3), "failures": h.failures,
                      "successes": h.successes, "lies": h.lies, "last_error": h.last_error}
            for node_id, h in sorted(self._nodes.items())
        }
