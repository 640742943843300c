"""Post-rollout analysis, pure and apart from taking measurements (Argo Rollouts' `assessMetricStatus`).

Every `analysis.interval`, one measurement of the analysis metrics. More failures than `failureLimit` fails;
no data is inconclusive (never success), and more inconclusive measurements than `inconclusiveLimit` fails
too, with its own reason. After `count` measurements, at least one must have been successful.

Two departures from Argo Rollouts, both because a model's quality is only known once its labels arrive and is
judged against the version it replaced (docs/policy.md):

- until the first measurement with data, a measurement whose metrics have no data *yet* (no series, NaN, too
  few samples; not a failed query) is not recorded: the analysis waits for up to `maxWait` from its start,
  then such measurements count as inconclusive as before;
- a metric outside its threshold whose value is not worse than the replaced version's value when the rollout
  started (`rollout.previousValues`) does not fail the measurement: rolling back would serve a worse model.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from feedbackloop.api import MeasurementVerdict, MetricVerdict, Reason
from feedbackloop.core.monitoring import NO_DATA_VERDICTS, OUTSIDE_VERDICTS, within_plain_threshold
from feedbackloop.core.observations import QueryOutcome
from feedbackloop.core.spec import AnalysisSpec, FeedbackLoopSpec
from feedbackloop.core.status import Evaluation, MeasuredMetric, Measurement, MetricEvaluation

# No data *yet*: the query matched nothing, or 0/0, or too few samples; the data may still come. A failed
# query (an error, a timeout, an open circuit) is not among them: it is no evidence, and analysis does not
# wait on it.
AWAITED_REASONS = frozenset(
    {
        QueryOutcome.EMPTY,
        QueryOutcome.NAN,
        f"Samples{QueryOutcome.EMPTY}",
        f"Samples{QueryOutcome.NAN}",
        Reason.INSUFFICIENT_SAMPLES,
    }
)


class AnalysisPhase(enum.StrEnum):
    RUNNING = "Running"
    SUCCESSFUL = "Successful"
    FAILED = "Failed"  # more failed measurements than failureLimit
    INCONCLUSIVE = "Inconclusive"  # too many without data, or none successful


@dataclass(frozen=True)
class Assessment:
    phase: AnalysisPhase
    message: str


def analysis_metrics(spec: FeedbackLoopSpec) -> frozenset[str]:
    """The metrics analysis judges: rollout.analysis.metrics, else every monitoring metric."""
    names = spec.rollout.analysis.metrics or tuple(m.name for m in spec.monitoring.metrics)
    return frozenset(names)


def previous_values(names: frozenset[str], evaluation: Evaluation | None) -> dict[str, float]:
    """The analysis metrics' values in an evaluation of the version being replaced: what a new version must
    not be worse than. Metrics without data (or with too few samples) have none."""
    if evaluation is None:
        return {}
    return {
        m.name: m.value
        for m in evaluation.metrics
        if m.name in names and m.value is not None and m.verdict not in NO_DATA_VERDICTS
    }


def not_worse(result: MetricEvaluation, previous: float | None) -> bool:
    """A value outside its threshold is no worse than the replaced version's, in the direction of the bound
    it breaches: at least the previous value below a min, at most it above a max."""
    value, bounds = result.value, result.threshold
    if previous is None or value is None:
        return False
    if bounds.min is not None and value < bounds.min:
        return value >= previous
    if bounds.max is not None and value > bounds.max:
        return value <= previous
    return True


def measure(
    names: frozenset[str],
    evaluation: Evaluation,
    now: datetime,
    previous: Mapping[str, float] | None = None,
) -> Measurement:
    """One measurement from an evaluation: failed if any metric is outside its threshold and worse than the
    replaced version's value in `previous` (absent: outside its threshold is enough)."""
    before = previous or {}
    results = [m for m in evaluation.metrics if m.name in names]
    # A version is judged by min and max: hysteresis delays a recovery, it does not fail a rollout.
    outside = [m for m in results if m.verdict in OUTSIDE_VERDICTS and not within_plain_threshold(m)]
    failed = [m for m in outside if not not_worse(m, before.get(m.name))]
    tolerated = [m for m in outside if not_worse(m, before.get(m.name))]
    no_data = [m for m in results if m.verdict in NO_DATA_VERDICTS]
    if failed:
        verdict, message = MeasurementVerdict.FAILED, "; ".join(_outside(m, before) for m in failed)
    elif no_data or not results:
        verdict = MeasurementVerdict.INCONCLUSIVE
        message = "; ".join(f"{m.name}: {m.message or m.reason}" for m in no_data) or "no metrics"
    elif tolerated:
        verdict = MeasurementVerdict.SUCCESSFUL
        message = "; ".join(_outside(m, before) for m in tolerated)
    else:
        verdict, message = MeasurementVerdict.SUCCESSFUL, "all analysis metrics within thresholds"
    explained = tuple(
        MeasuredMetric(
            name=m.name,
            verdict=m.verdict,
            value=m.value,
            threshold=replace(m.threshold, clear_min=None, clear_max=None),
            previous_value=before.get(m.name),
        )
        for m in (*failed, *tolerated, *no_data)
    )
    return Measurement(time=now, verdict=verdict, message=message, metrics=explained)


def _outside(result: MetricEvaluation, before: Mapping[str, float]) -> str:
    text = f"{result.name} {result.message}"
    previous = before.get(result.name)
    if previous is None:
        return text
    relation = "not worse than" if not_worse(result, previous) else "worse than"
    return f"{text}, {relation} {previous:.4g} before the rollout"


def below_threshold(measurement: Measurement) -> tuple[MeasuredMetric, ...]:
    """The metrics a successful measurement found outside their threshold but not worse than before."""
    if measurement.verdict is not MeasurementVerdict.SUCCESSFUL:
        return ()
    return tuple(m for m in measurement.metrics if m.verdict in OUTSIDE_VERDICTS)


def awaits_first_data(
    analysis: AnalysisSpec,
    names: frozenset[str],
    evaluation: Evaluation,
    earlier: Sequence[Measurement],
    analysing_since: datetime,
    now: datetime,
) -> bool:
    """An inconclusive measurement is not recorded but waited out: before `maxWait` has passed since the
    analysis began, while no earlier measurement had data for every analysis metric (nor was recorded
    inconclusive, which only happens once the wait is over), and when each metric without data lacks it
    for want of samples, not because its query failed."""
    if now >= analysing_since + analysis.max_wait:
        return False
    if any(_wait_over(m) for m in earlier):
        return False
    missing = [m for m in evaluation.metrics if m.name in names and m.verdict in NO_DATA_VERDICTS]
    return all(_awaited(m) for m in missing)


def _wait_over(measurement: Measurement) -> bool:
    if measurement.verdict is MeasurementVerdict.INCONCLUSIVE:
        return True
    return not any(m.verdict in NO_DATA_VERDICTS for m in measurement.metrics)


def _awaited(result: MetricEvaluation) -> bool:
    return result.verdict is MetricVerdict.INSUFFICIENT_SAMPLES or result.reason in AWAITED_REASONS


def assess(analysis: AnalysisSpec, measurements: Sequence[Measurement]) -> Assessment:
    counts = {verdict: sum(1 for m in measurements if m.verdict == verdict) for verdict in MeasurementVerdict}
    summary = (
        f"{len(measurements)}/{analysis.count} measurements: {counts[MeasurementVerdict.SUCCESSFUL]} "
        f"successful, {counts[MeasurementVerdict.FAILED]} failed, "
        f"{counts[MeasurementVerdict.INCONCLUSIVE]} inconclusive"
    )
    last = f"{summary}; last: {measurements[-1].message}" if measurements else summary
    if counts[MeasurementVerdict.FAILED] > analysis.failure_limit:
        return Assessment(AnalysisPhase.FAILED, last)
    if counts[MeasurementVerdict.INCONCLUSIVE] > analysis.inconclusive_limit:
        return Assessment(AnalysisPhase.INCONCLUSIVE, last)
    if len(measurements) < analysis.count:
        return Assessment(AnalysisPhase.RUNNING, summary)
    if counts[MeasurementVerdict.SUCCESSFUL] == 0:
        return Assessment(AnalysisPhase.INCONCLUSIVE, f"{summary}; none successful")
    return Assessment(AnalysisPhase.SUCCESSFUL, summary)
