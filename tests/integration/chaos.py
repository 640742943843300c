"""Fault injection on the real control plane: what each injection left behind, and the table it prints.

Each chaos test injects one fault into a running loop, ends it, and records an Injection: whether the loop
converged (the test's own assertions all held), duplicate Jobs, promotions on bad or missing evidence, status
lost, and the seconds from the fault's end to convergence. `CHAOS_REPEAT=n` runs every fault n times (CI: 1).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

REPEAT = int(os.environ.get("CHAOS_REPEAT", "1"))


@dataclass
class Injection:
    fault: str
    converged: bool = False
    duplicate_jobs: int = 0
    bad_promotions: int = 0
    lost_status: int = 0
    seconds: float | None = None
    _fault_ended: float | None = None

    def fault_ended(self) -> None:
        self._fault_ended = time.monotonic()

    def converged_now(self) -> None:
        """Called once every promise of the test held; the time counts from the fault's end."""
        self.converged = True
        if self._fault_ended is not None:
            self.seconds = time.monotonic() - self._fault_ended


@dataclass
class ChaosLog:
    injections: list[Injection] = field(default_factory=list)

    def table(self) -> list[str]:
        faults: dict[str, list[Injection]] = {}
        for injection in self.injections:
            faults.setdefault(injection.fault, []).append(injection)
        header = (
            f"{'fault':44} {'times':>5} {'converged':>9} {'dup Jobs':>8} {'bad promotions':>14} "
            f"{'lost status':>11} {'converge s (median, max)':>24}"
        )
        lines = [header, "-" * len(header)]
        for fault, runs in faults.items():
            seconds = [run.seconds for run in runs if run.seconds is not None]
            timing = f"{statistics.median(seconds):.1f}, {max(seconds):.1f}" if seconds else "n/a"
            lines.append(
                f"{fault:44} {len(runs):>5} {sum(r.converged for r in runs):>9} "
                f"{sum(r.duplicate_jobs for r in runs):>8} {sum(r.bad_promotions for r in runs):>14} "
                f"{sum(r.lost_status for r in runs):>11} {timing:>24}"
            )
        lines.append(self.summary())
        return lines

    def summary(self) -> str:
        runs = self.injections
        return (
            f"faults={len({run.fault for run in runs})} injections={len(runs)} "
            f"converged={sum(run.converged for run in runs)} "
            f"duplicate_jobs={sum(run.duplicate_jobs for run in runs)} "
            f"bad_promotions={sum(run.bad_promotions for run in runs)} "
            f"lost_status={sum(run.lost_status for run in runs)}"
        )


CHAOS_LOG = ChaosLog()


def duplicate_jobs(jobs: list[dict[str, Any]], retrain_count: int, first_number: int) -> int:
    """Jobs beyond one per retrain counter value from `first_number` to `retrain_count`, plus any Job whose
    number the counter never reached."""
    expected = {f"-retrain-{number}" for number in range(first_number, retrain_count + 1)}
    names = [job["metadata"]["name"] for job in jobs]
    unexpected = [name for name in names if not any(name.endswith(suffix) for suffix in expected)]
    return len(unexpected) + max(0, len(names) - len(unexpected) - len(expected))
