"""Untrusted input, decided without I/O: version names in annotations, metrics.json values, request ids of any
length, gates that must fail closed, and Observe mode that writes nothing but the loop's status and Events."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any, get_args

import pytest

from core_inputs import (
    PASSED_V2,
    POLICY,
    T0,
    V1,
    healthy_dependencies,
    loop_state,
    rolling_deployment,
    rolling_status,
    spec_dict,
)
from feedbackloop.api import (
    PROMOTE_ANNOTATION,
    RETRAIN_REQUEST_ANNOTATION,
    ROLLBACK_ANNOTATION,
    ConditionType,
    GateReason,
    GateVerdict,
    Trigger,
)
from feedbackloop.core import contract
from feedbackloop.core.decide import decide
from feedbackloop.core.decision import Action, ApplyModel, CreateJob, Decision
from feedbackloop.core.manual import Refusal, promotion_refusal, rollback_refusal
from feedbackloop.core.observations import (
    ArtifactCheck,
    ArtifactObservation,
    JobObservation,
    JobState,
    Observations,
)
from feedbackloop.core.plan import plan
from feedbackloop.core.requests import HANDLED_REQUEST_LIMIT, quoted, request_id
from feedbackloop.core.status import (
    ActiveRetrain,
    CandidateModel,
    FeedbackLoopStatus,
    ModelRef,
    to_status_dict,
)
from reconcile_fakes import World

GATES = [{"metric": "accuracy", "min": 0.85}, {"metric": "accuracy", "minDeltaVsCurrent": 0.0}]


def run(
    spec: dict[str, Any], status: FeedbackLoopStatus, observed: Observations, minutes: int = 0
) -> Decision:
    return decide(loop_state(spec, status), observed, POLICY, T0 + timedelta(minutes=minutes))


def condition(decision: Decision, kind: str) -> tuple[str, str, str]:
    found = decision.status.condition(ConditionType(kind))
    assert found is not None
    return found.status, found.reason, found.message


def serving_v1() -> FeedbackLoopStatus:
    return FeedbackLoopStatus(current_model=V1)


def verified(version: str, metrics: dict[str, Any] | None = None) -> ArtifactObservation:
    return ArtifactObservation(
        ArtifactCheck.VERIFIED,
        uri=f"s3://models/churn/ml/churn/{version}/",
        model_sha256="0" * 64,
        metrics=metrics or {"schemaVersion": 1, "candidate": {"accuracy": 0.9}},
    )


# ---------------------------------------------------------------- hole 3: version names


@pytest.mark.parametrize("name", ["v0", "v1", "v42", "v999999999"])
def test_the_operators_own_version_names_are_version_names(name: str) -> None:
    assert contract.is_version_name(name)
    assert contract.is_version_name(contract.version_name(contract.version_number(name)))


@pytest.mark.parametrize(
    "name",
    [
        "",
        "v",
        "V1",
        "1",
        "v1234567890",
        "v1.0",
        "v-1",
        "../v1",
        "v1/..",
        "v1/",
        "a/../v1",
        "v1\n",
        "v\uff11",
        "..",
    ],
)
def test_anything_else_is_not_a_version_name(name: str) -> None:
    assert not contract.is_version_name(name)
    assert rollback_refusal(serving_v1(), name) is Refusal.NOT_A_VERSION_NAME
    assert promotion_refusal(serving_v1(), name) is Refusal.NOT_A_VERSION_NAME


def test_a_rollback_to_outside_the_loop_reads_nothing_and_changes_nothing() -> None:
    traversal = "../../other-ns/churn/v3"
    state = replace(loop_state(spec_dict(), serving_v1()), rollback_request=traversal)
    assert plan(state, POLICY, T0).rollback_uri is None  # no S3 request is planned

    decision = run(spec_dict(), serving_v1(), healthy_dependencies(rollback_request=traversal))
    assert decision.actions == ()
    assert decision.status.rollout is None
    assert decision.status.handled_rollback_request == traversal
    message = f"{ROLLBACK_ANNOTATION}: '{traversal}' is not a version name (v followed by 1 to 9 digits)"
    assert condition(decision, "RolledOut") == ("False", "InvalidVersionName", message)
    assert next((e.reason, e.message) for e in decision.events) == ("InvalidVersionName", message)


def test_a_promote_of_no_version_name_is_refused_even_when_a_candidate_passed() -> None:
    status = FeedbackLoopStatus(current_model=V1, candidate_model=PASSED_V2, recommended_version="v2")
    decision = run(spec_dict(mode="Recommend"), status, healthy_dependencies(promote_request="v2/../v2"))
    assert decision.actions == ()
    assert condition(decision, "RolledOut")[:2] == ("False", "InvalidVersionName")
    assert condition(decision, "RolledOut")[2].startswith(f"{PROMOTE_ANNOTATION}: 'v2/../v2'")


def test_the_reconciler_makes_no_s3_request_and_no_apply_for_a_traversal() -> None:
    world = World("traversal", spec_dict(), T0)
    world.reconcile()
    world.annotate(ROLLBACK_ANNOTATION, "../../other-ns/churn/v3")
    calls = world.reconcile(after_seconds=120)
    assert [call.name for call in calls if call.name in {"verify_version", "apply_model"}] == []
    assert world.status["handledRollbackRequest"] == "../../other-ns/churn/v3"


def test_a_tampered_active_retrain_version_steers_no_s3_read() -> None:
    active = ActiveRetrain(
        job="churn-retrain-2", version="../../x/v9", number=2, trigger=Trigger.MANUAL, started_at=T0
    )
    assert (
        plan(loop_state(spec_dict(), FeedbackLoopStatus(active_retrain=active)), POLICY, T0).candidate_uri
        is None
    )


# ---------------------------------------------------------------- hole 7: status stays writable


def test_metrics_json_keeps_only_finite_numbers_with_short_names() -> None:
    section = {
        "accuracy": 0.9,
        "nan": float("nan"),
        "inf": float("inf"),
        "minus_inf": float("-inf"),
        "huge": 10**400,
        "flag": True,
        "text": "0.9",
        "count": 3,
        "x" * 64: 0.5,
    }
    assert contract.numeric_metrics(section) == {"accuracy": 0.9, "count": 3.0}


def test_metrics_json_keeps_at_most_the_schemas_key_count_first_by_name() -> None:
    section = {f"m{index:03d}": float(index) for index in range(100)}
    kept = contract.numeric_metrics(section)
    assert list(kept) == [f"m{index:03d}" for index in range(64)]
    stats = {f"s{index:02d}": 0.1 for index in range(20)}
    comparison = contract.comparisons({f"m{index:03d}": stats for index in range(70)})
    assert len(comparison) == 64
    assert list(comparison["m000"]) == [f"s{index:02d}" for index in range(16)]


def test_a_candidate_from_a_hostile_metrics_json_gives_a_status_the_api_server_accepts() -> None:
    hostile = {
        "candidate": {"accuracy": float("nan"), "f1": float("inf"), **{f"m{i:03d}": 0.5 for i in range(100)}},
        "current": {"accuracy": float("-inf")},
        "comparison": {"accuracy": {"ciLow": float("nan"), "ciHigh": 0.1}},
    }
    candidate = replace(
        candidate_v2(contract.numeric_metrics(hostile["current"])),
        metrics=contract.numeric_metrics(hostile["candidate"]),
        comparison=contract.comparisons(hostile["comparison"]),
    )
    status = FeedbackLoopStatus(current_model=V1, candidate_model=candidate)
    decision = run(spec_dict(**{"validation.gates": GATES}), status, healthy_dependencies())
    body = to_status_dict(decision.status)
    json.dumps(body, allow_nan=False)  # raises on NaN or Infinity
    written = body["candidateModel"]
    assert len(written["metrics"]) == 64 and "accuracy" not in written["metrics"]
    assert written["comparison"] == {"accuracy": {"ciHigh": 0.1}}
    assert [g["reason"] for g in written["gates"]] == ["MetricMissing", "MetricMissing"]  # two accuracy gates
    assert condition(decision, "Validated")[:2] == ("False", "GatesFailed")


def test_status_never_carries_a_non_finite_number() -> None:
    model = ModelRef(
        version="v1", uri="s3://models/v1/", metrics={"a": float("nan"), "b": float("inf"), "c": 1.0}
    )
    assert to_status_dict(FeedbackLoopStatus(current_model=model))["currentModel"]["metrics"] == {"c": 1.0}


def test_request_ids_are_the_value_when_it_fits_else_its_digest() -> None:
    assert request_id("go") == "go"
    fits = "r" * HANDLED_REQUEST_LIMIT
    assert request_id(fits) == fits
    long, longer = "r" * 5000, "r" * 5000 + "s"
    assert request_id(long) == "sha256:" + hashlib.sha256(long.encode()).hexdigest()
    assert request_id(long) != request_id(longer)  # a prefix would treat these as one request
    assert len(request_id(long)) <= HANDLED_REQUEST_LIMIT
    assert request_id("sha256:abc") != "sha256:abc"  # a value cannot pose as another value's digest
    wide = "\u00e9" * 600  # 600 characters, 1200 bytes
    assert request_id(wide) == "sha256:" + hashlib.sha256(wide.encode()).hexdigest()
    assert quoted("x" * 5000) == f"'{'x' * 64}…' (5000 characters)"


def test_a_long_retrain_request_is_handled_once_and_fits_every_status_field() -> None:
    long = "r" * 5000
    first = run(spec_dict(), FeedbackLoopStatus(), healthy_dependencies(retrain_request=long))
    assert [type(action) for action in first.actions] == [CreateJob]
    assert first.status.handled_retrain_request == request_id(long)
    body = json.dumps(to_status_dict(first.status))
    assert long not in body
    finished = first.status.model_copy(update={"active_retrain": None})
    again = run(spec_dict(), finished, healthy_dependencies(retrain_request=long), minutes=5)
    assert again.actions == ()


@pytest.mark.parametrize("annotation", [PROMOTE_ANNOTATION, ROLLBACK_ANNOTATION])
def test_a_long_promote_or_rollback_value_is_refused_once_with_a_short_message(annotation: str) -> None:
    long = "v" * 5000
    request = {"promote_request": long} if annotation == PROMOTE_ANNOTATION else {"rollback_request": long}
    refused = run(spec_dict(), serving_v1(), healthy_dependencies(**request))
    handled = refused.status.handled_promote_request or refused.status.handled_rollback_request
    assert handled == request_id(long)
    status, reason, message = condition(refused, "RolledOut")
    assert (status, reason) == ("False", "InvalidVersionName")
    assert message.startswith(f"{annotation}: 'vvvv") and len(message) < 200
    again = run(spec_dict(), refused.status, healthy_dependencies(**request), minutes=1)
    assert again.events == ()  # handled: nothing new to say


def test_the_reconciler_keeps_writing_status_after_a_long_annotation() -> None:
    world = World("long-request", spec_dict(), T0)
    world.annotate(RETRAIN_REQUEST_ANNOTATION, "r" * 5000)
    world.reconcile()
    patches = [call.args[2] for call in world.journal if call.name == "patch_loop_status"]
    assert patches and all("r" * 1025 not in json.dumps(patch) for patch in patches)
    assert world.status["handledRetrainRequest"] == request_id("r" * 5000)


# ---------------------------------------------------------------- hole 9: gates fail closed


def candidate_v2(current_metrics: dict[str, float]) -> CandidateModel:
    return CandidateModel(
        version="v2",
        job="churn-retrain-2",
        uri="s3://models/churn/ml/churn/v2/",
        sha256="2" * 64,
        trigger=Trigger.BREACH,
        metrics={"accuracy": 0.93},
        current_metrics=current_metrics,
    )


def test_a_delta_gate_fails_when_the_known_current_model_has_no_score() -> None:
    status = FeedbackLoopStatus(current_model=V1, candidate_model=candidate_v2({}))
    decision = run(spec_dict(**{"validation.gates": GATES}), status, healthy_dependencies())
    assert decision.actions == ()
    assert decision.status.candidate_model is not None
    gates = decision.status.candidate_model.gates
    assert [(g.verdict, g.reason) for g in gates] == [
        (GateVerdict.PASSED, GateReason.WITHIN_BOUND),
        (GateVerdict.FAILED, GateReason.CURRENT_MODEL_NOT_SCORED),
    ]
    assert gates[1].message == "accuracy: current model v1 has no accuracy in metrics.json"
    assert decision.status.rejected_versions == ("v2",)
    assert condition(decision, "Validated")[:2] == ("False", "GatesFailed")


def test_a_delta_gate_passes_the_first_model_which_has_nothing_to_beat() -> None:
    status = FeedbackLoopStatus(candidate_model=candidate_v2({}))
    decision = run(spec_dict(**{"validation.gates": GATES}), status, healthy_dependencies())
    assert decision.status.candidate_model is not None
    assert [g.reason for g in decision.status.candidate_model.gates] == [
        GateReason.WITHIN_BOUND,
        GateReason.NO_CURRENT_MODEL,
    ]
    assert [type(action) for action in decision.actions] == [ApplyModel]


# ---------------------------------------------------------------- hole 10: Observe is read-only


def job_to_recreate(mode: str) -> Decision:
    """A retrain recorded but its Job never created (a crash): the Job would be created now."""
    active = ActiveRetrain(
        job="churn-retrain-2", version="v2", number=2, trigger=Trigger.MANUAL, started_at=T0
    )
    status = FeedbackLoopStatus(current_model=V1, active_retrain=active, retrain_count=2)
    observed = healthy_dependencies(job=JobObservation("churn-retrain-2", JobState.MISSING))
    return run(spec_dict(mode=mode), status, observed)


def rollout_to_reapply(mode: str) -> Decision:
    """A rollout in flight whose version the Deployment does not serve: it would be applied again."""
    return run(spec_dict(mode=mode), rolling_status(), rolling_deployment(V1.uri, complete=True), minutes=1)


ACTION_IN_FLIGHT: dict[type, tuple[Callable[[str], Decision], str]] = {
    CreateJob: (job_to_recreate, "Retraining"),
    ApplyModel: (rollout_to_reapply, "RolledOut"),
}


def test_every_kind_of_action_has_an_observe_case() -> None:
    assert set(ACTION_IN_FLIGHT) == set(get_args(Action))


@pytest.mark.parametrize("kind", get_args(Action))
def test_observe_mode_withholds_every_kind_of_action(kind: type) -> None:
    produce, condition_type = ACTION_IN_FLIGHT[kind]
    assert [type(action) for action in produce("Auto").actions] == [kind]
    observing = produce("Observe")
    assert observing.actions == ()
    status, reason, message = condition(observing, condition_type)
    assert (status, reason) == ("False", "ObserveOnly")
    assert message.startswith("mode Observe: ")


@pytest.mark.parametrize(
    ("annotation", "wanted"),
    [
        (ROLLBACK_ANNOTATION, {"rollback_request": "v0", "rollback_artifacts": verified("v0")}),
        (PROMOTE_ANNOTATION, {"promote_request": "v2"}),
    ],
)
def test_observe_mode_refuses_promote_and_rollback_to_before_anything_changes(
    annotation: str, wanted: dict[str, Any]
) -> None:
    status = FeedbackLoopStatus(current_model=V1, candidate_model=PASSED_V2)
    decision = run(spec_dict(mode="Observe"), status, healthy_dependencies(**wanted))
    assert decision.actions == ()
    assert decision.status.rollout is None
    assert decision.transitions == ()
    version = wanted.get("rollback_request") or wanted["promote_request"]
    message = f"mode Observe: {annotation}={version} not applied"
    assert condition(decision, "RolledOut") == ("False", "ObserveOnly", message)


def test_observe_mode_plans_no_read_of_a_rollback_version() -> None:
    observing = replace(loop_state(spec_dict(mode="Observe"), serving_v1()), rollback_request="v0")
    assert plan(observing, POLICY, T0).rollback_uri is None
    auto = replace(loop_state(spec_dict(), serving_v1()), rollback_request="v0")
    assert plan(auto, POLICY, T0).rollback_uri == "s3://models/churn/ml/churn/v0/"
