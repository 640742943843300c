"""The FeedbackLoop status as typed values; `to_status_dict` gives the JSON the API server stores."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from pydantic import Field, ValidationError

from feedbackloop.core.api_model import ApiModel

HISTORY_LIMIT = 20


class ConditionType(enum.StrEnum):
    READY = "Ready"
    HEALTHY = "Healthy"
    RETRAINING = "Retraining"
    VALIDATED = "Validated"
    ROLLED_OUT = "RolledOut"
    DEGRADED = "Degraded"


class Verdict(enum.StrEnum):
    HEALTHY = "Healthy"
    BREACHING = "Breaching"  # outside the threshold, not yet for `for`
    BREACHED = "Breached"  # outside the threshold for at least `for`
    NO_DATA = "NoData"
    INSUFFICIENT_SAMPLES = "InsufficientSamples"


class Condition(ApiModel):
    type: str
    status: str
    reason: str
    message: str = ""
    last_transition_time: datetime
    observed_generation: int | None = None


class ThresholdStatus(ApiModel):
    min: float | None = None
    max: float | None = None


class MetricEvaluation(ApiModel):
    name: str
    value: float | None = None
    threshold: ThresholdStatus
    samples: float | None = None
    verdict: Verdict
    reason: str
    message: str = ""
    breaching_since: datetime | None = None


class Evaluation(ApiModel):
    time: datetime
    metrics: tuple[MetricEvaluation, ...] = ()


class ModelRef(ApiModel):
    version: str
    uri: str
    sha256: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    deployed_at: datetime | None = None


class GateResult(ApiModel):
    metric: str
    value: float | None = None
    threshold: str
    verdict: str
    reason: str = ""
    message: str = ""


class CandidateModel(ApiModel):
    version: str
    job: str
    uri: str
    sha256: str
    trigger: str
    metrics: dict[str, float] = Field(default_factory=dict)
    current_metrics: dict[str, float] = Field(default_factory=dict)
    comparison: dict[str, dict[str, float]] = Field(default_factory=dict)
    created_at: datetime | None = None
    validation: str | None = None  # Passed | Failed, once the gates ran
    validated_at: datetime | None = None
    gates: tuple[GateResult, ...] = ()


class ActiveRetrain(ApiModel):
    job: str
    version: str
    number: int
    trigger: str
    reason: str = ""
    started_at: datetime
    # False until the Job is known to exist: then a missing Job means "create it", not "it was deleted".
    job_created: bool = False


class HistoryEntry(ApiModel):
    """One version's way through the loop: trigger → retrain → gates → rollout → analysis."""

    version: str
    trigger: str
    outcome: str
    reason: str = ""
    message: str = ""
    started_at: datetime | None = None
    retrained_at: datetime | None = None
    gates: str | None = None
    validated_at: datetime | None = None
    rollout_started_at: datetime | None = None
    rolled_out_at: datetime | None = None
    analysis: str | None = None
    finished_at: datetime | None = None


class Measurement(ApiModel):
    time: datetime
    verdict: str  # Successful | Failed | Inconclusive
    message: str = ""


class RolloutState(ApiModel):
    """A model version being rolled out to the Deployment, watched, or rolled back."""

    version: str
    uri: str
    sha256: str
    kind: str  # Promotion | Rollback (a manual rollback-to)
    phase: str  # Progressing | Analyzing | RollingBack
    previous: ModelRef | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    trigger: str = ""
    reason: str = ""
    started_at: datetime
    phase_started_at: datetime
    next_measurement_at: datetime | None = None
    measurements: tuple[Measurement, ...] = ()


class FeedbackLoopStatus(ApiModel):
    observed_generation: int | None = None
    phase: str | None = None
    conditions: tuple[Condition, ...] = ()
    last_evaluation: Evaluation | None = None
    current_model: ModelRef | None = None
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
    rejected_versions: tuple[str, ...] = ()
    history: tuple[HistoryEntry, ...] = ()

    def condition(self, kind: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)


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
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def append_history(history: tuple[HistoryEntry, ...], entry: HistoryEntry) -> tuple[HistoryEntry, ...]:
    return (*history, entry)[-HISTORY_LIMIT:]


def update_history(
    history: tuple[HistoryEntry, ...], version: str, **changes: Any
) -> tuple[HistoryEntry, ...]:
    """Update the newest entry for `version`; history records each version's whole way through the loop."""
    for index in range(len(history) - 1, -1, -1):
        if history[index].version == version:
            updated = history[index].model_copy(update=changes)
            return (*history[:index], updated, *history[index + 1 :])
    return history
