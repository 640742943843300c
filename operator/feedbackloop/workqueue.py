"""A delaying work queue of loops, as controller-runtime's: each loop runs at the time it asked for, never
twice at once, and a watch event brings it forward.

One asyncio task owns the schedule; the work itself runs in a bounded number of slots. A loop asked for
while it runs is run once more right after, so no event is lost and none runs twice in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

from feedbackloop.index import LoopKey

log = logging.getLogger(__name__)


class WorkQueue:
    def __init__(
        self,
        run: Callable[[LoopKey], Awaitable[float | None]],
        workers: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`run` reconciles one loop and returns the monotonic time it wants to run again, or None."""
        self._run = run
        self._clock = clock
        self._slots = asyncio.Semaphore(workers)
        self._due: dict[LoopKey, float] = {}
        self._heap: list[tuple[float, int, LoopKey]] = []
        self._order = itertools.count()
        self._running: set[LoopKey] = set()
        self._again: set[LoopKey] = set()
        self._dropped: set[LoopKey] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    def add(self, key: LoopKey) -> None:
        """Run this loop as soon as a slot is free (after its current run, if it is running)."""
        self._dropped.discard(key)
        if key in self._running:
            self._again.add(key)
        else:
            self._schedule(key, self._clock())

    def forget(self, key: LoopKey) -> None:
        self._due.pop(key, None)
        self._again.discard(key)
        if key in self._running:
            self._dropped.add(key)

    def scheduled(self) -> int:
        return len(self._due)

    def _schedule(self, key: LoopKey, at: float) -> None:
        current = self._due.get(key)
        if current is not None and current <= at:
            return
        self._due[key] = at
        heapq.heappush(self._heap, (at, next(self._order), key))
        self._wake.set()

    async def run_forever(self) -> None:
        while True:
            while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
                heapq.heappop(self._heap)  # superseded by an earlier time, or forgotten
            if not self._heap:
                await self._sleep(None)
                continue
            at, _, key = self._heap[0]
            delay = at - self._clock()
            if delay > 0:
                await self._sleep(delay)
                continue
            heapq.heappop(self._heap)
            del self._due[key]
            await self._slots.acquire()
            self._running.add(key)
            task = asyncio.create_task(self._run_one(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _sleep(self, seconds: float | None) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _run_one(self, key: LoopKey) -> None:
        next_at: float | None = None
        try:
            next_at = await self._run(key)
        except Exception:
            log.exception("reconcile of %s/%s failed unexpectedly; it runs again in 15s", *key)
            next_at = self._clock() + 15
        finally:
            self._running.discard(key)
            self._slots.release()
        if key in self._dropped:
            self._dropped.discard(key)
        elif key in self._again:
            self._again.discard(key)
            self._schedule(key, self._clock())
        elif next_at is not None:
            self._schedule(key, next_at)
