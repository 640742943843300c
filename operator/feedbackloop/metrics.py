"""The operator's own Prometheus metrics (prometheus-client); README.md lists them with their labels.

The per-loop metrics carry a `namespace` label, the loop's: scrape the operator with honor_labels (the
chart's ServiceMonitor does), or Prometheus renames it `exported_namespace` to make room for the target's.
"""

from __future__ import annotations

import contextlib
import threading

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

RECONCILE_SECONDS = Histogram(
    "feedbackloop_reconcile_duration_seconds",
    "Time one reconcile of a FeedbackLoop took, observation included.",
    ["outcome"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EVALUATION_LAG = Histogram(
    "feedbackloop_evaluation_lag_seconds",
    "How late an evaluation ran: its time minus (the previous one's time + spec.monitoring.interval).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
STATUS_WRITES = Counter(
    "feedbackloop_status_writes_total",
    "Status writes by result: written, unchanged (nothing worth a write), stale (the loop changed since it "
    "was read: read again and decide again).",
    ["result"],
)
EVALUATIONS = Counter(
    "feedbackloop_metric_evaluations_total",
    "Monitoring metric evaluations by verdict.",
    ["namespace", "loop", "metric", "verdict"],
)
METRIC_VALUE = Gauge(
    "feedbackloop_metric_value",
    "The last value of each monitoring metric (NaN when there was no data).",
    ["namespace", "loop", "metric"],
)
RETRAINS_STARTED = Counter(
    "feedbackloop_retrains_started_total",
    "Retrain Jobs launched, by trigger.",
    ["namespace", "loop", "trigger"],
)
RETRAINS_FINISHED = Counter(
    "feedbackloop_retrains_finished_total",
    "Retrains that ended, by outcome and reason.",
    ["namespace", "loop", "outcome", "reason"],
)
RECONCILE_ERRORS = Counter(
    "feedbackloop_reconcile_errors_total", "Reconciles that failed on a dependency, by kind.", ["kind"]
)
GATE_VERDICTS = Counter(
    "feedbackloop_gate_verdicts_total",
    "Validation gate checks on candidates, by metric and verdict.",
    ["namespace", "loop", "metric", "verdict"],
)
ROLLOUTS_STARTED = Counter(
    "feedbackloop_rollouts_started_total",
    "Rollouts of a version to the Deployment, by kind.",
    ["namespace", "loop", "kind"],
)
ROLLOUTS_FINISHED = Counter(
    "feedbackloop_rollouts_finished_total",
    "Rollouts that ended, by outcome (RolledOut, RolledBack, RollbackFailed, Degraded, Aborted, Rejected).",
    ["namespace", "loop", "outcome"],
)
ROLLBACKS = Counter(
    "feedbackloop_rollbacks_total",
    "Rollbacks started on a failure or an abort, by reason.",
    ["namespace", "loop", "reason"],
)
STAGES_FINISHED = Counter(
    "feedbackloop_stages_finished_total",
    "Shadow and Split stages that ended, by strategy and verdict (Win, Lose, Inconclusive, Aborted).",
    ["namespace", "loop", "strategy", "verdict"],
)
EVENTS_LOST = Counter(
    "feedbackloop_events_lost_total", "Kubernetes Events the operator could not post (best effort)."
)
LOOP_READY = Gauge(
    "feedbackloop_loop_ready",
    "1 when the FeedbackLoop's Ready condition is True, else 0; reason is the condition's reason. "
    "One series per loop.",
    ["namespace", "loop", "reason"],
)

# Every metric whose series belong to one loop, with its label names (namespace and loop first).
_PER_LOOP: tuple[tuple[MetricWrapperBase, tuple[str, ...]], ...] = (
    (EVALUATIONS, ("namespace", "loop", "metric", "verdict")),
    (METRIC_VALUE, ("namespace", "loop", "metric")),
    (RETRAINS_STARTED, ("namespace", "loop", "trigger")),
    (RETRAINS_FINISHED, ("namespace", "loop", "outcome", "reason")),
    (GATE_VERDICTS, ("namespace", "loop", "metric", "verdict")),
    (ROLLOUTS_STARTED, ("namespace", "loop", "kind")),
    (ROLLOUTS_FINISHED, ("namespace", "loop", "outcome")),
    (ROLLBACKS, ("namespace", "loop", "reason")),
    (STAGES_FINISHED, ("namespace", "loop", "strategy", "verdict")),
)

_ready_reasons: dict[tuple[str, str], str] = {}
_ready_guard = threading.Lock()


def set_loop_ready(namespace: str, loop: str, ready: bool, reason: str) -> None:
    """Exactly one series per loop: a new reason replaces the old reason's series instead of adding one."""
    with _ready_guard:
        LOOP_READY.labels(namespace, loop, reason).set(1.0 if ready else 0.0)
        previous = _ready_reasons.get((namespace, loop))
        # Set first, then remove: a scrape in between sees two series for an instant, never none.
        if previous is not None and previous != reason:
            LOOP_READY.remove(namespace, loop, previous)
        _ready_reasons[(namespace, loop)] = reason


def forget_loop(namespace: str, loop: str) -> None:
    """A deleted loop leaves no series behind: with loops created and deleted all day, they would pile up."""
    with _ready_guard:
        previous = _ready_reasons.pop((namespace, loop), None)
        if previous is not None:
            LOOP_READY.remove(namespace, loop, previous)
    for metric, names in _PER_LOOP:
        series = {
            tuple(sample.labels[name] for name in names)
            for family in metric.collect()
            for sample in family.samples
            if sample.labels.get("namespace") == namespace and sample.labels.get("loop") == loop
        }
        for labels in series:
            with contextlib.suppress(KeyError):  # removed meanwhile by another forget of the same loop
                metric.remove(*labels)
