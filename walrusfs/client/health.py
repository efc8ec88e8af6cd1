"""What the client remembers about each node between calls: recent failures and latency.

Requests go to healthy, fast nodes first; a node that failed recently is tried last, and is tried
again once its penalty has decayed, so a node that comes back is used again. A node caught serving
bytes that do not verify is *avoided* for ``LIE_COOLDOWN`` seconds: reads do not ask it at all
while enough other nodes could answer (asking it costs a whole sliver that will likely be thrown
away), and ask it last when nothing else can.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Weight of the newest sample in the moving averages.
_ALPHA = 0.3
# A failure's penalty halves every this many seconds.
_FAILURE_HALF_LIFE = 30.0
# Seconds a node that served bad data is avoided after its latest lie.
LIE_COOLDOWN = 60.0


@dataclass
class NodeHealth:
    latency: float | None = None  # moving average of seconds per successful request
    failure_score: float = 0.0  # decays with time; +1 per failure
    failures: int = 0
    successes: int = 0
    lies: int = 0  # answers with bytes that did not verify
    last_error: str | None = None
    avoid_until: float = 0.0  # the clock's time until which the node is avoided (it lied)
    _updated: float = field(default_factory=time.monotonic)

    def _decay(self, now: float) -> None:
        self.failure_score *= 0.5 ** ((now - self._updated) / _FAILURE_HALF_LIFE)
        self._updated = now

    def penalty(self, now: float | None = None) -> float:
        self._decay(time.monotonic() if now is None else now)
        return self.failure_score


class HealthBook:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._nodes: dict[str, NodeHealth] = {}
        self.clock = clock  # monotonic seconds (a test's mock clock)

    def __getitem__(self, node_id: str) -> NodeHealth:
        health = self._nodes.get(node_id)
        if health is None:
            health = self._nodes[node_id] = NodeHealth(_updated=self.clock())
        return health

    def success(self, node_id: str, seconds: float) -> None:
        health = self[node_id]
        health.successes += 1
        health.latency = seconds if health.latency is None else (
            _ALPHA * seconds + (1 - _ALPHA) * health.latency)

    def failure(self, node_id: str, error: str) -> None:
        health = self[node_id]
        health._decay(self.clock())
        health.failure_score += 1.0
        health.failures += 1
        health.last_error = error

    def lie(self, node_id: str, error: str) -> None:
        """A node answered with bytes that do not verify: worse than silence."""
        self.failure(node_id, error)
        health = self[node_id]
        health.failure_score += 4.0
        health.lies += 1
        health.avoid_until = self.clock() + LIE_COOLDOWN

    def avoided(self, node_id: str) -> bool:
        """The node served bad data within the last ``LIE_COOLDOWN`` seconds."""
        health = self._nodes.get(node_id)
        return health is not None and self.clock() < health.avoid_until

    def avoided_for(self, node_id: str) -> float:
        """Seconds the node is still avoided (0 if it is not)."""
        health = self._nodes.get(node_id)
        return 0.0 if health is None else max(0.0, health.avoid_until - self.clock())

    def order_key(self, node_id: str) -> tuple[float, float]:
        health = self[node_id]
        return (round(health.penalty(self.clock()), 1), health.latency if health.latency is not None else 0.05)

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {
            node_id: {"latency_ms": None if h.latency is None else round(h.latency * 1e3, 2),
                      "failure_score": round(h.penalty(self.clock()), 3), "failures": h.failures,
                      "successes": h.successes, "lies": h.lies, "last_error": h.last_error,
                      "avoided_s": round(self.avoided_for(node_id), 1)}
            for node_id, h in sorted(self._nodes.items())
        }
