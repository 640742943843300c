"""From a chosen version to the served model: apply it to the Deployment, wait until it is available, analyse
it, and roll back (or keep it, marked degraded) when it fails."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from feedbackloop.api import (
    ConditionStatus,
    ConditionType,
    EventType,
    MeasurementVerdict,
    Outcome,
    Reason,
    RolloutKind,
    RolloutPhase,
    Trigger,
)
from feedbackloop.core.analysis import (
    AnalysisPhase,
    analysis_metrics,
    assess,
    awaits_first_data,
    below_threshold,
    measure,
    previous_values,
)
from feedbackloop.core.decision import (
    ApplyModel,
    RollbackStarted,
    RolloutFinished,
    RolloutStarted,
    StageFinished,
)
from feedbackloop.core.draft import Draft
from feedbackloop.core.durations import format_duration
from feedbackloop.core.observations import Observations, TargetObservation
from feedbackloop.core.spec import FeedbackLoopSpec
from feedbackloop.core.stage_verdict import StageVerdict
from feedbackloop.core.status import Evaluation, HistoryEntry, ModelRef, RolloutState


def start_rollout(
    draft: Draft,
    spec: FeedbackLoopSpec,
    namespace: str,
    model: ModelRef,
    kind: RolloutKind,
    trigger: Trigger,
    counted: bool = True,  # False after a won stage: its promotion was counted when the stage began
) -> None:
    assert model.sha256 is not None
    previous = draft.status.current_model
    # What the new version must not be worse than: the replaced version's last evaluation.
    evaluation = draft.status.last_evaluation if previous is not None else None
    values = previous_values(analysis_metrics(spec), evaluation) if kind is RolloutKind.PROMOTION else {}
    draft.status.rollout = RolloutState(
        version=model.version,
        uri=model.uri,
        sha256=model.sha256,
        kind=kind,
        phase=RolloutPhase.PROGRESSING,
        previous=previous,
        metrics=model.metrics,
        trigger=trigger,
        started_at=draft.now,
        phase_started_at=draft.now,
        previous_values=values,
        previous_evaluated_at=evaluation.time if values and evaluation is not None else None,
    )
    draft.actions.append(_apply(spec, namespace, model))
    draft.condition(
        ConditionType.ROLLED_OUT,
        ConditionStatus.UNKNOWN,
        Reason.ROLLOUT_PROGRESSING,
        f"rolling out {model.version}",
    )
    message = f"rolling out {model.version} to Deployment {spec.target.deployment}"
    draft.event(EventType.NORMAL, Reason.ROLLOUT_STARTED, message)
    if kind is RolloutKind.ROLLBACK:
        entry = HistoryEntry(
            version=model.version, trigger=trigger, outcome=Outcome.ROLLING_OUT, started_at=draft.now
        )
        draft.add_history(entry)
    draft.update_history(
        model.version, lambda e: replace(e, outcome=Outcome.ROLLING_OUT, rollout_started_at=draft.now)
    )
    if counted:
        draft.record(RolloutStarted(kind))


def _apply(spec: FeedbackLoopSpec, namespace: str, model: ModelRef | None) -> ApplyModel:
    return ApplyModel(namespace, spec.target.deployment, spec.target.container, model)


def follow_rollout(
    draft: Draft,
    spec: FeedbackLoopSpec,
    namespace: str,
    observed: Observations,
    evaluation: Evaluation | None,
) -> None:
    rollout = draft.status.rollout
    assert rollout is not None
    if rollout.phase is RolloutPhase.ANALYZING:
        _analyze(draft, spec, namespace, rollout, evaluation)
        return
    target = observed.target
    if target is None:
        return
    if not target.deployment_found or not target.container_found:
        # Applying now would create a stub Deployment or container; stop and say why instead.
        abort_rollout(draft, rollout, f"Deployment {spec.target.deployment}/{spec.target.container} is gone")
        return
    wanted = rollout.previous if rollout.phase is RolloutPhase.ROLLING_BACK else rollout.model
    deployed_uri = target.deployed.uri if target.deployed else None
    staged = target.deployed.candidate_uri if target.deployed else None
    progress = target.progress
    if deployed_uri != (wanted.uri if wanted else None) or staged is not None:
        draft.actions.append(_apply(spec, namespace, wanted))  # not applied yet, or changed by someone
    elif progress is not None and progress.complete:
        _available(draft, spec, rollout)
        return
    _check_progress(draft, spec, namespace, rollout, target)


def _available(draft: Draft, spec: FeedbackLoopSpec, rollout: RolloutState) -> None:
    match rollout.phase, rollout.kind:
        case RolloutPhase.ROLLING_BACK, _:
            _rolled_back(draft, rollout)
        case _, RolloutKind.ROLLBACK:
            _succeed(draft, rollout, "rolled back by hand")
        case _, RolloutKind.PROMOTION:
            draft.status.rollout = replace(
                rollout,
                phase=RolloutPhase.ANALYZING,
                phase_started_at=draft.now,
                next_measurement_at=draft.now + spec.rollout.analysis.interval,
            )
            message = f"{rollout.version} is available; analysing"
            draft.condition(ConditionType.ROLLED_OUT, ConditionStatus.TRUE, Reason.ROLLOUT_COMPLETE, message)
            draft.update_history(rollout.version, lambda e: replace(e, rolled_out_at=draft.now))


def _check_progress(
    draft: Draft, spec: FeedbackLoopSpec, namespace: str, rollout: RolloutState, target: TargetObservation
) -> None:
    progress = target.progress
    deadline_exceeded = progress is not None and progress.progress_deadline_exceeded
    if not deadline_exceeded and draft.now <= rollout.phase_started_at + spec.rollout.progress_deadline:
        if progress is not None:
            message = (
                f"{rollout.version}: {progress.updated}/{progress.replicas} updated, "
                f"{progress.available} available"
            )
            draft.condition(
                ConditionType.ROLLED_OUT, ConditionStatus.UNKNOWN, Reason.ROLLOUT_PROGRESSING, message
            )
        return
    why = (
        "the Deployment reports ProgressDeadlineExceeded"
        if deadline_exceeded
        else f"not available within progressDeadline {spec.rollout.progress_deadline}"
    )
    if rollout.phase is RolloutPhase.ROLLING_BACK:
        _rollback_failed(draft, rollout, why)
    else:
        fail_rollout(draft, spec, namespace, rollout, Reason.PROGRESS_DEADLINE_EXCEEDED, why)


def _analyze(
    draft: Draft, spec: FeedbackLoopSpec, namespace: str, rollout: RolloutState, evaluation: Evaluation | None
) -> None:
    analysis = spec.rollout.analysis
    if evaluation is None or rollout.next_measurement_at is None or draft.now < rollout.next_measurement_at:
        return
    names = analysis_metrics(spec)
    measurement = measure(names, evaluation, draft.now, rollout.previous_values)
    if measurement.verdict is MeasurementVerdict.INCONCLUSIVE and awaits_first_data(
        analysis, names, evaluation, rollout.measurements, rollout.phase_started_at, draft.now
    ):
        # No labelled feedback for the new version yet: wait for it, up to maxWait, without counting.
        draft.status.rollout = replace(rollout, next_measurement_at=draft.now + analysis.interval)
        deadline = rollout.phase_started_at + analysis.max_wait
        message = (
            f"{rollout.version}: waiting for its first data until {_iso(deadline)} "
            f"(maxWait {format_duration(analysis.max_wait)}): {measurement.message}"
        )
        draft.condition(ConditionType.ROLLED_OUT, ConditionStatus.TRUE, Reason.ANALYZING, message)
        return
    rollout = replace(
        rollout,
        measurements=(*rollout.measurements, measurement),
        next_measurement_at=draft.now + analysis.interval,
    )
    draft.status.rollout = rollout
    assessment = assess(analysis, rollout.measurements)
    match assessment.phase:
        case AnalysisPhase.RUNNING:
            message = f"{rollout.version}: {assessment.message}"
            draft.condition(ConditionType.ROLLED_OUT, ConditionStatus.TRUE, Reason.ANALYZING, message)
        case AnalysisPhase.SUCCESSFUL:
            _succeed(draft, rollout, assessment.message)
        case AnalysisPhase.FAILED:
            fail_rollout(draft, spec, namespace, rollout, Reason.ANALYSIS_FAILED, assessment.message)
        case AnalysisPhase.INCONCLUSIVE:
            fail_rollout(draft, spec, namespace, rollout, Reason.ANALYSIS_INCONCLUSIVE, assessment.message)


def _succeed(draft: Draft, rollout: RolloutState, summary: str) -> None:
    draft.status.current_model = replace(rollout.model, deployed_at=draft.now)
    draft.status.rollout = None
    clear_candidate(draft, rollout.version)
    below = below_threshold(rollout.measurements[-1]) if rollout.measurements else ()
    if below:
        # Kept: rolling back would serve a version that did worse. The breach stays, and retrains again once
        # the cooldown (and its backoff) allows.
        replaced = rollout.previous.version if rollout.previous else "the previous model"
        outside = "; ".join(
            f"{m.name} {m.value:.4g} vs {m.previous_value:.4g}"
            for m in below
            if m.value is not None and m.previous_value is not None
        )
        summary = (
            f"{summary}; below its threshold but not worse than {replaced}, which it replaced ({outside}); "
            "a lasting breach retrains again after the cooldown"
        )
        message = f"{rollout.version} serves: {summary}"
        draft.condition(
            ConditionType.ROLLED_OUT, ConditionStatus.TRUE, Reason.BELOW_THRESHOLD_NOT_WORSE, message
        )
        draft.event(EventType.WARNING, Reason.BELOW_THRESHOLD_NOT_WORSE, message)
    else:
        message = f"{rollout.version} serves: {summary}"
        draft.condition(ConditionType.ROLLED_OUT, ConditionStatus.TRUE, Reason.ANALYSIS_SUCCESSFUL, message)
    passed = f"{rollout.version} passed its analysis"
    draft.condition(ConditionType.DEGRADED, ConditionStatus.FALSE, Reason.NOT_DEGRADED, passed)
    analysis = MeasurementVerdict.SUCCESSFUL if rollout.measurements else None
    reason = Reason.BELOW_THRESHOLD_NOT_WORSE if below else ""
    draft.update_history(
        rollout.version,
        lambda e: replace(
            e,
            outcome=Outcome.ROLLED_OUT,
            reason=reason or e.reason,
            analysis=analysis,
            message=summary,
            finished_at=draft.now,
        ),
    )
    draft.record(RolloutFinished(Outcome.ROLLED_OUT))


def fail_rollout(
    draft: Draft, spec: FeedbackLoopSpec, namespace: str, rollout: RolloutState, reason: Reason, message: str
) -> None:
    draft.reject(rollout.version)
    draft.condition(ConditionType.DEGRADED, ConditionStatus.TRUE, reason, f"{rollout.version}: {message}")
    analysis = (
        MeasurementVerdict.FAILED
        if reason is Reason.ANALYSIS_FAILED
        else MeasurementVerdict.INCONCLUSIVE
        if rollout.measurements
        else None
    )
    draft.update_history(
        rollout.version, lambda e: replace(e, reason=reason, message=message, analysis=analysis)
    )
    if spec.rollout.rollback_on_failure and rollout.kind is RolloutKind.PROMOTION:
        target = (
            rollout.previous.version if rollout.previous else "the Deployment's own env (no previous model)"
        )
        draft.status.rollout = replace(
            rollout, phase=RolloutPhase.ROLLING_BACK, phase_started_at=draft.now, reason=reason
        )
        draft.actions.append(_apply(spec, namespace, rollout.previous))
        rolling_back = f"rolling back to {target}: {message}"
        draft.condition(ConditionType.ROLLED_OUT, ConditionStatus.FALSE, Reason.ROLLING_BACK, rolling_back)
        draft.record(RollbackStarted(reason))
        return
    # No rollback: the version keeps serving, marked degraded and rejected.
    draft.status.rollout = None
    draft.status.current_model = replace(rollout.model, deployed_at=draft.now)
    serving = f"{rollout.version} serves without rollback: {message}"
    draft.condition(ConditionType.ROLLED_OUT, ConditionStatus.TRUE, reason, serving)
    _finish(draft, rollout, Outcome.DEGRADED)


def stop_rollout(
    draft: Draft, spec: FeedbackLoopSpec, namespace: str, rollout: RolloutState, why: str
) -> None:
    """An abort request: back to the previous model at once, whatever rollbackOnFailure says. The version is
    not rejected: an abort says "stop now", not "this version is bad", and rollback-to may bring it back."""
    target = rollout.previous.version if rollout.previous else "the Deployment's own env (no previous model)"
    draft.status.rollout = replace(
        rollout, phase=RolloutPhase.ROLLING_BACK, phase_started_at=draft.now, reason=Reason.ABORTED
    )
    draft.actions.append(_apply(spec, namespace, rollout.previous))
    draft.condition(ConditionType.DEGRADED, ConditionStatus.TRUE, Reason.ABORTED, f"{rollout.version}: {why}")
    rolling_back = f"rolling back to {target}: {why}"
    draft.condition(ConditionType.ROLLED_OUT, ConditionStatus.FALSE, Reason.ROLLING_BACK, rolling_back)
    draft.update_history(rollout.version, lambda e: replace(e, reason=Reason.ABORTED, message=why))
    draft.record(RollbackStarted(Reason.ABORTED))
    if rollout.phase is RolloutPhase.STAGING and rollout.stage is not None:
        draft.record(StageFinished(rollout.stage.strategy, Reason.ABORTED))


def _rolled_back(draft: Draft, rollout: RolloutState) -> None:
    target = rollout.previous.version if rollout.previous else "the Deployment's own env"
    draft.status.rollout = None
    stage = rollout.stage
    if stage is not None and stage.verdict != StageVerdict.WIN and rollout.reason != Reason.ABORTED:
        # A stage's loser never served a request alone: the champion did, and still does.
        message = f"{rollout.version} removed from beside {target}, which serves on ({rollout.reason})"
        draft.condition(ConditionType.ROLLED_OUT, ConditionStatus.FALSE, Reason(rollout.reason), message)
        _finish(draft, rollout, Outcome.REJECTED)
        return
    message = f"{rollout.version} rolled back to {target}"
    draft.condition(ConditionType.ROLLED_OUT, ConditionStatus.FALSE, Reason.ROLLED_BACK, message)
    draft.event(EventType.WARNING, Reason.ROLLED_BACK, f"{message} ({rollout.reason})")
    # An aborted version was stopped by a person, not judged: its history says so.
    outcome = Outcome.ABORTED if rollout.reason == Reason.ABORTED else Outcome.ROLLED_BACK
    _finish(draft, rollout, outcome)


def _rollback_failed(draft: Draft, rollout: RolloutState, why: str) -> None:
    draft.status.rollout = None
    message = f"rollback of {rollout.version} did not complete: {why}"
    draft.condition(ConditionType.DEGRADED, ConditionStatus.TRUE, Reason.ROLLBACK_FAILED, message)
    draft.condition(ConditionType.ROLLED_OUT, ConditionStatus.FALSE, Reason.ROLLBACK_FAILED, message)
    draft.update_history(
        rollout.version, lambda e: replace(e, reason=Reason.ROLLBACK_FAILED, message=message)
    )
    _finish(draft, rollout, Outcome.ROLLBACK_FAILED)


def abort_rollout(draft: Draft, rollout: RolloutState, why: str) -> None:
    draft.status.rollout = None
    draft.condition(
        ConditionType.ROLLED_OUT, ConditionStatus.FALSE, Reason.TARGET_NOT_FOUND, f"{rollout.version}: {why}"
    )
    draft.condition(
        ConditionType.DEGRADED, ConditionStatus.TRUE, Reason.TARGET_NOT_FOUND, f"{rollout.version}: {why}"
    )
    draft.update_history(
        rollout.version,
        lambda e: replace(
            e, outcome=Outcome.ABORTED, reason=Reason.TARGET_NOT_FOUND, message=why, finished_at=draft.now
        ),
    )
    draft.record(RolloutFinished(Outcome.ABORTED))


def _finish(draft: Draft, rollout: RolloutState, outcome: Outcome) -> None:
    """The rollout ended without the version serving as a healthy current model."""
    draft.update_history(rollout.version, lambda e: replace(e, outcome=outcome, finished_at=draft.now))
    clear_candidate(draft, rollout.version)
    draft.record(RolloutFinished(outcome))


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def clear_candidate(draft: Draft, version: str) -> None:
    candidate = draft.status.candidate_model
    if candidate is not None and candidate.version == version:
        draft.status.candidate_model = None
    if draft.status.recommended_version == version:
        draft.status.recommended_version = None
