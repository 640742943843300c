"""Conditions by the Kubernetes API conventions: lastTransitionTime moves only when the status flips."""

from __future__ import annotations

from datetime import datetime

from feedbackloop.api import ConditionStatus, ConditionType, EventType, Reason
from feedbackloop.core.status import Condition

# Every condition exists from the first visit, Unknown until something is known.
INITIAL_CONDITIONS: dict[ConditionType, tuple[ConditionStatus, Reason]] = {
    ConditionType.READY: (ConditionStatus.UNKNOWN, Reason.INITIALIZING),
    ConditionType.HEALTHY: (ConditionStatus.UNKNOWN, Reason.INITIALIZING),
    ConditionType.RETRAINING: (ConditionStatus.FALSE, Reason.IDLE),
    ConditionType.VALIDATED: (ConditionStatus.UNKNOWN, Reason.NO_CANDIDATE),
    ConditionType.ROLLED_OUT: (ConditionStatus.UNKNOWN, Reason.NOT_ROLLED_OUT),
    ConditionType.DEGRADED: (ConditionStatus.FALSE, Reason.NOT_DEGRADED),
    ConditionType.IN_SYNC: (ConditionStatus.UNKNOWN, Reason.INITIALIZING),
}


def set_condition(
    conditions: tuple[Condition, ...],
    kind: ConditionType,
    status: ConditionStatus,
    reason: Reason,
    message: str,
    now: datetime,
    generation: int | None,
) -> tuple[Condition, ...]:
    """Replace or add one condition."""
    previous = next((c for c in conditions if c.type == kind), None)
    transition = previous.last_transition_time if previous and previous.status == status else now
    updated = Condition(
        type=kind,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=generation,
    )
    if previous is None:
        return (*conditions, updated)
    return tuple(updated if c.type == kind else c for c in conditions)


def transition_event_type(kind: ConditionType, status: ConditionStatus) -> EventType:
    """True is good for every condition but Degraded."""
    bad = ConditionStatus.TRUE if kind is ConditionType.DEGRADED else ConditionStatus.FALSE
    return EventType.WARNING if status == bad else EventType.NORMAL
