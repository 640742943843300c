"""Validation gates on a candidate's metrics.json: absolute bounds, the delta against the current model
(both measured by the trainer on the same holdout), and optionally its statistical significance.

Deltas are read as improvements: for error metrics (lower is better) an improvement is a decrease, so
`minDeltaVsCurrent: 0.01` always means "at least 0.01 better than the current model".

When no gate names the task's primary metric (accuracy, or rmse for regression), an implied gate
`minDeltaVsCurrent: 0` on it applies: a candidate worse than the model serving, on the same recent holdout, is
not rolled out (docs/policy.md). Any gate on that metric replaces it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from feedbackloop.api import (
    ConditionStatus,
    ConditionType,
    EventType,
    GateReason,
    GateVerdict,
    Outcome,
    Reason,
)
from feedbackloop.core.decision import GateChecked
from feedbackloop.core.draft import Draft
from feedbackloop.core.spec import FeedbackLoopSpec, Gate, Mode, Task
from feedbackloop.core.stage import begin_promotion
from feedbackloop.core.status import GateResult, ModelRef

LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae"})
SIGNIFICANCE_ALPHA = 0.05
PRIMARY_METRIC = {Task.CLASSIFICATION: "accuracy", Task.REGRESSION: "rmse"}
IMPLIED = " (implied)"


def implied_gate(spec: FeedbackLoopSpec) -> Gate | None:
    """`minDeltaVsCurrent: 0` on the task's primary metric, unless a gate of the loop names that metric."""
    if spec.retrain is None:
        return None
    metric = PRIMARY_METRIC[spec.retrain.trainer.task]
    if any(gate.metric == metric for gate in spec.validation.gates):
        return None
    return Gate(metric=metric, min_delta_vs_current=0.0)


@dataclass(frozen=True)
class Comparison:
    """What the trainer measured about (candidate - current) for one metric."""

    ci_low: float | None = None
    ci_high: float | None = None
    mcnemar_p_value: float | None = None

    @classmethod
    def from_json(cls, raw: object) -> Comparison:
        if not isinstance(raw, Mapping):
            return cls()

        def number(key: str) -> float | None:
            value = raw.get(key)
            return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

        return cls(number("ciLow"), number("ciHigh"), number("mcnemarPValue"))


def _fmt(value: float) -> str:
    return f"{value:.4g}".replace("-", "\u2212")


def _improvement(metric: str, candidate: float, current: float) -> float:
    return current - candidate if metric in LOWER_IS_BETTER else candidate - current


def evaluate_implied_gate(
    gate: Gate, candidate: Mapping[str, float], current: Mapping[str, float], current_version: str | None
) -> GateResult:
    """The implied gate compares when it can: a candidate or a current model without a score for the metric
    (a bring-your-own trainer's metrics.json, a champion the trainer could not load) passes it, and says so,
    since nobody asked for the comparison."""
    value, champion = candidate.get(gate.metric), current.get(gate.metric)
    if value is None or (champion is None and current_version is not None):
        missing = "the candidate" if value is None else f"current model {current_version}"
        return GateResult(
            metric=gate.metric,
            threshold=_describe(gate) + IMPLIED,
            verdict=GateVerdict.PASSED,
            reason=GateReason.METRIC_MISSING if value is None else GateReason.CURRENT_MODEL_NOT_SCORED,
            message=f"{gate.metric}: {missing} has no {gate.metric} in metrics.json; implied gate skipped",
        )
    result = _delta_gate(gate, value, current, {}, current_version)
    return replace(result, threshold=result.threshold + IMPLIED, message=result.message + IMPLIED)


def evaluate_gates(
    gates: tuple[Gate, ...],
    candidate: Mapping[str, float],
    current: Mapping[str, float],
    comparison: Mapping[str, Comparison],
    current_version: str | None,
    implied: Gate | None = None,
) -> tuple[GateResult, ...]:
    results: list[GateResult] = []
    for gate in gates:
        value = candidate.get(gate.metric)
        if value is None:
            results.append(
                GateResult(
                    metric=gate.metric,
                    threshold=_describe(gate),
                    verdict=GateVerdict.FAILED,
                    reason=GateReason.METRIC_MISSING,
                    message=f"{gate.metric} missing from metrics.json",
                )
            )
            continue
        if gate.min is not None:
            results.append(_bound_gate(gate.metric, value, "min", gate.min))
        if gate.max is not None:
            results.append(_bound_gate(gate.metric, value, "max", gate.max))
        if gate.min_delta_vs_current is not None or gate.require_significance:
            results.append(_delta_gate(gate, value, current, comparison, current_version))
    if implied is not None:
        results.append(evaluate_implied_gate(implied, candidate, current, current_version))
    return tuple(results)


def _bound_gate(metric: str, value: float, kind: str, bound: float) -> GateResult:
    ok = value >= bound if kind == "min" else value <= bound
    failed_reason, relation = (
        (GateReason.BELOW_MIN, (">=", "<")) if kind == "min" else (GateReason.ABOVE_MAX, ("<=", ">"))
    )
    return GateResult(
        metric=metric,
        value=value,
        threshold=f"{kind} {_fmt(bound)}",
        verdict=GateVerdict.PASSED if ok else GateVerdict.FAILED,
        reason=GateReason.WITHIN_BOUND if ok else failed_reason,
        message=f"{metric} {_fmt(value)} {relation[0] if ok else relation[1]} {kind} {_fmt(bound)}",
    )


def _delta_gate(
    gate: Gate,
    value: float,
    current: Mapping[str, float],
    comparison: Mapping[str, Comparison],
    current_version: str | None,
) -> GateResult:
    minimum = gate.min_delta_vs_current or 0.0
    threshold = f"delta >= {_fmt(minimum)}" + (" (significant)" if gate.require_significance else "")
    versus = f" vs {current_version}" if current_version else ""
    champion = current.get(gate.metric)
    if champion is None and current_version is not None:
        # A known current model with no score is not beaten by default: the trainer could not compare.
        return GateResult(
            metric=gate.metric,
            value=None,
            threshold=threshold,
            verdict=GateVerdict.FAILED,
            reason=GateReason.CURRENT_MODEL_NOT_SCORED,
            message=f"{gate.metric}: current model {current_version} has no {gate.metric} in metrics.json",
        )
    if champion is None:
        # The first model has no champion to beat; the absolute bounds still apply.
        return GateResult(
            metric=gate.metric,
            value=None,
            threshold=threshold,
            verdict=GateVerdict.PASSED,
            reason=GateReason.NO_CURRENT_MODEL,
            message=f"{gate.metric}: no current model to compare with",
        )
    delta = _improvement(gate.metric, value, champion)
    if delta < minimum:
        return GateResult(
            metric=gate.metric,
            value=delta,
            threshold=threshold,
            verdict=GateVerdict.FAILED,
            reason=GateReason.DELTA_TOO_SMALL,
            message=f"{gate.metric} delta {_fmt(delta)} < {_fmt(minimum)}{versus}",
        )
    if not gate.require_significance:
        return GateResult(
            metric=gate.metric,
            value=delta,
            threshold=threshold,
            verdict=GateVerdict.PASSED,
            reason=GateReason.WITHIN_BOUND,
            message=f"{gate.metric} delta {_fmt(delta)} >= {_fmt(minimum)}{versus}",
        )
    return _significance(gate, delta, minimum, comparison.get(gate.metric, Comparison()), threshold, versus)


def _significance(
    gate: Gate, delta: float, minimum: float, stats: Comparison, threshold: str, versus: str
) -> GateResult:
    """The bootstrap interval of the improvement must clear the minimum; else McNemar's test must reject."""
    if stats.ci_low is not None and stats.ci_high is not None:
        low = -stats.ci_high if gate.metric in LOWER_IS_BETTER else stats.ci_low
        ok = low > minimum
        relation = ">" if ok else "<="
        message = (
            f"{gate.metric} delta {_fmt(delta)}{versus}: "
            f"interval lower bound {_fmt(low)} {relation} {_fmt(minimum)}"
        )
    elif stats.mcnemar_p_value is not None:
        ok = stats.mcnemar_p_value < SIGNIFICANCE_ALPHA
        relation = "<" if ok else ">="
        message = (
            f"{gate.metric} delta {_fmt(delta)}{versus}: McNemar p {stats.mcnemar_p_value:.3g} "
            f"{relation} {SIGNIFICANCE_ALPHA}"
        )
    else:
        return GateResult(
            metric=gate.metric,
            value=delta,
            threshold=threshold,
            verdict=GateVerdict.FAILED,
            reason=GateReason.SIGNIFICANCE_UNAVAILABLE,
            message=f"{gate.metric}: significance required but metrics.json has no interval or p-value",
        )
    return GateResult(
        metric=gate.metric,
        value=delta,
        threshold=threshold,
        verdict=GateVerdict.PASSED if ok else GateVerdict.FAILED,
        reason=GateReason.SIGNIFICANT if ok else GateReason.NOT_SIGNIFICANT,
        message=message,
    )


def _describe(gate: Gate) -> str:
    parts = []
    if gate.min is not None:
        parts.append(f"min {_fmt(gate.min)}")
    if gate.max is not None:
        parts.append(f"max {_fmt(gate.max)}")
    if gate.min_delta_vs_current is not None:
        parts.append(f"delta >= {_fmt(gate.min_delta_vs_current)}")
    return ", ".join(parts)


def gates_passed(results: tuple[GateResult, ...]) -> bool:
    return all(result.verdict == GateVerdict.PASSED for result in results)


def gates_message(results: tuple[GateResult, ...]) -> str:
    failed = [r.message for r in results if r.verdict == GateVerdict.FAILED]
    if failed:
        return "; ".join(failed)
    return "; ".join(r.message for r in results) or "no gates configured"


def validate_candidate(draft: Draft, spec: FeedbackLoopSpec, namespace: str) -> None:
    """Run the gates once on the new candidate; in Auto a pass starts the rollout, in Recommend it waits."""
    candidate = draft.status.candidate_model
    assert candidate is not None
    if spec.suspend:
        # A pass would start a rollout: a suspended loop starts nothing new, so its gates wait for resume.
        waiting = f"candidate {candidate.version} awaits validation until spec.suspend is false"
        draft.condition(ConditionType.VALIDATED, ConditionStatus.UNKNOWN, Reason.SUSPENDED, waiting)
        return
    current = draft.status.current_model
    results = evaluate_gates(
        spec.validation.gates,
        candidate.metrics,
        candidate.current_metrics,
        {name: Comparison.from_json(raw) for name, raw in candidate.comparison.items()},
        current.version if current else None,
        implied_gate(spec),
    )
    verdict = GateVerdict.PASSED if gates_passed(results) else GateVerdict.FAILED
    message = gates_message(results)
    draft.status.candidate_model = replace(
        candidate, gates=results, validation=verdict, validated_at=draft.now
    )
    draft.update_history(candidate.version, lambda e: replace(e, gates=verdict, validated_at=draft.now))
    for result in results:
        draft.record(GateChecked(result.metric, result.verdict))
    if verdict is GateVerdict.FAILED:
        draft.reject(candidate.version)
        failed = f"{candidate.version}: {message}"
        draft.condition(ConditionType.VALIDATED, ConditionStatus.FALSE, Reason.GATES_FAILED, failed)
        draft.update_history(
            candidate.version,
            lambda e: replace(e, outcome=Outcome.REJECTED, reason=Reason.GATES_FAILED, message=message),
        )
        return
    passed = f"{candidate.version}: {message}"
    draft.condition(ConditionType.VALIDATED, ConditionStatus.TRUE, Reason.GATES_PASSED, passed)
    if spec.mode is Mode.AUTO:
        model = ModelRef(
            version=candidate.version, uri=candidate.uri, sha256=candidate.sha256, metrics=candidate.metrics
        )
        begin_promotion(draft, spec, namespace, model, candidate.trigger)
        return
    draft.status.recommended_version = candidate.version
    draft.update_history(candidate.version, lambda e: replace(e, outcome=Outcome.RECOMMENDED))
    recommended = f"{candidate.version} passed its gates; promote it by hand"
    draft.event(EventType.NORMAL, Reason.RECOMMENDED, recommended)
