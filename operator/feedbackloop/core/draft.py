"""The working state of one decision, shared by the lifecycle stages: a status whose every assignment is
type-checked and validated, plus the actions, Events and transitions so far. Frozen into a Decision."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ConfigDict

from feedbackloop.api import ConditionStatus, ConditionType, EventType, Reason
from feedbackloop.core.conditions import set_condition, transition_event_type
from feedbackloop.core.decision import Action, ApplyModel, CreateJob, Decision, Event, Transition
from feedbackloop.core.status import (
    REJECTED_LIMIT,
    FeedbackLoopStatus,
    HistoryEntry,
    append_history,
    update_history,
)


class WorkingStatus(FeedbackLoopStatus):
    """FeedbackLoopStatus, mutable: mypy checks each assignment's field and type, pydantic validates it."""

    model_config = ConfigDict(frozen=False, validate_assignment=True)


@dataclass
class Draft:
    before: FeedbackLoopStatus
    status: WorkingStatus
    now: datetime
    generation: int
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    needs_capacity: bool = False
    # Observe mode: whatever a stage wants to change outside the loop's status and Events is withheld.
    read_only: bool = False

    @classmethod
    def start(cls, status: FeedbackLoopStatus, now: datetime, generation: int) -> Draft:
        return cls(
            before=status, status=WorkingStatus.model_validate(dict(status)), now=now, generation=generation
        )

    def condition(
        self, kind: ConditionType, status: ConditionStatus, reason: Reason, message: str = ""
    ) -> None:
        self.status.conditions = set_condition(
            self.status.conditions, kind, status, reason, message, self.now, self.generation
        )

    def condition_is(self, kind: ConditionType, status: ConditionStatus) -> bool:
        return self.status.condition_is(kind, status)

    def event(self, kind: EventType, reason: Reason, message: str) -> None:
        self.events.append(Event(kind, reason, message))

    def record(self, transition: Transition) -> None:
        self.transitions.append(transition)

    def reject(self, version: str) -> None:
        if version not in self.status.rejected_versions:
            self.status.rejected_versions = (*self.status.rejected_versions, version)[-REJECTED_LIMIT:]

    def add_history(self, entry: HistoryEntry) -> None:
        self.status.history = append_history(self.status.history, entry)

    def update_history(self, version: str, change: Callable[[HistoryEntry], HistoryEntry]) -> None:
        self.status.history = update_history(self.status.history, version, change)

    def freeze(self) -> Decision:
        if self.read_only:
            self._withhold_actions()
        status = FeedbackLoopStatus.model_validate(dict(self.status))
        return Decision(
            status=status,
            actions=tuple(self.actions),
            events=(*self.events, *self._condition_events(status)),
            transitions=tuple(self.transitions),
            needs_capacity=self.needs_capacity,
        )

    def _withhold_actions(self) -> None:
        """Each action becomes a condition saying what was not done, so nothing is withheld silently."""
        for action in self.actions:
            match action:
                case CreateJob(manifest=manifest):
                    name = manifest["metadata"]["name"]
                    message = f"mode Observe: Job {name} not created"
                    self.condition(
                        ConditionType.RETRAINING, ConditionStatus.FALSE, Reason.OBSERVE_ONLY, message
                    )
                case ApplyModel(deployment=deployment, container=container, model=model):
                    wanted = model.version if model is not None else "its own env"
                    message = f"mode Observe: Deployment {deployment}/{container} not set to {wanted}"
                    self.condition(
                        ConditionType.ROLLED_OUT, ConditionStatus.FALSE, Reason.OBSERVE_ONLY, message
                    )
        self.actions.clear()

    def _condition_events(self, status: FeedbackLoopStatus) -> list[Event]:
        """One Event per condition whose status or reason changed; a first Unknown is not news."""
        before = {c.type: c for c in self.before.conditions}
        events = []
        for condition in status.conditions:
            old = before.get(condition.type)
            if old is not None and (old.status, old.reason) == (condition.status, condition.reason):
                continue
            if old is None and condition.status == ConditionStatus.UNKNOWN:
                continue
            message = f"{condition.type}={condition.status}: {condition.message}".rstrip(": ")
            kind = transition_event_type(condition.type, condition.status)
            events.append(Event(kind, Reason(condition.reason), message))
        return events


def edit_status(status: FeedbackLoopStatus, change: Callable[[WorkingStatus], None]) -> FeedbackLoopStatus:
    """A copy of `status` with `change` applied to a working copy, validated like a decision's status."""
    working = WorkingStatus.model_validate(dict(status))
    change(working)
    return FeedbackLoopStatus.model_validate(dict(working))
