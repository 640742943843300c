"""Gates, rollout, analysis, rollback and manual operations, decided without I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from core_inputs import (
    PASSED_V2,
    POLICY,
    T0,
    V1,
    V2_URI,
    accuracy,
    healthy_dependencies,
    loop_state,
    rolling_deployment,
    rolling_status,
    spec_dict,
)
from feedbackloop.api import ConditionType, MeasurementVerdict, Outcome, RolloutPhase, Trigger
from feedbackloop.core import contract
from feedbackloop.core.decide import decide
from feedbackloop.core.decision import ApplyModel, Decision
from feedbackloop.core.gates import Comparison, evaluate_gates, evaluate_implied_gate, implied_gate
from feedbackloop.core.manual import (
    Refusal,
    known_versions,
    promotable_versions,
    promotion_refusal,
    rollback_refusal,
    rollback_targets,
)
from feedbackloop.core.observations import (
    ArtifactCheck,
    ArtifactObservation,
    JobObservation,
    JobState,
    Observations,
    QueryOutcome,
    QueryResult,
    TargetObservation,
)
from feedbackloop.core.plan import plan
from feedbackloop.core.spec import Gate, parse_spec
from feedbackloop.core.status import (
    ActiveRetrain,
    FeedbackLoopStatus,
    HistoryEntry,
    Measurement,
    ModelRef,
)

GATES = [{"metric": "accuracy", "min": 0.85}, {"metric": "accuracy", "minDeltaVsCurrent": 0.0}]

# ---------------------------------------------------------------- gates


def gate(**fields: Any) -> Gate:
    return Gate(metric=fields.pop("metric", "accuracy"), **fields)


@pytest.mark.parametrize(
    ("gate_fields", "candidate", "current", "comparison", "verdicts", "reasons"),
    [
        ({"min": 0.85}, {"accuracy": 0.9}, {}, {}, ["Passed"], ["WithinBound"]),
        ({"min": 0.85}, {"accuracy": 0.81}, {}, {}, ["Failed"], ["BelowMin"]),
        ({"max": 0.3, "metric": "log_loss"}, {"log_loss": 0.4}, {}, {}, ["Failed"], ["AboveMax"]),
        ({"min": 0.85}, {"f1_macro": 0.9}, {}, {}, ["Failed"], ["MetricMissing"]),
        ({"minDeltaVsCurrent": 0.0}, {"accuracy": 0.9}, {"accuracy": 0.85}, {}, ["Passed"], ["WithinBound"]),
        (
            {"minDeltaVsCurrent": 0.0},
            {"accuracy": 0.81},
            {"accuracy": 0.83},
            {},
            ["Failed"],
            ["DeltaTooSmall"],
        ),
        # v3 serves but metrics.json has no score for it: the delta is unknown, so the gate fails closed
        ({"minDeltaVsCurrent": 0.0}, {"accuracy": 0.9}, {}, {}, ["Failed"], ["CurrentModelNotScored"]),
        # rmse is an error: lower is better, so 0.4 -> 0.3 is an improvement of 0.1
        (
            {"minDeltaVsCurrent": 0.05, "metric": "rmse"},
            {"rmse": 0.3},
            {"rmse": 0.4},
            {},
            ["Passed"],
            ["WithinBound"],
        ),
        (
            {"minDeltaVsCurrent": 0.0, "metric": "rmse"},
            {"rmse": 0.5},
            {"rmse": 0.4},
            {},
            ["Failed"],
            ["DeltaTooSmall"],
        ),
        (
            {"minDeltaVsCurrent": 0.0, "requireSignificance": True},
            {"accuracy": 0.9},
            {"accuracy": 0.85},
            {"accuracy": Comparison(ci_low=0.01, ci_high=0.09)},
            ["Passed"],
            ["Significant"],
        ),
        (
            {"minDeltaVsCurrent": 0.0, "requireSignificance": True},
            {"accuracy": 0.9},
            {"accuracy": 0.85},
            {"accuracy": Comparison(ci_low=-0.02, ci_high=0.12)},
            ["Failed"],
            ["NotSignificant"],
        ),
        (
            {"minDeltaVsCurrent": 0.0, "requireSignificance": True},
            {"accuracy": 0.9},
            {"accuracy": 0.85},
            {"accuracy": Comparison(mcnemar_p_value=0.01)},
            ["Passed"],
            ["Significant"],
        ),
        (
            {"minDeltaVsCurrent": 0.0, "requireSignificance": True},
            {"accuracy": 0.9},
            {"accuracy": 0.85},
            {"accuracy": Comparison(mcnemar_p_value=0.3)},
            ["Failed"],
            ["NotSignificant"],
        ),
        (
            {"minDeltaVsCurrent": 0.0, "requireSignificance": True},
            {"accuracy": 0.9},
            {"accuracy": 0.85},
            {},
            ["Failed"],
            ["SignificanceUnavailable"],
        ),
        (
            {"min": 0.85, "max": 0.99, "minDeltaVsCurrent": 0.0},
            {"accuracy": 0.9},
            {"accuracy": 0.8},
            {},
            ["Passed", "Passed", "Passed"],
            ["WithinBound"] * 3,
        ),
    ],
)
def test_gate_branches(
    gate_fields: dict[str, Any],
    candidate: dict[str, float],
    current: dict[str, float],
    comparison: dict[str, Comparison],
    verdicts: list[str],
    reasons: list[str],
) -> None:
    results = evaluate_gates((gate(**gate_fields),), candidate, current, comparison, "v3")
    assert [r.verdict for r in results] == verdicts
    assert [r.reason for r in results] == reasons


def test_gate_messages_read_like_the_issue_example() -> None:
    results = evaluate_gates(
        (gate(min=0.85), gate(min_delta_vs_current=0.0)), {"accuracy": 0.81}, {"accuracy": 0.83}, {}, "v3"
    )
    assert [r.message for r in results] == ["accuracy 0.81 < min 0.85", "accuracy delta \u22120.02 < 0 vs v3"]


def test_a_lucky_small_holdout_cannot_pass_a_significance_gate() -> None:
    """A large raw delta whose interval still straddles zero fails."""
    results = evaluate_gates(
        (gate(min_delta_vs_current=0.0, require_significance=True),),
        {"accuracy": 0.95},
        {"accuracy": 0.80},
        {"accuracy": Comparison(ci_low=-0.05, ci_high=0.35)},
        "v1",
    )
    assert results[0].verdict == "Failed"


# ---------------------------------------------------------------- from candidate to rollout


def run(
    spec: dict[str, Any], status: FeedbackLoopStatus, observed: Observations, minutes: float = 0
) -> Decision:
    return decide(loop_state(spec, status), observed, POLICY, T0 + timedelta(minutes=minutes))


def retrained(
    metrics: dict[str, float], current: dict[str, float] | None = None
) -> tuple[FeedbackLoopStatus, Observations]:
    """A loop whose retrain Job just completed with verified artifacts."""
    active = ActiveRetrain(
        job="churn-retrain-2", version="v2", number=2, trigger=Trigger.BREACH, started_at=T0, job_created=True
    )
    status = FeedbackLoopStatus(current_model=V1, active_retrain=active, retrain_count=2)
    artifacts = ArtifactObservation(
        ArtifactCheck.VERIFIED,
        uri=V2_URI,
        model_sha256="2" * 64,
        metrics={"schemaVersion": 1, "candidate": metrics, "current": current or {"accuracy": 0.8}},
        manifest_sha256="e" * 64,
    )
    report = contract.success_message("e" * 64)
    observed = healthy_dependencies(
        job=JobObservation("churn-retrain-2", JobState.SUCCEEDED, report), artifacts=artifacts
    )
    return status, observed


def condition(decision: Decision, kind: str) -> tuple[str, str, str]:
    found = decision.status.condition(ConditionType(kind))
    assert found is not None
    return found.status, found.reason, found.message


def test_failing_gates_reject_the_candidate_and_touch_nothing() -> None:
    status, observed = retrained({"accuracy": 0.81}, {"accuracy": 0.83})
    decision = run(spec_dict(**{"validation.gates": GATES}), status, observed)
    state, reason, message = condition(decision, "Validated")
    assert (state, reason) == ("False", "GatesFailed")
    assert message == "v2: accuracy 0.81 < min 0.85; accuracy delta \u22120.02 < 0 vs v1"
    assert decision.actions == ()
    assert decision.status.rejected_versions == ("v2",)
    assert decision.status.rollout is None
    candidate = decision.status.candidate_model
    assert candidate is not None and candidate.validation == "Failed"
    assert [g.verdict for g in candidate.gates] == ["Failed", "Failed"]
    assert decision.status.history[-1].outcome == "Rejected"
    assert decision.status.history[-1].gates == "Failed"


def test_passing_gates_in_auto_apply_the_candidate_to_the_deployment() -> None:
    status, observed = retrained({"accuracy": 0.9})
    decision = run(spec_dict(**{"validation.gates": GATES}), status, observed)
    assert condition(decision, "Validated")[:2] == ("True", "GatesPassed")
    assert decision.actions == (
        ApplyModel(
            "ml",
            "churn-server",
            "server",
            ModelRef(version="v2", uri=V2_URI, sha256="2" * 64, metrics={"accuracy": 0.9}),
        ),
    )
    rollout = decision.status.rollout
    assert rollout is not None
    assert (rollout.version, rollout.phase, rollout.previous) == ("v2", "Progressing", V1)
    assert decision.status.phase == "RollingOut"
    assert decision.status.history[-1].rollout_started_at == T0


def test_recommend_mode_stops_at_validated() -> None:
    status, observed = retrained({"accuracy": 0.9})
    decision = run(spec_dict(mode="Recommend", **{"validation.gates": GATES}), status, observed)
    assert condition(decision, "Validated")[:2] == ("True", "GatesPassed")
    assert decision.status.recommended_version == "v2"
    assert decision.actions == ()
    assert decision.status.rollout is None


def test_rollout_waits_for_every_replica() -> None:
    decision = run(spec_dict(), rolling_status(), rolling_deployment(V2_URI, complete=False), minutes=1)
    assert decision.actions == ()
    assert condition(decision, "RolledOut") == (
        "Unknown",
        "RolloutProgressing",
        "v2: 1/2 updated, 1 available",
    )


def test_rollout_reapplies_when_the_deployment_does_not_carry_the_version() -> None:
    decision = run(spec_dict(), rolling_status(), rolling_deployment(V1.uri, complete=True), minutes=1)
    assert [a.model.version for a in decision.actions if isinstance(a, ApplyModel) and a.model] == ["v2"]


def test_available_rollout_moves_to_analysis() -> None:
    decision = run(spec_dict(), rolling_status(), rolling_deployment(V2_URI, complete=True), minutes=1)
    rollout = decision.status.rollout
    assert rollout is not None and rollout.phase == "Analyzing"
    assert rollout.next_measurement_at == T0 + timedelta(minutes=2)
    assert condition(decision, "RolledOut")[:2] == ("True", "RolloutComplete")
    assert decision.status.phase == "Analyzing"


@pytest.mark.parametrize(
    ("observed", "minutes"),
    [
        (rolling_deployment(V2_URI, complete=False, deadline_exceeded=True), 1),
        (rolling_deployment(V2_URI, complete=False), 11),
    ],
)
def test_progress_deadline_rolls_back_to_the_exact_previous_model(
    observed: Observations, minutes: float
) -> None:
    decision = run(spec_dict(), rolling_status(), observed, minutes=minutes)
    assert decision.actions == (ApplyModel("ml", "churn-server", "server", V1),)
    rollout = decision.status.rollout
    assert rollout is not None and (rollout.phase, rollout.reason) == (
        "RollingBack",
        "ProgressDeadlineExceeded",
    )
    assert decision.status.rejected_versions == ("v2",)
    assert condition(decision, "Degraded")[:2] == ("True", "ProgressDeadlineExceeded")
    assert condition(decision, "RolledOut")[:2] == ("False", "RollingBack")


def test_first_rollout_rollback_releases_our_fields() -> None:
    decision = run(
        spec_dict(), rolling_status(previous=None), rolling_deployment(V2_URI, complete=False), minutes=11
    )
    assert decision.actions == (ApplyModel("ml", "churn-server", "server", None),)
    assert "no previous model" in condition(decision, "RolledOut")[2]


def test_completed_rollback_is_degraded_and_never_success() -> None:
    status = rolling_status(phase=RolloutPhase.ROLLING_BACK)
    decision = run(spec_dict(), status, rolling_deployment(V1.uri, complete=True), minutes=2)
    assert decision.status.rollout is None
    assert condition(decision, "RolledOut")[:2] == ("False", "RolledBack")
    assert decision.status.current_model == V1
    assert decision.status.candidate_model is None
    assert decision.status.history[-1].outcome == "RolledBack"
    assert any(e.reason == "RolledBack" and e.type == "Warning" for e in decision.events)


def test_a_rollback_that_cannot_complete_says_so() -> None:
    status = rolling_status(phase=RolloutPhase.ROLLING_BACK)
    decision = run(spec_dict(), status, rolling_deployment(V1.uri, complete=False), minutes=12)
    assert condition(decision, "Degraded")[:2] == ("True", "RollbackFailed")
    assert condition(decision, "RolledOut")[:2] == ("False", "RollbackFailed")
    assert decision.status.history[-1].outcome == "RollbackFailed"


def analyzing(*verdicts: str) -> FeedbackLoopStatus:
    measurements = tuple(Measurement(time=T0, verdict=MeasurementVerdict(v)) for v in verdicts)
    return rolling_status(phase=RolloutPhase.ANALYZING, next_measurement_at=T0, measurements=measurements)


def measure(status: FeedbackLoopStatus, value: float | None, spec: dict[str, Any] | None = None) -> Decision:
    metric = accuracy(value) if value is not None else accuracy(None)
    return run(spec or spec_dict(), status, healthy_dependencies(metrics=(metric,)), minutes=1)


def test_analysis_succeeds_after_count_measurements() -> None:
    decision = measure(analyzing("Successful", "Successful", "Successful", "Successful"), 0.93)
    assert decision.status.rollout is None
    current = decision.status.current_model
    assert current is not None
    assert (current.version, current.uri, current.sha256, current.metrics) == (
        "v2",
        V2_URI,
        "2" * 64,
        {"accuracy": 0.9},
    )
    assert current.deployed_at == T0 + timedelta(minutes=1)
    assert decision.status.candidate_model is None
    assert condition(decision, "RolledOut")[:2] == ("True", "AnalysisSuccessful")
    entry = decision.status.history[-1]
    assert (entry.outcome, entry.analysis) == ("RolledOut", "Successful")


def test_analysis_counts_measurements_until_count() -> None:
    decision = measure(analyzing("Successful"), 0.93)
    rollout = decision.status.rollout
    assert rollout is not None
    assert [m.verdict for m in rollout.measurements] == ["Successful", "Successful"]
    assert rollout.next_measurement_at == T0 + timedelta(minutes=2)
    assert decision.actions == ()


def test_more_failures_than_the_limit_fail_the_analysis_and_roll_back() -> None:
    decision = measure(analyzing("Successful", "Failed"), 0.5)
    assert decision.actions == (ApplyModel("ml", "churn-server", "server", V1),)
    assert condition(decision, "Degraded")[:2] == ("True", "AnalysisFailed")
    assert decision.status.rejected_versions == ("v2",)


def test_failures_within_the_limit_continue() -> None:
    decision = measure(analyzing("Successful"), 0.5)
    assert decision.actions == ()
    assert decision.status.rollout is not None


def test_no_data_is_inconclusive_and_too_much_of_it_fails_with_its_own_reason() -> None:
    within = measure(analyzing("Inconclusive"), None)
    assert within.status.rollout is not None
    assert within.status.rollout.measurements[-1].verdict == "Inconclusive"
    beyond = measure(analyzing("Inconclusive", "Inconclusive"), None)
    assert condition(beyond, "Degraded")[:2] == ("True", "AnalysisInconclusive")


def test_analysis_with_no_successful_measurement_is_never_success() -> None:
    spec = spec_dict(**{"rollout.analysis": {"count": 2, "inconclusiveLimit": 5}})
    decision = measure(analyzing("Inconclusive"), None, spec)
    assert condition(decision, "Degraded")[:2] == ("True", "AnalysisInconclusive")
    assert decision.status.current_model == V1


def test_without_rollback_on_failure_the_version_keeps_serving_marked_degraded() -> None:
    spec = spec_dict(**{"rollout.rollbackOnFailure": False})
    decision = measure(analyzing("Failed"), 0.5, spec)
    assert decision.actions == ()
    assert decision.status.rollout is None
    current = decision.status.current_model
    assert current is not None and current.version == "v2"
    assert condition(decision, "Degraded")[:2] == ("True", "AnalysisFailed")
    assert decision.status.rejected_versions == ("v2",)


def test_no_retrain_starts_while_a_rollout_is_in_flight() -> None:
    observed = rolling_deployment(V2_URI, complete=False)
    observed = Observations(**{**observed.__dict__, "retrain_request": "now"})
    decision = run(spec_dict(), rolling_status(), observed, minutes=1)
    assert decision.status.active_retrain is None
    assert decision.status.handled_retrain_request is None


# ---------------------------------------------------------------- manual operations


def recommended() -> FeedbackLoopStatus:
    return FeedbackLoopStatus(
        current_model=V1, candidate_model=PASSED_V2, recommended_version="v2", retrain_count=2
    )


def test_manual_promote_of_a_validated_version_rolls_it_out() -> None:
    observed = healthy_dependencies(promote_request="v2")
    decision = run(spec_dict(mode="Recommend"), recommended(), observed)
    assert [a.model.version for a in decision.actions if isinstance(a, ApplyModel) and a.model] == ["v2"]
    assert decision.status.handled_promote_request == "v2"
    assert decision.status.rollout is not None
    assert decision.status.rollout.trigger == "ManualPromote"


@pytest.mark.parametrize(
    ("status_changes", "promote", "fragment"),
    [
        ({"rejected_versions": ("v2",)}, "v2", "the version was rejected"),
        ({}, "v7", "not a validated candidate"),
    ],
)
def test_manual_promote_refusals_are_conditions(
    status_changes: dict[str, Any], promote: str, fragment: str
) -> None:
    status = recommended().model_copy(update=status_changes)
    decision = run(spec_dict(mode="Recommend"), status, healthy_dependencies(promote_request=promote))
    state, reason, message = condition(decision, "RolledOut")
    assert (state, reason) == ("False", "PromotionRefused")
    assert fragment in message
    assert decision.actions == ()
    assert decision.status.handled_promote_request == promote


def test_manual_rollback_to_a_verified_version() -> None:
    current = ModelRef(version="v3", uri="s3://models/churn/ml/churn/v3/", sha256="3" * 64)
    artifacts = ArtifactObservation(ArtifactCheck.VERIFIED, uri=V1.uri, model_sha256="1" * 64, metrics={})
    observed = healthy_dependencies(rollback_request="v1", rollback_artifacts=artifacts)
    decision = run(spec_dict(), FeedbackLoopStatus(current_model=current, retrain_count=3), observed)
    assert decision.actions == (
        ApplyModel("ml", "churn-server", "server", ModelRef(version="v1", uri=V1.uri, sha256="1" * 64)),
    )
    rollout = decision.status.rollout
    assert rollout is not None and (rollout.kind, rollout.previous) == ("Rollback", current)

    done = run(spec_dict(), decision.status, rolling_deployment(V1.uri, complete=True), minutes=1)
    assert done.status.rollout is None
    assert done.status.current_model is not None and done.status.current_model.version == "v1"


def test_the_same_rollback_to_again_is_a_new_request_only_with_a_new_requested_at_token() -> None:
    v3 = ModelRef(version="v3", uri="s3://models/churn/ml/churn/v3/", sha256="3" * 64)
    artifacts = ArtifactObservation(ArtifactCheck.VERIFIED, uri=V1.uri, model_sha256="1" * 64, metrics={})
    first = healthy_dependencies(rollback_request="v1", rollback_artifacts=artifacts, request_token="monday")
    decision = run(spec_dict(), FeedbackLoopStatus(current_model=v3, retrain_count=3), first)
    assert decision.status.handled_rollback_request == "v1@monday"
    assert len(decision.actions) == 1
    # Later v3 serves again (a retrain rolled it out); rolling back to v1 once more is asked for.
    later = decision.status.model_copy(update={"rollout": None, "current_model": v3})
    assert run(spec_dict(), later, first, minutes=5).actions == ()  # the same token: already handled
    again = healthy_dependencies(rollback_request="v1", rollback_artifacts=artifacts, request_token="friday")
    redone = run(spec_dict(), later, again, minutes=5)
    assert redone.status.handled_rollback_request == "v1@friday"
    assert redone.actions == (
        ApplyModel("ml", "churn-server", "server", ModelRef(version="v1", uri=V1.uri, sha256="1" * 64)),
    )


V3 = ModelRef(version="v3", uri="s3://models/churn/ml/churn/v3/", sha256="3" * 64)
PASSED_V3 = replace(PASSED_V2, version="v3", job="churn-retrain-3", uri=V3.uri, sha256="3" * 64)
VERIFIED_V1 = ArtifactObservation(ArtifactCheck.VERIFIED, uri=V1.uri, model_sha256="1" * 64, metrics={})
ROLL_BACK_TO_V1 = ApplyModel(
    "ml", "churn-server", "server", ModelRef(version="v1", uri=V1.uri, sha256="1" * 64)
)


def applied(decision: Decision) -> list[str]:
    return [a.model.version for a in decision.actions if isinstance(a, ApplyModel) and a.model]


def promoted_beside_an_old_rollback_to() -> FeedbackLoopStatus:
    """Monday: back to v1 under token "monday". Friday: v3 passed its gates and is promoted under token
    "friday", rollback-to=v1 still on the loop. Returns the status once v3 serves."""
    spec = spec_dict(mode="Recommend")
    back = healthy_dependencies(rollback_request="v1", rollback_artifacts=VERIFIED_V1, request_token="monday")
    v2 = ModelRef(version="v2", uri=V2_URI, sha256="2" * 64)
    monday = run(spec, FeedbackLoopStatus(current_model=v2, retrain_count=2), back)
    assert monday.actions == (ROLL_BACK_TO_V1,)
    done = run(spec, monday.status, rolling_deployment(V1.uri, complete=True), minutes=1)
    assert done.status.rollout is None and done.status.current_model is not None
    assert (done.status.current_model.version, done.status.handled_rollback_request) == ("v1", "v1@monday")

    update = {"candidate_model": PASSED_V3, "recommended_version": "v3", "retrain_count": 3}
    recommending = done.status.model_copy(update=update)
    promote = replace(back, promote_request="v3", request_token="friday")
    # The rollback-to is taken with the promote, so planning reads none of v1's artifacts.
    planned = replace(loop_state(spec, recommending), rollback_request="v1", promote_request="v3")
    assert plan(replace(planned, request_token="friday"), POLICY, T0).rollback_uri is None
    friday = run(spec, recommending, promote, minutes=60)
    assert applied(friday) == ["v3"]
    assert friday.status.handled_promote_request == "v3@friday"
    assert friday.status.handled_rollback_request == "v1@friday"  # one token, one request
    consumed = [(e.type, e.reason, e.message) for e in friday.events if e.reason == "RequestSuperseded"]
    assert consumed == [
        (
            "Normal",
            "RequestSuperseded",
            "feedbackloop.dev/rollback-to='v1' not applied again: feedbackloop.dev/promote is the request of "
            "this feedbackloop.dev/requested-at token (one token, one request)",
        )
    ]
    return friday.status.model_copy(update={"rollout": None, "current_model": V3, "candidate_model": None})


def test_a_promote_under_a_new_token_never_refires_the_rollback_to_left_beside_it() -> None:
    serving_v3 = promoted_beside_an_old_rollback_to()
    still_there = healthy_dependencies(
        promote_request="v3", rollback_request="v1", rollback_artifacts=VERIFIED_V1, request_token="friday"
    )
    later = run(spec_dict(mode="Recommend"), serving_v3, still_there, minutes=120)
    assert later.actions == ()
    assert later.status.rollout is None
    assert later.status.current_model == V3
    assert later.status.handled_rollback_request == "v1@friday"
    assert not later.events


def test_without_a_token_an_old_rollback_to_beside_a_new_promote_is_taken_with_it_too() -> None:
    # The token was removed by hand: "v0" no longer matches "v0@monday", yet nobody asked for v0 again.
    status = recommended().model_copy(update={"handled_rollback_request": "v0@monday"})
    verified_v0 = ArtifactObservation(
        ArtifactCheck.VERIFIED, uri="s3://models/churn/ml/churn/v0/", metrics={}
    )
    observed = healthy_dependencies(
        promote_request="v2", rollback_request="v0", rollback_artifacts=verified_v0
    )
    promoted = run(spec_dict(mode="Recommend"), status, observed)
    assert applied(promoted) == ["v2"]
    assert (promoted.status.handled_promote_request, promoted.status.handled_rollback_request) == ("v2", "v0")


def test_rolling_back_to_the_same_version_again_under_a_new_token_is_honoured() -> None:
    serving_v3 = promoted_beside_an_old_rollback_to()
    spec = spec_dict(mode="Recommend")
    # `kubectl feedbackloop rollback` removes the handled promote and sets a fresh token.
    again = healthy_dependencies(
        rollback_request="v1", rollback_artifacts=VERIFIED_V1, request_token="sunday"
    )
    asked = replace(loop_state(spec, serving_v3), rollback_request="v1", request_token="sunday")
    assert plan(asked, POLICY, T0).rollback_uri == V1.uri
    sunday = run(spec, serving_v3, again, minutes=180)
    assert sunday.actions == (ROLL_BACK_TO_V1,)
    assert sunday.status.handled_rollback_request == "v1@sunday"
    assert sunday.status.handled_promote_request == "v3@friday"
    rollout = sunday.status.rollout
    assert rollout is not None and (rollout.kind, rollout.version, rollout.previous) == ("Rollback", "v1", V3)


def test_a_new_rollback_to_under_a_new_token_beats_the_old_promote_left_beside_it() -> None:
    serving_v3 = promoted_beside_an_old_rollback_to()  # handled: promote v3@friday, rollback-to v1@friday
    spec = spec_dict(mode="Recommend")
    verified_v2 = ArtifactObservation(ArtifactCheck.VERIFIED, uri=V2_URI, model_sha256="2" * 64, metrics={})
    # By hand: rollback-to=v2 and a new token, the promote of v3 still on the loop.
    asked = replace(
        loop_state(spec, serving_v3), rollback_request="v2", promote_request="v3", request_token="sunday"
    )
    assert plan(asked, POLICY, T0).rollback_uri == V2_URI
    observed = healthy_dependencies(
        promote_request="v3", rollback_request="v2", rollback_artifacts=verified_v2, request_token="sunday"
    )
    sunday = run(spec, serving_v3, observed, minutes=180)
    assert applied(sunday) == ["v2"]
    assert (sunday.status.handled_promote_request, sunday.status.handled_rollback_request) == (
        "v3@sunday",
        "v2@sunday",
    )
    assert [e.reason for e in sunday.events if e.reason == "RequestSuperseded"] == ["RequestSuperseded"]


def test_both_requests_new_only_by_the_token_apply_neither_and_say_so() -> None:
    serving_v3 = promoted_beside_an_old_rollback_to()
    spec = spec_dict(mode="Recommend")
    # The same two values, a new token: a repeat of which one cannot be told.
    asked = replace(
        loop_state(spec, serving_v3), rollback_request="v1", promote_request="v3", request_token="sunday"
    )
    assert plan(asked, POLICY, T0).rollback_uri is None
    observed = healthy_dependencies(
        promote_request="v3", rollback_request="v1", rollback_artifacts=VERIFIED_V1, request_token="sunday"
    )
    sunday = run(spec, serving_v3, observed, minutes=180)
    assert sunday.actions == ()
    assert sunday.status.rollout is None
    refused = sunday.status.condition(ConditionType.ROLLED_OUT)
    assert refused is not None and (refused.status, refused.reason) == ("False", "ConflictingRequests")
    assert "remove the one you do not mean" in refused.message
    # Recorded as handled: the same conflict is not reported again on every reconcile.
    again = run(spec, sunday.status, observed, minutes=181)
    assert again.actions == () and not [e for e in again.events if e.reason == "ConflictingRequests"]


def test_the_same_promote_again_is_a_new_request_only_with_a_new_requested_at_token() -> None:
    # Refused on Monday, before v2's gates passed; now it is the validated candidate.
    status = recommended().model_copy(update={"handled_promote_request": "v2@monday"})
    spec = spec_dict(mode="Recommend")
    same = run(spec, status, healthy_dependencies(promote_request="v2", request_token="monday"))
    assert same.actions == ()
    assert same.status.rollout is None
    again = run(spec, status, healthy_dependencies(promote_request="v2", request_token="friday"))
    assert applied(again) == ["v2"]
    assert again.status.handled_promote_request == "v2@friday"
    assert again.status.rollout is not None and again.status.rollout.kind == "Promotion"


@pytest.mark.parametrize(
    ("status", "artifacts", "fragment"),
    [
        (FeedbackLoopStatus(current_model=V1, rejected_versions=("v0",)), None, "the version was rejected"),
        (
            FeedbackLoopStatus(current_model=V1),
            ArtifactObservation(ArtifactCheck.MANIFEST_MISSING, "no manifest"),
            "no manifest",
        ),
    ],
)
def test_manual_rollback_refusals(
    status: FeedbackLoopStatus, artifacts: ArtifactObservation | None, fragment: str
) -> None:
    observed = healthy_dependencies(rollback_request="v0", rollback_artifacts=artifacts)
    decision = run(spec_dict(), status, observed)
    assert condition(decision, "RolledOut")[:2] == ("False", "RollbackRefused")
    assert fragment in condition(decision, "RolledOut")[2]
    assert decision.actions == ()


def test_a_rollback_to_a_version_the_operator_may_not_read_is_refused_once_not_awaited() -> None:
    denied = ArtifactObservation(
        ArtifactCheck.ACCESS_DENIED,
        "access denied (InvalidAccessKeyId) to s3://models/churn/ml/churn/v1/manifest.json",
        uri=V1.uri,
    )
    current = ModelRef(version="v3", uri="s3://models/churn/ml/churn/v3/", sha256="3" * 64)
    status = FeedbackLoopStatus(current_model=current, retrain_count=3)
    observed = healthy_dependencies(rollback_request="v1", rollback_artifacts=denied)
    decision = run(spec_dict(), status, observed)
    assert condition(decision, "RolledOut") == (
        "False",
        "RollbackRefused",
        "rollback-to v1: refused, "
        "access denied (InvalidAccessKeyId) to s3://models/churn/ml/churn/v1/manifest.json",
    )
    assert decision.actions == ()
    assert decision.status.rollout is None
    assert decision.status.handled_rollback_request == "v1"


def test_a_rollback_to_a_version_in_an_unreachable_store_waits_unhandled_and_applies_nothing() -> None:
    unreachable = ArtifactObservation(ArtifactCheck.UNREACHABLE, "connection refused", uri=V1.uri)
    current = ModelRef(version="v3", uri="s3://models/churn/ml/churn/v3/", sha256="3" * 64)
    status = FeedbackLoopStatus(current_model=current, retrain_count=3)
    observed = healthy_dependencies(rollback_request="v1", rollback_artifacts=unreachable)
    for minutes in (0, 1, 60):
        decision = run(spec_dict(), status, observed, minutes=minutes)
        assert decision.actions == ()
        assert decision.status.rollout is None
        assert decision.status.handled_rollback_request is None
        status = decision.status


def test_a_candidate_the_operator_may_not_read_is_rejected_and_never_promoted() -> None:
    status, verified = retrained({"accuracy": 0.95})
    message = "access denied (AccessDenied) to s3://models/churn/ml/churn/v2/manifest.json"
    observed = replace(verified, artifacts=ArtifactObservation(ArtifactCheck.ACCESS_DENIED, message))
    decision = run(spec_dict(), status, observed)
    assert condition(decision, "Retraining") == (
        "False", "AccessDenied", f"Job churn-retrain-2 complete but {message}",
    )  # fmt: skip
    assert decision.actions == ()
    assert (decision.status.active_retrain, decision.status.candidate_model, decision.status.rollout) == (
        None, None, None,
    )  # fmt: skip
    last = decision.status.history[-1]
    assert (last.version, last.outcome, last.reason) == ("v2", Outcome.RETRAIN_FAILED, "AccessDenied")


def test_a_candidate_in_an_unreachable_store_waits_and_is_promoted_only_once_verified() -> None:
    status, verified = retrained({"accuracy": 0.95})
    unreachable = ArtifactObservation(ArtifactCheck.UNREACHABLE, "connection refused")
    observed = replace(verified, artifacts=unreachable)
    for minutes in (0, 1, 60):
        decision = run(spec_dict(), status, observed, minutes=minutes)
        assert decision.actions == ()
        assert (decision.status.candidate_model, decision.status.rollout) == (None, None)
        assert condition(decision, "Retraining")[:2] == ("True", "VerifyingArtifacts")
        status = decision.status
    back = run(spec_dict(), status, verified, minutes=61)
    assert [type(action).__name__ for action in back.actions] == ["ApplyModel"]


def test_analysis_queries_are_scoped_to_the_version_under_analysis() -> None:
    from feedbackloop.core.plan import plan

    spec = spec_dict(
        **{
            "monitoring.metrics": [
                {"name": "accuracy", "query": "acc{v={{model_version}}}", "threshold": {"min": 0.8}}
            ]
        }
    )
    due = plan(loop_state(spec, analyzing()), POLICY, T0 + timedelta(seconds=1)).queries
    assert due is not None and due[0].query == 'acc{v="v2"}'
    serving = plan(loop_state(spec, FeedbackLoopStatus(current_model=V1)), POLICY, T0).queries
    assert serving is not None and serving[0].query == 'acc{v="v1"}'


def test_a_rollout_whose_deployment_vanished_stops_without_applying() -> None:
    observed = healthy_dependencies(target=TargetObservation(deployment_found=False, container_found=False))
    decision = run(spec_dict(), rolling_status(), observed, minutes=1)
    assert decision.actions == ()
    assert decision.status.rollout is None
    assert condition(decision, "RolledOut")[:2] == ("False", "TargetNotFound")


# ---------------------------------------------------------------- eligibility, shared with the plugin


def test_eligibility_is_what_decide_does() -> None:
    """The plugin lists what these predicates allow; decide() refuses exactly what they refuse."""
    failed_v3 = HistoryEntry(version="v3", trigger=Trigger.BREACH, outcome=Outcome.RETRAIN_FAILED)
    status = rolling_status().model_copy(update={"rollout": None, "rejected_versions": ("v0",)})
    status = status.model_copy(update={"history": (*status.history, failed_v3)})
    assert known_versions(status) == ["v1", "v2", "v3"]
    assert promotable_versions(status) == ["v2"]
    assert rollback_targets(status) == ["v2"]  # v1 serves, v3 never stored a version
    assert promotion_refusal(status, "v0") is Refusal.REJECTED
    assert promotion_refusal(status, "v1") is Refusal.NOT_VALIDATED
    assert rollback_refusal(status, "v1") is Refusal.ALREADY_SERVING

    refused = run(spec_dict(mode="Recommend"), status, healthy_dependencies(promote_request="v1"))
    assert condition(refused, "RolledOut")[2] == f"promote v1: refused, {Refusal.NOT_VALIDATED}"
    serving = run(spec_dict(), status, healthy_dependencies(rollback_request="v1"))
    assert condition(serving, "RolledOut")[2] == f"rollback-to v1: refused, {Refusal.ALREADY_SERVING}"
    promoted = run(spec_dict(mode="Recommend"), status, healthy_dependencies(promote_request="v2"))
    assert promoted.status.rollout is not None and promoted.status.rollout.version == "v2"


# ---------------------------------------------------------------- analysis: first data, the replaced version


def test_a_rollout_records_the_replaced_versions_values_from_the_last_evaluation() -> None:
    status, observed = retrained({"accuracy": 0.9})
    observed = Observations(**{**observed.__dict__, "metrics": (accuracy(0.6),)})
    decision = run(spec_dict(**{"validation.gates": GATES}), status, observed)
    rollout = decision.status.rollout
    assert rollout is not None
    assert (rollout.previous_values, rollout.previous_evaluated_at) == ({"accuracy": 0.6}, T0)


def test_a_rollout_without_an_evaluation_with_data_records_no_previous_values() -> None:
    status, observed = retrained({"accuracy": 0.9})
    observed = Observations(**{**observed.__dict__, "metrics": (accuracy(None),)})
    decision = run(spec_dict(**{"validation.gates": GATES}), status, observed)
    rollout = decision.status.rollout
    assert rollout is not None
    assert (rollout.previous_values, rollout.previous_evaluated_at) == ({}, None)


def test_before_its_first_labels_a_new_version_is_waited_for_not_judged() -> None:
    decision = run(
        spec_dict(), analyzing(), healthy_dependencies(metrics=(accuracy(0.9, samples=12),)), minutes=1
    )
    rollout = decision.status.rollout
    assert rollout is not None
    assert rollout.measurements == ()
    assert rollout.next_measurement_at == T0 + timedelta(minutes=2)
    status, reason, message = condition(decision, "RolledOut")
    assert (status, reason) == ("True", "Analyzing")
    assert message == (
        "v2: waiting for its first data until 2026-11-28T13:00:00Z (maxWait 1h): "
        "accuracy: 12 samples < minSamples 100"
    )
    assert decision.actions == ()


def test_after_max_wait_a_measurement_without_data_is_inconclusive() -> None:
    observed = healthy_dependencies(metrics=(accuracy(0.9, samples=12),))
    decision = run(spec_dict(), analyzing(), observed, minutes=60)
    rollout = decision.status.rollout
    assert rollout is not None
    assert [m.verdict for m in rollout.measurements] == ["Inconclusive"]


def test_a_failed_query_is_inconclusive_at_once() -> None:
    decision = measure(analyzing(), None)  # NaN samples query: the metric's query is answered, its value NaN
    rollout = decision.status.rollout
    assert rollout is not None and rollout.measurements == ()  # NaN is "no feedback yet": waited for
    failing = replace(accuracy(0.9), result=QueryResult(QueryOutcome.ERROR, message="503"))
    decision = run(spec_dict(), analyzing(), healthy_dependencies(metrics=(failing,)), minutes=1)
    rollout = decision.status.rollout
    assert rollout is not None
    assert [m.verdict for m in rollout.measurements] == ["Inconclusive"]


def below_previous(value: float, previous: float, *verdicts: str) -> Decision:
    status = analyzing(*verdicts)
    assert status.rollout is not None
    rolling = replace(status.rollout, previous_values={"accuracy": previous}, previous_evaluated_at=T0)
    return measure(status.model_copy(update={"rollout": rolling}), value)


def test_a_version_below_its_threshold_but_better_than_the_one_it_replaced_is_kept() -> None:
    decision = below_previous(0.8, 0.6, "Successful", "Successful", "Successful", "Successful")
    assert decision.status.rollout is None
    current = decision.status.current_model
    assert current is not None and current.version == "v2"
    assert decision.actions == ()
    status, reason, message = condition(decision, "RolledOut")
    assert (status, reason) == ("True", "BelowThresholdNotWorse")
    assert "below its threshold but not worse than v1, which it replaced (accuracy 0.8 vs 0.6)" in message
    assert condition(decision, "Degraded")[:2] == ("False", "NotDegraded")
    assert any(e.reason == "BelowThresholdNotWorse" and e.type == "Warning" for e in decision.events)
    entry = decision.status.history[-1]
    assert (entry.outcome, entry.reason) == ("RolledOut", "BelowThresholdNotWorse")
    assert entry.analysis == "Successful"
    assert decision.status.rejected_versions == ()


def test_a_version_below_its_threshold_and_worse_than_the_one_it_replaced_is_rolled_back() -> None:
    decision = below_previous(0.5, 0.6, "Successful", "Failed")
    assert decision.actions == (ApplyModel("ml", "churn-server", "server", V1),)
    status, reason, message = condition(decision, "Degraded")
    assert (status, reason) == ("True", "AnalysisFailed")
    assert message.endswith("accuracy 0.5 < min 0.85, worse than 0.6 before the rollout")


# ---------------------------------------------------------------- the implied gate on the primary metric


def test_the_implied_gate_is_no_worse_on_the_primary_metric_unless_a_gate_names_that_metric() -> None:
    assert implied_gate(parse_spec(spec_dict())) == Gate(metric="accuracy", min_delta_vs_current=0.0)
    regression = parse_spec(spec_dict(**{"retrain.trainer.task": "regression"}))
    assert implied_gate(regression) == Gate(metric="rmse", min_delta_vs_current=0.0)
    other = parse_spec(spec_dict(**{"validation.gates": [{"metric": "f1_macro", "min": 0.5}]}))
    assert implied_gate(other) == Gate(metric="accuracy", min_delta_vs_current=0.0)
    # Any gate on the metric replaces it, also one without a delta (the way to turn the comparison off).
    named = parse_spec(spec_dict(**{"validation.gates": [{"metric": "accuracy", "min": 0.0}]}))
    assert implied_gate(named) is None
    observe = spec_dict(mode="Observe")
    del observe["retrain"], observe["artifacts"]
    assert implied_gate(parse_spec(observe)) is None


IMPLIED_GATE = Gate(metric="accuracy", min_delta_vs_current=0.0)


@pytest.mark.parametrize(
    ("candidate", "current", "version", "verdict", "reason", "message"),
    [
        (
            {"accuracy": 0.9},
            {"accuracy": 0.8},
            "v1",
            "Passed",
            "WithinBound",
            "accuracy delta 0.1 >= 0 vs v1",
        ),
        (
            {"accuracy": 0.8},
            {"accuracy": 0.9},
            "v1",
            "Failed",
            "DeltaTooSmall",
            "accuracy delta \u22120.1 < 0 vs v1",
        ),
        (
            {"accuracy": 0.8},
            {},
            None,
            "Passed",
            "NoCurrentModel",
            "accuracy: no current model to compare with",
        ),
        (
            {"f1_macro": 0.8},
            {"accuracy": 0.9},
            "v1",
            "Passed",
            "MetricMissing",
            "accuracy: the candidate has no accuracy in metrics.json; implied gate skipped",
        ),
        (
            {"accuracy": 0.8},
            {},
            "v1",
            "Passed",
            "CurrentModelNotScored",
            "accuracy: current model v1 has no accuracy in metrics.json; implied gate skipped",
        ),
    ],
)
def test_implied_gate_branches(
    candidate: dict[str, float],
    current: dict[str, float],
    version: str | None,
    verdict: str,
    reason: str,
    message: str,
) -> None:
    result = evaluate_implied_gate(IMPLIED_GATE, candidate, current, version)
    assert (result.verdict, result.reason) == (verdict, reason)
    assert result.message.removesuffix(" (implied)") == message
    assert result.threshold == "delta >= 0 (implied)"


def test_without_gates_a_candidate_worse_than_the_serving_model_is_rejected_by_the_implied_gate() -> None:
    status, observed = retrained({"accuracy": 0.78}, {"accuracy": 0.8})
    decision = run(spec_dict(), status, observed)
    state, reason, message = condition(decision, "Validated")
    assert (state, reason) == ("False", "GatesFailed")
    assert message == "v2: accuracy delta \u22120.02 < 0 vs v1 (implied)"
    candidate = decision.status.candidate_model
    assert candidate is not None
    assert [(g.metric, g.threshold, g.verdict) for g in candidate.gates] == [
        ("accuracy", "delta >= 0 (implied)", "Failed")
    ]
    assert decision.status.rollout is None


def test_a_gate_on_the_primary_metric_replaces_the_implied_one() -> None:
    status, observed = retrained({"accuracy": 0.78}, {"accuracy": 0.8})
    decision = run(spec_dict(**{"validation.gates": [{"metric": "accuracy", "min": 0.7}]}), status, observed)
    assert condition(decision, "Validated")[:2] == ("True", "GatesPassed")
    candidate = decision.status.candidate_model
    assert candidate is not None and [g.threshold for g in candidate.gates] == ["min 0.7"]
