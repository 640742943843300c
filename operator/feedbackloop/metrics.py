"""The operator's own Prometheus metrics (prometheus-client)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILE_SECONDS = Histogram(
    "feedbackloop_reconcile_duration_seconds",
    "Time one reconcile of a FeedbackLoop took, observation included.",
    ["outcome"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
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
    "Rollouts that ended, by outcome (RolledOut, RolledBack, RollbackFailed, Degraded).",
    ["namespace", "loop", "outcome"],
)
ROLLBACKS = Counter(
    "feedbackloop_rollbacks_total", "Automatic rollbacks started, by reason.", ["namespace", "loop", "reason"]
)
EVENTS_LOST = Counter(
    "feedbackloop_events_lost_total", "Kubernetes Events the operator could not post (best effort)."
)
