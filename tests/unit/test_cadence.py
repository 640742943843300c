"""When a loop is looked at again, when its dependencies are re-probed, and when its status is written."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from core_inputs import POLICY, T0, accuracy, healthy_dependencies, loop_state, spec_dict
from feedbackloop.api import RETRAIN_REQUEST_ANNOTATION, ConditionType
from feedbackloop.core.cadence import evaluation_lag, next_reconcile, probe_due, status_write_needed
from feedbackloop.core.decide import decide
from feedbackloop.core.loop import LoopState
from feedbackloop.core.status import Evaluation, FeedbackLoopStatus

INTERVAL = timedelta(seconds=60)  # BASE_SPEC's monitoring interval


def evaluated(value: float, at: timedelta = timedelta(0), before: LoopState | None = None) -> LoopState:
    """A loop after one decision on `value` at T0 + `at` (after `before`'s, if given)."""
    loop = before or loop_state()
    decision = decide(loop, healthy_dependencies(metrics=(accuracy(value),)), POLICY, T0 + at)
    return replace(loop, status=decision.status, last_probe=T0 + at)


def test_an_idle_loop_wakes_for_its_next_evaluation_not_every_tick() -> None:
    loop = evaluated(0.95)
    interval = loop.spec.monitoring.interval if loop.spec else INTERVAL
    assert next_reconcile(loop, {}, POLICY, T0 + timedelta(seconds=1)) == T0 + interval


def test_a_loop_never_evaluated_or_with_a_new_generation_wakes_at_once() -> None:
    assert next_reconcile(loop_state(), {}, POLICY, T0) == T0
    assert next_reconcile(replace(evaluated(0.95), generation=2), {}, POLICY, T0) == T0


def test_a_loop_that_cannot_be_evaluated_waits_for_a_change_instead_of_spinning() -> None:
    for spec in (spec_dict(**{"retrain.image": "not/allowed:1"}), {"mode": "Auto"}):
        loop = loop_state(spec)
        decision = decide(loop, healthy_dependencies(), POLICY, T0)
        invalid = replace(loop, status=decision.status, last_probe=T0)
        assert decision.status.last_evaluation is None
        assert next_reconcile(invalid, {}, POLICY, T0) == T0 + POLICY.heartbeat


def test_work_in_flight_or_a_pending_request_is_followed_every_tick() -> None:
    loop = evaluated(0.95)
    assert next_reconcile(loop, {RETRAIN_REQUEST_ANNOTATION: "r1"}, POLICY, T0) == T0 + POLICY.tick
    waiting = replace(loop, status=loop.status.model_copy(update={"waiting_reason": "queued"}))
    assert next_reconcile(waiting, {}, POLICY, T0) == T0 + POLICY.tick


def test_a_loop_in_cooldown_wakes_for_its_evaluations_and_the_cooldown_end_not_every_tick() -> None:
    # One retrain started at T0 (a manual request); the breach that follows waits out the 1h cooldown.
    started = evaluated(0.95)
    requested = healthy_dependencies(metrics=(accuracy(0.95),), retrain_request="r1")
    first = decide(started, requested, POLICY, T0)
    assert first.status.last_retrain_time == T0
    loop = replace(started, status=first.status.model_copy(update={"active_retrain": None}))
    at = T0 + timedelta(minutes=20)
    retraining = None
    for _ in range(20):  # until the breach has lasted its `for`
        at += INTERVAL
        loop = replace(
            loop, status=decide(loop, healthy_dependencies(metrics=(accuracy(0.5),)), POLICY, at).status
        )
        retraining = loop.status.condition(ConditionType.RETRAINING)
        if retraining is not None and retraining.reason == "CooldownActive":
            break
    assert retraining is not None and retraining.reason == "CooldownActive", retraining
    cooling = loop
    assert next_reconcile(cooling, {}, POLICY, at) == at + INTERVAL
    assert cooling.status.last_evaluation is not None
    late = replace(cooling.status.last_evaluation, time=T0 + timedelta(minutes=59, seconds=30))
    near_end = replace(cooling, status=cooling.status.model_copy(update={"last_evaluation": late}))
    assert next_reconcile(near_end, {}, POLICY, T0 + timedelta(minutes=59, seconds=40)) == T0 + timedelta(
        hours=1
    )


def test_a_schedule_wakes_the_loop_at_its_next_fire() -> None:
    spec = spec_dict(**{"retrain.schedule": "*/5 * * * *", "monitoring.interval": "1h"})
    loop = loop_state(spec, FeedbackLoopStatus(last_schedule_time=T0))  # the fire at T0 is handled
    after = evaluated(0.95, before=loop)
    assert next_reconcile(after, {}, POLICY, T0 + timedelta(seconds=30)) == T0 + timedelta(minutes=5)


def test_dependencies_are_probed_every_evaluation_until_ready_then_on_the_probe_interval() -> None:
    loop = evaluated(0.95)
    assert not probe_due(loop, POLICY, T0 + POLICY.probe_interval * 0.99)
    assert probe_due(loop, POLICY, T0 + POLICY.probe_interval * 1.5)
    assert probe_due(replace(loop, last_probe=None), POLICY, T0 + POLICY.probe_interval / 2)
    unready = loop_state()
    assert probe_due(replace(unready, last_probe=T0), POLICY, T0 + timedelta(seconds=1))


def test_loops_probe_on_intervals_of_their_own_so_loops_created_together_spread_out() -> None:
    loop = evaluated(0.95)
    due = [
        next(
            second
            for second in range(60, 91)
            if probe_due(
                replace(loop, ref=replace(loop.ref, uid=f"uid-{n}")), POLICY, T0 + timedelta(seconds=second)
            )
        )
        for n in range(50)
    ]
    assert min(due) >= 60 and max(due) <= 90
    assert len(set(due)) > 10


def test_only_a_changed_verdict_or_a_heartbeat_is_worth_a_status_write() -> None:
    first = evaluated(0.95)
    stored = first.status
    again = evaluated(0.951, INTERVAL, first).status  # same verdict, new time and value
    assert again.last_evaluation != stored.last_evaluation
    assert not status_write_needed(stored, again, T0 + INTERVAL, POLICY)
    assert status_write_needed(stored, again, T0 + POLICY.heartbeat, POLICY)
    breached = evaluated(0.5, INTERVAL, first).status
    assert status_write_needed(stored, breached, T0 + INTERVAL, POLICY)
    counted = stored.model_copy(update={"retrain_count": 3})
    assert status_write_needed(stored, counted, T0, POLICY)
    assert not status_write_needed(FeedbackLoopStatus(), FeedbackLoopStatus(), T0, POLICY)


def test_evaluation_lag_is_the_time_past_the_scheduled_evaluation() -> None:
    previous = Evaluation(time=T0, metrics=())
    late = Evaluation(time=T0 + INTERVAL + timedelta(seconds=2), metrics=())
    assert evaluation_lag(INTERVAL, previous, late) == 2.0
    assert evaluation_lag(INTERVAL, previous, previous) is None
    assert evaluation_lag(INTERVAL, None, late) is None
