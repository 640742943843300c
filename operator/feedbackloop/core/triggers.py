"""Why a retrain should start: a sustained breach, a cron schedule, or a manual request."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from croniter import croniter

from feedbackloop.api import Trigger
from feedbackloop.core.durations import format_duration
from feedbackloop.core.monitoring import sustained_breaches
from feedbackloop.core.requests import is_handled, quoted, request_id
from feedbackloop.core.spec import FeedbackLoopSpec
from feedbackloop.core.status import Evaluation


@dataclass(frozen=True)
class PendingTrigger:
    kind: Trigger
    reason: str
    request_id: str | None = None  # for Manual
    fire_time: datetime | None = None  # for Schedule
    since: datetime | None = None  # for Breach: the earliest breachingSince of the metrics that fired


def schedule_error(schedule: str | None) -> str | None:
    if schedule is None:
        return None
    if len(schedule.split()) != 5 or not croniter.is_valid(schedule):
        return f"spec.retrain.schedule: {schedule!r} is not a 5-field cron expression"
    return None


def latest_fire(schedule: str, now: datetime) -> datetime:
    """The most recent time at or before `now` that the schedule fires."""
    if croniter.match(schedule, now.replace(second=0, microsecond=0)):
        return now.replace(second=0, microsecond=0)
    fire: datetime = croniter(schedule, now).get_prev(datetime)
    return fire


def due_schedule_fire(schedule: str | None, anchor: datetime, now: datetime) -> datetime | None:
    """The newest fire time after `anchor` (the last handled fire, or creation) that is not in the future.

    Fires missed while the operator was down or the loop suspended collapse into one, as CronJob does.
    """
    if schedule is None or schedule_error(schedule):
        return None
    fire = latest_fire(schedule, now)
    return fire if fire > anchor else None


def pending_triggers(
    spec: FeedbackLoopSpec,
    evaluation: Evaluation | None,
    retrain_request: str | None,
    handled_request: str | None,
    schedule_anchor: datetime,
    now: datetime,
) -> list[PendingTrigger]:
    """Every trigger that wants a retrain now, most deliberate first."""
    pending = []
    if retrain_request and not is_handled(retrain_request, handled_request):
        reason = f"requested by annotation (id {quoted(retrain_request)})"
        pending.append(PendingTrigger(Trigger.MANUAL, reason, request_id(retrain_request)))
    if evaluation is not None:
        breaches = sustained_breaches(spec, evaluation, now)
        if breaches:
            parts = []
            starts = [result.breaching_since for result in breaches if result.breaching_since is not None]
            for result in breaches:
                since = result.breaching_since or now
                parts.append(
                    f"{result.name} {result.message or result.verdict} for {format_duration(now - since)}"
                )
            pending.append(PendingTrigger(Trigger.BREACH, "; ".join(parts), since=min(starts, default=now)))
    schedule = spec.retrain.schedule if spec.retrain else None
    fire = due_schedule_fire(schedule, schedule_anchor, now)
    if fire is not None:
        iso = fire.isoformat().replace("+00:00", "Z")
        pending.append(
            PendingTrigger(Trigger.SCHEDULE, f"schedule {schedule!r} fired at {iso}", fire_time=fire)
        )
    return pending
