"""Conditions by the Kubernetes API conventions; every reason the operator uses is a constant here."""

from __future__ import annotations

from datetime import datetime

from feedbackloop.core.status import Condition, ConditionType

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"


class Reason:
    # Ready
    READY = "Ready"
    INVALID_SPEC = "InvalidSpec"
    PROMETHEUS_UNREACHABLE = "PrometheusUnreachable"
    ARTIFACT_STORE_UNREACHABLE = "ArtifactStoreUnreachable"
    TARGET_NOT_FOUND = "TargetNotFound"
    CONTAINER_NOT_FOUND = "ContainerNotFound"
    FORBIDDEN = "Forbidden"
    KUBERNETES_API_ERROR = "KubernetesAPIError"
    # shared
    INITIALIZING = "Initializing"
    SUSPENDED = "Suspended"
    # Healthy
    WITHIN_THRESHOLDS = "WithinThresholds"
    THRESHOLD_BREACHED = "ThresholdBreached"
    NO_DATA = "NoData"
    INSUFFICIENT_SAMPLES = "InsufficientSamples"
    # Retraining
    IDLE = "Idle"
    RETRAIN_STARTED = "RetrainStarted"
    RETRAIN_RUNNING = "RetrainRunning"
    RETRAIN_SUCCEEDED = "RetrainSucceeded"
    RETRAIN_JOB_FAILED = "RetrainJobFailed"
    RETRAIN_JOB_DEADLINE_EXCEEDED = "RetrainJobDeadlineExceeded"
    RETRAIN_JOB_MISSING = "RetrainJobMissing"
    MANIFEST_MISSING = "ManifestMissing"
    ARTIFACT_DIGEST_MISMATCH = "ArtifactDigestMismatch"
    ARTIFACTS_INVALID = "ArtifactsInvalid"
    VERIFYING_ARTIFACTS = "VerifyingArtifacts"
    COOLDOWN = "CooldownActive"
    QUEUED = "Queued"
    OBSERVE_ONLY = "ObserveOnly"
    IMAGE_NOT_ALLOWED = "ImageNotAllowed"
    BLOCKED = "Blocked"
    # Validated
    NO_CANDIDATE = "NoCandidate"
    AWAITING_VALIDATION = "AwaitingValidation"
    GATES_PASSED = "GatesPassed"
    GATES_FAILED = "GatesFailed"
    # RolledOut
    NOT_ROLLED_OUT = "NotRolledOut"
    ROLLOUT_PROGRESSING = "RolloutProgressing"
    ROLLOUT_COMPLETE = "RolloutComplete"
    ANALYZING = "Analyzing"
    ANALYSIS_SUCCESSFUL = "AnalysisSuccessful"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"
    PROMOTION_REFUSED = "PromotionRefused"
    ROLLBACK_REFUSED = "RollbackRefused"
    # Degraded (also on RolledOut when there is no rollback)
    NOT_DEGRADED = "NotDegraded"
    ANALYSIS_FAILED = "AnalysisFailed"
    ANALYSIS_INCONCLUSIVE = "AnalysisInconclusive"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    ROLLBACK_FAILED = "RollbackFailed"


# Event type for a condition entering a status: True is good for all but Degraded.
_BAD_WHEN_TRUE = {ConditionType.DEGRADED}


def set_condition(
    conditions: tuple[Condition, ...],
    kind: ConditionType,
    status: str,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> tuple[Condition, ...]:
    """Replace or add one condition; lastTransitionTime moves only when the status flips."""
    previous = next((c for c in conditions if c.type == kind), None)
    transition = previous.last_transition_time if previous and previous.status == status else now
    updated = Condition(
        type=kind,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=generation,
    )
    if previous is None:
        return (*conditions, updated)
    return tuple(updated if c.type == kind else c for c in conditions)


def is_warning(kind: str, status: str) -> bool:
    if kind in _BAD_WHEN_TRUE:
        return status == TRUE
    return status == FALSE
