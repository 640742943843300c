"""The working state of one decision, shared by the stages of `decide`: status updates, conditions,
actions and events, frozen into a Decision at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from feedbackloop.core.conditions import set_condition
from feedbackloop.core.status import Condition, ConditionType, FeedbackLoopStatus, ModelRef


@dataclass(frozen=True)
class CreateJob:
    manifest: dict[str, Any]


@dataclass(frozen=True)
class ApplyModel:
    """Server-side apply of the model env and version annotation; model None releases our fields."""

    namespace: str
    deployment: str
    container: str
    model: ModelRef | None


Action = CreateJob | ApplyModel


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    status: FeedbackLoopStatus
    actions: tuple[Action, ...] = ()
    events: tuple[Event, ...] = ()
    # The status names what the actions create (the retrain counter): it must be durable first.
    persist_status_first: bool = False
    # A retrain would start, but the operator-wide count is unknown: count, then decide again.
    needs_capacity: bool = False


@dataclass
class Draft:
    """Mutable working copy for one decision; frozen into a FeedbackLoopStatus at the end."""

    status: FeedbackLoopStatus
    now: datetime
    generation: int
    updates: dict[str, Any] = field(default_factory=dict)
    conditions: tuple[Condition, ...] = ()
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    persist_first: bool = False
    needs_capacity: bool = False

    def get(self, key: str) -> Any:
        return self.updates[key] if key in self.updates else getattr(self.status, key)

    def set(self, key: str, value: Any) -> None:
        self.updates[key] = value

    def condition(self, kind: ConditionType, status: str, reason: str, message: str = "") -> None:
        self.conditions = set_condition(
            self.conditions, kind, status, reason, message, self.now, self.generation
        )

    def event(self, kind: str, reason: str, message: str) -> None:
        self.events.append(Event(kind, reason, message))

    def reject(self, version: str) -> None:
        rejected = self.get("rejected_versions")
        if version not in rejected:
            self.set("rejected_versions", (*rejected, version)[-50:])
