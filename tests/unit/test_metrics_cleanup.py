"""A deleted loop leaves no series of its own in the operator's metrics; other loops keep theirs."""

from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest

from feedbackloop import metrics


def _series_of(namespace: str, loop: str) -> list[str]:
    text = generate_latest(REGISTRY).decode()
    return [
        line
        for line in text.splitlines()
        if not line.startswith("#") and f'namespace="{namespace}"' in line and f'loop="{loop}"' in line
    ]


def test_forgetting_a_loop_removes_every_series_of_it_and_only_of_it() -> None:
    for loop in ("gone", "kept"):
        metrics.EVALUATIONS.labels("cleanup-ns", loop, "accuracy", "Healthy").inc()
        metrics.METRIC_VALUE.labels("cleanup-ns", loop, "accuracy").set(0.9)
        metrics.RETRAINS_STARTED.labels("cleanup-ns", loop, "Manual").inc()
        metrics.RETRAINS_FINISHED.labels("cleanup-ns", loop, "Retrained", "RetrainSucceeded").inc()
        metrics.GATE_VERDICTS.labels("cleanup-ns", loop, "accuracy", "Passed").inc()
        metrics.ROLLOUTS_STARTED.labels("cleanup-ns", loop, "Promotion").inc()
        metrics.ROLLOUTS_FINISHED.labels("cleanup-ns", loop, "RolledOut").inc()
        metrics.ROLLBACKS.labels("cleanup-ns", loop, "AnalysisFailed").inc()
        metrics.set_loop_ready("cleanup-ns", loop, True, "Ready")
    kept_before = _series_of("cleanup-ns", "kept")
    assert len(_series_of("cleanup-ns", "gone")) >= 9

    metrics.forget_loop("cleanup-ns", "gone")
    metrics.forget_loop("cleanup-ns", "gone")  # a second delete event is harmless

    assert _series_of("cleanup-ns", "gone") == []
    assert _series_of("cleanup-ns", "kept") == kept_before
    metrics.forget_loop("cleanup-ns", "kept")
    assert _series_of("cleanup-ns", "kept") == []
