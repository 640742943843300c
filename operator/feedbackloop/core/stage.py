"""Shadow and Split stages: a validated candidate served beside the champion and judged on live ground truth
before it is promoted (spec.rollout.strategy; docs/rollout-strategies.md).

The stage adds the candidate to the serving container (CANDIDATE_* env, docs/serving.md), waits for the
Deployment to be available with both models, then reads the serving contract's counters every
`stage.interval` so status shows the labels and estimates as they come. The verdict is taken once, when each
model has `minSamples` labels or at `maxDuration` (core.stage_verdict): a win promotes the candidate through a
Replace rollout and its analysis; a loss, or no significant difference, rejects it and removes its env. The
champion serves throughout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from feedbackloop.api import (
    CANDIDATE_MODE_SHADOW,
    CANDIDATE_MODE_SPLIT,
    ROLE_CANDIDATE,
    ROLE_CHAMPION,
    ConditionStatus,
    ConditionType,
    EventType,
    Outcome,
    Reason,
    RolloutKind,
    RolloutPhase,
    Trigger,
)
from feedbackloop.core.decision import ApplyModel, RolloutStarted, StagedCandidate, StageFinished
from feedbackloop.core.draft import Draft
from feedbackloop.core.durations import format_duration
from feedbackloop.core.loop import LoopState
from feedbackloop.core.observations import QueryOutcome, QueryResult, TargetObservation
from feedbackloop.core.promql import quote_label_value
from feedbackloop.core.rollout import abort_rollout, start_rollout
from feedbackloop.core.spec import FeedbackLoopSpec, RolloutStrategy, Task
from feedbackloop.core.stage_verdict import (
    PairedOutcomes,
    Proportion,
    SquaredErrors,
    StageResult,
    StageVerdict,
    mcnemar,
    paired_t,
    two_proportion_z,
    welch_t,
)
from feedbackloop.core.status import ModelRef, RolloutState, StageState

# The names of a stage's counts, each one PromQL query over the serving contract's counters.
SHADOW_CLASSIFICATION = ("both", "champion_only", "candidate_only", "neither")
SHADOW_REGRESSION = ("paired", "champion_squared_error", "candidate_squared_error", "difference_squared")
SPLIT_COMMON = ("champion_labels", "candidate_labels", "champion_answers", "candidate_answers")
SPLIT_CLASSIFICATION = (*SPLIT_COMMON, "champion_correct", "candidate_correct")
SPLIT_REGRESSION = (
    *SPLIT_COMMON,
    "champion_squared_error",
    "candidate_squared_error",
    "champion_fourth_power_error",
    "candidate_fourth_power_error",
)
# A read over less than this would find too few scrapes for increase() to see anything.
MIN_WINDOW_SECONDS = 30


@dataclass(frozen=True)
class StageQuery:
    name: str
    query: str


def uses_stage(spec: FeedbackLoopSpec, champion: ModelRef | None) -> bool:
    """A stage needs a champion to compare with, served from a verified artifact like the candidate."""
    return (
        spec.rollout.strategy is not RolloutStrategy.REPLACE
        and champion is not None
        and bool(champion.uri)
        and bool(champion.sha256)
    )


def begin_promotion(
    draft: Draft, spec: FeedbackLoopSpec, namespace: str, model: ModelRef, trigger: Trigger
) -> None:
    """A version chosen for promotion: through the spec's stage when it has one, else straight to rollout."""
    champion = draft.status.current_model
    if champion is None or not uses_stage(spec, champion):
        start_rollout(draft, spec, namespace, model, RolloutKind.PROMOTION, trigger)
        return
    strategy = spec.rollout.strategy
    stage = StageState(
        strategy=strategy,
        champion=champion.version,
        weight=spec.rollout.stage.weight if strategy is RolloutStrategy.SPLIT else None,
    )
    assert model.sha256 is not None
    draft.status.rollout = RolloutState(
        version=model.version,
        uri=model.uri,
        sha256=model.sha256,
        kind=RolloutKind.PROMOTION,
        phase=RolloutPhase.STAGING,
        previous=champion,
        metrics=model.metrics,
        trigger=trigger,
        started_at=draft.now,
        phase_started_at=draft.now,
        stage=stage,
    )
    draft.actions.append(staged_apply(spec, namespace, champion, model))
    described = _describe_strategy(spec)
    message = f"{described} of {model.version} beside {champion.version}: waiting for the Deployment"
    draft.condition(ConditionType.ROLLED_OUT, ConditionStatus.UNKNOWN, Reason.STAGE_PROGRESSING, message)
    draft.event(EventType.NORMAL, Reason.STAGE_STARTED, f"{described} of {model.version} started")
    # No rolloutStartedAt yet: in its stage the candidate answers nobody (Shadow) or a few (Split).
    draft.update_history(model.version, lambda e: replace(e, outcome=Outcome.STAGING))
    draft.record(RolloutStarted(RolloutKind.PROMOTION))


def staged_apply(
    spec: FeedbackLoopSpec, namespace: str, champion: ModelRef, candidate: ModelRef
) -> ApplyModel:
    split = spec.rollout.strategy is RolloutStrategy.SPLIT
    staged = StagedCandidate(
        model=candidate,
        mode=CANDIDATE_MODE_SPLIT if split else CANDIDATE_MODE_SHADOW,
        weight=spec.rollout.stage.weight if split else None,
        request_key=spec.rollout.stage.request_key if split else None,
    )
    return ApplyModel(namespace, spec.target.deployment, spec.target.container, champion, staged)


def _describe_strategy(spec: FeedbackLoopSpec) -> str:
    if spec.rollout.strategy is RolloutStrategy.SPLIT:
        return f"Split stage ({spec.rollout.stage.weight:g} of requests to the candidate)"
    return "Shadow stage"


# ---------------------------------------------------------------- queries


def read_due(rollout: RolloutState | None, now: datetime) -> bool:
    return (
        rollout is not None
        and rollout.phase is RolloutPhase.STAGING
        and rollout.stage is not None
        and rollout.stage.live_since is not None
        and rollout.next_measurement_at is not None
        and now >= rollout.next_measurement_at
    )


def stage_queries(loop: LoopState, now: datetime) -> tuple[StageQuery, ...]:
    """The counts a stage reads, as PromQL over the serving contract's counters since the stage went live.
    Every value spliced in is a validated label value (core.promql) or a number."""
    spec, rollout = loop.spec, loop.status.rollout
    assert spec is not None
    assert rollout is not None
    assert rollout.stage is not None
    assert rollout.stage.live_since is not None
    labels = spec.rollout.stage.labels if spec.rollout.stage.labels is not None else spec.monitoring.labels
    selector = [f"{name}={quote_label_value(value)}" for name, value in sorted(labels.items())]
    champion, candidate = rollout.stage.champion, rollout.version
    seconds = max(int((now - rollout.stage.live_since).total_seconds()), MIN_WINDOW_SECONDS)
    window = f"[{seconds}s]"

    def total(metric: str, **match: str) -> str:
        matchers = ",".join([*selector, *(f"{k}={quote_label_value(v)}" for k, v in match.items())])
        return f"sum(increase({metric}{{{matchers}}}{window}))"

    pair = {"model_version": candidate, "champion_version": champion}
    as_champion = {"model_version": champion, "role": ROLE_CHAMPION}
    as_candidate = {"model_version": candidate, "role": ROLE_CANDIDATE}
    regression = spec.retrain_spec().trainer.task is Task.REGRESSION
    queries: dict[str, str]
    if spec.rollout.strategy is RolloutStrategy.SHADOW:
        if regression:
            queries = {
                "paired": total("fbl_shadow_feedback_total", **pair, outcome="paired"),
                "champion_squared_error": total("fbl_shadow_squared_error_total", **pair, role=ROLE_CHAMPION),
                "candidate_squared_error": total(
                    "fbl_shadow_squared_error_total", **pair, role=ROLE_CANDIDATE
                ),
                "difference_squared": total("fbl_shadow_squared_error_difference_squared_total", **pair),
            }
        else:
            queries = {
                outcome: total("fbl_shadow_feedback_total", **pair, outcome=outcome)
                for outcome in SHADOW_CLASSIFICATION
            }
    else:
        queries = {
            "champion_labels": total("fbl_feedback_total", **as_champion),
            "candidate_labels": total("fbl_feedback_total", **as_candidate),
            "champion_answers": total("fbl_predictions_total", **as_champion),
            "candidate_answers": total("fbl_predictions_total", **as_candidate),
        }
        if regression:
            queries |= {
                "champion_squared_error": total("fbl_feedback_squared_error_total", **as_champion),
                "candidate_squared_error": total("fbl_feedback_squared_error_total", **as_candidate),
                "champion_fourth_power_error": total("fbl_feedback_fourth_power_error_total", **as_champion),
                "candidate_fourth_power_error": total(
                    "fbl_feedback_fourth_power_error_total", **as_candidate
                ),
            }
        else:
            queries |= {
                "champion_correct": total("fbl_feedback_correct_total", **as_champion),
                "candidate_correct": total("fbl_feedback_correct_total", **as_candidate),
            }
    return tuple(StageQuery(name, query) for name, query in queries.items())


def counts_of(results: tuple[tuple[str, QueryResult], ...]) -> dict[str, float] | str:
    """The counts, or why they cannot be read. No series yet is a count of 0: nothing was labelled."""
    counts: dict[str, float] = {}
    for name, result in results:
        if result.has_value and result.value is not None:
            counts[name] = max(result.value, 0.0)
        elif result.outcome in (QueryOutcome.EMPTY, QueryOutcome.NAN):
            counts[name] = 0.0
        else:
            return f"{name}: {result.message or result.outcome}"
    return counts


def judge(spec: FeedbackLoopSpec, counts: Mapping[str, float]) -> StageResult:
    """The stage's test on its counts (increase() can extrapolate a little: counts are rounded)."""
    alpha = spec.rollout.stage.significance
    regression = spec.retrain_spec().trainer.task is Task.REGRESSION

    def whole(name: str) -> int:
        return round(counts.get(name, 0.0))

    def value(name: str) -> float:
        return counts.get(name, 0.0)

    if spec.rollout.strategy is RolloutStrategy.SHADOW:
        if regression:
            n = whole("paired")
            champion_sse, candidate_sse = value("champion_squared_error"), value("candidate_squared_error")
            difference = SquaredErrors(n, candidate_sse - champion_sse, value("difference_squared"))
            return paired_t(
                SquaredErrors(n, champion_sse, 0.0), SquaredErrors(n, candidate_sse, 0.0), difference, alpha
            )
        return mcnemar(PairedOutcomes(*(whole(name) for name in SHADOW_CLASSIFICATION)), alpha)
    if regression:
        return welch_t(
            SquaredErrors(
                whole("champion_labels"),
                value("champion_squared_error"),
                value("champion_fourth_power_error"),
            ),
            SquaredErrors(
                whole("candidate_labels"),
                value("candidate_squared_error"),
                value("candidate_fourth_power_error"),
            ),
            alpha,
        )
    champion = Proportion(whole("champion_labels"), min(whole("champion_correct"), whole("champion_labels")))
    candidate = Proportion(
        whole("candidate_labels"), min(whole("candidate_correct"), whole("candidate_labels"))
    )
    return two_proportion_z(champion, candidate, alpha)


# ---------------------------------------------------------------- following a stage


def follow_stage(
    draft: Draft,
    spec: FeedbackLoopSpec,
    namespace: str,
    target: TargetObservation | None,
    reads: tuple[tuple[str, QueryResult], ...] | None,
) -> None:
    rollout = draft.status.rollout
    assert rollout is not None
    assert rollout.stage is not None
    assert rollout.previous is not None
    if target is None:
        return
    if not target.deployment_found or not target.container_found:
        abort_rollout(draft, rollout, f"Deployment {spec.target.deployment}/{spec.target.container} is gone")
        draft.record(StageFinished(rollout.stage.strategy, Reason.ABORTED))
        return
    deployed = target.deployed
    applied = (
        deployed is not None
        and deployed.uri == rollout.previous.uri
        and deployed.candidate_uri == rollout.uri
    )
    stage = rollout.stage
    if not applied:
        # Not applied yet, or changed by someone: the stage's clock starts again once it is back.
        draft.actions.append(staged_apply(spec, namespace, rollout.previous, rollout.model))
        if stage.live_since is not None:
            stage = replace(stage, live_since=None, deadline=None)
            draft.status.rollout = replace(rollout, stage=stage, phase_started_at=draft.now)
        return
    progress = target.progress
    if stage.live_since is None:
        if progress is not None and progress.complete:
            stage = replace(stage, live_since=draft.now, deadline=draft.now + spec.rollout.stage.max_duration)
            draft.status.rollout = replace(
                rollout, stage=stage, next_measurement_at=draft.now + spec.rollout.stage.interval
            )
            _running(draft, spec, rollout.version, stage, "collecting labels")
        elif (progress is not None and progress.progress_deadline_exceeded) or (
            draft.now > rollout.phase_started_at + spec.rollout.progress_deadline
        ):
            deadline = format_duration(spec.rollout.progress_deadline)
            why = f"the Deployment was not available with the candidate within {deadline}"
            end_stage(draft, spec, namespace, replace(stage, message=why), Reason.PROGRESS_DEADLINE_EXCEEDED)
        return
    if reads is None:
        return
    counts = counts_of(reads)
    if isinstance(counts, str):
        # No evidence is no verdict: a failed read never promotes; the stage waits for the next one.
        stage = replace(stage, message=f"could not read the stage's counts: {counts}")
        draft.status.rollout = replace(
            rollout, stage=stage, next_measurement_at=draft.now + spec.rollout.stage.interval
        )
        _running(draft, spec, rollout.version, stage, stage.message)
        return
    result = judge(spec, counts)
    stage = _with_result(stage, counts, result, draft.now)
    enough = min(result.champion_labels, result.candidate_labels) >= spec.rollout.stage.min_samples
    assert stage.deadline is not None
    if not enough and draft.now < stage.deadline:
        draft.status.rollout = replace(
            rollout, stage=stage, next_measurement_at=draft.now + spec.rollout.stage.interval
        )
        _running(draft, spec, rollout.version, stage, _estimate(spec, stage))
        return
    # The one look: a verdict now, on whatever the stage has.
    verdict = result.verdict
    summary = _summary(spec, stage, result)
    stage = replace(stage, verdict=verdict, message=summary)
    draft.status.rollout = replace(rollout, stage=stage)
    if verdict is StageVerdict.WIN:
        _promote(draft, spec, namespace, stage)
    else:
        reason = Reason.STAGE_LOST if verdict is StageVerdict.LOSE else Reason.STAGE_INCONCLUSIVE
        end_stage(draft, spec, namespace, stage, reason)


def _with_result(
    stage: StageState, counts: Mapping[str, float], result: StageResult, now: datetime
) -> StageState:
    def finite(value: float) -> float | None:
        return value if math.isfinite(value) else None

    split = "champion_answers" in counts
    return replace(
        stage,
        read_at=now,
        champion_labels=result.champion_labels,
        candidate_labels=result.candidate_labels,
        champion_answers=round(counts["champion_answers"]) if split else None,
        candidate_answers=round(counts["candidate_answers"]) if split else None,
        champion_value=finite(result.champion_value),
        candidate_value=finite(result.candidate_value),
        test=result.test,
        p_value=finite(result.p_value),
        message="",
    )


def _metric_name(spec: FeedbackLoopSpec) -> str:
    return "rmse" if spec.retrain_spec().trainer.task is Task.REGRESSION else "accuracy"


def _value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _estimate(spec: FeedbackLoopSpec, stage: StageState) -> str:
    metric = _metric_name(spec)
    p_value = _value(stage.p_value)
    return (
        f"{stage.candidate_labels}/{spec.rollout.stage.min_samples} labels for the candidate, "
        f"{stage.champion_labels} for the champion; {metric} {_value(stage.candidate_value)} vs "
        f"{_value(stage.champion_value)} so far ({stage.test} p={p_value}, not yet a verdict)"
    )


def _summary(spec: FeedbackLoopSpec, stage: StageState, result: StageResult) -> str:
    metric = _metric_name(spec)
    summary = (
        f"{stage.strategy} {result.verdict}: {metric} {_value(stage.candidate_value)} (candidate, "
        f"{result.candidate_labels} labels) vs {_value(stage.champion_value)} ({stage.champion}, "
        f"{result.champion_labels} labels), {result.test} p={_value(stage.p_value)} at significance "
        f"{spec.rollout.stage.significance:g}"
    )
    if stage.candidate_answers is not None and stage.champion_answers is not None:
        answered = stage.candidate_answers + stage.champion_answers
        summary += f"; the candidate answered {stage.candidate_answers} of {answered} requests"
    return summary


def _running(draft: Draft, spec: FeedbackLoopSpec, version: str, stage: StageState, detail: str) -> None:
    left = ""
    if stage.deadline is not None:
        deadline = stage.deadline.replace(microsecond=0).isoformat().replace("+00:00", "Z")
        left = f"; verdict by {deadline} at the latest"
    message = f"{_describe_strategy(spec)} of {version}: {detail}{left}"
    draft.condition(ConditionType.ROLLED_OUT, ConditionStatus.UNKNOWN, Reason.STAGE_RUNNING, message)


def _promote(draft: Draft, spec: FeedbackLoopSpec, namespace: str, stage: StageState) -> None:
    rollout = draft.status.rollout
    assert rollout is not None
    draft.event(EventType.NORMAL, Reason.STAGE_WON, f"{rollout.version}: {stage.message}")
    draft.update_history(rollout.version, lambda e: replace(e, stage=stage.message))
    draft.record(StageFinished(stage.strategy, StageVerdict.WIN))
    start_rollout(
        draft, spec, namespace, rollout.model, RolloutKind.PROMOTION, rollout.trigger, counted=False
    )
    started = draft.status.rollout
    assert started is not None
    draft.status.rollout = replace(started, stage=stage)  # the verdict stays in view through the rollout


def end_stage(
    draft: Draft, spec: FeedbackLoopSpec, namespace: str, stage: StageState, reason: Reason
) -> None:
    """The candidate is rejected and its env removed: the champion's own apply names no candidate."""
    rollout = draft.status.rollout
    assert rollout is not None
    assert rollout.previous is not None
    verdict = {Reason.STAGE_LOST: StageVerdict.LOSE, Reason.STAGE_INCONCLUSIVE: StageVerdict.INCONCLUSIVE}
    stage = replace(stage, verdict=verdict.get(reason, stage.verdict or "Failed"))
    draft.reject(rollout.version)
    draft.status.rollout = replace(
        rollout, phase=RolloutPhase.ROLLING_BACK, phase_started_at=draft.now, reason=reason, stage=stage
    )
    draft.actions.append(
        ApplyModel(namespace, spec.target.deployment, spec.target.container, rollout.previous)
    )
    message = (
        f"{rollout.version} rejected, removing it from beside {rollout.previous.version}: {stage.message}"
    )
    draft.condition(ConditionType.ROLLED_OUT, ConditionStatus.FALSE, reason, message)  # its Event says so
    draft.update_history(
        rollout.version, lambda e: replace(e, reason=reason, message=stage.message, stage=stage.message)
    )
    draft.record(StageFinished(stage.strategy, stage.verdict or "Failed"))
