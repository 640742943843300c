"""A circuit breaker for one dependency (a Prometheus URL) as frozen values: each step returns the next state.

Closed: every request goes. After `threshold` consecutive failures it opens: requests are refused until
`retry_at`. Then one trial request goes (half-open) while the rest are still refused; its success closes the
circuit, its failure opens it for another cool-down. The adapter owns the state; this module only decides.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime, timedelta


class Verdict(enum.StrEnum):
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"  # e.g. cut off by the caller's own deadline: says nothing of the server


class CircuitState(enum.StrEnum):
    CLOSED = "Closed"
    OPEN = "Open"
    HALF_OPEN = "HalfOpen"  # the one trial request is in flight


@dataclass(frozen=True)
class Circuit:
    threshold: int
    cool_down: timedelta
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0  # consecutive
    retry_at: datetime | None = None  # when open: when the trial request may go
    last_failure: str = ""

    def admit(self, now: datetime) -> tuple[Circuit, bool]:
        """Whether a request may go now, and the state after letting it (the trial half-opens the circuit)."""
        match self.state:
            case CircuitState.CLOSED:
                return self, True
            case CircuitState.OPEN if self.retry_at is None or now >= self.retry_at:
                return replace(self, state=CircuitState.HALF_OPEN), True
            case CircuitState.OPEN | CircuitState.HALF_OPEN:
                return self, False

    def record(self, verdict: Verdict, now: datetime, message: str = "") -> Circuit:
        match verdict:
            case Verdict.SUCCEEDED:
                return self.succeeded()
            case Verdict.FAILED:
                return self.failed(now, message)
            case Verdict.INCONCLUSIVE:
                return self.inconclusive()

    def inconclusive(self) -> Circuit:
        """A trial that showed nothing hands the trial to the next request."""
        return replace(self, state=CircuitState.OPEN) if self.state is CircuitState.HALF_OPEN else self

    def succeeded(self) -> Circuit:
        return replace(self, state=CircuitState.CLOSED, failures=0, retry_at=None, last_failure="")

    def failed(self, now: datetime, message: str) -> Circuit:
        failures = self.failures + 1
        match self.state:
            case CircuitState.HALF_OPEN:
                return self._open(now, failures, message)
            case CircuitState.CLOSED if failures >= self.threshold:
                return self._open(now, failures, message)
            case CircuitState.CLOSED:
                return replace(self, failures=failures, last_failure=message)
            case CircuitState.OPEN:  # a request admitted before the circuit opened: its retry_at stands
                return self

    def _open(self, now: datetime, failures: int, message: str) -> Circuit:
        return replace(
            self,
            state=CircuitState.OPEN,
            failures=failures,
            retry_at=now + self.cool_down,
            last_failure=message,
        )

    @property
    def refusal(self) -> str:
        """Why a request was not sent; fixed for one open period, so a condition quoting it does not churn."""
        retry = f"; next try at {self.retry_at:%Y-%m-%dT%H:%M:%SZ}" if self.retry_at else ""
        return f"circuit open after {self.failures} consecutive failures (last: {self.last_failure}){retry}"
