"""Post-rollout analysis, pure and apart from taking measurements (Argo Rollouts' `assessMetricStatus`).

Every `analysis.interval`, one measurement of the analysis metrics. More failures than `failureLimit` fails;
no data is inconclusive (never success), and more inconclusive measurements than `inconclusiveLimit` fails
too, with its own reason. After `count` measurements, at least one must have been successful.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from feedbackloop.api import MeasurementVerdict
from feedbackloop.core.monitoring import NO_DATA_VERDICTS, OUTSIDE_VERDICTS, within_plain_threshold
from feedbackloop.core.spec import AnalysisSpec, FeedbackLoopSpec
from feedbackloop.core.status import Evaluation, MeasuredMetric, Measurement


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


def measure(names: frozenset[str], evaluation: Evaluation, now: datetime) -> Measurement:
    """One measurement from an evaluation: failed if any metric is outside its threshold."""
    results = [m for m in evaluation.metrics if m.name in names]
    # A version is judged by min and max: hysteresis delays a recovery, it does not fail a rollout.
    failed = [m for m in results if m.verdict in OUTSIDE_VERDICTS and not within_plain_threshold(m)]
    no_data = [m for m in results if m.verdict in NO_DATA_VERDICTS]
    if failed:
        verdict, message = MeasurementVerdict.FAILED, "; ".join(f"{m.name} {m.message}" for m in failed)
    elif no_data or not results:
        verdict = MeasurementVerdict.INCONCLUSIVE
        message = "; ".join(f"{m.name}: {m.message or m.reason}" for m in no_data) or "no metrics"
    else:
        verdict, message = MeasurementVerdict.SUCCESSFUL, "all analysis metrics within thresholds"
    explained = tuple(
        MeasuredMetric(
            name=m.name,
            verdict=m.verdict,
            value=m.value,
            threshold=replace(m.threshold, clear_min=None, clear_max=None),
        )
        for m in (*failed, *no_data)
    )
    return Measurement(time=now, verdict=verdict, message=message, metrics=explained)


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
