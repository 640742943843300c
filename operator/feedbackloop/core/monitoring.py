"""Monitoring verdicts: samples, then threshold, then `for`.

No data is never healthy, and never a breach unless noData is Retrain. Under Hold and Fail it does not end a
breach either: the breach's start is kept, so a gap in the data does not restart `for`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from feedbackloop.api import ConditionStatus, MetricVerdict, Reason
from feedbackloop.core.durations import format_duration
from feedbackloop.core.observations import MetricObservation
from feedbackloop.core.spec import FeedbackLoopSpec, MetricAction, MetricSpec, NoDataPolicy
from feedbackloop.core.status import QUERY_TEXT_LIMIT, Evaluation, MetricEvaluation, ThresholdStatus

NO_DATA_VERDICTS = frozenset({MetricVerdict.NO_DATA, MetricVerdict.INSUFFICIENT_SAMPLES})
OUTSIDE_VERDICTS = frozenset({MetricVerdict.BREACHING, MetricVerdict.BREACHED})


def evaluation_due(
    spec: FeedbackLoopSpec,
    last: Evaluation | None,
    generation: int | None,
    observed_generation: int | None,
    now: datetime,
) -> bool:
    if last is None or generation != observed_generation:
        return True
    return now >= last.time + spec.monitoring.interval


def evaluate_metric(
    metric: MetricSpec,
    observed: MetricObservation,
    previous: MetricEvaluation | None,
    policy: NoDataPolicy,
    now: datetime,
) -> MetricEvaluation:
    bounds = metric.threshold
    threshold = ThresholdStatus(
        min=bounds.min, max=bounds.max, clear_min=bounds.clear_min, clear_max=bounds.clear_max
    )
    value = observed.result.value
    samples = observed.samples.value if observed.samples and observed.samples.has_value else None

    if observed.samples is not None and not observed.samples.has_value:
        verdict, reason = MetricVerdict.NO_DATA, f"Samples{observed.samples.outcome}"
        message = f"samples query: {observed.samples.message or observed.samples.outcome}"
    elif metric.min_samples and (samples is None or samples < metric.min_samples):
        verdict, reason = MetricVerdict.INSUFFICIENT_SAMPLES, Reason.INSUFFICIENT_SAMPLES
        message = f"{_fmt(samples)} samples < minSamples {metric.min_samples}"
    elif not observed.result.has_value or value is None:
        verdict, reason = MetricVerdict.NO_DATA, str(observed.result.outcome)
        message = observed.result.message or f"query outcome {observed.result.outcome}"
    elif breach := _breach_text(metric, value, recovering=bool(previous and previous.breaching_since)):
        verdict, reason, message = MetricVerdict.BREACHING, Reason.THRESHOLD_BREACHED, breach
    else:
        verdict, reason, message = MetricVerdict.HEALTHY, Reason.WITHIN_THRESHOLDS, ""

    counts_as_breach = verdict is MetricVerdict.BREACHING or (
        verdict in NO_DATA_VERDICTS and policy is NoDataPolicy.RETRAIN
    )
    since = None
    if counts_as_breach:
        since = previous.breaching_since if previous and previous.breaching_since else now
        if verdict is MetricVerdict.BREACHING and now - since >= metric.for_:
            verdict = MetricVerdict.BREACHED
    elif verdict in NO_DATA_VERDICTS and previous is not None and previous.breaching_since is not None:
        # A gap in the data says nothing about the breach: keep its start so `for` is not restarted.
        since = previous.breaching_since
        message += f" (breach since {_iso(since)} kept)"
    return MetricEvaluation(
        name=metric.name,
        query=_shown(observed.query),
        samples_query=_shown(observed.samples_query),
        value=value,
        threshold=threshold,
        samples=samples,
        verdict=verdict,
        reason=reason,
        message=message,
        breaching_since=since,
    )


def evaluate(
    spec: FeedbackLoopSpec,
    observed: Sequence[MetricObservation],
    previous: Evaluation | None,
    now: datetime,
) -> Evaluation:
    by_name = {o.name: o for o in observed}
    before = {m.name: m for m in previous.metrics} if previous else {}
    results = tuple(
        evaluate_metric(metric, by_name[metric.name], before.get(metric.name), spec.monitoring.no_data, now)
        for metric in spec.monitoring.metrics
        if metric.name in by_name
    )
    return Evaluation(time=now, metrics=results)


def sustained_breaches(
    spec: FeedbackLoopSpec, evaluation: Evaluation, now: datetime
) -> list[MetricEvaluation]:
    """Retrain-action metrics whose breach (or no data, under noData=Retrain) has lasted `for`.

    Under Hold and Fail a metric without data keeps its breach's start, but only a breaching value fires.
    """
    specs = {m.name: m for m in spec.monitoring.metrics}
    firing = OUTSIDE_VERDICTS | (
        NO_DATA_VERDICTS if spec.monitoring.no_data is NoDataPolicy.RETRAIN else frozenset()
    )
    sustained = []
    for result in evaluation.metrics:
        metric = specs.get(result.name)
        if metric is None or metric.action is not MetricAction.RETRAIN or result.breaching_since is None:
            continue
        if result.verdict not in firing:
            continue
        if now - result.breaching_since >= metric.for_:
            sustained.append(result)
    return sustained


def healthy_condition(spec: FeedbackLoopSpec, evaluation: Evaluation) -> tuple[ConditionStatus, Reason, str]:
    """(status, reason, message) of the Healthy condition."""
    breaching = [m for m in evaluation.metrics if m.verdict in OUTSIDE_VERDICTS]
    if breaching:
        return (
            ConditionStatus.FALSE,
            Reason.THRESHOLD_BREACHED,
            "; ".join(_describe(spec, m) for m in breaching),
        )
    no_data = [m for m in evaluation.metrics if m.verdict in NO_DATA_VERDICTS]
    if no_data:
        reason = (
            Reason.INSUFFICIENT_SAMPLES
            if all(m.verdict is MetricVerdict.INSUFFICIENT_SAMPLES for m in no_data)
            else Reason.NO_DATA
        )
        message = "; ".join(f"{m.name}: {m.message}" for m in no_data)
        status = (
            ConditionStatus.FALSE if spec.monitoring.no_data is NoDataPolicy.FAIL else ConditionStatus.UNKNOWN
        )
        return status, reason, message
    count = len(evaluation.metrics)
    return (
        ConditionStatus.TRUE,
        Reason.WITHIN_THRESHOLDS,
        f"{count} metric{'s' if count != 1 else ''} within thresholds",
    )


def _breach_text(metric: MetricSpec, value: float, recovering: bool) -> str:
    """Why `value` breaches, or "" when it does not. A metric that was breaching (`recovering`) must come back
    to its clear bounds, where set, to recover: hysteresis, so a value hovering at a bound does not flap."""
    bounds = metric.threshold
    if bounds.min is not None and value < bounds.min:
        return f"{_fmt(value)} < min {_fmt(bounds.min)}"
    if bounds.max is not None and value > bounds.max:
        return f"{_fmt(value)} > max {_fmt(bounds.max)}"
    if recovering and bounds.clear_min is not None and value < bounds.clear_min:
        return f"{_fmt(value)} < clear {_fmt(bounds.clear_min)} (recovering)"
    if recovering and bounds.clear_max is not None and value > bounds.clear_max:
        return f"{_fmt(value)} > clear {_fmt(bounds.clear_max)} (recovering)"
    return ""


def within_plain_threshold(result: MetricEvaluation) -> bool:
    """The value is within min and max: a breach only held by hysteresis, which judging a version ignores."""
    value, bounds = result.value, result.threshold
    return (
        value is not None
        and (bounds.min is None or value >= bounds.min)
        and (bounds.max is None or value <= bounds.max)
    )


def _describe(spec: FeedbackLoopSpec, result: MetricEvaluation) -> str:
    metric = next(m for m in spec.monitoring.metrics if m.name == result.name)
    text = f"{result.name} {result.message}"
    if result.verdict is MetricVerdict.BREACHING and metric.for_ > timedelta(0):
        text += f" (breaching, must last {format_duration(metric.for_)})"
    return text


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.4g}"


def _shown(query: str | None) -> str | None:
    if query is None or len(query) <= QUERY_TEXT_LIMIT:
        return query
    return query[: QUERY_TEXT_LIMIT - 1] + "\u2026"
