"""Post-rollout analysis as pure functions: one measurement from an evaluation, and the verdict over all."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core_inputs import POLICY, T0, accuracy, healthy_dependencies, loop_state, spec_dict
from feedbackloop.api import MeasurementVerdict, MetricVerdict
from feedbackloop.core.analysis import (
    AnalysisPhase,
    analysis_metrics,
    assess,
    awaits_first_data,
    below_threshold,
    measure,
    not_worse,
    previous_values,
)
from feedbackloop.core.decide import decide
from feedbackloop.core.spec import AnalysisSpec, parse_spec
from feedbackloop.core.status import (
    Evaluation,
    MeasuredMetric,
    Measurement,
    MetricEvaluation,
    ThresholdStatus,
)

SUCCESS, FAIL, NONE = (
    MeasurementVerdict.SUCCESSFUL,
    MeasurementVerdict.FAILED,
    MeasurementVerdict.INCONCLUSIVE,
)
LATENCY_MAX = ThresholdStatus(max=0.25)
ACCURACY_MIN = ThresholdStatus(min=0.85)


def result(
    name: str, verdict: MetricVerdict, value: float | None, threshold: ThresholdStatus
) -> MetricEvaluation:
    message = "" if verdict is MetricVerdict.HEALTHY else "0.7 < min 0.85" if value else "no data"
    return MetricEvaluation(
        name=name, value=value, threshold=threshold, verdict=verdict, reason="r", message=message
    )


def measurements(*verdicts: MeasurementVerdict) -> tuple[Measurement, ...]:
    return tuple(
        Measurement(time=T0 + timedelta(minutes=i), verdict=v, message=f"m{i}")
        for i, v in enumerate(verdicts)
    )


@pytest.mark.parametrize(
    ("verdicts", "phase", "ending"),
    [
        ((), AnalysisPhase.RUNNING, "0/3 measurements: 0 successful, 0 failed, 0 inconclusive"),
        (
            (SUCCESS, SUCCESS),
            AnalysisPhase.RUNNING,
            "2/3 measurements: 2 successful, 0 failed, 0 inconclusive",
        ),
        ((SUCCESS, SUCCESS, SUCCESS), AnalysisPhase.SUCCESSFUL, "3 successful, 0 failed, 0 inconclusive"),
        ((SUCCESS, FAIL, SUCCESS), AnalysisPhase.SUCCESSFUL, "2 successful, 1 failed, 0 inconclusive"),
        ((FAIL, FAIL), AnalysisPhase.FAILED, "0 successful, 2 failed, 0 inconclusive; last: m1"),
        ((NONE, NONE, NONE), AnalysisPhase.INCONCLUSIVE, "3 inconclusive; last: m2"),
        ((NONE, FAIL, NONE), AnalysisPhase.INCONCLUSIVE, "1 failed, 2 inconclusive; none successful"),
    ],
)
def test_assess_follows_the_limits(
    verdicts: tuple[MeasurementVerdict, ...], phase: AnalysisPhase, ending: str
) -> None:
    analysis = AnalysisSpec(count=3, failure_limit=1, inconclusive_limit=2)
    assessment = assess(analysis, measurements(*verdicts))
    assert assessment.phase is phase
    assert assessment.message.endswith(ending)


def test_a_failed_measurement_names_each_metric_outside_its_threshold_with_value_and_threshold() -> None:
    evaluation = Evaluation(
        time=T0,
        metrics=(
            result("accuracy", MetricVerdict.BREACHED, 0.7, ACCURACY_MIN),
            result("p99_latency", MetricVerdict.HEALTHY, 0.1, LATENCY_MAX),
            result("drift", MetricVerdict.NO_DATA, None, ThresholdStatus(max=0.2)),
        ),
    )
    measured = measure(frozenset({"accuracy", "p99_latency", "drift"}), evaluation, T0)
    assert measured.verdict is MeasurementVerdict.FAILED
    assert measured.message == "accuracy 0.7 < min 0.85"
    assert measured.metrics == (
        MeasuredMetric(name="accuracy", verdict=MetricVerdict.BREACHED, value=0.7, threshold=ACCURACY_MIN),
        MeasuredMetric(
            name="drift", verdict=MetricVerdict.NO_DATA, value=None, threshold=ThresholdStatus(max=0.2)
        ),
    )


def test_no_data_is_inconclusive_and_a_clean_measurement_lists_no_metric() -> None:
    no_data = Evaluation(time=T0, metrics=(result("accuracy", MetricVerdict.NO_DATA, None, ACCURACY_MIN),))
    inconclusive = measure(frozenset({"accuracy"}), no_data, T0)
    assert (inconclusive.verdict, inconclusive.message) == (NONE, "accuracy: no data")
    assert [m.name for m in inconclusive.metrics] == ["accuracy"]

    clean = Evaluation(time=T0, metrics=(result("accuracy", MetricVerdict.HEALTHY, 0.9, ACCURACY_MIN),))
    successful = measure(frozenset({"accuracy"}), clean, T0)
    assert (successful.verdict, successful.metrics) == (SUCCESS, ())
    assert measure(frozenset({"other"}), clean, T0).message == "no metrics"


def test_analysis_judges_the_named_metrics_else_every_monitoring_metric() -> None:
    assert analysis_metrics(parse_spec(spec_dict())) == {"accuracy"}
    two = spec_dict(
        **{
            "monitoring.metrics": [
                {"name": "accuracy", "query": "a", "threshold": {"min": 0.8}},
                {"name": "latency", "query": "l", "threshold": {"max": 1}},
            ],
            "rollout.analysis.metrics": ["latency"],
        }
    )
    assert analysis_metrics(parse_spec(two)) == {"latency"}


def test_status_records_the_rendered_queries_of_each_evaluation() -> None:
    decision = decide(loop_state(), healthy_dependencies(metrics=(accuracy(0.93),)), POLICY, T0)
    evaluation = decision.status.last_evaluation
    assert evaluation is not None
    (metric,) = evaluation.metrics
    assert metric.query == "q"  # what the observation says was sent
    assert metric.samples_query == "sq"


def test_a_breach_only_held_by_hysteresis_does_not_fail_a_measurement() -> None:
    hysteresis = ThresholdStatus(min=0.85, clear_min=0.87)
    recovering = MetricEvaluation(
        name="accuracy",
        value=0.86,
        threshold=hysteresis,
        verdict=MetricVerdict.BREACHING,
        reason="ThresholdBreached",
        message="0.86 < clear 0.87 (recovering)",
    )
    below = result("accuracy", MetricVerdict.BREACHED, 0.7, hysteresis)
    evaluation = Evaluation(time=T0, metrics=(recovering,))
    assert measure(frozenset({"accuracy"}), evaluation, T0).verdict is SUCCESS
    failed = measure(frozenset({"accuracy"}), Evaluation(time=T0, metrics=(below,)), T0)
    assert failed.verdict is FAIL
    assert failed.metrics[0].threshold == ACCURACY_MIN  # analysis judged min, and says so


# ---------------------------------------------------------------- judged against the replaced version


def breached(value: float | None, threshold: ThresholdStatus = ACCURACY_MIN) -> MetricEvaluation:
    return result("accuracy", MetricVerdict.BREACHED, value, threshold)


@pytest.mark.parametrize(
    ("value", "threshold", "previous", "expected"),
    [
        (0.80, ACCURACY_MIN, 0.55, True),  # below min, above what it replaced
        (0.80, ACCURACY_MIN, 0.80, True),  # equal is not worse
        (0.50, ACCURACY_MIN, 0.55, False),  # below min and below what it replaced
        (0.80, ACCURACY_MIN, None, False),  # nothing to compare with: the threshold alone judges
        (None, ACCURACY_MIN, 0.55, False),
        (0.30, LATENCY_MAX, 0.40, True),  # above max, below what it replaced
        (0.50, LATENCY_MAX, 0.40, False),
        (0.90, ACCURACY_MIN, 0.95, True),  # within min and max: not outside at all
    ],
)
def test_not_worse_is_taken_in_the_direction_of_the_breached_bound(
    value: float | None, threshold: ThresholdStatus, previous: float | None, expected: bool
) -> None:
    assert not_worse(breached(value, threshold), previous) is expected


def test_a_breach_not_worse_than_the_replaced_version_is_a_successful_measurement_that_names_it() -> None:
    evaluation = Evaluation(time=T0, metrics=(breached(0.7),))
    measured = measure(frozenset({"accuracy"}), evaluation, T0, {"accuracy": 0.55})
    assert measured.verdict is SUCCESS
    assert measured.message == "accuracy 0.7 < min 0.85, not worse than 0.55 before the rollout"
    assert measured.metrics == (
        MeasuredMetric(
            name="accuracy",
            verdict=MetricVerdict.BREACHED,
            value=0.7,
            threshold=ACCURACY_MIN,
            previous_value=0.55,
        ),
    )
    assert below_threshold(measured) == measured.metrics


def test_a_breach_worse_than_the_replaced_version_fails_and_says_so() -> None:
    evaluation = Evaluation(time=T0, metrics=(breached(0.7),))
    measured = measure(frozenset({"accuracy"}), evaluation, T0, {"accuracy": 0.8})
    assert measured.verdict is FAIL
    assert measured.message == "accuracy 0.7 < min 0.85, worse than 0.8 before the rollout"
    assert below_threshold(measured) == ()


def test_a_breach_not_worse_beside_a_metric_without_data_is_inconclusive() -> None:
    evaluation = Evaluation(
        time=T0,
        metrics=(breached(0.7), result("drift", MetricVerdict.NO_DATA, None, ThresholdStatus(max=0.2))),
    )
    measured = measure(frozenset({"accuracy", "drift"}), evaluation, T0, {"accuracy": 0.55})
    assert measured.verdict is NONE
    assert [m.name for m in measured.metrics] == ["accuracy", "drift"]
    assert below_threshold(measured) == ()


def test_previous_values_are_the_analysis_metrics_with_data_in_the_replaced_versions_evaluation() -> None:
    evaluation = Evaluation(
        time=T0,
        metrics=(
            breached(0.55),
            result("p99_latency", MetricVerdict.HEALTHY, 0.1, LATENCY_MAX),
            result("drift", MetricVerdict.INSUFFICIENT_SAMPLES, 0.3, ThresholdStatus(max=0.2)),
        ),
    )
    assert previous_values(frozenset({"accuracy", "drift"}), evaluation) == {"accuracy": 0.55}
    assert previous_values(frozenset({"accuracy"}), None) == {}


# ---------------------------------------------------------------- waiting for the first data


def no_data(reason: str, verdict: MetricVerdict = MetricVerdict.NO_DATA) -> MetricEvaluation:
    return MetricEvaluation(name="accuracy", threshold=ACCURACY_MIN, verdict=verdict, reason=reason)


WAIT = AnalysisSpec(max_wait=timedelta(hours=1))
NAMES = frozenset({"accuracy"})


@pytest.mark.parametrize(
    ("missing", "expected"),
    [
        (no_data("InsufficientSamples", MetricVerdict.INSUFFICIENT_SAMPLES), True),
        (no_data("Empty"), True),
        (no_data("NaN"), True),
        (no_data("SamplesEmpty"), True),
        (no_data("SamplesNaN"), True),
        # a failed query is no evidence, and waiting would hide it: it counts at once
        (no_data("Error"), False),
        (no_data("Timeout"), False),
        (no_data("SamplesError"), False),
        (no_data("CircuitOpen"), False),
    ],
)
def test_only_data_not_there_yet_is_waited_for(missing: MetricEvaluation, expected: bool) -> None:
    evaluation = Evaluation(time=T0, metrics=(missing,))
    assert awaits_first_data(WAIT, NAMES, evaluation, (), T0, T0 + timedelta(minutes=30)) is expected


def test_the_wait_ends_at_max_wait_and_zero_does_not_wait() -> None:
    evaluation = Evaluation(time=T0, metrics=(no_data("Empty"),))
    assert awaits_first_data(WAIT, NAMES, evaluation, (), T0, T0 + timedelta(minutes=59))
    assert not awaits_first_data(WAIT, NAMES, evaluation, (), T0, T0 + timedelta(hours=1))
    instant = AnalysisSpec(max_wait=timedelta(0))
    assert not awaits_first_data(instant, NAMES, evaluation, (), T0, T0)


def test_the_wait_ends_with_the_first_measurement_with_data_or_the_first_inconclusive_one() -> None:
    evaluation = Evaluation(time=T0, metrics=(no_data("Empty"),))
    later = T0 + timedelta(minutes=10)
    with_data = Measurement(time=T0, verdict=FAIL, metrics=())
    assert not awaits_first_data(WAIT, NAMES, evaluation, (with_data,), T0, later)
    assert not awaits_first_data(WAIT, NAMES, evaluation, measurements(SUCCESS), T0, later)
    assert not awaits_first_data(WAIT, NAMES, evaluation, measurements(NONE), T0, later)
    # A failure of one metric while another still has no data: the wait goes on for the other one.
    partial = Measurement(
        time=T0,
        verdict=FAIL,
        metrics=(MeasuredMetric(name="drift", verdict=MetricVerdict.NO_DATA, threshold=ACCURACY_MIN),),
    )
    assert awaits_first_data(WAIT, NAMES, evaluation, (partial,), T0, later)
