"""Builders of FeedbackLoop inputs for core unit tests: plain values, no mocks."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from feedbackloop.api import GateVerdict, Outcome, RolloutKind, RolloutPhase, Trigger
from feedbackloop.core.decision import CreateJob, Decision
from feedbackloop.core.loop import LoopRef, LoopState, OperatorPolicy
from feedbackloop.core.observations import (
    DeployedModel,
    DeploymentProgress,
    MetricObservation,
    Observations,
    Probe,
    QueryResult,
    RetrainCapacity,
    TargetObservation,
)
from feedbackloop.core.spec import SpecError, parse_spec
from feedbackloop.core.status import CandidateModel, FeedbackLoopStatus, HistoryEntry, ModelRef, RolloutState

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
IMAGE = "registry.example/feedbackloop-trainer:0.1.0"
POLICY = OperatorPolicy(
    trainer_images=(IMAGE,),
    s3_endpoint_url="http://s3.local:7070",
    s3_region="us-east-1",
    prometheus_urls=("http://prometheus:9090",),
    artifact_buckets=("models",),
)
REF = LoopRef(name="churn", namespace="ml", uid="0f0e0d0c-uid")

BASE_SPEC: dict[str, Any] = {
    "mode": "Auto",
    "target": {"deployment": "churn-server", "container": "server"},
    "prometheus": {"url": "http://prometheus:9090", "timeout": "5s"},
    "monitoring": {
        "interval": "60s",
        "noData": "Hold",
        "labels": {"model": "churn"},
        "metrics": [
            {
                "name": "accuracy",
                "query": "sum(rate(fbl_feedback_correct_total{model={{model}}}[5m]))"
                " / sum(rate(fbl_feedback_total{model={{model}}}[5m]))",
                "samplesQuery": "sum(increase(fbl_feedback_total{model={{model}}}[5m]))",
                "minSamples": 100,
                "threshold": {"min": 0.85},
                "for": "10m",
                "action": "Retrain",
            }
        ],
    },
    "retrain": {
        "cooldown": "1h",
        "trainer": {"label": "churned"},
        "data": {"training": "s3://data/churn/train/", "feedback": "s3://data/churn/feedback/"},
    },
    "artifacts": {"bucket": "models", "prefix": "churn/", "credentialsSecret": "feedbackloop-s3-credentials"},
}


def spec_dict(**changes: Any) -> dict[str, Any]:
    """BASE_SPEC with dotted-path changes, e.g. spec_dict(**{"retrain.cooldown": "0s"})."""
    spec = copy.deepcopy(BASE_SPEC)
    for path, value in changes.items():
        node = spec
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return spec


def loop_state(
    spec: dict[str, Any] | None = None,
    status: FeedbackLoopStatus | None = None,
    generation: int = 1,
    created: datetime = T0 - timedelta(days=1),
) -> LoopState:
    raw = spec if spec is not None else spec_dict()
    try:
        parsed, error = parse_spec(raw), None
    except SpecError as err:
        parsed, error = None, str(err)
    return LoopState(
        ref=REF,
        generation=generation,
        created=created,
        spec=parsed,
        spec_error=error,
        status=status or FeedbackLoopStatus(),
    )


def accuracy(value: float | None, samples: float | None = 500.0) -> MetricObservation:
    result = QueryResult.of(value) if value is not None else QueryResult.of(float("nan"))
    samples_result = QueryResult.of(samples) if samples is not None else None
    samples_query = "sq" if samples is not None else None
    return MetricObservation("accuracy", "q", result, samples_result, samples_query)


def healthy_dependencies(**changes: Any) -> Observations:
    base = Observations(
        capacity=RetrainCapacity(running=0, limit=2),
        prometheus=Probe(ok=True),
        artifact_store=Probe(ok=True),
        target=TargetObservation(deployment_found=True, container_found=True, containers=("server",)),
    )
    return Observations(**{**base.__dict__, **changes})


def rolling_deployment(
    uri: str | None, complete: bool, deadline_exceeded: bool = False, **changes: Any
) -> Observations:
    """A two-replica Deployment serving `uri`, mid-rollout unless complete."""
    progress = DeploymentProgress(
        generation=2,
        observed_generation=2,
        replicas=2,
        updated=2 if complete else 1,
        available=2 if complete else 1,
        total=2 if complete else 3,
        progress_deadline_exceeded=deadline_exceeded,
    )
    target = TargetObservation(True, True, ("server",), DeployedModel(uri, None, None), progress)
    return healthy_dependencies(target=target, **changes)


V1 = ModelRef(version="v1", uri="s3://models/churn/ml/churn/v1/", sha256="1" * 64, metrics={"accuracy": 0.8})
V2_URI = "s3://models/churn/ml/churn/v2/"
# v2 trained on a breach and passed its gates: the candidate of a rollout or a recommendation.
PASSED_V2 = CandidateModel(
    version="v2",
    job="churn-retrain-2",
    uri=V2_URI,
    sha256="2" * 64,
    trigger=Trigger.BREACH,
    validation=GateVerdict.PASSED,
)


def rolling_status(
    phase: RolloutPhase = RolloutPhase.PROGRESSING, previous: ModelRef | None = V1, **changes: Any
) -> FeedbackLoopStatus:
    """Mid-promotion of v2 over `previous`, as decide() leaves a loop after its gates passed."""
    rollout = RolloutState(
        version="v2",
        uri=V2_URI,
        sha256="2" * 64,
        kind=changes.pop("kind", RolloutKind.PROMOTION),
        phase=phase,
        previous=previous,
        metrics={"accuracy": 0.9},
        trigger=Trigger.BREACH,
        started_at=T0,
        phase_started_at=T0,
        next_measurement_at=changes.pop("next_measurement_at", None),
        measurements=changes.pop("measurements", ()),
    )
    history = (
        HistoryEntry(version="v2", trigger=Trigger.BREACH, outcome=Outcome.ROLLING_OUT, started_at=T0),
    )
    return FeedbackLoopStatus(
        current_model=previous,
        rollout=rollout,
        candidate_model=PASSED_V2,
        retrain_count=2,
        history=history,
        **changes,
    )


def created_jobs(decision: Decision) -> list[dict[str, Any]]:
    """The Job manifests a decision creates."""
    return [action.manifest for action in decision.actions if isinstance(action, CreateJob)]
