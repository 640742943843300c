"""The FeedbackLoop status as typed values; `to_status_dict` gives the JSON the API server stores."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import Field, ValidationError
from pydantic.dataclasses import dataclass

from feedbackloop.api import (
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
from feedbackloop.core.api_model import API_CONFIG, ApiModel

HISTORY_LIMIT = 20
REJECTED_LIMIT = 50
QUERY_TEXT_LIMIT = 4096  # a rendered query in status is for people; the CRD caps it at this length


@dataclass(frozen=True, kw_only=True, config=API_CONFIG)
class Condition:
    type: ConditionType
    status: ConditionStatus
    reason: str  # a Reason when this operator wrote it; kept as text so a newer operator's reason survives
    message: str = ""
    last_transition_time: datetime
    observed_generation: int | None = None


@dataclass(frozen=True, kw_only=True, config=API_CONFIG)
class ThresholdStatus:
    min: float | None = None
    max: float | None = None
    clear_min: float | None = None  # hysteresis bounds, only in lastEvaluation
    clear_max: float | None = None


@dataclass(frozen=True, kw_only=True, config=API_CONFIG)
class MetricEvaluation:
    name: str
    query: str | None = None  # the PromQL sent, after {{label}} substitution
    samples_query: str | None = None
    value: float | None = None
    threshold: ThresholdStatus
    samples: float | None = None
    verdict: MetricVerdict
    reason: str  # ThresholdBreached, InsufficientSamples, or the query's outcome such as Empty or SamplesNaN
    message: str = ""
    breaching_since: datetime | None = None


@dataclass(frozen=True, kw_only=True, config=API_CONFIG)
class Evaluation:
    time: datetime
    metrics: tuple[MetricEvaluation, ...] = ()


@dataclass(frozen=True, kw_only=True, config=API_CONFIG)
class ModelRef:
    version: str
    uri: str
    sha256: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    deployed_at: datetime | None = None


@dataclass(frozen=True, kw_only=True, config=API_CONFIG)
class GateResult:
    metric: str
    value: float | None = None
    threshold: str
    verdict: GateVerdict
    reason: GateReason
    message: str = ""


@dataclass(frozen=True, kw_only=True, config=API_CONFIG)
class CandidateModel:
    version: str
    job: str
    uri: str
    sha256: str
    trigger: Trigger
    metrics: dict[str, float] = Field(default_factory=dict)
    current_metrics: dict[str, float] = Field(default_factory=dict)
    comparison: dict[str, dict[str, float]] = Field(default_factory=dict)
    created_at: datetime | None = None
    validation: GateVerdict | None = None  # once the gates ran
    validated_at: datetime | None = None
    gates: tuple[GateResult, ...] = ()
    # The earlier version whose model this candidate is (retrain.reuse): it beat the fresh one on the holdout.
    reused_version: str | None = None
    # A since-breach candidate's rows: sinceBreach, or wider when that one scored better (data.widerRows).
    training_window: str | None = None


@dataclass(frozen=True, kw_only=True, config=API_CONFIG)
class ActiveRetrain:
    job: str
    version: str
    number: int
    trigger: Trigger
    reason: str = ""
    started_at: datetime
    # False until the Job is known to exist: then a missing Job means "create it", not "it was deleted".
    job_created: bool = False
    # Failed tries to create the Job, and when the next may go (a backoff); both reset once the Job exists.
    create_attempts: int = 0
    next_create_at: datetime | None = None
    # A breach trigger's start (the earliest breachingSince of the metrics that fired): the retrain's data
    # window begins there under retrain.data.sinceBreach.
    breach_since: datetime | None = None


@dataclass(frozen=True, kw_only=True, config=API_CONFIG)
class HistoryEntry:
    """One version's way through the loop: trigger → retrain → gates → rollout → analysis."""

    version: str
    trigger: Trigger
    outcome: Outcome
    reason: str = ""
    message: str = ""
    started_at: datetime | None = None
    retrained_at: datetime | None = None
    gates: GateVerdict | None = None
    validated_at: datetime | None = None
    rollout_started_at: datetime | None = None
    rolled_out_at: datetime | None = None
    analysis: MeasurementVerdict | None = None
    finished_at: datetime | None = None
    # Of a retrain whose artifacts were verified: its model's sha256 and the sha256 of the manifest the Job
    # reported and the operator checked; a later breach retrain may reuse the version on this digest alone.
    sha256: str | None = None
    manifest_sha256: str | None = None
    reused_version: str | None = None  # the earlier version whose model this one is (retrain.reuse)
    stage: str | None = None  # a Shadow or Split stage's verdict in one line, when it had one


@dataclass(frozen=True, kw_only=True, config=API_CONFIG)
class MeasuredMetric:
    """An analysis metric that was not within its threshold in one measurement."""

    name: str
    verdict: MetricVerdict
    value: float | None = None
    threshold: ThresholdStatus
    # The replaced version's value when the rollout started (rollout.previousValues), when it had one.
    previous_value: float | None = None


@dataclass(frozen=True, kw_only=True, config=API_CONFIG)
class Measurement:
    time: datetime
    verdict: MeasurementVerdict
    message: str = ""
    # Only the metrics outside their threshold (failed, or not worse than the replaced version) or without
    # data: which one, its value and its threshold.
    metrics: tuple[MeasuredMetric, ...] = ()


@dataclass(frozen=True, kw_only=True, config=API_CONFIG)
class StageState:
    """A Shadow or Split stage: the candidate beside the champion, on the same traffic and ground truth."""

    strategy: str  # Shadow or Split
    champion: str  # the champion's version
    weight: float | None = None  # Split: the candidate's share of requests
    live_since: datetime | None = None  # the Deployment became available with both models
    deadline: datetime | None = None  # live_since + maxDuration: the verdict comes then at the latest
    read_at: datetime | None = None  # when the counts below were read
    champion_labels: int = 0
    candidate_labels: int = 0
    champion_answers: int | None = None  # Split: requests each model answered
    candidate_answers: int | None = None
    champion_value: float | None = None  # the primary metric: accuracy, or rmse
    candidate_value: float | None = None
    test: str | None = None  # McNemar, TwoProportionZ, PairedT, WelchT
    p_value: float | None = None
    verdict: str | None = None  # Win, Lose or Inconclusive, once judged
    message: str = ""


@dataclass(frozen=True, kw_only=True, config=API_CONFIG)
class RolloutState:
    """A model version being rolled out to the Deployment, watched, or rolled back."""

    version: str
    uri: str
    sha256: str
    kind: RolloutKind
    phase: RolloutPhase
    previous: ModelRef | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    trigger: Trigger
    reason: str = ""
    started_at: datetime
    phase_started_at: datetime
    next_measurement_at: datetime | None = None
    measurements: tuple[Measurement, ...] = ()
    # The analysis metrics' values of the replaced version in status.lastEvaluation when the rollout started:
    # a version outside its threshold but not worse than these is kept (docs/policy.md).
    previous_values: dict[str, float] = Field(default_factory=dict)
    previous_evaluated_at: datetime | None = None
    stage: StageState | None = (
        None  # the Shadow or Split stage before this promotion, if the strategy has one
    )

    @property
    def model(self) -> ModelRef:
        return ModelRef(version=self.version, uri=self.uri, sha256=self.sha256, metrics=self.metrics)


class FeedbackLoopStatus(ApiModel):
    observed_generation: int | None = None
    phase: LoopPhase | None = None
    conditions: tuple[Condition, ...] = ()
    last_evaluation: Evaluation | None = None
    current_model: ModelRef | None = None  # what the Deployment serves, as last observed
    # What this loop rolled out, kept only while the Deployment serves something else (InSync=False).
    expected_model: ModelRef | None = None
    candidate_model: CandidateModel | None = None
    active_retrain: ActiveRetrain | None = None
    retrain_count: int = 0
    last_retrain_time: datetime | None = None
    last_schedule_time: datetime | None = None
    handled_retrain_request: str | None = None
    waiting_reason: str | None = None
    rollout: RolloutState | None = None
    recommended_version: str | None = None
    handled_promote_request: str | None = None
    handled_rollback_request: str | None = None
    handled_abort_request: str | None = None
    rejected_versions: tuple[str, ...] = ()
    history: tuple[HistoryEntry, ...] = ()

    def condition(self, kind: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)

    def condition_is(self, kind: ConditionType, status: ConditionStatus) -> bool:
        found = self.condition(kind)
        return found is not None and found.status == status


def parse_status(raw: dict[str, Any] | None) -> FeedbackLoopStatus:
    """Unknown or malformed status parts are dropped, not fatal: status is ours to rebuild."""
    try:
        return FeedbackLoopStatus.model_validate(raw or {})
    except ValidationError:
        kept: dict[str, Any] = {}
        for key, value in (raw or {}).items():
            try:
                FeedbackLoopStatus.model_validate({key: value})
            except ValidationError:
                continue
            kept[key] = value
        return FeedbackLoopStatus.model_validate(kept)


def to_status_dict(status: FeedbackLoopStatus) -> dict[str, Any]:
    finite: dict[str, Any] = _finite_only(status.model_dump(mode="json", by_alias=True, exclude_none=True))
    return finite


def _finite_only(value: Any) -> Any:
    """Without NaN and Infinity, which the API server refuses: one of them would block every status write."""
    if isinstance(value, dict):
        return {key: _finite_only(item) for key, item in value.items() if not _non_finite(item)}
    if isinstance(value, list):
        return [_finite_only(item) for item in value if not _non_finite(item)]
    return value


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def append_history(history: tuple[HistoryEntry, ...], entry: HistoryEntry) -> tuple[HistoryEntry, ...]:
    return (*history, entry)[-HISTORY_LIMIT:]


def update_history(
    history: tuple[HistoryEntry, ...], version: str, change: Callable[[HistoryEntry], HistoryEntry]
) -> tuple[HistoryEntry, ...]:
    """Change the newest entry for `version`; history records each version's whole way through the loop."""
    for index in range(len(history) - 1, -1, -1):
        if history[index].version == version:
            return (*history[:index], change(history[index]), *history[index + 1 :])
    return history
