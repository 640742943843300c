"""The FeedbackLoop spec as typed, immutable values, parsed from the custom resource's body.

The CRD's schema and CEL rules reject most bad input at admission; `parse_spec` re-checks what the operator
relies on, so a loop created before a CRD upgrade still fails with a clear, field-named error.
"""

from __future__ import annotations

import enum
from datetime import timedelta
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from feedbackloop.core.api_model import ApiModel
from feedbackloop.core.durations import format_duration, parse_duration

BUILTIN_TRAINER_METRICS = frozenset(
    {"accuracy", "balanced_accuracy", "f1_macro", "log_loss", "roc_auc", "rmse", "mae", "r2"}
)

Duration = Annotated[
    timedelta,
    BeforeValidator(lambda value: parse_duration(value) if isinstance(value, str) else value),
    PlainSerializer(format_duration, return_type=str),
]


class Mode(enum.StrEnum):
    OBSERVE = "Observe"
    RECOMMEND = "Recommend"
    AUTO = "Auto"


class NoDataPolicy(enum.StrEnum):
    HOLD = "Hold"
    RETRAIN = "Retrain"
    FAIL = "Fail"


class MetricAction(enum.StrEnum):
    RETRAIN = "Retrain"
    ALERT = "Alert"


class Task(enum.StrEnum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"


class HoldoutStrategy(enum.StrEnum):
    RANDOM = "Random"
    RECENT = "Recent"


class Target(ApiModel):
    deployment: str
    container: str


class PrometheusSpec(ApiModel):
    url: str | None = Field(default=None, pattern=r"^https?://")  # None: the operator's default Prometheus
    timeout: Duration = timedelta(seconds=10)


class Threshold(ApiModel):
    min: float | None = None
    max: float | None = None
    # Hysteresis: a metric already breaching must come back to these, not just to min/max, to recover.
    clear_min: float | None = None
    clear_max: float | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Threshold:
        if self.min is None and self.max is None:
            raise ValueError("threshold needs min or max")
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"threshold min {self.min} must be below max {self.max}")
        if self.clear_min is not None:
            if self.min is None:
                raise ValueError("threshold.clearMin needs threshold.min")
            if self.clear_min < self.min:
                raise ValueError(f"threshold.clearMin {self.clear_min} must be at least min {self.min}")
            if self.max is not None and self.clear_min >= self.max:
                raise ValueError(f"threshold.clearMin {self.clear_min} must be below max {self.max}")
        if self.clear_max is not None:
            if self.max is None:
                raise ValueError("threshold.clearMax needs threshold.max")
            if self.clear_max > self.max:
                raise ValueError(f"threshold.clearMax {self.clear_max} must be at most max {self.max}")
            if self.min is not None and self.clear_max <= self.min:
                raise ValueError(f"threshold.clearMax {self.clear_max} must be above min {self.min}")
        return self


# How long a breach must last before it retrains when `for` is unset (issue 18's benchmark: docs/policy.md).
DEFAULT_FOR = timedelta(hours=1)


class MetricSpec(ApiModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    query: str = Field(min_length=1, max_length=4096)
    samples_query: str | None = Field(default=None, max_length=4096)
    min_samples: int = Field(default=0, ge=0)
    threshold: Threshold
    # Also the CRD's default; a loop stored with the old default keeps its explicit 0s (docs/policy.md).
    for_: Duration = Field(default=DEFAULT_FOR, alias="for")
    action: MetricAction = MetricAction.RETRAIN


class MonitoringSpec(ApiModel):
    interval: Duration = timedelta(seconds=60)
    no_data: NoDataPolicy = NoDataPolicy.HOLD
    labels: dict[str, str] = Field(default_factory=dict)
    metrics: tuple[MetricSpec, ...] = Field(min_length=1, max_length=20)

    @field_validator("interval")
    @classmethod
    def _interval_floor(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=10):
            raise ValueError("interval must be at least 10s")
        return value

    @field_validator("metrics")
    @classmethod
    def _unique_names(cls, value: tuple[MetricSpec, ...]) -> tuple[MetricSpec, ...]:
        names = [metric.name for metric in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"metric names must be unique: {', '.join(duplicates)}")
        return value


class Estimator(ApiModel):
    class_: str = Field(
        default="sklearn.ensemble.HistGradientBoostingClassifier",
        alias="class",
        pattern=r"^sklearn(\.[A-Za-z_][A-Za-z0-9_]*)+$",
    )
    params: dict[str, Any] = Field(default_factory=dict)


class TrainerSpec(ApiModel):
    estimator: Estimator = Field(default_factory=Estimator)
    label: str = Field(min_length=1)
    task: Task = Task.CLASSIFICATION


# The fewest rows a since-breach retrain trains on, and its wider window as a multiple of that when
# retrain.data.widerRows is unset (issue 18's benchmark chose both: docs/policy.md).
DEFAULT_MIN_ROWS = 500
DEFAULT_WIDER_ROWS_PER_MIN_ROWS = 8


class DataSpec(ApiModel):
    training: str = Field(pattern=r"^s3://")
    feedback: str | None = Field(default=None, pattern=r"^s3://")
    holdout: str | None = Field(default=None, pattern=r"^s3://")
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    holdout_strategy: HoldoutStrategy = HoldoutStrategy.RANDOM
    feedback_window: Duration | None = None
    seed: int = 0
    # A breach-triggered retrain learns the concept the breach saw: the rows labelled since it began, topped
    # up with the newest earlier rows to min_rows (docs/policy.md, issue 18).
    since_breach: bool = True
    min_rows: int = Field(default=DEFAULT_MIN_ROWS, ge=1)
    # A second candidate on the newest wider_rows rows, kept when it scores better on the since-breach
    # holdout: a small drift or noisy labels need more rows than the breach has seen. 0: since-breach only.
    wider_rows: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _wider_than_min_rows(self) -> DataSpec:
        if self.wider_rows and self.wider_rows <= self.min_rows:
            raise ValueError(
                f"retrain.data.widerRows {self.wider_rows} must be 0 or more than minRows {self.min_rows}"
            )
        return self

    @property
    def effective_wider_rows(self) -> int:
        if self.wider_rows is None:
            return DEFAULT_WIDER_ROWS_PER_MIN_ROWS * self.min_rows
        return self.wider_rows


# Whether a breach retrain scores the loop's earlier versions beside its new model, and how many at most
# when retrain.reuse.maxVersions is unset (issue 18's benchmark chose both: docs/policy.md).
DEFAULT_REUSE_ENABLED = False
DEFAULT_REUSE_MAX_VERSIONS = 5


class ReuseSpec(ApiModel):
    """A breach retrain also scores the loop's newest non-rejected earlier versions on the same holdout and
    proposes the best of them when it beats the fresh candidate: concepts recur (docs/policy.md)."""

    enabled: bool = DEFAULT_REUSE_ENABLED
    max_versions: int = Field(default=DEFAULT_REUSE_MAX_VERSIONS, ge=1, le=20)


class ResourceRequirements(ApiModel):
    requests: dict[str, str | int | float] = Field(default_factory=dict)
    limits: dict[str, str | int | float] = Field(default_factory=dict)


# The backoff's cap when retrain.maxCooldown is unset (issue 18's backtest tunes it). Not a CRD default, so a
# loop whose cooldown is longer than this stays valid: its cap is then its cooldown, and it never backs off.
DEFAULT_MAX_COOLDOWN = timedelta(hours=24)


class RetrainSpec(ApiModel):
    schedule: str | None = None
    cooldown: Duration = timedelta(hours=1)
    max_cooldown: Duration | None = None  # the cap of the backoff after unsuccessful retrains
    backoff_limit: int = Field(default=1, ge=0, le=10)
    active_deadline_seconds: int = Field(default=3600, ge=60, le=86400)
    ttl_seconds_after_finished: int = Field(default=86400, ge=0, le=604800)
    image: str | None = None
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    pod_labels: dict[str, str] = Field(default_factory=dict)
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    trainer: TrainerSpec
    data: DataSpec
    reuse: ReuseSpec = Field(default_factory=ReuseSpec)

    @model_validator(mode="after")
    def _cooldowns(self) -> RetrainSpec:
        if self.max_cooldown is not None and self.max_cooldown < self.cooldown:
            raise ValueError(
                f"retrain.maxCooldown {format_duration(self.max_cooldown)} must be at least "
                f"retrain.cooldown {format_duration(self.cooldown)}"
            )
        return self

    @property
    def backoff_cap(self) -> timedelta:
        """The longest the backoff may stretch the cooldown: maxCooldown, else the default but never below
        the cooldown."""
        return (
            self.max_cooldown if self.max_cooldown is not None else max(DEFAULT_MAX_COOLDOWN, self.cooldown)
        )


class ArtifactsSpec(ApiModel):
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    prefix: str = Field(default="", pattern=r"^([A-Za-z0-9_.-]+/)*$")
    credentials_secret: str = Field(min_length=1)


class Gate(ApiModel):
    metric: str
    min: float | None = None
    max: float | None = None
    min_delta_vs_current: float | None = None
    require_significance: bool = False


class ValidationSpec(ApiModel):
    custom_metrics: tuple[str, ...] = ()
    gates: tuple[Gate, ...] = ()


# How long post-rollout analysis waits for a new version's first data (its first labelled feedback) before a
# measurement without data counts as inconclusive (docs/policy.md, issue 18).
DEFAULT_ANALYSIS_MAX_WAIT = timedelta(hours=1)


class AnalysisSpec(ApiModel):
    interval: Duration = timedelta(minutes=1)
    count: int = Field(default=5, ge=1, le=100)
    failure_limit: int = Field(default=1, ge=0)
    inconclusive_limit: int = Field(default=2, ge=0)
    metrics: tuple[str, ...] | None = None
    max_wait: Duration = DEFAULT_ANALYSIS_MAX_WAIT


class RolloutStrategy(enum.StrEnum):
    REPLACE = "Replace"  # the candidate replaces the champion, then post-rollout analysis
    SHADOW = "Shadow"  # first scored beside the champion on every request, answering none
    SPLIT = "Split"  # first answering a stable share of requests (A/B)


# An HTTP header name of letters, digits and dashes, as the reference server's CANDIDATE_REQUEST_KEY takes it.
REQUEST_KEY_PATTERN = r"^[A-Za-z0-9-]{1,64}$"


class StageSpec(ApiModel):
    """A Shadow or Split stage: judged once, at minSamples labels per model or at maxDuration."""

    min_samples: int = Field(default=500, ge=10, le=10_000_000)
    max_duration: Duration = timedelta(hours=2)
    # How often the stage's counts are read (status shows them live); the verdict is taken once.
    interval: Duration = timedelta(minutes=1)
    significance: float = Field(default=0.05, gt=0, lt=0.5)
    weight: float = Field(default=0.1, gt=0, lt=1)  # Split: the candidate's share of requests
    request_key: str | None = Field(default=None, pattern=REQUEST_KEY_PATTERN)  # Split: a header name
    # The labels that select the server's contract series; unset: spec.monitoring.labels.
    labels: dict[str, str] | None = None


class RolloutSpec(ApiModel):
    strategy: RolloutStrategy = RolloutStrategy.REPLACE
    stage: StageSpec = Field(default_factory=StageSpec)
    progress_deadline: Duration = timedelta(minutes=10)
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    rollback_on_failure: bool = True

    @model_validator(mode="after")
    def _split_only(self) -> RolloutSpec:
        if self.stage.request_key is not None and self.strategy is not RolloutStrategy.SPLIT:
            raise ValueError("rollout.stage.requestKey applies to strategy Split only")
        return self


class FeedbackLoopSpec(ApiModel):
    mode: Mode = Mode.AUTO
    suspend: bool = False
    target: Target
    prometheus: PrometheusSpec = Field(default_factory=PrometheusSpec)
    monitoring: MonitoringSpec
    # Observe only evaluates, so it needs neither; the CRD requires both in Recommend and Auto.
    retrain: RetrainSpec | None = None
    artifacts: ArtifactsSpec | None = None
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)

    @model_validator(mode="after")
    def _references(self) -> FeedbackLoopSpec:
        if self.mode is not Mode.OBSERVE and (self.retrain is None or self.artifacts is None):
            raise ValueError(f"spec.retrain and spec.artifacts are required in mode {self.mode}")
        known = BUILTIN_TRAINER_METRICS | set(self.validation.custom_metrics)
        for gate in self.validation.gates:
            if gate.metric not in known:
                raise ValueError(f"validation.gates: unknown metric {gate.metric!r}")
        monitored = {metric.name for metric in self.monitoring.metrics}
        for name in self.rollout.analysis.metrics or ():
            if name not in monitored:
                raise ValueError(f"rollout.analysis.metrics: {name!r} is not a spec.monitoring.metrics name")
        return self

    def retrain_spec(self) -> RetrainSpec:
        if self.retrain is None:
            raise SpecError("spec.retrain is required to retrain")
        return self.retrain

    def artifacts_spec(self) -> ArtifactsSpec:
        if self.artifacts is None:
            raise SpecError("spec.artifacts is required to retrain")
        return self.artifacts


class SpecError(ValueError):
    """A spec the operator cannot act on; the message names the field."""


def parse_spec(raw: dict[str, Any]) -> FeedbackLoopSpec:
    try:
        return FeedbackLoopSpec.model_validate(raw)
    except ValidationError as err:
        problems = []
        for problem in err.errors(include_url=False):
            where = ".".join(str(part) for part in ("spec", *problem["loc"]))
            problems.append(f"{where}: {problem['msg']}")
        raise SpecError("; ".join(problems)) from None
