"""The abort annotation and suspend during an analysis, decided without I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

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
from feedbackloop.api import (
    ABORT_ANNOTATION,
    ConditionType,
    MeasurementVerdict,
    Outcome,
    Reason,
    RolloutKind,
    RolloutPhase,
    Trigger,
)
from feedbackloop.core.cadence import next_reconcile
from feedbackloop.core.decide import decide
from feedbackloop.core.decision import ApplyModel, Decision, RollbackStarted, RolloutFinished
from feedbackloop.core.observations import Observations, TargetObservation
from feedbackloop.core.plan import plan
from feedbackloop.core.requests import HANDLED_REQUEST_LIMIT, request_id
from feedbackloop.core.status import ActiveRetrain, FeedbackLoopStatus, Measurement, ModelRef

REPO = Path(__file__).resolve().parents[2]
ROLL_BACK_TO_V1 = ApplyModel("ml", "churn-server", "server", V1)


def run(
    status: FeedbackLoopStatus, observed: Observations, minutes: float = 1, **spec_changes: Any
) -> Decision:
    return decide(
        loop_state(spec_dict(**spec_changes), status), observed, POLICY, T0 + timedelta(minutes=minutes)
    )


def condition(decision: Decision, kind: str) -> tuple[str, str, str]:
    found = decision.status.condition(ConditionType(kind))
    assert found is not None
    return found.status, found.reason, found.message


def analyzing(*verdicts: str) -> FeedbackLoopStatus:
    measurements = tuple(Measurement(time=T0, verdict=MeasurementVerdict(v)) for v in verdicts)
    return rolling_status(phase=RolloutPhase.ANALYZING, next_measurement_at=T0, measurements=measurements)


def aborting(abort: str = "stop-1", value: float = 0.93, **changes: Any) -> Observations:
    """A due analysis measurement that would pass, and the abort annotation beside it."""
    return healthy_dependencies(metrics=(accuracy(value),), abort_request=abort, **changes)


# ---------------------------------------------------------------- abort a rollout in flight


def test_abort_mid_analysis_rolls_back_to_the_exact_previous_model_at_once() -> None:
    decision = run(analyzing("Successful"), aborting())
    assert decision.actions == (ROLL_BACK_TO_V1,)
    rollout = decision.status.rollout
    assert rollout is not None
    assert (rollout.phase, rollout.reason, rollout.phase_started_at) == (
        "RollingBack",
        "Aborted",
        T0 + timedelta(minutes=1),
    )
    assert len(rollout.measurements) == 1  # the measurement due in the same reconcile is not taken
    why = f"aborted by {ABORT_ANNOTATION}='stop-1' while Analyzing"
    assert condition(decision, "Degraded") == ("True", "Aborted", f"v2: {why}")
    assert condition(decision, "RolledOut") == ("False", "RollingBack", f"rolling back to v1: {why}")
    assert decision.status.handled_abort_request == "stop-1"
    assert decision.status.rejected_versions == ()  # a person's stop, not a verdict on v2
    assert decision.status.phase == "RollingBack"
    aborted = [e for e in decision.events if e.reason == "Aborted"]
    assert [(e.type, e.message) for e in aborted] == [("Warning", f"Degraded=True: v2: {why}")]
    assert RollbackStarted(Reason.ABORTED) in decision.transitions
    entry = decision.status.history[-1]
    assert (entry.version, entry.outcome, entry.reason, entry.message) == ("v2", "RollingOut", "Aborted", why)


def test_the_aborted_rollback_completes_as_aborted_and_v2_may_come_back() -> None:
    stopped = run(analyzing("Successful"), aborting()).status
    done = run(stopped, rolling_deployment(V1.uri, complete=True, abort_request="stop-1"), minutes=2)
    assert done.actions == ()
    assert done.status.rollout is None
    assert done.status.current_model == V1
    assert condition(done, "RolledOut")[:2] == ("False", "RolledBack")
    assert condition(done, "Degraded")[:2] == ("True", "Aborted")
    assert done.status.history[-1].outcome == "Aborted"
    assert RolloutFinished(Outcome.ABORTED) in done.transitions
    assert "v2" not in done.status.rejected_versions
    assert any(e.reason == "RolledBack" and e.message.endswith("(Aborted)") for e in done.events)


def test_abort_of_a_progressing_rollout_rolls_back_even_without_rollback_on_failure() -> None:
    observed = rolling_deployment(V2_URI, complete=False, abort_request="stop-1")
    decision = run(rolling_status(), observed, **{"rollout.rollbackOnFailure": False})
    assert decision.actions == (ROLL_BACK_TO_V1,)
    assert condition(decision, "Degraded")[:2] == ("True", "Aborted")
    assert "while Progressing" in condition(decision, "Degraded")[2]


def test_abort_of_a_first_rollout_releases_our_fields() -> None:
    decision = run(rolling_status(previous=None), aborting())
    assert decision.actions == (ApplyModel("ml", "churn-server", "server", None),)
    assert condition(decision, "RolledOut")[2].startswith("rolling back to the Deployment's own env")


def test_the_same_abort_again_does_nothing_even_beside_a_new_requested_at_token() -> None:
    stopped = run(analyzing("Successful"), aborting()).status
    assert stopped.handled_abort_request == "stop-1"
    # Later v2 is under analysis again (rolled out by hand); the old annotation is still on the loop.
    later = analyzing("Successful").model_copy(update={"handled_abort_request": "stop-1"})
    again = run(later, aborting(), minutes=5)
    assert again.status.handled_abort_request == "stop-1"
    assert again.status.rollout is not None and again.status.rollout.phase == "Analyzing"
    assert not any(isinstance(a, ApplyModel) for a in again.actions)
    assert not any(e.reason in ("Aborted", "AbortIgnored") for e in again.events)

    # A token set to repeat a rollback-to must not re-fire the old abort still beside it.
    renewed = run(later, aborting(request_token="friday"), minutes=5)
    assert renewed.status.handled_abort_request == "stop-1"
    assert not any(isinstance(a, ApplyModel) for a in renewed.actions)
    assert renewed.status.rollout is not None and renewed.status.rollout.phase == "Analyzing"
    fresh = run(later, aborting("stop-2", request_token="friday"), minutes=5)
    assert fresh.status.handled_abort_request == "stop-2"
    assert fresh.actions == (ROLL_BACK_TO_V1,)


def test_a_long_abort_value_is_recorded_as_its_digest() -> None:
    long = "x" * 5000
    decision = run(analyzing(), aborting(long))
    assert decision.status.handled_abort_request == request_id(long)
    assert len(decision.status.handled_abort_request) <= HANDLED_REQUEST_LIMIT
    assert all(len(e.message) < 300 for e in decision.events)


@pytest.mark.parametrize("mode", ["Auto", "Recommend"])
def test_abort_is_honoured_while_suspended_and_in_recommend(mode: str) -> None:
    decision = run(analyzing(), aborting(), mode=mode, suspend=True)
    assert decision.actions == (ROLL_BACK_TO_V1,)
    assert condition(decision, "Degraded")[:2] == ("True", "Aborted")


# ---------------------------------------------------------------- an abort with nothing to stop


def ignored(decision: Decision) -> list[tuple[str, str, str]]:
    return [
        (e.type, e.reason, e.message) for e in decision.events if e.reason in ("AbortIgnored", "ObserveOnly")
    ]


def test_abort_during_a_rollback_lets_the_rollback_finish_and_says_so() -> None:
    status = rolling_status(phase=RolloutPhase.ROLLING_BACK)
    decision = run(status, rolling_deployment(V1.uri, complete=False, abort_request="stop-1"))
    assert decision.actions == ()
    assert decision.status.rollout is not None and decision.status.rollout.phase == "RollingBack"
    assert decision.status.handled_abort_request == "stop-1"
    assert ignored(decision) == [
        (
            "Warning",
            "AbortIgnored",
            f"{ABORT_ANNOTATION}='stop-1': the rollback to v1 goes on; a rollback is never aborted",
        )
    ]


def test_abort_during_a_manual_rollback_to_lets_it_finish() -> None:
    status = rolling_status(kind=RolloutKind.ROLLBACK)
    decision = run(status, rolling_deployment(V2_URI, complete=False, abort_request="stop-1"))
    assert decision.actions == ()
    assert decision.status.rollout is not None and decision.status.rollout.phase == "Progressing"
    assert "the rollback to v2 goes on" in ignored(decision)[0][2]


def test_abort_with_nothing_in_flight_is_recorded_and_never_fires_at_the_next_rollout() -> None:
    idle = FeedbackLoopStatus(current_model=V1, retrain_count=1)
    decision = run(idle, aborting())
    assert decision.actions == ()
    assert decision.status.handled_abort_request == "stop-1"
    message = f"{ABORT_ANNOTATION}='stop-1': no rollout in flight, nothing to abort"
    assert ignored(decision) == [("Warning", "AbortIgnored", message)]
    assert condition(decision, "Degraded")[:2] == ("False", "NotDegraded")

    # v2's rollout starts later, with the annotation still there: it is not aborted.
    rolling = decision.status.model_copy(
        update={"rollout": rolling_status().rollout, "candidate_model": PASSED_V2}
    )
    later = run(rolling, rolling_deployment(V2_URI, complete=False, abort_request="stop-1"), minutes=5)
    assert later.actions == ()
    assert later.status.rollout is not None and later.status.rollout.phase == "Progressing"


def test_abort_during_a_retrain_says_that_the_retrain_goes_on() -> None:
    active = ActiveRetrain(
        job="churn-retrain-2", version="v2", number=2, trigger=Trigger.BREACH, started_at=T0, job_created=True
    )
    status = FeedbackLoopStatus(current_model=V1, active_retrain=active, retrain_count=2)
    decision = run(status, aborting())
    assert decision.status.active_retrain is not None
    assert decision.status.handled_abort_request == "stop-1"
    assert ignored(decision)[0][2].endswith("the retrain of v2 goes on (abort stops rollouts)")


def test_abort_in_observe_is_recorded_and_applies_nothing() -> None:
    decision = run(analyzing(), aborting(), mode="Observe")
    assert decision.actions == ()
    assert decision.status.handled_abort_request == "stop-1"
    assert ignored(decision) == [
        ("Warning", "ObserveOnly", f"mode Observe: {ABORT_ANNOTATION}='stop-1' not applied")
    ]


def test_abort_of_a_rollout_whose_deployment_vanished_applies_nothing() -> None:
    gone = TargetObservation(deployment_found=False, container_found=False)
    decision = run(rolling_status(), healthy_dependencies(target=gone, abort_request="stop-1"))
    assert decision.actions == ()
    assert decision.status.handled_abort_request == "stop-1"
    assert decision.status.rollout is None
    assert condition(decision, "RolledOut")[:2] == ("False", "TargetNotFound")


def test_a_pending_abort_is_followed_every_tick() -> None:
    loop = loop_state(spec_dict(), FeedbackLoopStatus(current_model=V1))
    loop = replace(loop, status=run(loop.status, healthy_dependencies(metrics=(accuracy(0.95),))).status)
    at = T0 + timedelta(minutes=1)
    assert next_reconcile(loop, {ABORT_ANNOTATION: "stop-1"}, POLICY, at) == at + POLICY.tick
    handled = replace(loop, status=loop.status.model_copy(update={"handled_abort_request": "stop-1"}))
    assert next_reconcile(handled, {ABORT_ANNOTATION: "stop-1"}, POLICY, at) > at + POLICY.tick


# ---------------------------------------------------------------- suspend during an analysis


def test_suspend_does_not_freeze_an_analysis_it_keeps_measuring_and_decides() -> None:
    status = analyzing("Successful")
    loop = loop_state(spec_dict(suspend=True), status)
    assert plan(loop, POLICY, T0 + timedelta(seconds=1)).queries is not None  # the measurement is due
    assert plan(loop, POLICY, T0 - timedelta(seconds=1)).queries is None  # monitoring alone stays paused

    spec = spec_dict(suspend=True, **{"rollout.analysis": {"count": 2}})
    passed = decide(
        loop_state(spec, status),
        healthy_dependencies(metrics=(accuracy(0.93),)),
        POLICY,
        T0 + timedelta(minutes=1),
    )
    assert passed.status.rollout is None
    assert passed.status.current_model is not None and passed.status.current_model.version == "v2"
    assert condition(passed, "RolledOut")[:2] == ("True", "AnalysisSuccessful")

    failed = run(analyzing("Failed"), healthy_dependencies(metrics=(accuracy(0.5),)), suspend=True)
    assert failed.actions == (ROLL_BACK_TO_V1,)
    assert condition(failed, "Degraded")[:2] == ("True", "AnalysisFailed")


def test_suspend_holds_a_new_candidate_so_no_rollout_starts_until_resumed() -> None:
    fresh = replace(PASSED_V2, validation=None)
    status = FeedbackLoopStatus(current_model=V1, candidate_model=fresh, retrain_count=2)
    held = run(status, healthy_dependencies(), suspend=True)
    assert held.actions == ()
    assert held.status.rollout is None
    assert condition(held, "Validated") == (
        "Unknown",
        "Suspended",
        "candidate v2 awaits validation until spec.suspend is false",
    )
    resumed = run(held.status, healthy_dependencies(), minutes=2)
    model = ModelRef(version="v2", uri=V2_URI, sha256="2" * 64)
    assert resumed.actions == (ApplyModel("ml", "churn-server", "server", model),)
    assert condition(resumed, "Validated")[:2] == ("True", "GatesPassed")


# ---------------------------------------------------------------- the status field in every CRD copy


@pytest.mark.parametrize(
    "copy",
    [
        "crds/feedbackloop.yaml",
        "helm/feedbackloop-operator/files/crds/feedbackloop.yaml",
        "manifests/crds/feedbackloop.yaml",
    ],
)
def test_every_handled_request_field_is_in_the_status_schema_with_the_same_limit(copy: str) -> None:
    crd = yaml.safe_load((REPO / copy).read_text())
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    handled = {name: field for name, field in status.items() if name.startswith("handled")}
    assert set(handled) == {
        "handledRetrainRequest",
        "handledPromoteRequest",
        "handledRollbackRequest",
        "handledAbortRequest",
    }
    assert {field["maxLength"] for field in handled.values()} == {HANDLED_REQUEST_LIMIT}
