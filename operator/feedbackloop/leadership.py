"""One active writer per set of loops: the replica holding the Lease reconciles, the others stand by warm.

Every replica watches and indexes the loops, so a standby that takes the Lease reconciles at once. The
leader may write only until its last successful renewal plus the renew deadline, which is shorter than the
Lease's duration: a leader cut off from the API server stops writing before anyone else can take over.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from feedbackloop.core.lease import LeaseAction, LeaseRecord, LeaseTimings, lease_action

log = logging.getLogger(__name__)


class LeaseStore(Protocol):
    def read_lease(self, namespace: str, name: str) -> tuple[LeaseRecord, str] | None: ...
    def write_lease(
        self,
        namespace: str,
        name: str,
        record: LeaseRecord,
        acquired_at: datetime,
        resource_version: str | None,
    ) -> bool: ...


def identity() -> str:
    """Unique per process: the pod name (hostname) alone repeats when a pod restarts in place."""
    return f"{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


class AlwaysLeader:
    """Leader election turned off (FBL_LEADER_ELECTION=false): one replica, always writing."""

    identity = "standalone"

    def is_leader(self) -> bool:
        return True

    def release(self) -> None:
        """Nothing to hand over."""

    async def run_forever(self) -> None:
        await asyncio.Event().wait()


@dataclass
class LeaderElector:
    store: LeaseStore
    namespace: str
    name: str
    timings: LeaseTimings
    on_elected: Callable[[], None]
    identity: str = field(default_factory=identity)
    clock: Callable[[], float] = time.monotonic
    _writes_until: float = 0.0
    _acquired_at: datetime | None = None
    _seen: tuple[str | None, str | None] | None = None  # (holder, renewTime) last read
    _seen_since: float = 0.0

    def is_leader(self) -> bool:
        return self.clock() < self._writes_until

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        retry = self.timings.retry_period.total_seconds()
        while True:
            was_leader = self.is_leader()
            try:
                await loop.run_in_executor(None, self.try_once)
            except Exception as err:
                log.warning("lease %s/%s: %s", self.namespace, self.name, err)
            if self.is_leader() and not was_leader:
                log.info("lease %s/%s: %s is the leader", self.namespace, self.name, self.identity)
                self.on_elected()
            elif was_leader and not self.is_leader():
                log.warning("lease %s/%s: lost; %s stops writing", self.namespace, self.name, self.identity)
            await asyncio.sleep(retry)

    def release(self) -> None:
        """On a clean shutdown: stop writing, then hand the Lease over so a standby need not wait it out."""
        if not self.is_leader():
            return
        self._writes_until = 0.0
        read = self.store.read_lease(self.namespace, self.name)
        if read is not None and read[0].holder == self.identity:
            released = LeaseRecord(None, self.timings.duration, None, read[0].transitions)
            self.store.write_lease(self.namespace, self.name, released, datetime.now(UTC), read[1])
            log.info("lease %s/%s: released by %s", self.namespace, self.name, self.identity)

    def try_once(self) -> None:
        started = self.clock()
        read = self.store.read_lease(self.namespace, self.name)
        record, version = read if read is not None else (None, None)
        seen = (record.holder, record.renew_time) if record else None
        if seen != self._seen:
            self._seen, self._seen_since = seen, started
        action = lease_action(record, self.identity, _seconds(started - self._seen_since))
        if action is LeaseAction.WAIT:
            self._writes_until = 0.0
            return
        if action is not LeaseAction.RENEW or self._acquired_at is None:
            self._acquired_at = datetime.now(UTC)
        transitions = (record.transitions if record else 0) + (0 if action is LeaseAction.RENEW else 1)
        mine = LeaseRecord(self.identity, self.timings.duration, None, transitions)
        if self.store.write_lease(self.namespace, self.name, mine, self._acquired_at, version):
            self._writes_until = started + self.timings.renew_deadline.total_seconds()
        else:
            self._writes_until = 0.0  # another replica wrote the Lease first


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)
