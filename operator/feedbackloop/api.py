"""The FeedbackLoop API's names in one place: the resource, annotations, labels, condition types, reasons,
phases, outcomes, verdicts, and the serving contract's environment.

Every other module and every test imports these names from here; a string with meaning is an enum, so a typo
is a type error rather than a silent mismatch. Pure: no imports beyond the standard library.
"""

from __future__ import annotations

import enum

# ---- the resource
GROUP = "feedbackloop.dev"
VERSION = "v1alpha1"
KIND = "FeedbackLoop"
PLURAL = "feedbackloops"
SHORT_NAME = "fbl"
API_VERSION = f"{GROUP}/{VERSION}"
CRD_NAME = f"{PLURAL}.{GROUP}"

# ---- the operator's own bookkeeping on loops (kopf's progress and diff-base annotations use this prefix)
ANNOTATION_PREFIX = GROUP
FINALIZER = f"{GROUP}/finalizer"
FIELD_MANAGER = "feedbackloop-operator"  # server-side apply owner of the serving fields; also managed-by

# ---- annotations users write on a loop: each distinct value is one request, handled once
RETRAIN_REQUEST_ANNOTATION = f"{GROUP}/retrain-requested"
PROMOTE_ANNOTATION = f"{GROUP}/promote"
ROLLBACK_ANNOTATION = f"{GROUP}/rollback-to"
ABORT_ANNOTATION = (
    f"{GROUP}/abort"  # stop the rollout in flight and roll back, in every mode and while suspended
)
# A new value makes the same promote, rollback-to or abort a new request (as Flux's
# reconcile.fluxcd.io/requestedAt).
REQUESTED_AT_ANNOTATION = f"{GROUP}/requested-at"

# ---- annotations the operator writes on objects it creates or owns fields of
MODEL_VERSION_ANNOTATION = f"{GROUP}/model-version"  # on the serving Deployment's pod template
TRIGGER_REASON_ANNOTATION = f"{GROUP}/trigger-reason"  # on a retrain Job

# ---- labels on retrain Jobs and their pods
LABEL_LOOP = f"{GROUP}/loop"
LABEL_VERSION = f"{GROUP}/version"
LABEL_COMPONENT = f"{GROUP}/component"
LABEL_TRIGGER = f"{GROUP}/trigger"
LABEL_APP_NAME = "app.kubernetes.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
COMPONENT_RETRAIN = "retrain"
TRAINER_APP_NAME = "feedbackloop-trainer"
# On retrain pods: keeps a finished pod, and the digest in its termination message, until the loop's status
# records the result, so a Job garbage-collected first (ttlSecondsAfterFinished: 0) loses nothing.
RETRAIN_POD_FINALIZER = f"{GROUP}/retrain-result"

# ---- the serving contract: what the operator sets on the target container
ENV_MODEL_URI = "MODEL_URI"
ENV_MODEL_SHA256 = "MODEL_SHA256"
# A Shadow or Split stage (docs/serving.md): a candidate served beside the champion, verified like it.
ENV_CANDIDATE_MODEL_URI = "CANDIDATE_MODEL_URI"
ENV_CANDIDATE_MODEL_SHA256 = "CANDIDATE_MODEL_SHA256"
ENV_CANDIDATE_MODE = "CANDIDATE_MODE"
ENV_CANDIDATE_WEIGHT = "CANDIDATE_WEIGHT"  # split: the share of requests the candidate answers
ENV_CANDIDATE_REQUEST_KEY = "CANDIDATE_REQUEST_KEY"  # split: the header whose value picks one model per user
CANDIDATE_MODE_SHADOW = "shadow"
CANDIDATE_MODE_SPLIT = "split"
# The `role` label of the server's metrics: the model that answers, or the candidate beside it.
ROLE_CHAMPION = "champion"
ROLE_CANDIDATE = "candidate"


@enum.unique
class ConditionType(enum.StrEnum):
    READY = "Ready"
    HEALTHY = "Healthy"
    RETRAINING = "Retraining"
    VALIDATED = "Validated"
    ROLLED_OUT = "RolledOut"
    DEGRADED = "Degraded"
    IN_SYNC = "InSync"  # the Deployment serves the model this loop rolled out (Argo CD's Synced/OutOfSync)


@enum.unique
class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


@enum.unique
class Reason(enum.StrEnum):
    """Every reason a condition (and the Event of its transition) carries."""

    # Ready
    READY = "Ready"
    INVALID_SPEC = "InvalidSpec"
    PROMETHEUS_UNREACHABLE = "PrometheusUnreachable"
    PROMETHEUS_CIRCUIT_OPEN = "PrometheusCircuitOpen"  # failed repeatedly: not queried until a cool-down ends
    PROMETHEUS_NOT_ALLOWED = "PrometheusNotAllowed"
    ARTIFACT_STORE_UNREACHABLE = "ArtifactStoreUnreachable"
    ARTIFACT_BUCKET_NOT_FOUND = "ArtifactBucketNotFound"
    ARTIFACT_STORE_NOT_ALLOWED = "ArtifactStoreNotAllowed"
    TARGET_NOT_FOUND = "TargetNotFound"
    CONTAINER_NOT_FOUND = "ContainerNotFound"
    FORBIDDEN = "Forbidden"
    KUBERNETES_API_ERROR = "KubernetesAPIError"
    SECRET_NOT_OPTED_IN = "SecretNotOptedIn"  # noqa: S105 - a reason, not a secret
    POD_METADATA_NOT_ALLOWED = "PodMetadataNotAllowed"
    # shared
    INITIALIZING = "Initializing"
    ACCESS_DENIED = "AccessDenied"  # Ready (the bucket probe), Retraining (reading a candidate's artifacts)
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
    JOB_NAME_TAKEN = "JobNameTaken"
    JOB_CREATE_REFUSED = "JobCreateRefused"  # the API server refused the Job for good, try after try
    JOB_CREATE_FAILED = "JobCreateFailed"  # the Job create kept failing (5xx, 429, no answer) past its bound
    MANIFEST_MISSING = "ManifestMissing"
    ARTIFACT_DIGEST_MISMATCH = "ArtifactDigestMismatch"
    MANIFEST_TAMPERED = "ManifestTampered"
    MANIFEST_DIGEST_UNREPORTED = "ManifestDigestUnreported"
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
    STAGE_PROGRESSING = "StageProgressing"  # the candidate env applied; waiting for the Deployment
    STAGE_RUNNING = "StageRunning"  # a Shadow or Split stage collecting labels for both models
    STAGE_WON = "StageWon"  # the candidate won its stage: promoted, then rolled out and analysed
    STAGE_LOST = "StageLost"  # the champion won: the candidate is rejected and its env removed
    STAGE_INCONCLUSIVE = "StageInconclusive"  # no significant difference by minSamples or maxDuration
    ROLLOUT_COMPLETE = "RolloutComplete"
    ANALYZING = "Analyzing"
    ANALYSIS_SUCCESSFUL = "AnalysisSuccessful"
    # Analysis passed with a metric outside its threshold but not worse than the version it replaced.
    BELOW_THRESHOLD_NOT_WORSE = "BelowThresholdNotWorse"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"
    PROMOTION_REFUSED = "PromotionRefused"
    ROLLBACK_REFUSED = "RollbackRefused"
    CONFLICTING_REQUESTS = "ConflictingRequests"  # promote and rollback-to both new, neither clearly meant
    REQUEST_SUPERSEDED = "RequestSuperseded"  # an old request beside the new one, recorded as handled with it
    INVALID_VERSION_NAME = "InvalidVersionName"  # a promote or rollback-to value that is not a version name
    # Degraded (also on RolledOut when there is no rollback)
    NOT_DEGRADED = "NotDegraded"
    ANALYSIS_FAILED = "AnalysisFailed"
    ANALYSIS_INCONCLUSIVE = "AnalysisInconclusive"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    ROLLBACK_FAILED = "RollbackFailed"
    ABORTED = "Aborted"  # the abort annotation stopped the rollout (also the reason of its rollback)
    # InSync
    IN_SYNC = "InSync"
    OUT_OF_SYNC = "OutOfSync"  # MODEL_URI or MODEL_SHA256 changed outside the operator after its rollout
    # Events only
    RECOMMENDED = "Recommended"
    ROLLOUT_STARTED = "RolloutStarted"
    STAGE_STARTED = "StageStarted"
    ABORT_IGNORED = "AbortIgnored"  # an abort with nothing to stop: no rollout in flight, or a rollback


@enum.unique
class EventType(enum.StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


@enum.unique
class LoopPhase(enum.StrEnum):
    """status.phase, for printer columns only: the conditions are the API."""

    MONITORING = "Monitoring"
    RETRAINING = "Retraining"
    ROLLING_OUT = "RollingOut"
    ANALYZING = "Analyzing"
    STAGING = "Staging"  # a Shadow or Split stage before promotion
    ROLLING_BACK = "RollingBack"
    DEGRADED = "Degraded"
    SUSPENDED = "Suspended"
    INVALID = "Invalid"


@enum.unique
class MetricVerdict(enum.StrEnum):
    """One monitoring metric's evaluation."""

    HEALTHY = "Healthy"
    BREACHING = "Breaching"  # outside the threshold, not yet for `for`
    BREACHED = "Breached"  # outside the threshold for at least `for`
    NO_DATA = "NoData"
    INSUFFICIENT_SAMPLES = "InsufficientSamples"


@enum.unique
class Trigger(enum.StrEnum):
    """What started a version's way through the loop."""

    MANUAL = "Manual"  # the retrain-requested annotation
    BREACH = "Breach"
    SCHEDULE = "Schedule"
    MANUAL_PROMOTE = "ManualPromote"
    MANUAL_ROLLBACK = "ManualRollback"


@enum.unique
class GateVerdict(enum.StrEnum):
    PASSED = "Passed"
    FAILED = "Failed"


@enum.unique
class GateReason(enum.StrEnum):
    WITHIN_BOUND = "WithinBound"
    BELOW_MIN = "BelowMin"
    ABOVE_MAX = "AboveMax"
    METRIC_MISSING = "MetricMissing"
    DELTA_TOO_SMALL = "DeltaTooSmall"
    NO_CURRENT_MODEL = "NoCurrentModel"
    CURRENT_MODEL_NOT_SCORED = "CurrentModelNotScored"  # a known current model has no score in metrics.json
    NOT_SIGNIFICANT = "NotSignificant"
    SIGNIFICANT = "Significant"
    SIGNIFICANCE_UNAVAILABLE = "SignificanceUnavailable"


@enum.unique
class RolloutKind(enum.StrEnum):
    PROMOTION = "Promotion"  # a validated candidate
    ROLLBACK = "Rollback"  # a manual rollback-to


@enum.unique
class RolloutPhase(enum.StrEnum):
    STAGING = "Staging"  # the candidate beside the champion (Shadow or Split), judged before promotion
    PROGRESSING = "Progressing"
    ANALYZING = "Analyzing"
    ROLLING_BACK = "RollingBack"


@enum.unique
class MeasurementVerdict(enum.StrEnum):
    """One post-rollout analysis measurement, as Argo Rollouts names them."""

    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"


@enum.unique
class Outcome(enum.StrEnum):
    """Where a version's way through the loop stands or ended (status.history[].outcome)."""

    RETRAIN_FAILED = "RetrainFailed"
    RETRAINED = "Retrained"
    REJECTED = "Rejected"
    RECOMMENDED = "Recommended"
    STAGING = "Staging"  # in a Shadow or Split stage beside the champion
    ROLLING_OUT = "RollingOut"
    ROLLED_OUT = "RolledOut"
    ROLLED_BACK = "RolledBack"
    ROLLBACK_FAILED = "RollbackFailed"
    DEGRADED = "Degraded"
    ABORTED = "Aborted"  # stopped by the abort annotation, or the target Deployment or container vanished
