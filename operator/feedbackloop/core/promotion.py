"""From a candidate to the served model: gates, rollout, post-rollout analysis, rollback, manual operations.

Argo Rollouts semantics for analysis: every `analysis.interval`, one measurement of the analysis metrics;
more failures than `failureLimit` fails, no data is inconclusive (never success), and more inconclusive
measurements than `inconclusiveLimit` fails too, with its own reason.
"""

from __future__ import annotations

from feedbackloop.core import contract
from feedbackloop.core.conditions import FALSE, TRUE, UNKNOWN, Reason
from feedbackloop.core.draft import ApplyModel, Draft
from feedbackloop.core.gates import Comparison, evaluate_gates, gates_message, gates_passed
from feedbackloop.core.monitoring import NO_DATA_VERDICTS
from feedbackloop.core.observations import ArtifactCheck, Observations
from feedbackloop.core.spec import FeedbackLoopSpec, Mode
from feedbackloop.core.status import (
    CandidateModel,
    ConditionType,
    Evaluation,
    HistoryEntry,
    Measurement,
    ModelRef,
    RolloutState,
    Verdict,
    append_history,
    update_history,
)

PROMOTE_ANNOTATION = "feedbackloop.dev/promote"
ROLLBACK_ANNOTATION = "feedbackloop.dev/rollback-to"
PROGRESSING, ANALYZING, ROLLING_BACK = "Progressing", "Analyzing", "RollingBack"
PROMOTION, ROLLBACK = "Promotion", "Rollback"
SUCCESSFUL, FAILED, INCONCLUSIVE = "Successful", "Failed", "Inconclusive"


class Outcome:
    RETRAIN_FAILED = "RetrainFailed"
    RETRAINED = "Retrained"
    REJECTED = "Rejected"
    RECOMMENDED = "Recommended"
    ROLLING_OUT = "RollingOut"
    ROLLED_OUT = "RolledOut"
    ROLLED_BACK = "RolledBack"
    ROLLBACK_FAILED = "RollbackFailed"
    DEGRADED = "Degraded"


# ---------------------------------------------------------------- validation


def validate_candidate(draft: Draft, spec: FeedbackLoopSpec, namespace: str) -> None:
    candidate: CandidateModel = draft.get("candidate_model")
    current: ModelRef | None = draft.get("current_model")
    comparisons = {name: Comparison.from_json(raw) for name, raw in candidate.comparison.items()}
    results = evaluate_gates(
        spec.validation.gates,
        candidate.metrics,
        candidate.current_metrics,
        comparisons,
        current.version if current else None,
    )
    passed = gates_passed(results)
    message = gates_message(results)
    verdict = "Passed" if passed else "Failed"
    draft.set(
        "candidate_model",
        candidate.model_copy(update={"gates": results, "validation": verdict, "validated_at": draft.now}),
    )
    history = update_history(draft.get("history"), candidate.version, gates=verdict, validated_at=draft.now)
    draft.set("history", history)
    if not passed:
        draft.reject(candidate.version)
        draft.condition(
            ConditionType.VALIDATED, FALSE, Reason.GATES_FAILED, f"{candidate.version}: {message}"
        )
        draft.set(
            "history",
            update_history(
                history,
                candidate.version,
                outcome=Outcome.REJECTED,
                reason=Reason.GATES_FAILED,
                message=message,
            ),
        )
        return
    draft.condition(ConditionType.VALIDATED, TRUE, Reason.GATES_PASSED, f"{candidate.version}: {message}")
    if spec.mode is Mode.AUTO:
        start_rollout(
            draft,
            spec,
            namespace,
            ModelRef(
                version=candidate.version,
                uri=candidate.uri,
                sha256=candidate.sha256,
                metrics=candidate.metrics,
            ),
            kind=PROMOTION,
            trigger=candidate.trigger,
        )
    else:
        draft.set("recommended_version", candidate.version)
        draft.set(
            "history", update_history(draft.get("history"), candidate.version, outcome=Outcome.RECOMMENDED)
        )
        draft.event("Normal", "Recommended", f"{candidate.version} passed its gates; promote it by hand")


# ---------------------------------------------------------------- rollout


def start_rollout(
    draft: Draft, spec: FeedbackLoopSpec, namespace: str, model: ModelRef, kind: str, trigger: str
) -> None:
    assert model.sha256 is not None
    rollout = RolloutState(
        version=model.version,
        uri=model.uri,
        sha256=model.sha256,
        kind=kind,
        phase=PROGRESSING,
        previous=draft.get("current_model"),
        metrics=model.metrics,
        trigger=trigger,
        started_at=draft.now,
        phase_started_at=draft.now,
    )
    draft.set("rollout", rollout)
    draft.actions.append(_apply(spec, namespace, model))
    draft.condition(
        ConditionType.ROLLED_OUT, UNKNOWN, Reason.ROLLOUT_PROGRESSING, f"rolling out {model.version}"
    )
    draft.event(
        "Normal", "RolloutStarted", f"rolling out {model.version} to Deployment {spec.target.deployment}"
    )
    history = draft.get("history")
    if kind == ROLLBACK:
        history = append_history(
            history,
            HistoryEntry(
                version=model.version, trigger=trigger, outcome=Outcome.ROLLING_OUT, started_at=draft.now
            ),
        )
    draft.set(
        "history",
        update_history(history, model.version, outcome=Outcome.ROLLING_OUT, rollout_started_at=draft.now),
    )


def _apply(spec: FeedbackLoopSpec, namespace: str, model: ModelRef | None) -> ApplyModel:
    return ApplyModel(namespace, spec.target.deployment, spec.target.container, model)


def follow_rollout(
    draft: Draft,
    spec: FeedbackLoopSpec,
    namespace: str,
    observed: Observations,
    evaluation: Evaluation | None,
) -> None:
    rollout: RolloutState = draft.get("rollout")
    if rollout.phase == ANALYZING:
        _analyze(draft, spec, namespace, rollout, evaluation)
        return
    target = observed.target
    if target is None:
        return
    if not target.deployment_found or not target.container_found:
        # Applying now would create a stub Deployment or container; stop and say why instead.
        _abort_rollout(draft, rollout, f"Deployment {spec.target.deployment}/{spec.target.container} is gone")
        return
    wanted = rollout.previous if rollout.phase == ROLLING_BACK else _as_model(rollout)
    deployed_uri = target.deployed.uri if target.deployed else None
    wanted_uri = wanted.uri if wanted else None
    progress = target.progress
    deadline = rollout.phase_started_at + spec.rollout.progress_deadline
    if target.deployment_found and deployed_uri != wanted_uri:
        draft.actions.append(
            _apply(spec, namespace, wanted)
        )  # not applied yet, or changed by someone: apply again
    elif progress is not None and progress.complete:
        if rollout.phase == ROLLING_BACK:
            _rolled_back(draft, rollout)
        elif rollout.kind == ROLLBACK:
            _succeed(draft, rollout, "rolled back by hand")
        else:
            draft.set(
                "rollout",
                rollout.model_copy(
                    update={
                        "phase": ANALYZING,
                        "phase_started_at": draft.now,
                        "next_measurement_at": draft.now + spec.rollout.analysis.interval,
                    }
                ),
            )
            draft.condition(
                ConditionType.ROLLED_OUT,
                TRUE,
                Reason.ROLLOUT_COMPLETE,
                f"{rollout.version} is available; analysing",
            )
            draft.set(
                "history", update_history(draft.get("history"), rollout.version, rolled_out_at=draft.now)
            )
        return
    stalled = (progress is not None and progress.progress_deadline_exceeded) or draft.now > deadline
    if not stalled:
        if progress is not None:
            draft.condition(
                ConditionType.ROLLED_OUT,
                UNKNOWN,
                Reason.ROLLOUT_PROGRESSING,
                f"{rollout.version}: {progress.updated}/{progress.replicas} updated, "
                f"{progress.available} available",
            )
        return
    why = (
        "the Deployment reports ProgressDeadlineExceeded"
        if progress is not None and progress.progress_deadline_exceeded
        else f"not available within progressDeadline {spec.rollout.progress_deadline}"
    )
    if rollout.phase == ROLLING_BACK:
        _rollback_failed(draft, rollout, why)
    else:
        fail_rollout(draft, spec, namespace, rollout, Reason.PROGRESS_DEADLINE_EXCEEDED, why)


def _as_model(rollout: RolloutState) -> ModelRef:
    return ModelRef(version=rollout.version, uri=rollout.uri, sha256=rollout.sha256, metrics=rollout.metrics)


def _analyze(
    draft: Draft, spec: FeedbackLoopSpec, namespace: str, rollout: RolloutState, evaluation: Evaluation | None
) -> None:
    analysis = spec.rollout.analysis
    if evaluation is None or rollout.next_measurement_at is None or draft.now < rollout.next_measurement_at:
        return
    names = set(analysis.metrics) if analysis.metrics else {m.name for m in spec.monitoring.metrics}
    results = [m for m in evaluation.metrics if m.name in names]
    failed = [f"{m.name} {m.message}" for m in results if m.verdict in (Verdict.BREACHING, Verdict.BREACHED)]
    no_data = [f"{m.name}: {m.message or m.reason}" for m in results if m.verdict in NO_DATA_VERDICTS]
    if failed:
        measurement = Measurement(time=draft.now, verdict=FAILED, message="; ".join(failed))
    elif no_data or not results:
        measurement = Measurement(
            time=draft.now, verdict=INCONCLUSIVE, message="; ".join(no_data) or "no metrics"
        )
    else:
        measurement = Measurement(
            time=draft.now, verdict=SUCCESSFUL, message="all analysis metrics within thresholds"
        )
    measurements = (*rollout.measurements, measurement)
    counts = {
        verdict: sum(1 for m in measurements if m.verdict == verdict)
        for verdict in (SUCCESSFUL, FAILED, INCONCLUSIVE)
    }
    rollout = rollout.model_copy(
        update={"measurements": measurements, "next_measurement_at": draft.now + analysis.interval}
    )
    draft.set("rollout", rollout)
    summary = (
        f"{len(measurements)}/{analysis.count} measurements: {counts[SUCCESSFUL]} successful, "
        f"{counts[FAILED]} failed, {counts[INCONCLUSIVE]} inconclusive"
    )
    if counts[FAILED] > analysis.failure_limit:
        fail_rollout(
            draft, spec, namespace, rollout, Reason.ANALYSIS_FAILED, f"{summary}; last: {measurement.message}"
        )
    elif counts[INCONCLUSIVE] > analysis.inconclusive_limit:
        fail_rollout(
            draft,
            spec,
            namespace,
            rollout,
            Reason.ANALYSIS_INCONCLUSIVE,
            f"{summary}; last: {measurement.message}",
        )
    elif len(measurements) >= analysis.count:
        if counts[SUCCESSFUL] == 0:
            fail_rollout(
                draft, spec, namespace, rollout, Reason.ANALYSIS_INCONCLUSIVE, f"{summary}; none successful"
            )
        else:
            _succeed(draft, rollout, summary)
    else:
        draft.condition(ConditionType.ROLLED_OUT, TRUE, Reason.ANALYZING, f"{rollout.version}: {summary}")


def _succeed(draft: Draft, rollout: RolloutState, summary: str) -> None:
    draft.set(
        "current_model",
        ModelRef(
            version=rollout.version,
            uri=rollout.uri,
            sha256=rollout.sha256,
            metrics=rollout.metrics,
            deployed_at=draft.now,
        ),
    )
    draft.set("rollout", None)
    candidate = draft.get("candidate_model")
    if candidate is not None and candidate.version == rollout.version:
        draft.set("candidate_model", None)
    if draft.get("recommended_version") == rollout.version:
        draft.set("recommended_version", None)
    draft.condition(
        ConditionType.ROLLED_OUT, TRUE, Reason.ANALYSIS_SUCCESSFUL, f"{rollout.version} serves: {summary}"
    )
    draft.condition(
        ConditionType.DEGRADED, FALSE, Reason.NOT_DEGRADED, f"{rollout.version} passed its analysis"
    )
    draft.set(
        "history",
        update_history(
            draft.get("history"),
            rollout.version,
            outcome=Outcome.ROLLED_OUT,
            analysis=SUCCESSFUL if rollout.measurements else None,
            message=summary,
            finished_at=draft.now,
        ),
    )


def fail_rollout(
    draft: Draft, spec: FeedbackLoopSpec, namespace: str, rollout: RolloutState, reason: str, message: str
) -> None:
    draft.reject(rollout.version)
    draft.condition(ConditionType.DEGRADED, TRUE, reason, f"{rollout.version}: {message}")
    analysis = FAILED if reason == Reason.ANALYSIS_FAILED else INCONCLUSIVE if rollout.measurements else None
    history = update_history(
        draft.get("history"), rollout.version, reason=reason, message=message, analysis=analysis
    )
    if spec.rollout.rollback_on_failure and rollout.kind == PROMOTION:
        target = (
            rollout.previous.version if rollout.previous else "the Deployment's own env (no previous model)"
        )
        draft.set(
            "rollout",
            rollout.model_copy(
                update={"phase": ROLLING_BACK, "phase_started_at": draft.now, "reason": reason}
            ),
        )
        draft.actions.append(_apply(spec, namespace, rollout.previous))
        draft.condition(
            ConditionType.ROLLED_OUT, FALSE, Reason.ROLLING_BACK, f"rolling back to {target}: {message}"
        )
        draft.set("history", history)
        return
    # No rollback: the version keeps serving, marked degraded and rejected.
    draft.set("rollout", None)
    draft.set("current_model", _as_model(rollout).model_copy(update={"deployed_at": draft.now}))
    draft.condition(
        ConditionType.ROLLED_OUT, TRUE, reason, f"{rollout.version} serves without rollback: {message}"
    )
    draft.set(
        "history", update_history(history, rollout.version, outcome=Outcome.DEGRADED, finished_at=draft.now)
    )
    _clear_candidate(draft, rollout.version)


def _rolled_back(draft: Draft, rollout: RolloutState) -> None:
    target = rollout.previous.version if rollout.previous else "the Deployment's own env"
    draft.set("rollout", None)
    draft.condition(
        ConditionType.ROLLED_OUT, FALSE, Reason.ROLLED_BACK, f"{rollout.version} rolled back to {target}"
    )
    draft.event(
        "Warning", Reason.ROLLED_BACK, f"{rollout.version} rolled back to {target} ({rollout.reason})"
    )
    draft.set(
        "history",
        update_history(
            draft.get("history"), rollout.version, outcome=Outcome.ROLLED_BACK, finished_at=draft.now
        ),
    )
    _clear_candidate(draft, rollout.version)


def _rollback_failed(draft: Draft, rollout: RolloutState, why: str) -> None:
    draft.set("rollout", None)
    message = f"rollback of {rollout.version} did not complete: {why}"
    draft.condition(ConditionType.DEGRADED, TRUE, Reason.ROLLBACK_FAILED, message)
    draft.condition(ConditionType.ROLLED_OUT, FALSE, Reason.ROLLBACK_FAILED, message)
    draft.set(
        "history",
        update_history(
            draft.get("history"),
            rollout.version,
            outcome=Outcome.ROLLBACK_FAILED,
            reason=Reason.ROLLBACK_FAILED,
            message=message,
            finished_at=draft.now,
        ),
    )
    _clear_candidate(draft, rollout.version)


def _abort_rollout(draft: Draft, rollout: RolloutState, why: str) -> None:
    draft.set("rollout", None)
    draft.condition(ConditionType.ROLLED_OUT, FALSE, Reason.TARGET_NOT_FOUND, f"{rollout.version}: {why}")
    draft.condition(ConditionType.DEGRADED, TRUE, Reason.TARGET_NOT_FOUND, f"{rollout.version}: {why}")
    draft.set(
        "history",
        update_history(
            draft.get("history"),
            rollout.version,
            outcome="Aborted",
            reason=Reason.TARGET_NOT_FOUND,
            message=why,
            finished_at=draft.now,
        ),
    )


def _clear_candidate(draft: Draft, version: str) -> None:
    candidate = draft.get("candidate_model")
    if candidate is not None and candidate.version == version:
        draft.set("candidate_model", None)
    if draft.get("recommended_version") == version:
        draft.set("recommended_version", None)


# ---------------------------------------------------------------- manual operations


def handle_manual_requests(
    draft: Draft, spec: FeedbackLoopSpec, namespace: str, observed: Observations
) -> None:
    """Promote and rollback-to requests, each id once; refusals are conditions, never silent."""
    if draft.get("rollout") is not None or draft.get("active_retrain") is not None:
        return  # busy: the request waits, unhandled
    promote = observed.promote_request
    if promote and promote != draft.get("handled_promote_request"):
        draft.set("handled_promote_request", promote)
        _promote(draft, spec, namespace, promote)
        return
    rollback = observed.rollback_request
    if rollback and rollback != draft.get("handled_rollback_request"):
        artifacts = observed.rollback_artifacts
        if artifacts is not None and artifacts.check is ArtifactCheck.UNREACHABLE:
            return  # try again when the store answers
        draft.set("handled_rollback_request", rollback)
        _rollback_to(draft, spec, namespace, rollback, observed)


def _refuse(draft: Draft, reason: str, message: str) -> None:
    draft.condition(ConditionType.ROLLED_OUT, FALSE, reason, message)
    draft.event("Warning", reason, message)


def _promote(draft: Draft, spec: FeedbackLoopSpec, namespace: str, version: str) -> None:
    if version in draft.get("rejected_versions"):
        _refuse(draft, Reason.PROMOTION_REFUSED, f"promote {version}: refused, the version was rejected")
        return
    candidate: CandidateModel | None = draft.get("candidate_model")
    if candidate is None or candidate.version != version or candidate.validation != "Passed":
        _refuse(
            draft, Reason.PROMOTION_REFUSED, f"promote {version}: refused, it is not a validated candidate"
        )
        return
    model = ModelRef(version=version, uri=candidate.uri, sha256=candidate.sha256, metrics=candidate.metrics)
    start_rollout(draft, spec, namespace, model, kind=PROMOTION, trigger="ManualPromote")


def _rollback_to(
    draft: Draft, spec: FeedbackLoopSpec, namespace: str, version: str, observed: Observations
) -> None:
    current: ModelRef | None = draft.get("current_model")
    if version in draft.get("rejected_versions"):
        _refuse(draft, Reason.ROLLBACK_REFUSED, f"rollback-to {version}: refused, the version was rejected")
        return
    if current is not None and current.version == version:
        _refuse(draft, Reason.ROLLBACK_REFUSED, f"rollback-to {version}: it is already serving")
        return
    artifacts = observed.rollback_artifacts
    if artifacts is None or artifacts.check is not ArtifactCheck.VERIFIED:
        detail = artifacts.message if artifacts else "no artifacts were checked"
        _refuse(draft, Reason.ROLLBACK_REFUSED, f"rollback-to {version}: refused, {detail}")
        return
    metrics = contract.numeric_metrics(artifacts.metrics.get("candidate"))
    model = ModelRef(version=version, uri=artifacts.uri, sha256=artifacts.model_sha256, metrics=metrics)
    start_rollout(draft, spec, namespace, model, kind=ROLLBACK, trigger="ManualRollback")
