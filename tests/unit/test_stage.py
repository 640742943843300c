"""Shadow and Split stages decided without I/O: start, go live, read, one verdict, and the way out."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from test_promotion import GATES, condition, retrained

from core_inputs import (
    POLICY,
    T0,
    V1,
    V2_URI,
    healthy_dependencies,
    loop_state,
    rolling_status,
    spec_dict,
)
from feedbackloop.api import Outcome, RolloutPhase
from feedbackloop.core.decide import decide
from feedbackloop.core.decision import ApplyModel, Decision, RolloutStarted, StagedCandidate, StageFinished
from feedbackloop.core.observations import (
    DeployedModel,
    DeploymentProgress,
    Observations,
    QueryOutcome,
    QueryResult,
    TargetObservation,
)
from feedbackloop.core.plan import plan
from feedbackloop.core.spec import SpecError, parse_spec
from feedbackloop.core.status import FeedbackLoopStatus, ModelRef, StageState, to_status_dict
from feedbackloop.kubectl_plugin.render import describe_text

V2 = ModelRef(version="v2", uri=V2_URI, sha256="2" * 64, metrics={"accuracy": 0.9})
STAGE = {"minSamples": 200, "maxDuration": "1h", "interval": "1m", "significance": 0.05}


def shadow_spec(**changes: Any) -> dict[str, Any]:
    return spec_dict(
        **{"validation.gates": GATES, "rollout.strategy": "Shadow", "rollout.stage": dict(STAGE), **changes}
    )


def split_spec(**changes: Any) -> dict[str, Any]:
    stage = {**STAGE, "weight": 0.2, "requestKey": "X-User"}
    return shadow_spec(**{"rollout.strategy": "Split", "rollout.stage": stage, **changes})


def run(spec: dict[str, Any], status: FeedbackLoopStatus, observed: Observations, minutes: float) -> Decision:
    return decide(loop_state(spec, status), observed, POLICY, T0 + timedelta(minutes=minutes))


def serving(
    candidate_uri: str | None, complete: bool = True, uri: str = V1.uri, **changes: Any
) -> Observations:
    progress = DeploymentProgress(2, 2, 2, 2 if complete else 1, 2 if complete else 1, 2 if complete else 3)
    deployed = DeployedModel(uri, V1.sha256, "v1", candidate_uri)
    target = TargetObservation(True, True, ("server",), deployed, progress)
    return healthy_dependencies(target=target, **changes)


def staging(live: bool = True, strategy: str = "Shadow", **stage: Any) -> FeedbackLoopStatus:
    """v2 in its stage beside v1, live for the test's clock from T0 on."""
    state = StageState(
        strategy=strategy,
        champion="v1",
        live_since=T0 if live else None,
        deadline=T0 + timedelta(hours=1) if live else None,
        **stage,
    )
    status = rolling_status(
        RolloutPhase.STAGING, next_measurement_at=T0 + timedelta(minutes=1) if live else None
    )
    assert status.rollout is not None
    history = (replace(status.history[0], outcome=Outcome.STAGING),)
    return status.model_copy(update={"rollout": replace(status.rollout, stage=state), "history": history})


def shadow_reads(both: float, champion_only: float, candidate_only: float, neither: float) -> Observations:
    values = {
        "both": both,
        "champion_only": champion_only,
        "candidate_only": candidate_only,
        "neither": neither,
    }
    reads = tuple((name, QueryResult.of(value)) for name, value in values.items())
    return serving(V2_URI, stage=reads)


def test_passing_gates_with_shadow_add_the_candidate_beside_the_champion() -> None:
    status, observed = retrained({"accuracy": 0.9})
    decision = run(shadow_spec(), status, observed, 0)
    assert decision.actions == (
        ApplyModel("ml", "churn-server", "server", V1, StagedCandidate(V2, "shadow", None, None)),
    )
    rollout = decision.status.rollout
    assert rollout is not None and rollout.stage is not None
    assert (rollout.phase, rollout.previous, rollout.stage.strategy, rollout.stage.champion) == (
        "Staging",
        V1,
        "Shadow",
        "v1",
    )
    assert rollout.stage.live_since is None
    assert decision.status.phase == "Staging"
    assert condition(decision, "RolledOut")[:2] == ("Unknown", "StageProgressing")
    assert [(e.reason, e.message) for e in decision.events if e.reason == "StageStarted"] == [
        ("StageStarted", "Shadow stage of v2 started")
    ]
    assert decision.status.history[-1].outcome == "Staging"


def test_split_carries_its_weight_and_request_key() -> None:
    status, observed = retrained({"accuracy": 0.9})
    decision = run(split_spec(), status, observed, 0)
    assert decision.actions == (
        ApplyModel("ml", "churn-server", "server", V1, StagedCandidate(V2, "split", 0.2, "X-User")),
    )
    rollout = decision.status.rollout
    assert rollout is not None and rollout.stage is not None and rollout.stage.weight == 0.2


def test_without_a_verified_champion_a_stage_has_nothing_to_compare_and_the_candidate_rolls_out() -> None:
    status, observed = retrained({"accuracy": 0.9})
    adopted = replace(V1, sha256=None)
    decision = run(shadow_spec(), status.model_copy(update={"current_model": adopted}), observed, 0)
    rollout = decision.status.rollout
    assert rollout is not None and (rollout.phase, rollout.stage) == ("Progressing", None)


def test_the_stage_goes_live_once_the_deployment_serves_both_models() -> None:
    waiting = run(shadow_spec(), staging(live=False), serving(V2_URI, complete=False), 2)
    assert waiting.actions == ()
    assert waiting.status.rollout is not None and waiting.status.rollout.stage is not None
    assert waiting.status.rollout.stage.live_since is None
    live = run(shadow_spec(), staging(live=False), serving(V2_URI), 2)
    rollout = live.status.rollout
    assert rollout is not None and rollout.stage is not None
    assert rollout.stage.live_since == T0 + timedelta(minutes=2)
    assert rollout.stage.deadline == T0 + timedelta(minutes=62)
    assert rollout.next_measurement_at == T0 + timedelta(minutes=3)
    assert condition(live, "RolledOut")[:2] == ("Unknown", "StageRunning")


def test_a_deployment_without_the_candidate_env_gets_it_again_and_the_clock_restarts() -> None:
    decision = run(shadow_spec(), staging(), serving(None), 5)
    assert decision.actions == (
        ApplyModel("ml", "churn-server", "server", V1, StagedCandidate(V2, "shadow", None, None)),
    )
    rollout = decision.status.rollout
    assert rollout is not None and rollout.stage is not None and rollout.stage.live_since is None


def test_a_candidate_never_available_within_the_progress_deadline_is_rejected() -> None:
    decision = run(shadow_spec(), staging(live=False), serving(V2_URI, complete=False), 11)
    assert decision.actions == (ApplyModel("ml", "churn-server", "server", V1),)
    rollout = decision.status.rollout
    assert rollout is not None and rollout.stage is not None
    assert (rollout.phase, rollout.reason, rollout.stage.verdict) == (
        "RollingBack",
        "ProgressDeadlineExceeded",
        "Failed",
    )
    assert StageFinished("Shadow", "Failed") in decision.transitions


def test_the_plan_reads_the_paired_counts_since_the_stage_went_live() -> None:
    loop = loop_state(shadow_spec(), staging())
    assert plan(loop, POLICY, T0 + timedelta(seconds=59)).stage_queries is None
    queries = plan(loop, POLICY, T0 + timedelta(minutes=1)).stage_queries
    assert queries is not None
    assert [q.name for q in queries] == ["both", "champion_only", "candidate_only", "neither"]
    assert queries[2].query == (
        'sum(increase(fbl_shadow_feedback_total{model="churn",model_version="v2",champion_version="v1",'
        'outcome="candidate_only"}[60s]))'
    )


def test_a_split_reads_each_model_by_its_role_and_version() -> None:
    loop = loop_state(split_spec(**{"rollout.stage.labels": {"app": "churn"}}), staging(strategy="Split"))
    queries = plan(loop, POLICY, T0 + timedelta(minutes=30)).stage_queries
    assert queries is not None
    by_name = {q.name: q.query for q in queries}
    assert set(by_name) == {
        "champion_labels",
        "candidate_labels",
        "champion_answers",
        "candidate_answers",
        "champion_correct",
        "candidate_correct",
    }
    assert by_name["candidate_answers"] == (
        'sum(increase(fbl_predictions_total{app="churn",model_version="v2",role="candidate"}[1800s]))'
    )


def test_a_version_no_query_may_carry_reads_nothing() -> None:
    status = staging()
    assert status.rollout is not None
    forged = status.model_copy(update={"rollout": replace(status.rollout, version='v2"} or vector(1) #')})
    assert plan(loop_state(shadow_spec(), forged), POLICY, T0 + timedelta(minutes=1)).stage_queries == ()


def test_before_min_samples_the_counts_are_shown_but_not_judged() -> None:
    # Already significant at 150 labels, but the stage looks once: at minSamples or maxDuration.
    decision = run(shadow_spec(), staging(), shadow_reads(100, 0, 40, 10), 1)
    rollout = decision.status.rollout
    assert rollout is not None and rollout.stage is not None
    stage = rollout.stage
    assert (stage.champion_labels, stage.candidate_labels, stage.verdict) == (150, 150, None)
    assert stage.champion_value == pytest.approx(100 / 150)
    assert stage.candidate_value == pytest.approx(140 / 150)
    assert stage.test == "McNemar" and stage.p_value is not None and stage.p_value < 1e-9
    assert rollout.next_measurement_at == T0 + timedelta(minutes=2)
    assert decision.actions == ()
    state, reason, message = condition(decision, "RolledOut")
    assert (state, reason) == ("Unknown", "StageRunning")
    assert "150/200 labels for the candidate" in message


def test_a_better_candidate_wins_and_rolls_out_with_its_verdict_in_status() -> None:
    decision = run(shadow_spec(), staging(), shadow_reads(150, 5, 40, 5), 20)
    assert decision.actions == (ApplyModel("ml", "churn-server", "server", V2),)  # no candidate env
    rollout = decision.status.rollout
    assert rollout is not None and rollout.stage is not None
    assert (rollout.phase, rollout.previous, rollout.stage.verdict) == ("Progressing", V1, "Win")
    assert StageFinished("Shadow", "Win") in decision.transitions
    assert not any(
        isinstance(t, RolloutStarted) for t in decision.transitions
    )  # counted at the stage's start
    [won] = [e for e in decision.events if e.reason == "StageWon"]
    assert won.message.startswith("v2: Shadow Win: accuracy 0.95 (candidate, 200 labels) vs 0.775 (v1")
    assert decision.status.history[-1].stage == rollout.stage.message


def test_a_worse_candidate_loses_is_rejected_and_its_env_removed() -> None:
    decision = run(shadow_spec(), staging(), shadow_reads(150, 40, 5, 5), 20)
    assert decision.actions == (ApplyModel("ml", "churn-server", "server", V1),)
    rollout = decision.status.rollout
    assert rollout is not None and rollout.stage is not None
    assert (rollout.phase, rollout.reason, rollout.stage.verdict) == ("RollingBack", "StageLost", "Lose")
    assert decision.status.rejected_versions == ("v2",)
    assert StageFinished("Shadow", "Lose") in decision.transitions
    assert [e.type for e in decision.events if e.reason == "StageLost"] == ["Warning"]
    # The removal completes as a rejection: the champion served throughout.
    removed = run(shadow_spec(), decision.status, serving(None), 21)
    assert removed.status.rollout is None
    assert condition(removed, "RolledOut")[:2] == ("False", "StageLost")
    assert removed.status.history[-1].outcome == "Rejected"
    assert removed.status.current_model == V1
    assert not any(e.reason == "RolledBack" for e in removed.events)


def test_no_difference_at_max_duration_is_inconclusive_and_rejected() -> None:
    decision = run(shadow_spec(), staging(), shadow_reads(80, 10, 10, 5), 60)
    rollout = decision.status.rollout
    assert rollout is not None and rollout.stage is not None
    assert (rollout.reason, rollout.stage.verdict) == ("StageInconclusive", "Inconclusive")
    assert rollout.stage.p_value == pytest.approx(1.0)
    assert decision.actions == (ApplyModel("ml", "churn-server", "server", V1),)


def test_a_failed_read_never_decides_even_past_max_duration() -> None:
    failed = tuple(
        (name, QueryResult(QueryOutcome.ERROR, message="HTTP 503")) for name in ("both", "neither")
    )
    decision = run(shadow_spec(), staging(), serving(V2_URI, stage=failed), 90)
    rollout = decision.status.rollout
    assert rollout is not None and rollout.stage is not None
    assert (rollout.phase, rollout.stage.verdict) == ("Staging", None)
    assert rollout.stage.message == "could not read the stage's counts: both: HTTP 503"
    assert decision.actions == ()


def test_no_series_yet_counts_as_no_labels() -> None:
    empty = tuple((name, QueryResult(QueryOutcome.EMPTY)) for name in ("both", "champion_only"))
    decision = run(shadow_spec(), staging(), serving(V2_URI, stage=empty), 60)
    rollout = decision.status.rollout
    assert rollout is not None and rollout.stage is not None
    assert (rollout.stage.candidate_labels, rollout.stage.verdict) == (0, "Inconclusive")


def test_an_abort_ends_the_stage_at_once() -> None:
    decision = run(shadow_spec(), staging(), serving(V2_URI, abort_request="now"), 5)
    assert decision.actions == (ApplyModel("ml", "churn-server", "server", V1),)
    assert StageFinished("Shadow", "Aborted") in decision.transitions
    rollout = decision.status.rollout
    assert rollout is not None and (rollout.phase, rollout.reason) == ("RollingBack", "Aborted")
    assert decision.status.rejected_versions == ()  # stopped, not judged


def test_a_split_is_judged_by_two_proportions() -> None:
    values = {
        "champion_labels": 800.0,
        "candidate_labels": 201.4,  # increase() extrapolates a little: counts are rounded
        "champion_answers": 4000.0,
        "candidate_answers": 1000.0,
        "champion_correct": 600.0,
        "candidate_correct": 190.0,
    }
    reads = tuple((name, QueryResult.of(value)) for name, value in values.items())
    decision = run(split_spec(), staging(strategy="Split", weight=0.2), serving(V2_URI, stage=reads), 20)
    rollout = decision.status.rollout
    assert rollout is not None and rollout.stage is not None
    stage = rollout.stage
    assert (stage.test, stage.verdict, stage.candidate_labels, stage.champion_labels) == (
        "TwoProportionZ",
        "Win",
        201,
        800,
    )
    assert (stage.candidate_answers, stage.champion_answers) == (1000, 4000)


def test_a_regression_shadow_uses_the_paired_t_test() -> None:
    spec = shadow_spec(**{"retrain.trainer.task": "regression", "validation.gates": []})
    values = {
        "paired": 300.0,
        "champion_squared_error": 600.0,
        "candidate_squared_error": 300.0,
        "difference_squared": 900.0,
    }
    reads = tuple((name, QueryResult.of(value)) for name, value in values.items())
    decision = run(spec, staging(), serving(V2_URI, stage=reads), 20)
    rollout = decision.status.rollout
    assert rollout is not None and rollout.stage is not None
    assert (rollout.stage.test, rollout.stage.verdict) == ("PairedT", "Win")
    assert rollout.stage.candidate_value == pytest.approx(1.0)
    assert rollout.stage.champion_value == pytest.approx(2**0.5)


def test_a_request_key_outside_split_is_a_spec_error_naming_the_field() -> None:
    with pytest.raises(SpecError, match=r"rollout\.stage\.requestKey applies to strategy Split only"):
        parse_spec(shadow_spec(**{"rollout.stage.requestKey": "X-User"}))
    with pytest.raises(SpecError, match=r"spec\.rollout\.stage\.requestKey"):
        parse_spec(split_spec(**{"rollout.stage.requestKey": "X User"}))


def test_describe_shows_the_stage_live_labels_estimate_and_time_left() -> None:
    status = staging(
        strategy="Split",
        weight=0.2,
        read_at=T0 + timedelta(minutes=10),
        champion_labels=400,
        candidate_labels=96,
        champion_answers=4000,
        candidate_answers=1000,
        champion_value=0.7,
        candidate_value=0.9,
        test="TwoProportionZ",
        p_value=0.0004,
    )
    body = {
        "metadata": {"name": "churn", "namespace": "ml"},
        "spec": split_spec(),
        "status": to_status_dict(status),
    }
    text = describe_text(body, T0 + timedelta(minutes=12))
    assert "  Stage:  Split, v2 beside v1, 48m left at most" in text
    assert "    Labels:  candidate 96, champion 400" in text
    assert "    Estimate:  candidate 0.9, champion 0.7 (TwoProportionZ, p=0.0004)" in text
    assert "    Answers:  candidate 1000, champion 4000 (candidate share 0.200, weight 0.2)" in text
