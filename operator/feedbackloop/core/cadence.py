"""When to look at a loop again, when to re-probe its dependencies, and when its status is worth a write.

At a thousand loops the operator's cost is what it does per loop while nothing happens: these rules keep an
idle loop to its evaluations (no API read, no status write) and a status write per heartbeat.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from croniter import croniter

from feedbackloop.api import (
    ABORT_ANNOTATION,
    PROMOTE_ANNOTATION,
    RETRAIN_REQUEST_ANNOTATION,
    ConditionStatus,
    ConditionType,
    LoopPhase,
    Reason,
)
from feedbackloop.core.cooldown import retrain_cooldown
from feedbackloop.core.loop import LoopState, OperatorPolicy
from feedbackloop.core.requests import is_handled
from feedbackloop.core.status import Evaluation, FeedbackLoopStatus, MetricEvaluation
from feedbackloop.core.triggers import schedule_error


def probe_due(loop: LoopState, policy: OperatorPolicy, now: datetime) -> bool:
    """Dependencies are probed on a slower cadence than evaluations once the loop is Ready."""
    if loop.last_probe is None or loop.generation != loop.status.observed_generation:
        return True
    if not loop.status.condition_is(ConditionType.READY, ConditionStatus.TRUE):
        return True
    return now >= loop.last_probe + policy.probe_interval * _spread(loop.ref.uid)


def _spread(uid: str) -> float:
    """1.0 to 1.5, fixed per loop: loops created together do not probe together for ever after."""
    return 1.0 + int(hashlib.sha256(uid.encode()).hexdigest()[:4], 16) / 0xFFFF / 2


def next_reconcile(
    loop: LoopState, annotations: dict[str, str], policy: OperatorPolicy, now: datetime
) -> datetime:
    """The earliest time anything about this loop can change without a watch event saying so."""
    status, spec = loop.status, loop.spec
    retry_at = job_create_retry_at(status, now)
    if _in_flight(loop, annotations, retry_at is not None):
        return now + policy.tick
    wake = now + policy.heartbeat
    if retry_at is not None:
        wake = min(wake, retry_at)
    if spec is None or spec.suspend or status.phase is LoopPhase.INVALID:
        return wake  # nothing to evaluate until the spec or the operator's settings change
    if status.last_evaluation is None or loop.generation != status.observed_generation:
        return now
    wake = min(wake, status.last_evaluation.time + spec.monitoring.interval)
    if (cooldown_end := cooldown_ends(loop)) is not None and cooldown_end > now:
        wake = min(wake, cooldown_end)
    schedule = spec.retrain.schedule if spec.retrain else None
    if schedule is not None and schedule_error(schedule) is None:
        fire: datetime = croniter(schedule, now).get_next(datetime)
        wake = min(wake, fire)
    return max(wake, now)


def job_create_retry_at(status: FeedbackLoopStatus, now: datetime) -> datetime | None:
    """When a retrain whose Job create failed tries again, while that is still ahead."""
    active = status.active_retrain
    if active is None or active.job_created or active.next_create_at is None or active.next_create_at <= now:
        return None
    return active.next_create_at


def _in_flight(loop: LoopState, annotations: dict[str, str], create_backing_off: bool) -> bool:
    """A Job, a rollout, or a trigger that waits (cooldown, capacity, readiness) is followed every tick; a
    retrain whose Job create backs off is not, until its next try."""
    status = loop.status
    if status.active_retrain is not None and not create_backing_off:
        return True
    if status.rollout is not None or (status.waiting_reason and not _cooling_down(status)):
        return True
    token = loop.request_token
    pending = (
        (loop.rollback_request, status.handled_rollback_request, token),
        (annotations.get(PROMOTE_ANNOTATION), status.handled_promote_request, token),
        (annotations.get(ABORT_ANNOTATION), status.handled_abort_request, None),
        (annotations.get(RETRAIN_REQUEST_ANNOTATION), status.handled_retrain_request, None),
    )
    return any(
        request and not is_handled(request, handled, with_token) for request, handled, with_token in pending
    )


def _cooling_down(status: FeedbackLoopStatus) -> bool:
    """A trigger waits out its cooldown, whose end is known: nothing to follow every tick until then."""
    retraining = status.condition(ConditionType.RETRAINING)
    return retraining is not None and retraining.reason == Reason.COOLDOWN


def cooldown_ends(loop: LoopState) -> datetime | None:
    """When the cooldown (with its backoff) of a loop waiting on it ends."""
    status, spec = loop.status, loop.spec
    if not _cooling_down(status) or spec is None or spec.retrain is None or status.last_retrain_time is None:
        return None
    return status.last_retrain_time + retrain_cooldown(spec.retrain, status.history).length


def status_write_needed(
    stored: FeedbackLoopStatus, intended: FeedbackLoopStatus, now: datetime, policy: OperatorPolicy
) -> bool:
    """Anything but the evaluation's time and raw values changed, or the stored evaluation is a heartbeat
    old."""
    if _settled(stored) != _settled(intended):
        return True
    if intended.last_evaluation is None:
        return False
    if stored.last_evaluation is None:
        return True
    return now - stored.last_evaluation.time >= policy.heartbeat


def evaluation_lag(
    spec_interval: timedelta, previous: Evaluation | None, current: Evaluation | None
) -> float | None:
    """Seconds between when an evaluation was due and when it ran; None when none ran or none was due."""
    if previous is None or current is None or current.time <= previous.time:
        return None
    return max(0.0, (current.time - (previous.time + spec_interval)).total_seconds())


def _settled(status: FeedbackLoopStatus) -> FeedbackLoopStatus:
    """The status without what moves at every evaluation while nothing happens: its time and raw values."""
    evaluation = status.last_evaluation
    if evaluation is None:
        return status
    steady = tuple(_steady(metric) for metric in evaluation.metrics)
    return status.model_copy(update={"last_evaluation": replace(evaluation, time=_EPOCH, metrics=steady)})


def _steady(metric: MetricEvaluation) -> MetricEvaluation:
    return replace(metric, value=None, samples=None, message="")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
