"""decide(): every branch of monitoring, triggers, guards and Job outcomes, with no mocks."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from core_inputs import (
    IMAGE,
    POLICY,
    T0,
    accuracy,
    created_jobs,
    healthy_dependencies,
    loop_state,
    spec_dict,
)
from feedbackloop.api import LABEL_TRIGGER, ConditionType, Trigger
from feedbackloop.core import contract
from feedbackloop.core.decide import decide
from feedbackloop.core.decision import CreateJob, Decision, RetrainStarted
from feedbackloop.core.loop import LoopState, OperatorPolicy
from feedbackloop.core.observations import (
    ArtifactCheck,
    ArtifactObservation,
    DeployedModel,
    JobObservation,
    JobState,
    Observations,
    Probe,
    RetrainCapacity,
    TargetObservation,
)
from feedbackloop.core.plan import plan
from feedbackloop.core.promql import render_queries
from feedbackloop.core.readiness import runtime_spec_errors
from feedbackloop.core.status import ActiveRetrain, FeedbackLoopStatus, ModelRef

ALL_CONDITIONS = {"Ready", "Healthy", "Retraining", "Validated", "RolledOut", "Degraded", "InSync"}


def condition(decision: Decision, kind: str) -> tuple[str, str, str]:
    found = decision.status.condition(ConditionType(kind))
    assert found is not None, kind
    return found.status, found.reason, found.message


def run(loop: LoopState, observed: Observations, at: Any = T0, policy: OperatorPolicy = POLICY) -> Decision:
    return decide(loop, observed, policy, at)


def breach_for(
    minutes: int, spec: dict[str, Any] | None = None, status: FeedbackLoopStatus | None = None
) -> Decision:
    """Accuracy below its threshold at T0 and again `minutes` later."""
    loop = loop_state(spec, status)
    first = run(loop, healthy_dependencies(metrics=(accuracy(0.7),)))
    later = loop_state(spec, first.status)
    return run(later, healthy_dependencies(metrics=(accuracy(0.7),)), at=T0 + timedelta(minutes=minutes))


def test_first_visit_sets_every_condition_and_observed_generation() -> None:
    decision = run(loop_state(generation=3), Observations())
    assert {c.type for c in decision.status.conditions} == ALL_CONDITIONS
    assert all(c.observed_generation == 3 for c in decision.status.conditions)
    assert decision.status.observed_generation == 3
    assert condition(decision, "Healthy")[0] == "Unknown"
    assert decision.actions == ()


def test_healthy_metrics_report_ready_and_healthy() -> None:
    decision = run(loop_state(), healthy_dependencies(metrics=(accuracy(0.93),)))
    assert condition(decision, "Ready")[:2] == ("True", "Ready")
    assert condition(decision, "Healthy") == ("True", "WithinThresholds", "1 metric within thresholds")
    assert decision.status.phase == "Monitoring"
    evaluation = decision.status.last_evaluation
    assert evaluation is not None and evaluation.metrics[0].value == 0.93
    assert evaluation.metrics[0].samples == 500
    assert decision.actions == ()


def test_breach_shorter_than_for_does_not_retrain() -> None:
    decision = breach_for(minutes=9)
    assert condition(decision, "Healthy")[:2] == ("False", "ThresholdBreached")
    assert decision.status.phase == "Degraded"
    assert decision.actions == ()


def test_sustained_breach_starts_exactly_one_named_job_after_persisting_the_counter() -> None:
    decision = breach_for(minutes=10)

    assert len(decision.actions) == 1
    job = decision.actions[0]
    assert isinstance(job, CreateJob)
    assert job.manifest["metadata"]["name"] == "churn-retrain-1"
    assert decision.transitions.count(RetrainStarted(Trigger.BREACH)) == 1
    assert decision.status.retrain_count == 1
    active = decision.status.active_retrain
    assert active is not None
    assert (active.job, active.version, active.trigger) == ("churn-retrain-1", "v1", "Breach")
    assert "accuracy 0.7 < min 0.85 for 10m" in active.reason
    assert condition(decision, "Retraining")[:2] == ("True", "RetrainStarted")
    assert decision.status.last_retrain_time == T0 + timedelta(minutes=10)
    assert decision.status.phase == "Retraining"
    assert any(e.reason == "RetrainStarted" for e in decision.events)


def test_retrain_version_follows_the_deployed_model() -> None:
    observed = healthy_dependencies(
        metrics=(accuracy(0.7),),
        target=TargetObservation(
            deployment_found=True,
            container_found=True,
            containers=("server",),
            deployed=DeployedModel(uri="s3://models/churn/ml/churn/v1/", sha256="a" * 64, version="v1"),
        ),
    )
    first = run(loop_state(), observed)
    assert first.status.current_model == ModelRef(
        version="v1", uri="s3://models/churn/ml/churn/v1/", sha256="a" * 64
    )
    second = run(loop_state(status=first.status), observed, at=T0 + timedelta(minutes=10))
    (job,) = created_jobs(second)
    assert job["metadata"]["name"] == "churn-retrain-2"
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FBL_VERSION"] == "v2"
    assert env["FBL_CURRENT_MODEL_URI"] == "s3://models/churn/ml/churn/v1/"
    assert env["FBL_CURRENT_MODEL_SHA256"] == "a" * 64


def active_status(**changes: Any) -> FeedbackLoopStatus:
    started = run(loop_state(), healthy_dependencies())
    active = ActiveRetrain(
        job="churn-retrain-1", version="v1", number=1, trigger=Trigger.MANUAL, started_at=T0
    )
    fields = {"active_retrain": active, "retrain_count": 1, "last_retrain_time": T0, **changes}
    return started.status.model_copy(update=fields)


def test_active_retrain_blocks_a_second_job() -> None:
    loop = loop_state(status=active_status())
    observed = healthy_dependencies(
        metrics=(accuracy(0.5),),
        job=JobObservation("churn-retrain-1", JobState.RUNNING),
        retrain_request="again",
    )
    decision = run(loop, observed, at=T0 + timedelta(hours=3))
    assert decision.actions == ()
    assert condition(decision, "Retraining")[:2] == ("True", "RetrainRunning")
    assert decision.status.retrain_count == 1


def test_a_durable_counter_without_its_job_recreates_the_same_job() -> None:
    """The operator crashed after writing the counter and before creating the Job."""
    loop = loop_state(status=active_status())
    decision = run(loop, healthy_dependencies(job=JobObservation("churn-retrain-1", JobState.MISSING)))
    assert [job["metadata"]["name"] for job in created_jobs(decision)] == ["churn-retrain-1"]
    assert decision.status.retrain_count == 1
    assert not any(isinstance(t, RetrainStarted) for t in decision.transitions)  # the same retrain


def test_a_job_deleted_after_creation_ends_the_retrain_instead_of_coming_back() -> None:
    active = ActiveRetrain(
        job="churn-retrain-1", version="v1", number=1, trigger=Trigger.MANUAL, started_at=T0, job_created=True
    )
    loop = loop_state(status=active_status(active_retrain=active))
    decision = run(loop, healthy_dependencies(job=JobObservation("churn-retrain-1", JobState.MISSING)))
    assert decision.actions == ()
    assert condition(decision, "Retraining")[:2] == ("False", "RetrainJobMissing")
    assert decision.status.active_retrain is None


def test_seeing_the_job_records_that_it_was_created() -> None:
    loop = loop_state(status=active_status())
    decision = run(loop, healthy_dependencies(job=JobObservation("churn-retrain-1", JobState.RUNNING)))
    assert decision.status.active_retrain is not None
    assert decision.status.active_retrain.job_created is True


@pytest.mark.parametrize(
    ("state", "reason"),
    [(JobState.FAILED, "RetrainJobFailed"), (JobState.DEADLINE_EXCEEDED, "RetrainJobDeadlineExceeded")],
)
def test_failed_job_ends_the_retrain_with_its_termination_message(state: JobState, reason: str) -> None:
    loop = loop_state(status=active_status())
    job = JobObservation("churn-retrain-1", state, "label column 'churned' not found")
    decision = run(loop, healthy_dependencies(job=job), at=T0 + timedelta(minutes=5))
    status, got_reason, message = condition(decision, "Retraining")
    assert (status, got_reason) == ("False", reason)
    assert "label column 'churned' not found" in message
    assert decision.status.active_retrain is None
    assert decision.status.history[-1].outcome == "RetrainFailed"
    assert decision.status.history[-1].reason == reason
    assert any(e.type == "Warning" and e.reason == reason for e in decision.events)


METRICS_JSON = {
    "schemaVersion": 1,
    "candidate": {"accuracy": 0.91, "f1_macro": 0.88, "note": "ignored"},
    "current": {"accuracy": 0.83},
}


def test_completed_job_with_verified_artifacts_becomes_the_candidate() -> None:
    loop = loop_state(status=active_status())
    artifacts = ArtifactObservation(
        ArtifactCheck.VERIFIED,
        uri="s3://models/churn/ml/churn/v1/",
        model_sha256="b" * 64,
        metrics=METRICS_JSON,
        manifest_sha256="d" * 64,
    )
    report = contract.success_message("d" * 64)
    observed = healthy_dependencies(
        job=JobObservation("churn-retrain-1", JobState.SUCCEEDED, report), artifacts=artifacts
    )
    decision = run(loop, observed, at=T0 + timedelta(minutes=5))

    candidate = decision.status.candidate_model
    assert candidate is not None
    assert (candidate.version, candidate.job, candidate.sha256) == ("v1", "churn-retrain-1", "b" * 64)
    assert candidate.metrics == {"accuracy": 0.91, "f1_macro": 0.88}
    assert candidate.current_metrics == {"accuracy": 0.83}
    assert condition(decision, "Retraining")[:2] == ("False", "RetrainSucceeded")
    # No gates are configured, so it validates at once and, in Auto, its rollout starts.
    assert condition(decision, "Validated")[:2] == ("True", "GatesPassed")
    assert decision.status.active_retrain is None
    assert decision.status.rollout is not None
    assert [type(a).__name__ for a in decision.actions] == ["ApplyModel"]


@pytest.mark.parametrize(
    ("check", "reason"),
    [
        (ArtifactCheck.MANIFEST_MISSING, "ManifestMissing"),
        (ArtifactCheck.DIGEST_MISMATCH, "ArtifactDigestMismatch"),
        (ArtifactCheck.INVALID, "ArtifactsInvalid"),
        (ArtifactCheck.ACCESS_DENIED, "AccessDenied"),
    ],
)
def test_completed_job_with_bad_artifacts_is_a_failure(check: ArtifactCheck, reason: str) -> None:
    loop = loop_state(status=active_status())
    observed = healthy_dependencies(
        job=JobObservation("churn-retrain-1", JobState.SUCCEEDED),
        artifacts=ArtifactObservation(check, message="model.joblib sha256 differs"),
    )
    decision = run(loop, observed)
    assert condition(decision, "Retraining")[:2] == ("False", reason)
    assert decision.status.candidate_model is None
    assert decision.status.active_retrain is None


def test_unreachable_artifact_store_keeps_the_retrain_open() -> None:
    loop = loop_state(status=active_status())
    observed = healthy_dependencies(
        job=JobObservation("churn-retrain-1", JobState.SUCCEEDED),
        artifacts=ArtifactObservation(ArtifactCheck.UNREACHABLE, message="connection refused"),
    )
    decision = run(loop, observed)
    assert condition(decision, "Retraining")[:2] == ("True", "VerifyingArtifacts")
    assert decision.status.active_retrain is not None
    assert decision.status.candidate_model is None


def test_cooldown_blocks_a_breach_but_not_a_manual_request() -> None:
    status = active_status(active_retrain=None, last_retrain_time=T0)
    blocked = breach_for(minutes=10, status=status)
    assert blocked.actions == ()
    assert condition(blocked, "Retraining")[:2] == ("False", "CooldownActive")
    assert blocked.status.waiting_reason is not None and "cooldown until" in blocked.status.waiting_reason

    manual = run(loop_state(status=status), healthy_dependencies(retrain_request="ticket-42"))
    assert [job["metadata"]["name"] for job in created_jobs(manual)] == ["churn-retrain-2"]
    assert manual.status.handled_retrain_request == "ticket-42"


def test_a_gap_in_the_data_does_not_restart_for_and_never_fires_by_itself() -> None:
    empty = accuracy(None)
    first = run(loop_state(), healthy_dependencies(metrics=(accuracy(0.7),)))
    gap = run(
        loop_state(status=first.status), healthy_dependencies(metrics=(empty,)), T0 + timedelta(minutes=10)
    )
    assert gap.actions == ()  # `for` has passed, but there is no value to breach
    breach = healthy_dependencies(metrics=(accuracy(0.7),))
    again = run(loop_state(status=gap.status), breach, T0 + timedelta(minutes=11))
    assert [job["metadata"]["name"] for job in created_jobs(again)] == ["churn-retrain-1"]


def test_a_manual_request_is_handled_once() -> None:
    first = run(loop_state(), healthy_dependencies(retrain_request="r1"))
    assert len(first.actions) == 1
    finished = first.status.model_copy(update={"active_retrain": None})
    again = run(
        loop_state(status=finished), healthy_dependencies(retrain_request="r1"), at=T0 + timedelta(hours=2)
    )
    assert again.actions == ()


def test_an_uncounted_capacity_asks_to_be_counted_before_any_launch() -> None:
    decision = run(loop_state(), healthy_dependencies(retrain_request="r1", capacity=None))
    assert decision.needs_capacity is True
    assert decision.actions == ()
    assert decision.status.retrain_count == 0
    quiet = run(loop_state(), healthy_dependencies(metrics=(accuracy(0.93),), capacity=None))
    assert quiet.needs_capacity is False


def test_operator_wide_cap_queues_the_loop_and_says_why() -> None:
    observed = healthy_dependencies(retrain_request="r1", capacity=RetrainCapacity(running=2, limit=2))
    decision = run(loop_state(), observed)
    assert decision.actions == ()
    status, reason, message = condition(decision, "Retraining")
    assert (status, reason) == ("False", "Queued")
    assert "2/2 running" in message
    assert decision.status.handled_retrain_request is None  # still pending, not dropped


def test_observe_mode_reports_but_never_retrains() -> None:
    decision = breach_for(minutes=10, spec=spec_dict(mode="Observe"))
    assert decision.actions == ()
    status, reason, message = condition(decision, "Retraining")
    assert (status, reason) == ("False", "ObserveOnly")
    assert "would retrain" in message


def test_suspend_launches_nothing_and_says_suspended() -> None:
    decision = run(loop_state(spec_dict(suspend=True)), healthy_dependencies(retrain_request="r1"))
    assert decision.actions == ()
    assert condition(decision, "Retraining")[:2] == ("False", "Suspended")
    assert decision.status.phase == "Suspended"
    assert decision.status.handled_retrain_request is None


def test_suspended_loops_are_not_evaluated() -> None:
    observation_plan = plan(loop_state(spec_dict(suspend=True)), POLICY, T0)
    assert observation_plan.queries is None


def test_schedule_fires_once_per_slot() -> None:
    spec = spec_dict(**{"retrain.schedule": "0 3 * * *"})
    loop = loop_state(spec, created=T0 - timedelta(days=2))
    at = T0.replace(hour=3, minute=0, second=5)
    decision = run(loop, healthy_dependencies(), at=at)
    assert created_jobs(decision)[0]["metadata"]["labels"][LABEL_TRIGGER] == "Schedule"
    assert decision.status.last_schedule_time == at.replace(second=0)

    done = decision.status.model_copy(update={"active_retrain": None})
    later = run(
        loop_state(spec, done, created=T0 - timedelta(days=2)),
        healthy_dependencies(),
        at=at + timedelta(hours=2),
    )
    assert later.actions == ()


def test_preflight_failures_block_launches_and_name_the_dependency() -> None:
    observed = healthy_dependencies(
        retrain_request="r1",
        prometheus=Probe(ok=False, message="connection refused"),
        target=TargetObservation(deployment_found=False, container_found=False),
    )
    decision = run(loop_state(), observed)
    status, reason, message = condition(decision, "Ready")
    assert (status, reason) == ("False", "PrometheusUnreachable")
    assert "connection refused" in message and "Deployment churn-server not found" in message
    assert decision.actions == ()
    assert condition(decision, "Retraining")[:2] == ("False", "Blocked")


def test_a_missing_bucket_is_its_own_reason_and_names_the_bucket() -> None:
    observed = healthy_dependencies(
        retrain_request="r1", artifact_store=Probe(ok=False, message="bucket does not exist", not_found=True)
    )
    decision = run(loop_state(), observed)
    assert condition(decision, "Ready") == (
        "False", "ArtifactBucketNotFound", "artifact store: bucket models does not exist",
    )  # fmt: skip
    assert decision.actions == ()
    unreachable = healthy_dependencies(artifact_store=Probe(ok=False, message="connection refused"))
    assert condition(run(loop_state(), unreachable), "Ready") == (
        "False", "ArtifactStoreUnreachable", "artifact store: connection refused",
    )  # fmt: skip


def test_refused_credentials_are_not_ready_with_access_denied_and_block_launches() -> None:
    probe = Probe(ok=False, message="access denied (403) to bucket models", access_denied=True)
    decision = run(loop_state(), healthy_dependencies(retrain_request="r1", artifact_store=probe))
    assert condition(decision, "Ready") == (
        "False",
        "AccessDenied",
        "artifact store, with the operator's credentials: access denied (403) to bucket models",
    )
    assert decision.actions == ()
    assert condition(decision, "Retraining")[:2] == ("False", "Blocked")


def test_missing_container_is_its_own_reason() -> None:
    observed = healthy_dependencies(
        target=TargetObservation(deployment_found=True, container_found=False, containers=("web", "proxy"))
    )
    status, reason, message = condition(run(loop_state(), observed), "Ready")
    assert (status, reason) == ("False", "ContainerNotFound")
    assert "has: web, proxy" in message


@pytest.mark.parametrize(
    ("spec", "policy", "fragment"),
    [
        (spec_dict(**{"retrain.schedule": "every day"}), POLICY, "spec.retrain.schedule"),
        (spec_dict(**{"retrain.image": "evil/image:latest"}), POLICY, "spec.retrain.image"),
        (spec_dict(), OperatorPolicy(trainer_images=()), "no trainer image"),
        (
            spec_dict(
                **{"monitoring.metrics": [{"name": "a", "query": "up{job={{job}}}", "threshold": {"min": 1}}]}
            ),
            POLICY,
            "unknown placeholder {{job}}",
        ),
        (spec_dict(**{"monitoring.interval": "5s"}), POLICY, "spec.monitoring.interval"),
    ],
)
def test_runtime_spec_errors_become_invalid_spec(
    spec: dict[str, Any], policy: OperatorPolicy, fragment: str
) -> None:
    decision = run(loop_state(spec), healthy_dependencies(retrain_request="r1"), policy=policy)
    status, reason, message = condition(decision, "Ready")
    assert (status, reason) == ("False", "InvalidSpec")
    assert fragment in message
    assert decision.actions == ()
    assert decision.status.phase == "Invalid"


def test_nothing_changed_means_no_events_and_identical_status() -> None:
    first = run(loop_state(), healthy_dependencies(metrics=(accuracy(0.93),)))
    second = run(loop_state(status=first.status), Observations(), at=T0 + timedelta(seconds=5))
    assert second.events == ()
    assert second.status == first.status


def test_transition_time_moves_only_when_status_flips() -> None:
    healthy = run(loop_state(), healthy_dependencies(metrics=(accuracy(0.93),)))
    still = run(
        loop_state(status=healthy.status),
        healthy_dependencies(metrics=(accuracy(0.95),)),
        at=T0 + timedelta(minutes=1),
    )
    broken = run(
        loop_state(status=still.status),
        healthy_dependencies(metrics=(accuracy(0.5),)),
        at=T0 + timedelta(minutes=2),
    )
    times = [d.status.condition(ConditionType.HEALTHY) for d in (healthy, still, broken)]
    assert times[0] is not None and times[1] is not None and times[2] is not None
    assert times[0].last_transition_time == times[1].last_transition_time == T0
    assert times[2].last_transition_time == T0 + timedelta(minutes=2)
    assert [e.reason for e in broken.events] == ["ThresholdBreached"]
    assert broken.events[0].type == "Warning"


def test_evaluation_is_due_on_interval_and_on_spec_change() -> None:
    evaluated = run(loop_state(), healthy_dependencies(metrics=(accuracy(0.93),)))
    assert plan(loop_state(status=evaluated.status), POLICY, T0 + timedelta(seconds=30)).queries is None
    due = plan(loop_state(status=evaluated.status), POLICY, T0 + timedelta(seconds=60)).queries
    assert due is not None and due[0].query.count('model="churn"') == 2
    assert plan(loop_state(status=evaluated.status, generation=2), POLICY, T0 + timedelta(seconds=1)).queries


def test_job_uses_the_allowed_image_chosen_by_spec() -> None:
    policy = dataclasses.replace(POLICY, trainer_images=(IMAGE, "registry.example/custom:2"))
    spec = spec_dict(**{"retrain.image": "registry.example/custom:2"})
    decision = run(loop_state(spec), healthy_dependencies(retrain_request="r1"), policy=policy)
    assert created_jobs(decision)[0]["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example/custom:2"
    )


def test_a_version_scoped_query_before_any_version_is_known_matches_nothing() -> None:
    scoped = "sum(fbl_feedback_total{model={{model}},model_version={{model_version}}})"
    loop = loop_state(
        spec_dict(**{"monitoring.metrics": [{"name": "a", "query": scoped, "threshold": {"min": 1}}]})
    )
    assert runtime_spec_errors(loop, POLICY) == []
    [query] = render_queries(loop)
    assert query.query == 'sum(fbl_feedback_total{model="churn",model_version="none"})'
