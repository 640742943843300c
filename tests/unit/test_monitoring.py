"""Monitoring verdicts, table-driven, with an injected `now`."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core_inputs import T0, accuracy, spec_dict
from feedbackloop.api import MetricVerdict
from feedbackloop.core.monitoring import evaluate, evaluate_metric, healthy_condition, sustained_breaches
from feedbackloop.core.observations import MetricObservation, QueryOutcome, QueryResult
from feedbackloop.core.spec import FeedbackLoopSpec, NoDataPolicy, parse_spec
from feedbackloop.core.status import Evaluation, MetricEvaluation, ThresholdStatus

SPEC = parse_spec(spec_dict())
METRIC = SPEC.monitoring.metrics[0]


ENOUGH_SAMPLES = QueryResult.of(500)


def observed(result: QueryResult, samples: QueryResult | None = ENOUGH_SAMPLES) -> MetricObservation:
    return MetricObservation("accuracy", "q", result, samples)


@pytest.mark.parametrize(
    ("result", "samples", "verdict", "reason"),
    [
        (QueryResult.of(0.9), QueryResult.of(500), MetricVerdict.HEALTHY, "WithinThresholds"),
        (QueryResult.of(0.85), QueryResult.of(500), MetricVerdict.HEALTHY, "WithinThresholds"),
        (QueryResult.of(0.7), QueryResult.of(500), MetricVerdict.BREACHING, "ThresholdBreached"),
        (QueryResult.of(0.7), QueryResult.of(99), MetricVerdict.INSUFFICIENT_SAMPLES, "InsufficientSamples"),
        (QueryResult.of(0.7), QueryResult(QueryOutcome.EMPTY), MetricVerdict.NO_DATA, "SamplesEmpty"),
        (QueryResult(QueryOutcome.EMPTY), QueryResult.of(500), MetricVerdict.NO_DATA, "Empty"),
        (QueryResult.of(float("nan")), QueryResult.of(500), MetricVerdict.NO_DATA, "NaN"),
        (QueryResult.of(float("inf")), QueryResult.of(500), MetricVerdict.NO_DATA, "Infinite"),
        (
            QueryResult(QueryOutcome.ERROR, message="bad_data"),
            QueryResult.of(500),
            MetricVerdict.NO_DATA,
            "Error",
        ),
        (QueryResult(QueryOutcome.TIMEOUT), QueryResult.of(500), MetricVerdict.NO_DATA, "Timeout"),
        (
            QueryResult(QueryOutcome.MULTIPLE_SERIES),
            QueryResult.of(500),
            MetricVerdict.NO_DATA,
            "MultipleSeries",
        ),
    ],
)
def test_first_evaluation_verdicts(
    result: QueryResult, samples: QueryResult, verdict: MetricVerdict, reason: str
) -> None:
    evaluation = evaluate_metric(METRIC, observed(result, samples), None, NoDataPolicy.HOLD, T0)
    assert (evaluation.verdict, evaluation.reason) == (verdict, reason)


def test_breach_must_last_for_before_it_counts() -> None:
    first = evaluate_metric(METRIC, accuracy(0.7), None, NoDataPolicy.HOLD, T0)
    later = evaluate_metric(METRIC, accuracy(0.7), first, NoDataPolicy.HOLD, T0 + timedelta(minutes=9))
    sustained = evaluate_metric(METRIC, accuracy(0.7), later, NoDataPolicy.HOLD, T0 + timedelta(minutes=10))

    assert first.breaching_since == T0 and first.verdict is MetricVerdict.BREACHING
    assert later.breaching_since == T0 and later.verdict is MetricVerdict.BREACHING
    assert sustained.breaching_since == T0 and sustained.verdict is MetricVerdict.BREACHED
    assert sustained.message == "0.7 < min 0.85"


def test_recovery_resets_breaching_since() -> None:
    breaching = evaluate_metric(METRIC, accuracy(0.7), None, NoDataPolicy.HOLD, T0)
    recovered = evaluate_metric(
        METRIC, accuracy(0.9), breaching, NoDataPolicy.HOLD, T0 + timedelta(minutes=1)
    )
    again = evaluate_metric(METRIC, accuracy(0.7), recovered, NoDataPolicy.HOLD, T0 + timedelta(minutes=2))
    assert recovered.breaching_since is None
    assert again.breaching_since == T0 + timedelta(minutes=2)


@pytest.mark.parametrize("policy", list(NoDataPolicy))
def test_no_data_after_a_breach_keeps_its_start(policy: NoDataPolicy) -> None:
    breaching = evaluate_metric(METRIC, accuracy(0.7), None, policy, T0)
    no_data = evaluate_metric(
        METRIC, observed(QueryResult(QueryOutcome.EMPTY)), breaching, policy, T0 + timedelta(minutes=1)
    )
    assert no_data.verdict is MetricVerdict.NO_DATA
    assert no_data.breaching_since == T0


@pytest.mark.parametrize(("policy", "since"), [(NoDataPolicy.HOLD, None), (NoDataPolicy.RETRAIN, T0)])
def test_no_data_starts_a_breach_only_under_retrain(policy: NoDataPolicy, since: object) -> None:
    no_data = evaluate_metric(METRIC, observed(QueryResult(QueryOutcome.EMPTY)), None, policy, T0)
    assert no_data.breaching_since == since


@pytest.mark.parametrize("policy", ["Hold", "Fail"])
def test_a_gap_in_the_data_does_not_restart_for(policy: str) -> None:
    spec = parse_spec(spec_dict(**{"monitoring.noData": policy}))
    empty = observed(QueryResult(QueryOutcome.EMPTY))
    first = evaluate(spec, [accuracy(0.7)], None, T0)
    gap = evaluate(spec, [empty], first, T0 + timedelta(minutes=5))
    again = evaluate(spec, [accuracy(0.7)], gap, T0 + timedelta(minutes=9))
    due = evaluate(spec, [accuracy(0.7)], again, T0 + timedelta(minutes=10))

    assert gap.metrics[0].message.endswith("(breach since 2026-11-28T12:00:00Z kept)")
    assert sustained_breaches(spec, gap, gap.time) == []
    assert again.metrics[0].breaching_since == T0
    assert sustained_breaches(spec, again, again.time) == []  # 9 minutes since the first breach
    assert due.metrics[0].verdict is MetricVerdict.BREACHED
    assert [m.name for m in sustained_breaches(spec, due, due.time)] == ["accuracy"]


@pytest.mark.parametrize("policy", ["Hold", "Fail"])
def test_no_data_alone_never_fires_under_hold_or_fail(policy: str) -> None:
    spec = parse_spec(spec_dict(**{"monitoring.noData": policy}))
    empty = observed(QueryResult(QueryOutcome.EMPTY))
    breached = evaluate(spec, [accuracy(0.7)], None, T0)
    evaluation = breached
    for minute in range(1, 60, 5):  # long past `for` (10m), never a value
        evaluation = evaluate(spec, [empty], evaluation, T0 + timedelta(minutes=minute))
        assert sustained_breaches(spec, evaluation, evaluation.time) == []
    assert evaluation.metrics[0].breaching_since == T0
    never_breached = evaluate(spec, [empty], None, T0)
    assert sustained_breaches(spec, never_breached, T0 + timedelta(hours=1)) == []


def test_no_data_fires_under_retrain_once_for_has_passed() -> None:
    spec = parse_spec(spec_dict(**{"monitoring.noData": "Retrain"}))
    empty = observed(QueryResult(QueryOutcome.EMPTY))
    first = evaluate(spec, [empty], None, T0)
    due = evaluate(spec, [empty], first, T0 + timedelta(minutes=10))
    assert sustained_breaches(spec, first, first.time) == []
    assert [m.name for m in sustained_breaches(spec, due, due.time)] == ["accuracy"]


def test_max_threshold_breach_message() -> None:
    spec = parse_spec(
        spec_dict(
            **{
                "monitoring.metrics": [
                    # for: 0s, explicit since the default became 1h: a first breach is already Breached
                    {
                        "name": "p99_latency",
                        "query": "q",
                        "threshold": {"max": 0.25},
                        "action": "Alert",
                        "for": "0s",
                    }
                ]
            }
        )
    )
    result = evaluate_metric(
        spec.monitoring.metrics[0],
        MetricObservation("p99_latency", "q", QueryResult.of(0.4)),
        None,
        NoDataPolicy.HOLD,
        T0,
    )
    assert result.verdict is MetricVerdict.BREACHED
    assert result.message == "0.4 > max 0.25"
    assert sustained_breaches(spec, Evaluation(time=T0, metrics=(result,)), T0) == []


def _evaluation(*results: MetricEvaluation) -> Evaluation:
    return Evaluation(time=T0, metrics=results)


def _result(verdict: MetricVerdict, message: str = "") -> MetricEvaluation:
    return MetricEvaluation(
        name="accuracy",
        threshold=ThresholdStatus(min=0.85),
        verdict=verdict,
        reason=str(verdict),
        message=message,
    )


@pytest.mark.parametrize(
    ("policy", "verdict", "expected"),
    [
        ("Hold", MetricVerdict.HEALTHY, ("True", "WithinThresholds")),
        ("Hold", MetricVerdict.BREACHING, ("False", "ThresholdBreached")),
        ("Hold", MetricVerdict.NO_DATA, ("Unknown", "NoData")),
        ("Retrain", MetricVerdict.NO_DATA, ("Unknown", "NoData")),
        ("Fail", MetricVerdict.NO_DATA, ("False", "NoData")),
        ("Hold", MetricVerdict.INSUFFICIENT_SAMPLES, ("Unknown", "InsufficientSamples")),
    ],
)
def test_healthy_condition(policy: str, verdict: MetricVerdict, expected: tuple[str, str]) -> None:
    spec = parse_spec(spec_dict(**{"monitoring.noData": policy}))
    status, reason, _ = healthy_condition(spec, _evaluation(_result(verdict)))
    assert (status, reason) == expected


def test_evaluate_carries_state_per_metric_name() -> None:
    first = evaluate(SPEC, [accuracy(0.7)], None, T0)
    second = evaluate(SPEC, [accuracy(0.7)], first, T0 + timedelta(minutes=11))
    assert second.time == T0 + timedelta(minutes=11)
    assert second.metrics[0].breaching_since == T0
    assert [m.name for m in sustained_breaches(SPEC, second, second.time)] == ["accuracy"]


# ---------------------------------------------------------------- hysteresis (threshold.clearMin / clearMax)


def _with_threshold(threshold: dict[str, float]) -> FeedbackLoopSpec:
    return parse_spec(
        spec_dict(
            **{
                "monitoring.metrics": [
                    {"name": "accuracy", "query": "q", "threshold": threshold, "for": "10m"},
                ]
            }
        )
    )


def test_a_breaching_metric_recovers_only_at_clear_min() -> None:
    spec = _with_threshold({"min": 0.85, "clearMin": 0.87})
    breaching = evaluate(spec, [accuracy(0.8)], None, T0)
    held = evaluate(spec, [accuracy(0.86)], breaching, T0 + timedelta(minutes=5))
    due = evaluate(spec, [accuracy(0.869)], held, T0 + timedelta(minutes=10))
    cleared = evaluate(spec, [accuracy(0.87)], due, T0 + timedelta(minutes=11))

    assert held.metrics[0].verdict is MetricVerdict.BREACHING
    assert held.metrics[0].message == "0.86 < clear 0.87 (recovering)"
    assert held.metrics[0].breaching_since == T0
    assert held.metrics[0].threshold == ThresholdStatus(min=0.85, clear_min=0.87)
    assert due.metrics[0].verdict is MetricVerdict.BREACHED  # a hovering value keeps `for` running
    assert [m.name for m in sustained_breaches(spec, due, due.time)] == ["accuracy"]
    assert cleared.metrics[0].verdict is MetricVerdict.HEALTHY
    assert cleared.metrics[0].breaching_since is None
    status, reason, message = healthy_condition(spec, held)
    assert (status, reason) == ("False", "ThresholdBreached")
    assert message == "accuracy 0.86 < clear 0.87 (recovering) (breaching, must last 10m)"


def test_a_breaching_metric_recovers_only_at_clear_max() -> None:
    spec = _with_threshold({"max": 0.25, "clearMax": 0.2})
    breaching = evaluate(spec, [accuracy(0.3)], None, T0)
    held = evaluate(spec, [accuracy(0.22)], breaching, T0 + timedelta(minutes=1))
    cleared = evaluate(spec, [accuracy(0.2)], held, T0 + timedelta(minutes=2))
    assert held.metrics[0].message == "0.22 > clear 0.2 (recovering)"
    assert cleared.metrics[0].verdict is MetricVerdict.HEALTHY


def test_clear_bounds_do_not_apply_to_a_metric_that_was_not_breaching() -> None:
    spec = _with_threshold({"min": 0.85, "clearMin": 0.87})
    healthy = evaluate(spec, [accuracy(0.9)], None, T0)
    between = evaluate(spec, [accuracy(0.86)], healthy, T0 + timedelta(minutes=1))
    first = evaluate(spec, [accuracy(0.86)], None, T0)
    assert between.metrics[0].verdict is MetricVerdict.HEALTHY
    assert first.metrics[0].verdict is MetricVerdict.HEALTHY


def test_clear_min_holds_a_breach_across_a_gap_in_the_data() -> None:
    spec = _with_threshold({"min": 0.85, "clearMin": 0.87})
    breaching = evaluate(spec, [accuracy(0.8)], None, T0)
    gap = evaluate(spec, [observed(QueryResult(QueryOutcome.EMPTY))], breaching, T0 + timedelta(minutes=1))
    held = evaluate(spec, [accuracy(0.86)], gap, T0 + timedelta(minutes=2))
    assert held.metrics[0].message == "0.86 < clear 0.87 (recovering)"


def test_without_clear_bounds_a_metric_recovers_at_min() -> None:
    breaching = evaluate(SPEC, [accuracy(0.8)], None, T0)
    recovered = evaluate(SPEC, [accuracy(0.85)], breaching, T0 + timedelta(minutes=1))
    assert recovered.metrics[0].verdict is MetricVerdict.HEALTHY
