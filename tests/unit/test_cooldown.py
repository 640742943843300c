"""The retrain cooldown's backoff after unsuccessful retrains: the pure function, then through decide()."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from core_inputs import POLICY, T0, accuracy, created_jobs, healthy_dependencies, loop_state, spec_dict
from feedbackloop.api import ConditionType, Outcome, Reason, Trigger
from feedbackloop.core.cooldown import (
    IN_FLIGHT_OUTCOMES,
    UNSUCCESSFUL_OUTCOMES,
    retrain_cooldown,
    unsuccessful_retrains,
)
from feedbackloop.core.decide import decide
from feedbackloop.core.decision import Decision
from feedbackloop.core.spec import RetrainSpec, SpecError, parse_spec
from feedbackloop.core.status import FeedbackLoopStatus, HistoryEntry

HOUR = timedelta(hours=1)


def entry(outcome: Outcome, trigger: Trigger = Trigger.BREACH, version: str = "v1") -> HistoryEntry:
    return HistoryEntry(version=version, trigger=trigger, outcome=outcome)


def history(*outcomes: Outcome) -> tuple[HistoryEntry, ...]:
    """Oldest first, as status.history is."""
    return tuple(entry(outcome, version=f"v{n}") for n, outcome in enumerate(outcomes, start=1))


def retrain(**changes: str) -> RetrainSpec:
    return parse_spec(spec_dict(**{f"retrain.{key}": value for key, value in changes.items()})).retrain_spec()


def test_every_outcome_is_classified_once() -> None:
    classified = [*UNSUCCESSFUL_OUTCOMES, *IN_FLIGHT_OUTCOMES, Outcome.ROLLED_OUT]
    assert sorted(classified) == sorted(Outcome)


@pytest.mark.parametrize(
    ("outcomes", "count"),
    [
        ((), 0),
        ((Outcome.ROLLED_OUT,), 0),
        ((Outcome.REJECTED,), 1),
        ((Outcome.RETRAIN_FAILED, Outcome.REJECTED, Outcome.ROLLED_BACK), 3),
        ((Outcome.REJECTED, Outcome.ROLLED_OUT, Outcome.REJECTED, Outcome.RETRAIN_FAILED), 2),
        ((Outcome.REJECTED, Outcome.ROLLED_OUT), 0),  # a rollout resets
        ((Outcome.REJECTED, Outcome.ROLLING_OUT), 1),  # in flight: neither counts nor resets
        ((Outcome.REJECTED, Outcome.RETRAINED), 1),
        ((Outcome.ROLLBACK_FAILED, Outcome.DEGRADED, Outcome.ABORTED, Outcome.RECOMMENDED), 4),
    ],
)
def test_unsuccessful_retrains_counts_the_newest_in_a_row(outcomes: tuple[Outcome, ...], count: int) -> None:
    assert unsuccessful_retrains(history(*outcomes)) == count


def test_a_rollback_to_is_no_retrain_and_is_skipped() -> None:
    entries = (
        entry(Outcome.REJECTED),
        entry(Outcome.ROLLED_OUT, Trigger.MANUAL_ROLLBACK),
        entry(Outcome.RETRAIN_FAILED, Trigger.MANUAL),
    )
    assert unsuccessful_retrains(entries) == 2


@pytest.mark.parametrize(
    ("unsuccessful", "length", "text"),
    [
        (0, HOUR, ""),
        (1, 2 * HOUR, " (backed off \u00d72 to 2h after 1 unsuccessful retrain)"),
        (2, 4 * HOUR, " (backed off \u00d74 to 4h after 2 unsuccessful retrains)"),
        (4, 16 * HOUR, " (backed off \u00d716 to 16h after 4 unsuccessful retrains)"),
        (5, 24 * HOUR, " (backed off to maxCooldown 24h after 5 unsuccessful retrains)"),
        (20, 24 * HOUR, " (backed off to maxCooldown 24h after 20 unsuccessful retrains)"),
    ],
)
def test_cooldown_doubles_per_unsuccessful_retrain_up_to_the_default_cap(
    unsuccessful: int, length: timedelta, text: str
) -> None:
    cooldown = retrain_cooldown(retrain(), history(*[Outcome.REJECTED] * unsuccessful))
    assert (cooldown.length, cooldown.unsuccessful, cooldown.explained()) == (length, unsuccessful, text)


def test_max_cooldown_equal_to_cooldown_turns_the_backoff_off() -> None:
    cooldown = retrain_cooldown(retrain(maxCooldown="1h"), history(Outcome.REJECTED, Outcome.REJECTED))
    assert (cooldown.length, cooldown.explained()) == (HOUR, "")


def test_a_cap_that_is_not_a_power_of_two_is_reached_exactly() -> None:
    cooldown = retrain_cooldown(retrain(maxCooldown="3h"), history(*[Outcome.REJECTED] * 2))
    assert (cooldown.length, cooldown.capped) == (3 * HOUR, True)


def test_no_cooldown_has_nothing_to_back_off() -> None:
    cooldown = retrain_cooldown(retrain(cooldown="0s"), history(*[Outcome.REJECTED] * 3))
    assert (cooldown.length, cooldown.explained()) == (timedelta(0), "")


def test_unset_max_cooldown_is_24h_but_never_below_the_cooldown() -> None:
    assert retrain().backoff_cap == 24 * HOUR
    assert retrain(cooldown="48h").backoff_cap == 48 * HOUR
    assert retrain(cooldown="2h", maxCooldown="6h").backoff_cap == 6 * HOUR


def test_max_cooldown_below_cooldown_is_an_error_naming_the_field() -> None:
    with pytest.raises(SpecError, match=r"spec\.retrain: .*retrain\.maxCooldown 30m must be at least"):
        parse_spec(spec_dict(**{"retrain.maxCooldown": "30m"}))


# ---------------------------------------------------------------- through decide()


def _after_unsuccessful(count: int, **changes: Any) -> FeedbackLoopStatus:
    """A loop whose last `count` retrains did not roll out, the newest started at T0."""
    started = decide(loop_state(), healthy_dependencies(), POLICY, T0).status
    return started.model_copy(
        update={
            "history": history(*[Outcome.REJECTED] * count),
            "retrain_count": count,
            "last_retrain_time": T0,
            **changes,
        }
    )


def _breach(status: FeedbackLoopStatus, at: timedelta) -> Decision:
    """Accuracy below its threshold from 2h before T0 + `at` (long past its `for`) until T0 + `at`."""
    breaching = healthy_dependencies(metrics=(accuracy(0.7),))
    first = decide(loop_state(status=status), breaching, POLICY, T0 + at - 2 * HOUR)
    assert created_jobs(first) == []  # the breach has only just begun
    return decide(loop_state(status=first.status), breaching, POLICY, T0 + at)


def _retraining(decision: Decision) -> tuple[str, str, str]:
    found = decision.status.condition(ConditionType.RETRAINING)
    assert found is not None
    return found.status, found.reason, found.message


def test_a_breach_waits_out_the_backed_off_cooldown() -> None:
    status = _after_unsuccessful(2)
    held = _breach(status, 3 * HOUR)
    assert created_jobs(held) == []
    _, reason, message = _retraining(held)
    assert reason == "CooldownActive"
    assert message.startswith(
        "cooldown until 2026-11-28T16:00:00Z (backed off \u00d74 to 4h after 2 unsuccessful retrains); "
        "pending Breach: accuracy"
    )
    assert len(created_jobs(_breach(status, 4 * HOUR))) == 1


def test_without_unsuccessful_retrains_the_plain_cooldown_applies() -> None:
    status = _after_unsuccessful(0)
    assert len(created_jobs(_breach(status, HOUR))) == 1


def test_a_manual_request_is_never_held_back_by_the_backoff() -> None:
    status = _after_unsuccessful(5)
    decision = decide(
        loop_state(status=status), healthy_dependencies(retrain_request="now"), POLICY, T0 + HOUR
    )
    assert [job["metadata"]["name"] for job in created_jobs(decision)] == ["churn-retrain-6"]


def test_a_schedule_fire_in_the_backoff_is_skipped_not_queued() -> None:
    spec = spec_dict(**{"retrain.schedule": "0 15 * * *"})
    status = _after_unsuccessful(2)
    fire = T0.replace(hour=15)  # 3h after the last start: inside the 4h backoff, past the 1h cooldown
    skipped = decide(
        loop_state(spec, status, created=T0 - timedelta(days=2)), healthy_dependencies(), POLICY, fire
    )
    assert created_jobs(skipped) == []
    assert _retraining(skipped)[1] == "CooldownActive"
    assert skipped.status.last_schedule_time == fire
    after = decide(
        loop_state(spec, skipped.status, created=T0 - timedelta(days=2)),
        healthy_dependencies(),
        POLICY,
        T0 + 5 * HOUR,
    )
    assert created_jobs(after) == []  # the skipped fire does not come back once the backoff ends


def test_a_version_kept_below_its_threshold_counts_as_unsuccessful_for_the_backoff() -> None:
    kept = replace(entry(Outcome.ROLLED_OUT, version="v3"), reason=Reason.BELOW_THRESHOLD_NOT_WORSE)
    assert unsuccessful_retrains((entry(Outcome.REJECTED, version="v2"), kept)) == 2
    # A plain RolledOut before it still ends the count.
    assert unsuccessful_retrains((entry(Outcome.ROLLED_OUT, version="v2"), kept)) == 1
