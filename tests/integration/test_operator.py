"""The operator process against the real API server, Prometheus and S3: monitoring, triggers, guards,
retrain Jobs and their outcomes."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

import harness
from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.api import (
    LABEL_TRIGGER,
    RETRAIN_REQUEST_ANNOTATION,
    ConditionStatus,
    ConditionType,
    GateReason,
    GateVerdict,
    LoopPhase,
    MeasurementVerdict,
    MetricVerdict,
    Outcome,
    RolloutKind,
    RolloutPhase,
    Trigger,
)
from feedbackloop.core.status import (
    ActiveRetrain,
    CandidateModel,
    Condition,
    Evaluation,
    FeedbackLoopStatus,
    GateResult,
    HistoryEntry,
    MeasuredMetric,
    Measurement,
    MetricEvaluation,
    ModelRef,
    RolloutState,
    ThresholdStatus,
    parse_status,
    to_status_dict,
)
from harness import wait_until
from loop_scenario import (
    CREDENTIALS_SECRET,
    LOOP,
    WAIT,
    Scenario,
    loop_spec,
    trainer_report,
    write_candidate,
)
from operator_process import TRAINER_IMAGE, ModelExporter, OperatorProcess

# ---------------------------------------------------------------- tests


def test_healthy_model_is_reported_in_status_and_operator_metrics(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess]
) -> None:
    operator = start_operator()
    scenario.apply_loop(loop_spec(scenario.model))

    healthy = scenario.wait_condition("Healthy", "True", "WithinThresholds")
    assert healthy["observedGeneration"] == 1
    status = scenario.loop()["status"]
    assert scenario.condition("Ready")["status"] == "True"
    assert {c["type"] for c in status["conditions"]} == {
        "Ready", "Healthy", "Retraining", "Validated", "RolledOut", "Degraded", "InSync",
    }  # fmt: skip
    metric = status["lastEvaluation"]["metrics"][0]
    assert (metric["name"], metric["value"], metric["samples"], metric["verdict"]) == (
        "accuracy", 0.95, 1000, "Healthy",
    )  # fmt: skip
    assert metric["threshold"] == {"min": 0.85}
    assert status["currentModel"]["version"] == "v1"
    assert status["phase"] == "Monitoring"
    assert scenario.job_names() == []

    body = urllib.request.urlopen(operator.metrics_url, timeout=5).read().decode()  # noqa: S310 - loopback
    expected = (
        f'feedbackloop_metric_value{{loop="{LOOP}",metric="accuracy",namespace="{scenario.namespace}"}} 0.95'
    )
    assert expected in body


def test_no_status_write_between_evaluations(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator()
    scenario.apply_loop(loop_spec(scenario.model, **{"monitoring.interval": "60s"}))
    scenario.wait_condition("Healthy", "True")
    before = scenario.loop()["metadata"]["resourceVersion"]
    time.sleep(5)  # five ticks, none with an evaluation due
    assert scenario.loop()["metadata"]["resourceVersion"] == before


def test_sustained_breach_launches_exactly_one_job_with_the_expected_spec(
    scenario: Scenario,
    start_operator: Callable[..., OperatorProcess],
    exporter: ModelExporter,
    store: ArtifactStore,
) -> None:
    candidate_uri = write_candidate(store, scenario.namespace, "v2")
    start_operator()
    scenario.apply_loop(
        loop_spec(scenario.model, **{"retrain.podAnnotations": trainer_report(store, candidate_uri)})
    )
    scenario.wait_condition("Healthy", "True")

    breach_started = time.monotonic()
    exporter.set(scenario.model, accuracy=0.62)
    scenario.wait_condition("Healthy", "False", "ThresholdBreached")
    assert scenario.job_names() == []  # breaching, but not yet for 15s
    scenario.wait_jobs([f"{LOOP}-retrain-2"])
    assert time.monotonic() - breach_started >= 15

    job = scenario.jobs()[0]
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("FeedbackLoop", LOOP, True)
    assert owner["uid"] == scenario.loop()["metadata"]["uid"]
    assert job["metadata"]["labels"][LABEL_TRIGGER] == "Breach"
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["image"] == TRAINER_IMAGE
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    env = {e["name"]: e for e in container["env"]}
    assert env["FBL_VERSION"]["value"] == "v2"
    assert env["FBL_ARTIFACT_URI"]["value"] == candidate_uri
    assert env["FBL_CURRENT_MODEL_VERSION"]["value"] == "v1"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": CREDENTIALS_SECRET, "key": "AWS_SECRET_ACCESS_KEY",
    }  # fmt: skip
    assert job["spec"]["backoffLimit"] == 1
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400

    # kwok completes the pod; the artifacts were written beforehand, so the candidate is verified.
    status = wait_until(lambda: scenario.loop()["status"], lambda s: "candidateModel" in s, timeout=WAIT)
    candidate = status["candidateModel"]
    assert (candidate["version"], candidate["job"], candidate["uri"]) == (
        "v2",
        f"{LOOP}-retrain-2",
        candidate_uri,
    )
    assert candidate["metrics"] == {"accuracy": 0.93}
    assert candidate["sha256"] == store.read_manifest(candidate_uri, "v2").file("model.joblib").sha256  # type: ignore[union-attr]
    assert status["retrainCount"] == 2
    retrained = next(entry for entry in status["history"] if entry["version"] == "v2")
    assert retrained["reason"] == "RetrainSucceeded"
    assert "retrainedAt" in retrained
    assert scenario.condition("Validated")["reason"] == "GatesPassed"  # no gates configured

    # The breach goes on, but v2 is rolling out now: no other retrain starts meanwhile.
    rollout = wait_until(lambda: scenario.loop()["status"].get("rollout"), bool, timeout=WAIT)
    assert rollout["version"] == "v2"
    time.sleep(3)
    assert scenario.job_names() == [f"{LOOP}-retrain-2"]
    reasons = {event["reason"] for event in scenario.events()}
    assert {"RetrainStarted", "RetrainSucceeded", "ThresholdBreached"} <= reasons


def test_crash_between_counter_write_and_job_create_still_gives_one_job(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess]
) -> None:
    crashing = start_operator(FBL_FAILPOINT="crash-before-job-create")
    scenario.apply_loop(loop_spec(scenario.model), annotations={RETRAIN_REQUEST_ANNOTATION: "crash-1"})
    assert crashing.wait_exit(timeout=WAIT) == 137

    status = scenario.loop()["status"]
    assert status["retrainCount"] == 2
    assert status["activeRetrain"]["job"] == f"{LOOP}-retrain-2"
    assert status["handledRetrainRequest"] == "crash-1"
    assert scenario.job_names() == []  # the crash came before the create

    start_operator()
    scenario.wait_jobs([f"{LOOP}-retrain-2"])
    time.sleep(3)  # more ticks: still exactly one Job, and the counter did not move
    assert scenario.job_names() == [f"{LOOP}-retrain-2"]
    assert scenario.loop()["status"]["retrainCount"] == 2


def test_manual_request_is_handled_once_and_a_missing_manifest_is_a_failure(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator()
    scenario.apply_loop(loop_spec(scenario.model))
    scenario.wait_condition("Healthy", "True")
    scenario.annotate_retrain("ticket-1")
    scenario.wait_jobs([f"{LOOP}-retrain-2"])

    failed = scenario.wait_condition("Retraining", "False", "ManifestMissing")
    assert "manifest.json is missing" in failed["message"]
    status = scenario.loop()["status"]
    assert status["handledRetrainRequest"] == "ticket-1"
    assert "candidateModel" not in status
    assert status["history"][-1]["reason"] == "ManifestMissing"

    scenario.annotate_retrain("ticket-1")  # the same id again: nothing new
    time.sleep(3)
    assert scenario.job_names() == [f"{LOOP}-retrain-2"]

    scenario.annotate_retrain("ticket-2")  # a new id, inside the cooldown: manual requests are not held
    scenario.wait_jobs([f"{LOOP}-retrain-2", f"{LOOP}-retrain-3"])


def test_failed_job_puts_the_termination_message_in_the_condition(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator()
    annotations = {
        harness.KWOK_OUTCOME_ANNOTATION: "fail",
        harness.KWOK_MESSAGE_ANNOTATION: "label column 'churned' not found in training data",
    }
    spec = loop_spec(scenario.model, **{"retrain.podAnnotations": annotations, "retrain.backoffLimit": 0})
    scenario.apply_loop(spec, annotations={RETRAIN_REQUEST_ANNOTATION: "r1"})

    failed = scenario.wait_condition("Retraining", "False", "RetrainJobFailed")
    assert "label column 'churned' not found in training data" in failed["message"]
    assert "exit code 1" in failed["message"]
    assert scenario.loop()["status"]["history"][-1]["outcome"] == "RetrainFailed"
    warnings = [e for e in scenario.events() if e["reason"] == "RetrainJobFailed"]
    assert warnings
    assert warnings[0]["type"] == "Warning"


def test_observe_mode_reports_but_never_launches(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess], exporter: ModelExporter
) -> None:
    exporter.set(scenario.model, accuracy=0.5)
    start_operator()
    spec = loop_spec(scenario.model, mode="Observe")
    spec["monitoring"]["metrics"][0]["for"] = "0s"
    scenario.apply_loop(spec, annotations={RETRAIN_REQUEST_ANNOTATION: "r1"})

    # The first evaluation may precede Prometheus's first scrape of this series: wait for the breach itself.
    scenario.wait_condition("Healthy", "False", "ThresholdBreached")
    waiting = scenario.wait_condition("Retraining", "False", "ObserveOnly")
    assert "would retrain" in waiting["message"]
    time.sleep(3)
    assert scenario.job_names() == []


def test_suspend_launches_nothing_until_resumed(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator()
    scenario.apply_loop(
        loop_spec(scenario.model, suspend=True), annotations={RETRAIN_REQUEST_ANNOTATION: "r1"}
    )
    scenario.wait_condition("Retraining", "False", "Suspended")
    assert scenario.loop()["status"]["phase"] == "Suspended"
    time.sleep(3)
    assert scenario.job_names() == []

    scenario.kubectl("patch", "fbl", LOOP, "--type=merge", "-p", '{"spec": {"suspend": false}}')
    scenario.wait_jobs([f"{LOOP}-retrain-2"])  # the request waited; it was not dropped


def test_schedule_launches_a_retrain(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator()
    scenario.apply_loop(loop_spec(scenario.model, suspend=True, **{"retrain.schedule": "* * * * *"}))
    scenario.wait_condition("Retraining", "False", "Suspended")
    # As if the last fire was handled long ago, so one is due now rather than at the next minute.
    long_ago = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    scenario.kubectl(
        "patch", "fbl", LOOP, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"lastScheduleTime": long_ago}}),
    )  # fmt: skip
    scenario.kubectl("patch", "fbl", LOOP, "--type=merge", "-p", '{"spec": {"suspend": false}}')

    scenario.wait_jobs([f"{LOOP}-retrain-2"])
    job = scenario.jobs()[0]
    assert job["metadata"]["labels"][LABEL_TRIGGER] == "Schedule"
    assert scenario.loop()["status"]["lastScheduleTime"] > long_ago


def test_operator_wide_cap_queues_the_second_loop_and_says_why(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator(FBL_MAX_CONCURRENT_RETRAINS="1")
    # kwok keeps this Job's pod running: any outcome other than "fail" is neither completed nor failed.
    holding = loop_spec(
        scenario.model, **{"retrain.podAnnotations": {harness.KWOK_OUTCOME_ANNOTATION: "hold"}}
    )
    scenario.apply_loop(holding, annotations={RETRAIN_REQUEST_ANNOTATION: "a"})
    scenario.wait_jobs([f"{LOOP}-retrain-2"])

    scenario.apply_loop(
        loop_spec(scenario.model), name="second", annotations={RETRAIN_REQUEST_ANNOTATION: "b"}
    )
    queued = scenario.wait_condition("Retraining", "False", "Queued", name="second")
    assert "1/1 running" in queued["message"]
    assert scenario.loop("second")["status"]["waitingReason"].startswith("waiting for a retrain slot")

    scenario.kubectl("delete", "job", f"{LOOP}-retrain-2", "--wait=false")
    scenario.wait_condition("Retraining", "True", name="second")
    assert "second-retrain-2" in scenario.job_names()
    # The deleted Job is not recreated: its loop records that it went missing.
    missing = scenario.wait_condition("Retraining", "False", "RetrainJobMissing")
    assert "deleted before it finished" in missing["message"]


def ready_series(operator: OperatorProcess, namespace: str) -> dict[str, float]:
    """reason -> value of the loop's feedbackloop_loop_ready series on the operator's /metrics."""
    body = urllib.request.urlopen(operator.metrics_url, timeout=5).read().decode()  # noqa: S310 - loopback
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == "feedbackloop_loop_ready"
        and (sample.labels["namespace"], sample.labels["loop"]) == (namespace, LOOP)
    }


def test_preflight_failures_become_ready_conditions(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess]
) -> None:
    closed_port = f"http://127.0.0.1:{harness.free_port()}"
    operator = start_operator(FBL_PROMETHEUS_URLS=f"{scenario.endpoints.prometheus_url},{closed_port}")
    spec = loop_spec(scenario.model, **{"target.deployment": "no-such-server"})
    spec["prometheus"]["url"] = closed_port
    scenario.apply_loop(spec)

    ready = scenario.wait_condition("Ready", "False", "PrometheusUnreachable")
    assert "Deployment no-such-server not found" in ready["message"]
    healthy = scenario.wait_condition("Healthy", "Unknown", "NoData")
    assert "unreachable" in healthy["message"]
    assert ready_series(operator, scenario.namespace) == {"PrometheusUnreachable": 0.0}

    # Fixed, the loop turns Ready: its one readiness series follows, the old reason's is gone.
    scenario.apply_loop(loop_spec(scenario.model))
    scenario.wait_condition("Ready", "True", "Ready")
    now_ready = wait_until(lambda: ready_series(operator, scenario.namespace), lambda s: "Ready" in s, 10)
    assert now_ready == {"Ready": 1.0}

    scenario.kubectl("delete", "fbl", LOOP, "--timeout=30s")
    assert wait_until(lambda: ready_series(operator, scenario.namespace), lambda s: not s, 10) == {}


def test_a_loop_naming_a_missing_bucket_is_not_ready_with_its_own_reason(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator(FBL_ARTIFACT_BUCKETS="no-such-bucket-here")
    scenario.apply_loop(loop_spec(scenario.model, **{"artifacts.bucket": "no-such-bucket-here"}))

    ready = scenario.wait_condition("Ready", "False", "ArtifactBucketNotFound")
    assert ready["message"] == "artifact store: bucket no-such-bucket-here does not exist"


def test_operator_stops_cleanly_on_sigterm(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess]
) -> None:
    operator = start_operator()
    scenario.apply_loop(loop_spec(scenario.model))
    scenario.wait_condition("Healthy", "True")
    operator.stop(signal.SIGTERM)
    assert operator.popen is not None
    assert operator.popen.returncode == 0


def test_every_status_field_the_operator_writes_survives_the_crd_schema(scenario: Scenario, crd: Any) -> None:
    """A field the CRD does not declare is pruned silently, and the operator would rewrite it forever."""
    at = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    threshold = ThresholdStatus(min=0.85, max=0.99)
    status = FeedbackLoopStatus(
        observed_generation=3,
        phase=LoopPhase.RETRAINING,
        conditions=(
            Condition(
                type=ConditionType.READY,
                status=ConditionStatus.TRUE,
                reason="Ready",
                message="ok",
                last_transition_time=at,
                observed_generation=3,
            ),
        ),
        last_evaluation=Evaluation(
            time=at,
            metrics=(
                MetricEvaluation(
                    name="accuracy",
                    query='sum(rate(fbl_feedback_correct_total{model="churn"}[5m]))',
                    samples_query='sum(increase(fbl_feedback_total{model="churn"}[5m]))',
                    value=0.7,
                    threshold=threshold,
                    samples=500,
                    verdict=MetricVerdict.BREACHING,
                    reason="ThresholdBreached",
                    message="0.7 < min 0.85",
                    breaching_since=at,
                ),
            ),
        ),
        current_model=ModelRef(
            version="v1", uri="s3://m/v1/", sha256="a" * 64, metrics={"accuracy": 0.8}, deployed_at=at
        ),
        candidate_model=CandidateModel(
            version="v2",
            job="churn-retrain-2",
            uri="s3://m/v2/",
            sha256="b" * 64,
            trigger=Trigger.BREACH,
            metrics={"accuracy": 0.9},
            current_metrics={"accuracy": 0.8},
            comparison={"accuracy": {"ciLow": 0.01, "ciHigh": 0.09, "mcnemarPValue": 0.02}},
            validation=GateVerdict.PASSED,
            validated_at=at,
            created_at=at,
            gates=(
                GateResult(
                    metric="accuracy",
                    value=0.9,
                    threshold="min 0.85",
                    verdict=GateVerdict.PASSED,
                    reason=GateReason.WITHIN_BOUND,
                ),
            ),
        ),
        active_retrain=ActiveRetrain(
            job="churn-retrain-3",
            version="v3",
            number=3,
            trigger=Trigger.MANUAL,
            reason="r",
            started_at=at,
            create_attempts=2,
            next_create_at=at,
        ),
        retrain_count=3,
        last_retrain_time=at,
        last_schedule_time=at,
        handled_retrain_request="ticket-9",
        handled_promote_request="v2",
        handled_rollback_request="v1",
        recommended_version="v2",
        rollout=RolloutState(
            version="v2",
            uri="s3://m/v2/",
            sha256="b" * 64,
            kind=RolloutKind.PROMOTION,
            phase=RolloutPhase.ANALYZING,
            previous=ModelRef(
                version="v1", uri="s3://m/v1/", sha256="a" * 64, metrics={"accuracy": 0.8}, deployed_at=at
            ),
            metrics={"accuracy": 0.9},
            trigger=Trigger.BREACH,
            reason="AnalysisFailed",
            started_at=at,
            phase_started_at=at,
            next_measurement_at=at,
            measurements=(
                Measurement(time=at, verdict=MeasurementVerdict.SUCCESSFUL, message="ok"),
                Measurement(
                    time=at,
                    verdict=MeasurementVerdict.FAILED,
                    message="accuracy 0.7 < min 0.85",
                    metrics=(
                        MeasuredMetric(
                            name="accuracy", verdict=MetricVerdict.BREACHING, value=0.7, threshold=threshold
                        ),
                    ),
                ),
            ),
        ),
        waiting_reason="cooldown",
        rejected_versions=("v0",),
        history=(
            HistoryEntry(
                version="v2",
                trigger=Trigger.BREACH,
                outcome=Outcome.ROLLED_OUT,
                reason="RetrainSucceeded",
                message="m",
                started_at=at,
                retrained_at=at,
                gates=GateVerdict.PASSED,
                validated_at=at,
                rollout_started_at=at,
                rolled_out_at=at,
                analysis=MeasurementVerdict.SUCCESSFUL,
                finished_at=at,
            ),
        ),
    )
    written = to_status_dict(status)
    scenario.apply_loop(loop_spec(scenario.model, suspend=True))
    scenario.kubectl(
        "patch", "fbl", LOOP, "--subresource=status", "--type=merge", "-p", json.dumps({"status": written})
    )
    stored = scenario.loop()["status"]
    assert parse_status(stored) == status
    assert stored == json.loads(json.dumps(written))
