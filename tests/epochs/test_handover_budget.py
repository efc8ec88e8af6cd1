"""The handover's bound on sliver bytes in flight (nodes.handover_move.ByteBudget): one layer, no processes."""

from __future__ import annotations

import asyncio

from nodes.handover_move import ByteBudget


async def _hold(budget: ByteBudget, size: int, log: list[str], name: str, release: asyncio.Event) -> None:
    async with budget.hold(size):
        log.append(f"{name} in ({budget.used})")
        await release.wait()
    log.append(f"{name} out")


def test_fetches_wait_while_the_budget_is_spent_and_an_oversized_one_goes_alone() -> None:
    async def scenario() -> list[str]:
        budget, log = ByteBudget(100), []
        first, second, third = asyncio.Event(), asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(_hold(budget, 60, log, "a", first))]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(_hold(budget, 60, log, "b", second)))  # 120 > 100: waits for a
        await asyncio.sleep(0.01)
        tasks.append(asyncio.create_task(_hold(budget, 500, log, "c", third)))  # larger than all: alone
        await asyncio.sleep(0.01)
        assert log == ["a in (60)"]
        first.set()
        await asyncio.sleep(0.01)
        assert log == ["a in (60)", "a out", "b in (60)"]
        second.set()
        await asyncio.sleep(0.01)
        assert log[-2:] == ["b out", "c in (100)"]
        third.set()
        await asyncio.gather(*tasks)
        assert budget.used == 0
        return log

    assert asyncio.run(scenario())[-1] == "c out"
