"""decide(): from the loop, what was observed and `now`, the next status, the actions, the Events and the
transitions. Pure and deterministic: `plan()` says what to observe, each lifecycle stage says what to do."""

from __future__ import annotations

from datetime import datetime

from feedbackloop.api import ConditionStatus, ConditionType, LoopPhase, Reason, RolloutPhase
from feedbackloop.core.decision import Decision, MetricEvaluated
from feedbackloop.core.draft import Draft
from feedbackloop.core.gates import validate_candidate
from feedbackloop.core.loop import LoopState, OperatorPolicy
from feedbackloop.core.manual import handle_abort, handle_manual_requests
from feedbackloop.core.monitoring import evaluate, healthy_condition
from feedbackloop.core.observations import Observations
from feedbackloop.core.readiness import (
    adopt_deployed_model,
    initialize_conditions,
    not_allowed,
    preflight,
    runtime_spec_errors,
)
from feedbackloop.core.retrain import consider_retrain, follow_retrain
from feedbackloop.core.rollout import follow_rollout
from feedbackloop.core.served import follow_served_model
from feedbackloop.core.spec import FeedbackLoopSpec, Mode
from feedbackloop.core.stage import follow_stage
from feedbackloop.core.status import Evaluation, FeedbackLoopStatus


def decide(loop: LoopState, observed: Observations, policy: OperatorPolicy, now: datetime) -> Decision:
    draft = Draft.start(loop.status, now, loop.generation)
    draft.read_only = loop.spec is not None and loop.spec.mode is Mode.OBSERVE
    initialize_conditions(draft)
    draft.status.observed_generation = loop.generation
    errors = runtime_spec_errors(loop, policy)
    if errors or loop.spec is None:
        draft.condition(ConditionType.READY, ConditionStatus.FALSE, Reason.INVALID_SPEC, "; ".join(errors))
        draft.status.phase = LoopPhase.INVALID
        # A running Job still finishes and is accounted for; nothing new starts.
        if loop.status.active_retrain is not None and loop.spec is not None:
            follow_retrain(draft, loop, observed, policy)
        return draft.freeze()
    spec, namespace = loop.spec, loop.ref.namespace

    if refusals := not_allowed(spec, policy):
        message = "; ".join(message for _, message in refusals)
        draft.condition(ConditionType.READY, ConditionStatus.FALSE, refusals[0][0], message)
        draft.status.phase = LoopPhase.INVALID
        if loop.status.active_retrain is not None:
            follow_retrain(draft, loop, observed, policy)
        return draft.freeze()
    preflight_ok = preflight(draft, spec, observed)
    adopt_deployed_model(draft, observed)
    if loop.status.rollout is None:
        follow_served_model(draft, spec, loop.ref, observed)  # before a retrain Job names the champion
    evaluation = _evaluate(draft, spec, observed)
    # Before the rollout moves on: the brake wins over a measurement taken in the same reconcile.
    aborted = handle_abort(draft, spec, namespace, observed)
    if loop.status.rollout is not None:
        if not aborted and loop.status.rollout.phase is RolloutPhase.STAGING:
            follow_stage(draft, spec, namespace, observed.target, observed.stage)
        elif not aborted:
            follow_rollout(draft, spec, namespace, observed, evaluation)
            if draft.status.rollout is None:
                follow_served_model(draft, spec, loop.ref, observed, rollout_ended=True)
    elif loop.status.active_retrain is not None:
        follow_retrain(draft, loop, observed, policy)
    candidate = draft.status.candidate_model
    if candidate is not None and candidate.validation is None and draft.status.rollout is None:
        validate_candidate(draft, spec, namespace)
    handle_manual_requests(draft, spec, namespace, observed)
    busy = loop.status.rollout is not None or loop.status.active_retrain is not None
    if not busy and draft.status.rollout is None:
        consider_retrain(draft, loop, spec, observed, policy, preflight_ok)
    draft.status.phase = loop_phase(draft.status, spec)
    return draft.freeze()


def _evaluate(draft: Draft, spec: FeedbackLoopSpec, observed: Observations) -> Evaluation | None:
    if observed.metrics is None:
        return None
    evaluation = evaluate(spec, observed.metrics, draft.before.last_evaluation, draft.now)
    draft.status.last_evaluation = evaluation
    draft.condition(ConditionType.HEALTHY, *healthy_condition(spec, evaluation))
    for result in evaluation.metrics:
        draft.record(MetricEvaluated(result.name, result.verdict, result.value))
    return evaluation


def loop_phase(status: FeedbackLoopStatus, spec: FeedbackLoopSpec) -> LoopPhase:
    """The one-word summary for printer columns."""
    if spec.suspend:
        return LoopPhase.SUSPENDED
    if status.rollout is not None:
        match status.rollout.phase:
            case RolloutPhase.STAGING:
                return LoopPhase.STAGING
            case RolloutPhase.PROGRESSING:
                return LoopPhase.ROLLING_OUT
            case RolloutPhase.ANALYZING:
                return LoopPhase.ANALYZING
            case RolloutPhase.ROLLING_BACK:
                return LoopPhase.ROLLING_BACK
    if status.active_retrain is not None:
        return LoopPhase.RETRAINING
    if status.condition_is(ConditionType.DEGRADED, ConditionStatus.TRUE) or status.condition_is(
        ConditionType.HEALTHY, ConditionStatus.FALSE
    ):
        return LoopPhase.DEGRADED
    return LoopPhase.MONITORING
