"""The client's one fan-out pattern, ``race``, on a mock clock: who is asked, when, and who is blamed.

A unit test of one layer (no network): each candidate is a script of when its node begins to answer
and when it finishes (or fails, or never answers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import trio
import trio.testing

from walrusfs.client.fanout import Answered, RaceResult, race

HEDGE = 0.3


@dataclass
class Node:
    head_at: float = 0.01  # seconds after its start; inf: never answers
    done_at: float = 0.02
    fails: bool = False


def run_race(nodes: dict[str, Node], needed: int, patience: float = 0.0) -> tuple[RaceResult, dict[str, float], float]:
    started: dict[str, float] = {}

    async def attempt(name: str, answered: Answered) -> str:
        node = nodes[name]
        started[name] = trio.current_time()
        if math.isinf(node.head_at):
            await trio.sleep_forever()
        await trio.sleep(node.head_at)
        answered()
        await trio.sleep(node.done_at - node.head_at)
        if node.fails:
            raise RuntimeError(f"{name} failed")
        return name

    async def main() -> tuple[RaceResult, float]:
        result = await race(list(nodes), attempt, needed, hedge_after=HEDGE, patience=patience)
        return result, trio.current_time()

    result, finished = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return result, started, finished


def successes(result: RaceResult) -> set[str]:
    return {name for name, _ in result.successes}


def test_a_silent_node_is_overtaken_after_the_hedge_delay_and_blamed():
    result, started, finished = run_race({"a": Node(head_at=math.inf), "b": Node(), "c": Node()}, needed=2)
    assert successes(result) == {"b", "c"}
    assert started["c"] == HEDGE
    assert math.isclose(finished, HEDGE + 0.02)
    assert result.slow == ["a"] and result.abandoned == ["a"]


def test_a_node_sending_a_long_body_is_not_raced_within_its_patience():
    result, started, finished = run_race({"a": Node(head_at=0.01, done_at=1.0), "b": Node(), "c": Node()},
                                         needed=2, patience=2.0)
    assert successes(result) == {"a", "b"}
    assert "c" not in started and result.untried == ["c"]
    assert math.isclose(finished, 1.0)
    assert result.slow == []


def test_a_node_answering_slower_than_its_patience_is_overtaken():
    result, started, _ = run_race({"a": Node(head_at=0.01, done_at=10.0), "b": Node(), "c": Node()},
                                         needed=2, patience=1.0)
    assert successes(result) == {"b", "c"}
    assert math.isclose(started["c"], HEDGE + 1.0)
    assert result.slow == ["a"]


def test_each_overdue_attempt_starts_one_more():
    silent = Node(head_at=math.inf)
    result, started, _ = run_race({"a": silent, "b": silent, "c": Node(), "d": Node(), "e": Node()}, needed=2)
    assert successes(result) == {"c", "d"}
    assert started["c"] == started["d"] == HEDGE
    assert "e" not in started
    assert sorted(result.slow) == ["a", "b"]


def test_a_failure_starts_the_next_candidate_at_once():
    result, started, _ = run_race({"a": Node(fails=True), "b": Node(), "c": Node()}, needed=2)
    assert successes(result) == {"b", "c"}
    assert math.isclose(started["c"], 0.02)
    assert [name for name, _ in result.failures] == ["a"] and result.slow == []


def test_without_enough_candidates_the_race_ends_with_what_it_has():
    result, _, _ = run_race({"a": Node(fails=True), "b": Node()}, needed=2)
    assert successes(result) == {"b"} and result.untried == [] and result.abandoned == []
