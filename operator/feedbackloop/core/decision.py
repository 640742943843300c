"""What `decide` returns: the next status, the actions to take, the Events to post, and the transitions that
happened, which the reconciler counts in the operator's metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from feedbackloop.api import (
    EventType,
    GateVerdict,
    MetricVerdict,
    Outcome,
    Reason,
    RolloutKind,
    Trigger,
)
from feedbackloop.core.status import FeedbackLoopStatus, ModelRef


@dataclass(frozen=True)
class CreateJob:
    manifest: dict[str, Any]


@dataclass(frozen=True)
class StagedCandidate:
    """A Shadow or Split stage's candidate, served beside the champion (CANDIDATE_* env, docs/serving.md)."""

    model: ModelRef
    mode: str  # shadow or split
    weight: float | None = None  # split only
    request_key: str | None = None  # split only


@dataclass(frozen=True)
class ApplyModel:
    """Server-side apply of the model env and version annotation; model None releases our fields. Every apply
    names all our fields, so one without a candidate removes the CANDIDATE_* env a stage had added."""

    namespace: str
    deployment: str
    container: str
    model: ModelRef | None
    candidate: StagedCandidate | None = None


Action = CreateJob | ApplyModel


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: Reason
    message: str


# ---- transitions: each one happened exactly once, in this decision


@dataclass(frozen=True)
class MetricEvaluated:
    metric: str
    verdict: MetricVerdict
    value: float | None


@dataclass(frozen=True)
class RetrainStarted:
    trigger: Trigger


@dataclass(frozen=True)
class RetrainFinished:
    """The retrain Job's part is over: a candidate (Retrained) or none (RetrainFailed)."""

    outcome: Outcome
    reason: Reason


@dataclass(frozen=True)
class GateChecked:
    metric: str
    verdict: GateVerdict


@dataclass(frozen=True)
class RolloutStarted:
    kind: RolloutKind


@dataclass(frozen=True)
class RollbackStarted:
    reason: Reason


@dataclass(frozen=True)
class RolloutFinished:
    outcome: Outcome


@dataclass(frozen=True)
class StageFinished:
    """A Shadow or Split stage ended: Win, Lose, Inconclusive, or Aborted (by hand or a failure)."""

    strategy: str
    verdict: str


Transition = (
    MetricEvaluated
    | RetrainStarted
    | RetrainFinished
    | GateChecked
    | RolloutStarted
    | RollbackStarted
    | RolloutFinished
    | StageFinished
)


@dataclass(frozen=True)
class Decision:
    """Written in this order: the status (it names what the actions create), the actions, the Events."""

    status: FeedbackLoopStatus
    actions: tuple[Action, ...] = ()
    events: tuple[Event, ...] = ()
    transitions: tuple[Transition, ...] = ()
    # A retrain would start, but the operator-wide count is unknown: count, then decide again.
    needs_capacity: bool = False
