"""The server's Prometheus metrics (docs/serving.md lists them with the PromQL a FeedbackLoop uses)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LABELS = ("model", "model_version")
# role: champion (the model the Deployment serves) or candidate (a Shadow or Split stage's model).
ROLE_LABELS = (*LABELS, "role")
# A shadow pair: the candidate's version in model_version, the champion's beside it.
PAIR_LABELS = (*LABELS, "champion_version")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.predictions = Counter("fbl_predictions", "Rows predicted.", ROLE_LABELS, registry=r)
        self.feedback = Counter(
            "fbl_feedback", "Labels joined to a stored prediction.", ROLE_LABELS, registry=r
        )
        self.feedback_correct = Counter(
            "fbl_feedback_correct",
            "Joined labels equal to the prediction (classification).",
            ROLE_LABELS,
            registry=r,
        )
        self.feedback_abs_error = Counter(
            "fbl_feedback_abs_error", "Sum of |label - prediction| (regression).", ROLE_LABELS, registry=r
        )
        self.feedback_squared_error = Counter(
            "fbl_feedback_squared_error",
            "Sum of (label - prediction)^2 (regression).",
            ROLE_LABELS,
            registry=r,
        )
        self.feedback_fourth_power_error = Counter(
            "fbl_feedback_fourth_power_error",
            "Sum of (label - prediction)^4 (regression): with the squared errors, their variance.",
            ROLE_LABELS,
            registry=r,
        )
        self.shadow_predictions = Counter(
            "fbl_shadow_predictions",
            "Rows a shadow candidate scored beside the champion (never answered; not in fbl_predictions).",
            LABELS,
            registry=r,
        )
        self.shadow_feedback = Counter(
            "fbl_shadow_feedback",
            "Labels joined to both models' predictions of a shadow stage, by outcome: both, champion_only, "
            "candidate_only, neither (classification: which model was right), or paired (regression).",
            (*PAIR_LABELS, "outcome"),
            registry=r,
        )
        self.shadow_squared_error = Counter(
            "fbl_shadow_squared_error",
            "Sum over shadow pairs of each model's squared error, by role (regression): the candidate's "
            "minus the champion's is the paired difference.",
            (*PAIR_LABELS, "role"),
            registry=r,
        )
        self.shadow_squared_error_difference_squared = Counter(
            "fbl_shadow_squared_error_difference_squared",
            "Sum over shadow pairs of the squared difference of the two squared errors (regression).",
            PAIR_LABELS,
            registry=r,
        )
        self.shadow_unscored = Counter(
            "fbl_shadow_unscored",
            "Rows the shadow candidate did not score, by reason: backlog (the shadow queue was full), "
            "failed (the candidate could not score them), late (the label joined first).",
            ("model", "reason"),
            registry=r,
        )
        self.feedback_refused = Counter(
            "fbl_feedback_refused",
            "Labels refused, by reason: malformed, bad_signature (forged or tampered), expired, unknown, "
            "duplicate (a label for that id was joined before), full (too many rows wait for S3).",
            ("model", "reason"),
            registry=r,
        )
        self.unauthorized = Counter(
            "fbl_unauthorized_requests",
            "Requests to /predict or /feedback refused for a missing or wrong bearer token, by path.",
            ("path",),
            registry=r,
        )
        self.store_errors = Counter(
            "fbl_prediction_store_errors",
            "Calls to the shared prediction store that failed, by operation (save, join).",
            ("operation",),
            registry=r,
        )
        self.latency = Histogram(
            "fbl_prediction_latency_seconds",
            "Time to score one /predict request, by the model that answered it.",
            ROLE_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "fbl_model_info", "The loaded model (1).", (*LABELS, "version", "sha256"), registry=r
        )
        self.candidate_info = Gauge(
            "fbl_candidate_info",
            "The candidate loaded beside the champion (1), and its mode: shadow or split.",
            (*LABELS, "mode", "sha256"),
            registry=r,
        )
        self.feedback_buffered = Gauge(
            "fbl_feedback_buffered_rows",
            "Labelled rows waiting in the shared stream for S3, every replica's (sampled by this one).",
            registry=r,
        )
        self.feedback_set_aside = Counter(
            "fbl_feedback_set_aside_rows",
            "Labelled rows the Parquet schema cannot hold, set aside in the store instead of written.",
            registry=r,
        )
        self.feedback_flushed = Counter(
            "fbl_feedback_flushed_rows", "Labelled rows written to S3.", registry=r
        )
        self.feedback_flush_failures = Counter(
            "fbl_feedback_flush_failures", "Failed uploads of a feedback batch.", registry=r
        )
        self.ready = Gauge(
            "fbl_model_ready", "1 when a verified model is loaded and the server is not draining.", registry=r
        )

    def watch_drift(
        self, labels: Callable[[], tuple[str, str] | None], values: Callable[[], dict[str, float]]
    ) -> None:
        self.registry.register(_DriftCollector(labels, values))


class _DriftCollector(Collector):
    """PSI is computed at scrape time, so predictions pay nothing for it."""

    def __init__(self, labels: Callable[[], tuple[str, str] | None], values: Callable[[], dict[str, float]]):
        self._labels = labels
        self._values = values

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "fbl_feature_drift_psi",
            "PSI of the recent inputs against the training distribution (reference.json).",
            labels=[*LABELS, "feature"],
        )
        labels = self._labels()
        if labels is not None:
            for feature, value in sorted(self._values().items()):
                family.add_metric([*labels, feature], value)
        yield family
