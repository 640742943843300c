"""The delaying work queue: times kept, no loop run twice at once, an event during a run runs it once more."""

from __future__ import annotations

import asyncio
import time

from feedbackloop.index import LoopKey
from feedbackloop.workqueue import WorkQueue

A: LoopKey = ("ns", "a")
B: LoopKey = ("ns", "b")


def test_each_loop_runs_at_the_time_it_asked_for_in_order() -> None:
    async def scenario() -> list[tuple[LoopKey, float]]:
        started = time.monotonic()
        runs: list[tuple[LoopKey, float]] = []

        async def run(key: LoopKey) -> float | None:
            runs.append((key, time.monotonic() - started))
            again = {A: 0.2, B: 0.05}[key] if len([r for r in runs if r[0] == key]) < 2 else None
            return time.monotonic() + again if again is not None else None

        queue = WorkQueue(run, workers=2)
        worker = asyncio.create_task(queue.run_forever())
        queue.add(A)
        queue.add(B)
        await asyncio.sleep(1.0)
        worker.cancel()
        return runs

    runs = asyncio.run(scenario())
    assert [key for key, _ in runs] == [A, B, B, A]
    second_b, second_a = runs[2][1], runs[3][1]
    assert second_b >= 0.05 - 0.01 and second_a >= 0.2 - 0.01  # never before the time asked for


def test_an_event_during_a_run_runs_the_loop_once_more_and_never_in_parallel() -> None:
    async def scenario() -> tuple[int, int]:
        running = 0
        most = 0
        count = 0

        async def run(key: LoopKey) -> float | None:
            nonlocal running, most, count
            running += 1
            count += 1
            most = max(most, running)
            await asyncio.sleep(0.05)
            running -= 1
            return None

        queue = WorkQueue(run, workers=4)
        worker = asyncio.create_task(queue.run_forever())
        queue.add(A)
        await asyncio.sleep(0.01)
        for _ in range(5):  # five events while the first run is in flight
            queue.add(A)
        await asyncio.sleep(0.3)
        worker.cancel()
        return count, most

    assert asyncio.run(scenario()) == (2, 1)


def test_a_forgotten_loop_is_not_run_again() -> None:
    async def scenario() -> int:
        count = 0

        async def run(key: LoopKey) -> float | None:
            nonlocal count
            count += 1
            return time.monotonic() + 0.05

        queue = WorkQueue(run, workers=1)
        worker = asyncio.create_task(queue.run_forever())
        queue.add(A)
        await asyncio.sleep(0.02)
        queue.forget(A)
        await asyncio.sleep(0.2)
        worker.cancel()
        return count

    assert asyncio.run(scenario()) == 1
