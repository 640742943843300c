"""What the adapters saw, as plain values: the only input `decide` has besides the spec, status and `now`."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any


class QueryOutcome(enum.StrEnum):
    VALUE = "Value"
    EMPTY = "Empty"  # the query matched no series
    NAN = "NaN"  # e.g. 0/0 when no feedback arrived
    INFINITE = "Infinite"  # e.g. x/0
    MULTIPLE_SERIES = "MultipleSeries"  # the query must aggregate to one series
    ERROR = "Error"  # Prometheus answered with an error (bad query, server error, unreachable)
    TIMEOUT = "Timeout"
    CIRCUIT_OPEN = "CircuitOpen"  # not sent: the URL failed repeatedly and is cooling down
    BUDGET_EXCEEDED = "BudgetExceeded"  # not answered within the reconcile's time budget


@dataclass(frozen=True)
class QueryResult:
    outcome: QueryOutcome
    value: float | None = None
    message: str = ""

    @classmethod
    def of(cls, value: float) -> QueryResult:
        if math.isnan(value):
            return cls(QueryOutcome.NAN, message="the query returned NaN")
        if math.isinf(value):
            return cls(QueryOutcome.INFINITE, message=f"the query returned {value}")
        return cls(QueryOutcome.VALUE, value=value)

    @property
    def has_value(self) -> bool:
        return self.outcome is QueryOutcome.VALUE


@dataclass(frozen=True)
class MetricObservation:
    name: str
    query: str  # as sent, after {{label}} substitution
    result: QueryResult
    samples: QueryResult | None = None
    samples_query: str | None = None


PROBE_QUERY = "vector(1)"  # any answer with a value shows the query API works


@dataclass(frozen=True)
class Probe:
    """A reachability check: ok, or why not."""

    ok: bool
    message: str = ""
    not_found: bool = False  # the dependency answered that the probed thing (the bucket) does not exist
    access_denied: bool = False  # the dependency refused the operator's credentials: retrying will not help
    circuit_open: bool = False  # not probed: the dependency failed repeatedly and is cooling down

    @classmethod
    def of_query(cls, result: QueryResult) -> Probe:
        """A probe is a trivial query: any value means the server answers."""
        if result.has_value:
            return cls(ok=True)
        message = result.message or str(result.outcome)
        return cls(ok=False, message=message, circuit_open=result.outcome is QueryOutcome.CIRCUIT_OPEN)


@dataclass(frozen=True)
class DeployedModel:
    uri: str | None
    sha256: str | None
    version: str | None
    candidate_uri: str | None = None  # CANDIDATE_MODEL_URI: a Shadow or Split stage's candidate


@dataclass(frozen=True)
class DeploymentProgress:
    """The Deployment's rollout state, as `kubectl rollout status` reads it."""

    generation: int
    observed_generation: int
    replicas: int  # desired
    updated: int
    available: int
    total: int  # all pods, old and new
    progress_deadline_exceeded: bool = False

    @property
    def complete(self) -> bool:
        return (
            self.observed_generation >= self.generation
            and self.updated == self.replicas
            and self.available == self.replicas
            and self.total == self.replicas
        )


@dataclass(frozen=True)
class TargetObservation:
    deployment_found: bool
    container_found: bool
    containers: tuple[str, ...] = ()
    deployed: DeployedModel | None = None
    progress: DeploymentProgress | None = None


class JobState(enum.StrEnum):
    MISSING = "Missing"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    FOREIGN = "Foreign"  # a Job of that name exists, but this loop is not its controller


@dataclass(frozen=True)
class JobObservation:
    name: str
    state: JobState
    # The pod's termination message (on success, the trainer's report), or the Job's failure message.
    message: str = ""
    pods_terminating: bool = False  # pods of it are being deleted (the Job's status.terminating)


@dataclass(frozen=True)
class HeldPod:
    """A retrain pod that still carries the operator's finalizer, and the loop and Job it was made for."""

    namespace: str
    name: str
    loop: str
    loop_uid: str
    job: str


class JobCreation(enum.StrEnum):
    CREATED = "Created"
    EXISTED = "Existed"  # ours already: a repeat after a crash or a lost response
    NAME_TAKEN = "NameTaken"  # a Job of that name exists and another owner controls it


@dataclass(frozen=True)
class ListedJob:
    """A retrain-labelled Job as listed: labels are anyone's to set, so its controller decides whose it is."""

    namespace: str
    name: str
    controller_uid: str | None  # the uid of its controller ownerReference when that is a FeedbackLoop
    finished: bool


class ArtifactCheck(enum.StrEnum):
    VERIFIED = "Verified"
    MANIFEST_MISSING = "ManifestMissing"
    DIGEST_MISMATCH = "DigestMismatch"
    INVALID = "Invalid"  # present but unusable: bad JSON, missing model file, wrong schema
    UNREACHABLE = "Unreachable"  # transient: try again later
    ACCESS_DENIED = "AccessDenied"  # the store refused the reader's credentials: not transient


@dataclass(frozen=True)
class ArtifactObservation:
    check: ArtifactCheck
    message: str = ""
    uri: str = ""
    model_sha256: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    manifest_sha256: str = ""  # of the manifest.json bytes read, to compare with what the trainer reported


@dataclass(frozen=True)
class RetrainCapacity:
    """Operator-wide cap on concurrent retrain Jobs."""

    running: int
    limit: int

    @property
    def available(self) -> bool:
        return self.running < self.limit


@dataclass(frozen=True)
class Observations:
    metrics: tuple[MetricObservation, ...] | None = None  # None: no evaluation was due
    prometheus: Probe | None = None
    artifact_store: Probe | None = None
    target: TargetObservation | None = None
    job: JobObservation | None = None
    artifacts: ArtifactObservation | None = None
    # None: not counted yet. Counting lists Jobs, so it happens only when a launch is actually wanted.
    capacity: RetrainCapacity | None = None
    retrain_request: str | None = None  # the value of the retrain-requested annotation
    promote_request: str | None = None  # feedbackloop.dev/promote
    rollback_request: str | None = None  # feedbackloop.dev/rollback-to
    abort_request: str | None = None  # feedbackloop.dev/abort
    request_token: str | None = None  # feedbackloop.dev/requested-at: makes the same value a new request
    rollback_artifacts: ArtifactObservation | None = None  # the verified manifest of the rollback-to version
    # A Shadow or Split stage's counts by name (core.stage); None: no read was due.
    stage: tuple[tuple[str, QueryResult], ...] | None = None
