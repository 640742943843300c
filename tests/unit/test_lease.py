"""Leader election decisions, and the elector over an in-memory Lease store."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest

from feedbackloop.core.lease import LeaseAction, LeaseRecord, LeaseTimings, lease_action
from feedbackloop.leadership import LeaderElector

DURATION = timedelta(seconds=15)


def record(holder: str | None, renewed: str = "t1") -> LeaseRecord:
    return LeaseRecord(holder, DURATION, renewed)


@pytest.mark.parametrize(
    ("lease", "unchanged_for", "action"),
    [
        (None, timedelta(0), LeaseAction.CREATE),
        (record("me"), timedelta(0), LeaseAction.RENEW),
        (record("me"), timedelta(hours=1), LeaseAction.RENEW),
        (record("other"), timedelta(seconds=14), LeaseAction.WAIT),
        (record("other"), timedelta(seconds=15), LeaseAction.TAKE),
        (record(None), timedelta(0), LeaseAction.TAKE),
    ],
)
def test_the_lease_action(lease: LeaseRecord | None, unchanged_for: timedelta, action: LeaseAction) -> None:
    assert lease_action(lease, "me", unchanged_for) is action


def test_timings_must_leave_the_leader_time_to_stop_before_a_standby_takes_over() -> None:
    assert LeaseTimings().problem() is None
    bad = LeaseTimings(duration=timedelta(seconds=10), renew_deadline=timedelta(seconds=10))
    assert bad.problem() is not None


@dataclass
class MemoryLeases:
    """One Lease with optimistic concurrency, as the API server keeps it."""

    record: LeaseRecord | None = None
    version: int = 0
    writes: list[str | None] = field(default_factory=list)

    def read_lease(self, namespace: str, name: str) -> tuple[LeaseRecord, str] | None:
        return (self.record, str(self.version)) if self.record else None

    def write_lease(
        self,
        namespace: str,
        name: str,
        lease: LeaseRecord,
        acquired_at: datetime,
        resource_version: str | None,
    ) -> bool:
        if (resource_version is None) != (self.record is None) or (
            resource_version is not None and resource_version != str(self.version)
        ):
            return False
        self.version += 1
        self.record = LeaseRecord(lease.holder, lease.duration, f"renewed-{self.version}", lease.transitions)
        self.writes.append(lease.holder)
        return True


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(store: MemoryLeases, clock: Clock, me: str) -> LeaderElector:
    return LeaderElector(store, "ns", "lease", LeaseTimings(), lambda: None, identity=me, clock=clock)


def test_one_leader_a_warm_standby_and_a_takeover_only_after_the_lease_expires() -> None:
    store, clock = MemoryLeases(), Clock()
    first, second = elector(store, clock, "a"), elector(store, clock, "b")
    first.try_once()
    second.try_once()
    assert first.is_leader() and not second.is_leader()

    # "a" dies (no more renewals): "b" waits the whole lease duration, measured on its own clock.
    for _ in range(7):
        clock.now += 2
        second.try_once()
        assert not second.is_leader()
    clock.now += 2
    second.try_once()
    assert second.is_leader()
    assert store.record is not None and (store.record.holder, store.record.transitions) == ("b", 2)


def test_a_leader_that_cannot_renew_stops_writing_before_a_standby_may_take_over() -> None:
    store, clock = MemoryLeases(), Clock()
    leader = elector(store, clock, "a")
    leader.try_once()
    clock.now += LeaseTimings().renew_deadline.total_seconds()
    assert not leader.is_leader()  # renew deadline (10s) < duration (15s): nobody else writes yet
    assert clock.now < 1000.0 + DURATION.total_seconds()


def test_a_leader_whose_renewal_loses_the_race_stops_at_once() -> None:
    store, clock = MemoryLeases(), Clock()
    leader = elector(store, clock, "a")
    leader.try_once()
    store.record = record("b")  # someone else took the Lease since (this one was cut off)
    store.version += 1
    clock.now += 2
    leader.try_once()
    assert not leader.is_leader()
