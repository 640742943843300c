"""From a trigger to a candidate: whether a retrain may start, the Job that trains it, and its outcome."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from feedbackloop.api import ConditionStatus, ConditionType, Outcome, Reason, Trigger
from feedbackloop.core import contract
from feedbackloop.core.builders import JobSettings, build_retrain_job, retrain_job_name
from feedbackloop.core.cooldown import retrain_cooldown
from feedbackloop.core.decision import CreateJob, Decision, RetrainFinished, RetrainStarted
from feedbackloop.core.draft import Draft, WorkingStatus, edit_status
from feedbackloop.core.loop import LoopState, OperatorPolicy
from feedbackloop.core.observations import (
    ArtifactCheck,
    ArtifactObservation,
    JobObservation,
    JobState,
    ListedJob,
    Observations,
)
from feedbackloop.core.reuse import reusable_versions
from feedbackloop.core.spec import FeedbackLoopSpec, Mode
from feedbackloop.core.status import ActiveRetrain, CandidateModel, FeedbackLoopStatus, HistoryEntry
from feedbackloop.core.triggers import PendingTrigger, pending_triggers

# Reasons of a Retraining=False that waits on something; once nothing is pending it goes back to Idle.
_WAITING_REASONS = frozenset(
    {Reason.SUSPENDED, Reason.OBSERVE_ONLY, Reason.COOLDOWN, Reason.BLOCKED, Reason.QUEUED}
)
# A refusal may be an RBAC or quota change still on its way, so it gets a few tries; then someone must act.
JOB_CREATE_REFUSALS = 3
# Failures that may pass (5xx, 429, no answer) get ~25 min at the default backoff: long enough to outlast an
# API server restart, bounded so a webhook that always times out does not hold the retrain for ever.
JOB_CREATE_TRIES = 10
JOB_CREATE_BACKOFF_CAP = timedelta(minutes=5)


@dataclass(frozen=True)
class JobCreateFailure:
    """A Job create the API server did not accept, as the Kubernetes adapter judged it."""

    refused: bool  # for good (400, 403, 404, 422): the same Job meets the same answer until someone acts
    message: str  # the HTTP status and the API's reason, short


# ---- starting a retrain


def consider_retrain(
    draft: Draft,
    loop: LoopState,
    spec: FeedbackLoopSpec,
    observed: Observations,
    policy: OperatorPolicy,
    preflight_ok: bool,
) -> None:
    status = loop.status
    triggers = pending_triggers(
        spec,
        draft.status.last_evaluation,
        observed.retrain_request,
        status.handled_retrain_request,
        status.last_schedule_time or loop.created,
        draft.now,
    )
    if not triggers:
        _nothing_pending(draft, spec)
        return
    wanted = "; ".join(f"{t.kind}: {t.reason}" for t in triggers)
    if spec.suspend:
        _wait(draft, Reason.SUSPENDED, f"suspended; pending {wanted}")
        return
    if spec.mode is Mode.OBSERVE:
        # Observe reports what it would do; requests and fires are consumed so they do not pile up.
        _consume(draft, triggers)
        _wait(draft, Reason.OBSERVE_ONLY, f"mode Observe: would retrain ({wanted})")
        return
    # The draft's history: a candidate rejected in this very reconcile already lengthens the cooldown.
    cooldown = retrain_cooldown(spec.retrain_spec(), draft.status.history)
    cooldown_until = status.last_retrain_time + cooldown.length if status.last_retrain_time else None
    if triggers[0].kind is not Trigger.MANUAL and cooldown_until is not None and draft.now < cooldown_until:
        # Like a CronJob that may not overlap, a fire that lands in the cooldown is skipped, not queued.
        _consume(draft, [t for t in triggers if t.kind is Trigger.SCHEDULE])
        when = cooldown_until.isoformat().replace("+00:00", "Z")
        _wait(draft, Reason.COOLDOWN, f"cooldown until {when}{cooldown.explained()}; pending {wanted}")
        return
    if not preflight_ok:
        ready = draft.status.condition(ConditionType.READY)
        why = f"{ready.reason}: {ready.message}" if ready else "unknown"
        _wait(draft, Reason.BLOCKED, f"not ready ({why}); pending {wanted}")
        return
    if observed.capacity is None:
        draft.needs_capacity = True
        return
    if not observed.capacity.available:
        capacity = observed.capacity
        _wait(
            draft,
            Reason.QUEUED,
            f"waiting for a retrain slot: {capacity.running}/{capacity.limit} running operator-wide; "
            f"pending {wanted}",
        )
        return
    _start_retrain(draft, loop, triggers, policy)


def _nothing_pending(draft: Draft, spec: FeedbackLoopSpec) -> None:
    draft.status.waiting_reason = None
    retraining = draft.status.condition(ConditionType.RETRAINING)
    if spec.suspend:
        draft.condition(
            ConditionType.RETRAINING, ConditionStatus.FALSE, Reason.SUSPENDED, "spec.suspend is true"
        )
    elif retraining is not None and retraining.reason in _WAITING_REASONS:
        message = "no retrain trigger is pending"
        draft.condition(ConditionType.RETRAINING, ConditionStatus.FALSE, Reason.IDLE, message)


def _wait(draft: Draft, reason: Reason, message: str) -> None:
    draft.status.waiting_reason = message
    draft.condition(ConditionType.RETRAINING, ConditionStatus.FALSE, reason, message)


def _consume(draft: Draft, triggers: list[PendingTrigger]) -> None:
    for trigger in triggers:
        if trigger.kind is Trigger.MANUAL:
            draft.status.handled_retrain_request = trigger.request_id
        if trigger.kind is Trigger.SCHEDULE:
            draft.status.last_schedule_time = trigger.fire_time


def _start_retrain(
    draft: Draft, loop: LoopState, triggers: list[PendingTrigger], policy: OperatorPolicy
) -> None:
    first = triggers[0]
    breach = next((t for t in triggers if t.kind is Trigger.BREACH), None)
    current = draft.status.current_model
    number = max(loop.status.retrain_count, contract.version_number(current.version if current else None)) + 1
    active = ActiveRetrain(
        job=retrain_job_name(loop.ref.name, number),
        version=contract.version_name(number),
        number=number,
        trigger=first.kind,
        reason=first.reason,
        started_at=draft.now,
        breach_since=breach.since if breach is not None else None,
    )
    _consume(draft, triggers)
    draft.status.retrain_count = number
    draft.status.active_retrain = active
    draft.status.last_retrain_time = draft.now
    draft.status.waiting_reason = None
    draft.record(RetrainStarted(first.kind))
    _create_job(draft, loop, active, policy)


def _create_job(draft: Draft, loop: LoopState, active: ActiveRetrain, policy: OperatorPolicy) -> None:
    assert loop.spec is not None
    if active.next_create_at is not None and draft.now < active.next_create_at:
        return  # backing off after a failed create; the Retraining condition says until when
    settings = JobSettings(
        image=loop.spec.retrain_spec().image or policy.trainer_images[0],
        s3_endpoint_url=policy.s3_endpoint_url,
        s3_region=policy.s3_region,
    )
    current = draft.status.current_model
    reuse = loop.spec.retrain_spec().reuse
    reusable = reusable_versions(draft.status, reuse.max_versions) if reuse.enabled else ()
    manifest = build_retrain_job(loop.ref, loop.spec, active, current, settings, active.started_at, reusable)
    draft.actions.append(CreateJob(manifest))
    # A retry keeps the condition that says why it waits, and so posts no Event.
    if active.create_attempts == 0:
        draft.condition(
            ConditionType.RETRAINING, ConditionStatus.TRUE, Reason.RETRAIN_STARTED, _describe(active)
        )


def mark_job_created(status: FeedbackLoopStatus) -> FeedbackLoopStatus:
    """The Job exists: from now on its absence means it was deleted, not that it is still to be created."""
    active = status.active_retrain
    if active is None or active.job_created:
        return status

    def created(working: WorkingStatus) -> None:
        working.active_retrain = _created(active)

    return edit_status(status, created)


def _created(active: ActiveRetrain) -> ActiveRetrain:
    return replace(active, job_created=True, create_attempts=0, next_create_at=None)


def job_create_failed(
    status: FeedbackLoopStatus,
    failure: JobCreateFailure,
    now: datetime,
    generation: int,
    policy: OperatorPolicy,
) -> Decision:
    """Another try of the same Job name after a backoff (the counter is durable), or past the bound the end
    of the retrain with the API's reason. Events come from the Retraining condition's transitions alone: one
    on the first failure, none while the tries go on, one on giving up."""
    active = status.active_retrain
    assert active is not None, "a Job is created only for an active retrain"
    draft = Draft.start(status, now, generation)
    attempts = active.create_attempts + 1
    said = f"cannot create Job {active.job}: {failure.message}"
    if attempts >= (JOB_CREATE_REFUSALS if failure.refused else JOB_CREATE_TRIES):
        reason = Reason.JOB_CREATE_REFUSED if failure.refused else Reason.JOB_CREATE_FAILED
        _end_retrain(
            draft, active, Outcome.RETRAIN_FAILED, reason, f"{said} (gave up after {attempts} tries)", said
        )
        return draft.freeze()
    next_at = now + job_create_backoff(policy.job_create_backoff, attempts)
    draft.status.active_retrain = replace(active, create_attempts=attempts, next_create_at=next_at)
    message = f"{said} (try {attempts}); next try at {next_at.isoformat().replace('+00:00', 'Z')}"
    draft.condition(ConditionType.RETRAINING, ConditionStatus.FALSE, Reason.BLOCKED, message)
    return draft.freeze()


def job_create_backoff(base: timedelta, failed_tries: int) -> timedelta:
    """`base`, doubled for each failed try after the first, up to JOB_CREATE_BACKOFF_CAP."""
    return min(base * (1 << min(failed_tries - 1, 30)), JOB_CREATE_BACKOFF_CAP)


def count_running_retrains(jobs: Iterable[ListedJob], active: Mapping[tuple[str, str], str]) -> int:
    """Unfinished Jobs that a loop's status names as its active retrain (`active`: (namespace, Job name) to
    that loop's uid) and that the loop controls: a copied label or a Job in a loop's name takes no slot."""
    return sum(
        1
        for job in jobs
        if not job.finished
        and job.controller_uid is not None
        and active.get((job.namespace, job.name)) == job.controller_uid
    )


# ---- following the Job


def follow_retrain(draft: Draft, loop: LoopState, observed: Observations, policy: OperatorPolicy) -> None:
    active = loop.status.active_retrain
    assert active is not None
    job = observed.job or JobObservation(active.job, JobState.RUNNING)
    if job.state not in (JobState.MISSING, JobState.FOREIGN) and not active.job_created:
        active = _created(active)
        draft.status.active_retrain = active
    match job.state:
        case JobState.MISSING:
            _job_missing(draft, loop, active, policy)
        case JobState.FOREIGN:
            # Someone else's Job took the name: follow nothing of it; the next retrain gets a new name.
            _end_retrain(draft, active, Outcome.RETRAIN_FAILED, Reason.JOB_NAME_TAKEN, job.message)
        case JobState.RUNNING:
            draft.condition(
                ConditionType.RETRAINING, ConditionStatus.TRUE, Reason.RETRAIN_RUNNING, _describe(active)
            )
        case JobState.FAILED:
            _end_retrain(draft, active, Outcome.RETRAIN_FAILED, Reason.RETRAIN_JOB_FAILED, _failed(job))
        case JobState.DEADLINE_EXCEEDED:
            reason = Reason.RETRAIN_JOB_DEADLINE_EXCEEDED
            _end_retrain(draft, active, Outcome.RETRAIN_FAILED, reason, _failed(job))
        case JobState.SUCCEEDED:
            _accept_artifacts(
                draft, active, observed.artifacts, contract.reported_manifest_sha256(job.message)
            )


def _failed(job: JobObservation) -> str:
    return f"Job {job.name}: {job.message}"


def _job_missing(draft: Draft, loop: LoopState, active: ActiveRetrain, policy: OperatorPolicy) -> None:
    missing = Reason.RETRAIN_JOB_MISSING
    if active.job_created:
        message = f"Job {active.job} was deleted before it finished"
        _end_retrain(draft, active, Outcome.RETRAIN_FAILED, missing, message)
    elif loop.spec is None or loop.spec.retrain is None or loop.spec.artifacts is None:
        _end_retrain(draft, active, Outcome.RETRAIN_FAILED, missing, f"Job {active.job} is gone")
    else:
        # The counter is durable but the Job was never created (a crash between the two steps): create it.
        _create_job(draft, loop, active, policy)


def _accept_artifacts(
    draft: Draft, active: ActiveRetrain, artifacts: ArtifactObservation | None, reported_sha256: str | None
) -> None:
    if artifacts is None:
        _verifying(draft, active, "not checked yet")
        return
    refused = f"Job {active.job} complete but {artifacts.message}"
    match artifacts.check:
        case ArtifactCheck.UNREACHABLE:
            _verifying(draft, active, artifacts.message)
        case ArtifactCheck.ACCESS_DENIED:
            # Unverifiable is not verified: the retrain ends rather than waiting for credentials to change.
            _end_retrain(draft, active, Outcome.RETRAIN_FAILED, Reason.ACCESS_DENIED, refused)
        case ArtifactCheck.MANIFEST_MISSING:
            _end_retrain(draft, active, Outcome.RETRAIN_FAILED, Reason.MANIFEST_MISSING, refused)
        case ArtifactCheck.DIGEST_MISMATCH:
            _end_retrain(draft, active, Outcome.RETRAIN_FAILED, Reason.ARTIFACT_DIGEST_MISMATCH, refused)
        case ArtifactCheck.INVALID:
            _end_retrain(draft, active, Outcome.RETRAIN_FAILED, Reason.ARTIFACTS_INVALID, refused)
        case ArtifactCheck.VERIFIED if reported_sha256 is None:
            message = f"Job {active.job} reported no manifest sha256 in its termination message"
            _end_retrain(draft, active, Outcome.RETRAIN_FAILED, Reason.MANIFEST_DIGEST_UNREPORTED, message)
        case ArtifactCheck.VERIFIED if reported_sha256 != artifacts.manifest_sha256:
            # The bytes changed after the trainer wrote them: whoever can write the bucket chose this model.
            message = (
                f"Job {active.job} wrote a manifest with sha256 {reported_sha256[:12]}…, "
                f"{artifacts.uri}manifest.json has {artifacts.manifest_sha256[:12]}…"
            )
            _end_retrain(draft, active, Outcome.RETRAIN_FAILED, Reason.MANIFEST_TAMPERED, message)
        case ArtifactCheck.VERIFIED:
            _candidate(draft, active, artifacts)


def _verifying(draft: Draft, active: ActiveRetrain, detail: str) -> None:
    message = f"Job {active.job} complete; {detail}"
    draft.condition(ConditionType.RETRAINING, ConditionStatus.TRUE, Reason.VERIFYING_ARTIFACTS, message)


def _reused_version(draft: Draft, artifacts: ArtifactObservation) -> str | None:
    """The earlier version the trainer says this candidate's model is, believed only if the model's sha256 is
    the one status.history recorded for that version when the operator verified it."""
    claimed = artifacts.metrics.get(contract.METRICS_REUSED_VERSION)
    if not isinstance(claimed, str) or not contract.is_version_name(claimed):
        return None
    recorded = {entry.sha256 for entry in draft.status.history if entry.version == claimed and entry.sha256}
    return claimed if artifacts.model_sha256 in recorded else None


def _training_window(artifacts: ArtifactObservation) -> str | None:
    """Which rows the trainer says it fitted a since-breach candidate on; anything else is not repeated."""
    window = artifacts.metrics.get(contract.METRICS_WINDOW)
    chosen = window.get("chosen") if isinstance(window, dict) else None
    return chosen if chosen in (contract.WINDOW_SINCE_BREACH, contract.WINDOW_WIDER) else None


def _candidate(draft: Draft, active: ActiveRetrain, artifacts: ArtifactObservation) -> None:
    reused = _reused_version(draft, artifacts)
    window = None if reused is not None else _training_window(artifacts)  # a reused model was fitted before
    draft.status.candidate_model = CandidateModel(
        version=active.version,
        job=active.job,
        uri=artifacts.uri,
        sha256=artifacts.model_sha256,
        trigger=active.trigger,
        metrics=contract.numeric_metrics(artifacts.metrics.get("candidate")),
        current_metrics=contract.numeric_metrics(artifacts.metrics.get("current")),
        comparison=contract.comparisons(artifacts.metrics.get("comparison")),
        created_at=draft.now,
        reused_version=reused,
        training_window=window,
    )
    message = f"candidate {active.version} at {artifacts.uri}"
    said = ""
    if reused is not None:
        said = f"reused {reused}: it beat the fresh model on the holdout"
        message = f"{message} ({said})"
    elif window == contract.WINDOW_WIDER:
        said = "fitted on the wider window: it beat the since-breach rows on the holdout"
        message = f"{message} ({said})"
    _end_retrain(
        draft,
        active,
        Outcome.RETRAINED,
        Reason.RETRAIN_SUCCEEDED,
        message,
        said,
        verified=(artifacts.model_sha256, artifacts.manifest_sha256, reused),
    )
    awaiting = f"candidate {active.version} awaits validation"
    draft.condition(ConditionType.VALIDATED, ConditionStatus.UNKNOWN, Reason.AWAITING_VALIDATION, awaiting)


def _end_retrain(
    draft: Draft,
    active: ActiveRetrain,
    outcome: Outcome,
    reason: Reason,
    message: str,
    history_message: str = "",
    verified: tuple[str, str, str | None] | None = None,  # model and manifest sha256, the reused version
) -> None:
    draft.status.active_retrain = None
    retrained = outcome is Outcome.RETRAINED
    sha256, manifest_sha256, reused = verified if verified is not None else (None, None, None)
    draft.add_history(
        HistoryEntry(
            version=active.version,
            trigger=active.trigger,
            outcome=outcome,
            reason=reason,
            message=history_message,
            started_at=active.started_at,
            retrained_at=draft.now if retrained else None,
            finished_at=None if retrained else draft.now,
            sha256=sha256,
            manifest_sha256=manifest_sha256,
            reused_version=reused,
        )
    )
    draft.condition(ConditionType.RETRAINING, ConditionStatus.FALSE, reason, message)
    draft.record(RetrainFinished(outcome, reason))


def _describe(active: ActiveRetrain) -> str:
    return f"Job {active.job} training {active.version} ({active.trigger}: {active.reason})"
