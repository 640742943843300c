"""Leader election on a coordination.k8s.io Lease, as client-go's leaderelection decides it.

Expiry is judged by when this process saw the record last change, on its own clock, never by the
renewTime another machine wrote: clocks of two nodes may disagree, elapsed time on one does not.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta


class LeaseAction(enum.StrEnum):
    CREATE = "Create"  # no Lease yet
    RENEW = "Renew"  # ours: renew it
    TAKE = "Take"  # someone else's, expired (or released): take it over
    WAIT = "Wait"  # someone else's, live


@dataclass(frozen=True)
class LeaseRecord:
    holder: str | None
    duration: timedelta
    renew_time: str | None  # as written by the holder; compared for change only
    transitions: int = 0


@dataclass(frozen=True)
class LeaseTimings:
    duration: timedelta = timedelta(seconds=15)  # a standby takes over this long after the last renewal
    renew_deadline: timedelta = timedelta(seconds=10)  # a leader stops writing this long after it renewed
    retry_period: timedelta = timedelta(seconds=2)

    def problem(self) -> str | None:
        if not self.retry_period < self.renew_deadline < self.duration:
            return "the lease needs retry period < renew deadline < duration"
        return None


def lease_action(record: LeaseRecord | None, me: str, unchanged_for: timedelta) -> LeaseAction:
    """`unchanged_for`: how long this process has seen the record without a change of holder or renewal."""
    if record is None:
        return LeaseAction.CREATE
    if record.holder == me:
        return LeaseAction.RENEW
    if not record.holder or unchanged_for >= record.duration:
        return LeaseAction.TAKE
    return LeaseAction.WAIT
