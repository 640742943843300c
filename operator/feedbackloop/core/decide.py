"""decide(): from the loop, what was observed and `now`, the next status, the actions and the events.

Pure and deterministic. `plan()` says what to observe; `decide()` says what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from feedbackloop.core import contract
from feedbackloop.core.builders import JobSettings, LoopRef, build_retrain_job, retrain_job_name
from feedbackloop.core.conditions import FALSE, TRUE, UNKNOWN, Reason, is_warning
from feedbackloop.core.draft import CreateJob, Decision, Draft, Event
from feedbackloop.core.monitoring import evaluate, evaluation_due, healthy_condition
from feedbackloop.core.observations import (
    ArtifactCheck,
    ArtifactObservation,
    JobObservation,
    JobState,
    Observations,
)
from feedbackloop.core.promotion import Outcome, follow_rollout, handle_manual_requests, validate_candidate
from feedbackloop.core.promql import SAFE_LABEL_VALUE, UnsafeQueryError, render_query, template_variables
from feedbackloop.core.spec import FeedbackLoopSpec, Mode
from feedbackloop.core.status import (
    ActiveRetrain,
    CandidateModel,
    ConditionType,
    FeedbackLoopStatus,
    HistoryEntry,
    ModelRef,
    append_history,
)
from feedbackloop.core.triggers import PendingTrigger, Trigger, pending_triggers, schedule_error


@dataclass(frozen=True)
class OperatorPolicy:
    """Operator-wide settings that shape decisions (from feedbackloop.config)."""

    trainer_images: tuple[str, ...]
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"


@dataclass(frozen=True)
class LoopState:
    ref: LoopRef
    generation: int
    created: datetime
    spec: FeedbackLoopSpec | None
    spec_error: str | None
    status: FeedbackLoopStatus
    rollback_request: str | None = None  # planning needs it to fetch that version's manifest


@dataclass(frozen=True)
class RenderedQuery:
    name: str
    query: str
    samples_query: str | None


@dataclass(frozen=True)
class ObservationPlan:
    queries: tuple[RenderedQuery, ...] | None  # None: no evaluation is due
    probe_dependencies: bool
    job_name: str | None
    candidate_uri: str | None
    candidate_version: str | None
    observe_target: bool = False  # a rollout is in flight: watch the Deployment every tick
    rollback_uri: str | None = None  # a rollback-to request: verify that version's artifacts
    rollback_version: str | None = None


def runtime_spec_errors(loop: LoopState, policy: OperatorPolicy) -> list[str]:
    """What admission cannot check: cron syntax, the image allow-list, query placeholders."""
    spec = loop.spec
    if spec is None:
        return [loop.spec_error or "spec is missing"]
    errors = []
    image = spec.retrain.image if spec.retrain else None
    if problem := schedule_error(spec.retrain.schedule if spec.retrain else None):
        errors.append(problem)
    if image is not None and image not in policy.trainer_images:
        errors.append(f"spec.retrain.image: {image!r} is not in the operator's allowed trainer images")
    if not policy.trainer_images:
        errors.append("the operator has no trainer image configured (FBL_TRAINER_IMAGES)")
    for index, metric in enumerate(spec.monitoring.metrics):
        if metric.min_samples and not metric.samples_query:
            errors.append(f"spec.monitoring.metrics[{index}].minSamples needs samplesQuery")
    try:
        render_queries(loop)
    except UnsafeQueryError as err:
        errors.append(f"spec.monitoring: {err}")
    return errors


NO_VERSION = "none"


def render_queries(loop: LoopState) -> tuple[RenderedQuery, ...]:
    assert loop.spec is not None
    variables = template_variables(loop.ref.namespace, loop.ref.name, loop.spec.monitoring.labels)
    # {{model_version}} scopes a query to the version being analysed, else to the one serving; before either
    # is known it is NO_VERSION, which no series carries, so the metric has no data rather than a bad spec.
    rollout, current = loop.status.rollout, loop.status.current_model
    version = rollout.version if rollout else current.version if current else None
    variables["model_version"] = version if version and SAFE_LABEL_VALUE.match(version) else NO_VERSION
    return tuple(
        RenderedQuery(
            name=metric.name,
            query=render_query(metric.query, variables),
            samples_query=render_query(metric.samples_query, variables) if metric.samples_query else None,
        )
        for metric in loop.spec.monitoring.metrics
    )


def plan(loop: LoopState, policy: OperatorPolicy, now: datetime) -> ObservationPlan:
    active = loop.status.active_retrain
    spec = loop.spec
    candidate_uri = None
    if active is not None and spec is not None and spec.artifacts is not None:
        candidate_uri = contract.version_uri(
            spec.artifacts.bucket, spec.artifacts.prefix, loop.ref.namespace, loop.ref.name, active.version
        )
    if spec is None or runtime_spec_errors(loop, policy):
        return ObservationPlan(None, False, active.job if active else None, candidate_uri, None)
    due = evaluation_due(
        spec, loop.status.last_evaluation, loop.generation, loop.status.observed_generation, now
    )
    rollout = loop.status.rollout
    measurement_due = (
        rollout is not None and rollout.next_measurement_at is not None and now >= rollout.next_measurement_at
    )
    rollback_version = loop.rollback_request
    rollback_uri = None
    if (
        rollback_version
        and rollback_version != loop.status.handled_rollback_request
        and spec.artifacts is not None
        and SAFE_LABEL_VALUE.match(rollback_version)
    ):
        rollback_uri = contract.version_uri(
            spec.artifacts.bucket, spec.artifacts.prefix, loop.ref.namespace, loop.ref.name, rollback_version
        )
    return ObservationPlan(
        queries=render_queries(loop) if (due or measurement_due) and not spec.suspend else None,
        probe_dependencies=due,
        job_name=active.job if active else None,
        candidate_uri=candidate_uri,
        candidate_version=active.version if active else None,
        observe_target=rollout is not None,
        rollback_uri=rollback_uri,
        rollback_version=rollback_version if rollback_uri else None,
    )


def decide(loop: LoopState, observed: Observations, policy: OperatorPolicy, now: datetime) -> Decision:
    draft = Draft(status=loop.status, now=now, generation=loop.generation, conditions=loop.status.conditions)
    _initialize_conditions(draft)
    draft.set("observed_generation", loop.generation)

    errors = runtime_spec_errors(loop, policy)
    if errors or loop.spec is None:
        draft.condition(ConditionType.READY, FALSE, Reason.INVALID_SPEC, "; ".join(errors))
        draft.set("phase", "Invalid")
        # A running Job still finishes and is accounted for; nothing new starts.
        if loop.status.active_retrain is not None and loop.spec is not None:
            _follow_retrain(draft, loop, observed, policy)
        return _finish(draft, loop)
    spec = loop.spec

    preflight_ok = _preflight(draft, spec, observed)
    _adopt_deployed_model(draft, observed)

    evaluation = None
    if observed.metrics is not None:
        evaluation = evaluate(spec, observed.metrics, loop.status.last_evaluation, now)
        draft.set("last_evaluation", evaluation)
        status, reason, message = healthy_condition(spec, evaluation)
        draft.condition(ConditionType.HEALTHY, status, reason, message)

    namespace = loop.ref.namespace
    if loop.status.rollout is not None:
        follow_rollout(draft, spec, namespace, observed, evaluation)
    elif loop.status.active_retrain is not None:
        _follow_retrain(draft, loop, observed, policy)
    candidate = draft.get("candidate_model")
    if candidate is not None and candidate.validation is None and draft.get("rollout") is None:
        validate_candidate(draft, spec, namespace)
    handle_manual_requests(draft, spec, namespace, observed)
    busy = loop.status.rollout is not None or loop.status.active_retrain is not None
    if not busy and draft.get("rollout") is None:
        _consider_retrain(draft, loop, spec, observed, policy, preflight_ok)

    draft.set("phase", _phase(draft, spec))
    return _finish(draft, loop)


def _initialize_conditions(draft: Draft) -> None:
    """Every condition exists from the first visit, Unknown until something is known."""
    defaults = {
        ConditionType.READY: Reason.INITIALIZING,
        ConditionType.HEALTHY: Reason.INITIALIZING,
        ConditionType.RETRAINING: Reason.IDLE,
        ConditionType.VALIDATED: Reason.NO_CANDIDATE,
        ConditionType.ROLLED_OUT: Reason.NOT_ROLLED_OUT,
        ConditionType.DEGRADED: Reason.NOT_DEGRADED,
    }
    present = {c.type for c in draft.conditions}
    for kind, reason in defaults.items():
        if kind not in present:
            status = FALSE if kind in (ConditionType.RETRAINING, ConditionType.DEGRADED) else UNKNOWN
            draft.condition(kind, status, reason, "")


def _preflight(draft: Draft, spec: FeedbackLoopSpec, observed: Observations) -> bool:
    """Ready reflects the dependencies; without fresh probes the previous verdict stands."""
    problems: list[tuple[str, str]] = []
    if observed.prometheus is not None and not observed.prometheus.ok:
        problems.append(
            (
                Reason.PROMETHEUS_UNREACHABLE,
                f"Prometheus {spec.prometheus.url}: {observed.prometheus.message}",
            )
        )
    if observed.artifact_store is not None and not observed.artifact_store.ok:
        problems.append(
            (
                Reason.ARTIFACT_STORE_UNREACHABLE,
                f"artifact store: {observed.artifact_store.message}",
            )
        )
    if observed.target is not None:
        if not observed.target.deployment_found:
            problems.append((Reason.TARGET_NOT_FOUND, f"Deployment {spec.target.deployment} not found"))
        elif not observed.target.container_found:
            names = ", ".join(observed.target.containers) or "none"
            target = spec.target
            message = f"Deployment {target.deployment} has no container {target.container} (has: {names})"
            problems.append((Reason.CONTAINER_NOT_FOUND, message))
    probed = (
        observed.prometheus is not None or observed.artifact_store is not None or observed.target is not None
    )
    if problems:
        draft.condition(
            ConditionType.READY, FALSE, problems[0][0], "; ".join(message for _, message in problems)
        )
        return False
    if probed:
        count = len(spec.monitoring.metrics)
        draft.condition(
            ConditionType.READY, TRUE, Reason.READY, f"monitoring {count} metric{'s' if count != 1 else ''}"
        )
        return True
    ready = next((c for c in draft.conditions if c.type == ConditionType.READY), None)
    return ready is not None and ready.status == TRUE


def _adopt_deployed_model(draft: Draft, observed: Observations) -> None:
    """The first time, the model the Deployment already serves becomes status.currentModel."""
    if draft.get("current_model") is not None or observed.target is None:
        return
    deployed = observed.target.deployed
    if deployed is None or not deployed.uri:
        return
    version = deployed.version or deployed.uri.rstrip("/").rsplit("/", 1)[-1]
    draft.set("current_model", ModelRef(version=version, uri=deployed.uri, sha256=deployed.sha256))


def _follow_retrain(draft: Draft, loop: LoopState, observed: Observations, policy: OperatorPolicy) -> None:
    active = loop.status.active_retrain
    assert active is not None
    job = observed.job or JobObservation(active.job, JobState.RUNNING)
    if job.state is JobState.MISSING and active.job_created:
        _end_retrain(
            draft,
            active,
            Outcome.RETRAIN_FAILED,
            Reason.RETRAIN_JOB_MISSING,
            f"Job {active.job} was deleted before it finished",
        )
        return
    if job.state is not JobState.MISSING and not active.job_created:
        active = active.model_copy(update={"job_created": True})
        draft.set("active_retrain", active)
    if job.state is JobState.MISSING:
        # The counter is durable but the Job was never created (a crash between the two steps): create it.
        spec = loop.spec
        if spec is None or spec.retrain is None or spec.artifacts is None:
            _end_retrain(
                draft, active, Outcome.RETRAIN_FAILED, Reason.RETRAIN_JOB_MISSING, f"Job {active.job} is gone"
            )
            return
        _create_job(draft, loop, active, policy)
        draft.condition(ConditionType.RETRAINING, TRUE, Reason.RETRAIN_STARTED, _retrain_text(active))
        return
    if job.state is JobState.RUNNING:
        draft.condition(ConditionType.RETRAINING, TRUE, Reason.RETRAIN_RUNNING, _retrain_text(active))
        return
    if job.state in (JobState.FAILED, JobState.DEADLINE_EXCEEDED):
        reason = (
            Reason.RETRAIN_JOB_DEADLINE_EXCEEDED
            if job.state is JobState.DEADLINE_EXCEEDED
            else Reason.RETRAIN_JOB_FAILED
        )
        _end_retrain(
            draft,
            active,
            outcome=Outcome.RETRAIN_FAILED,
            reason=reason,
            message=f"Job {job.name}: {job.message}",
        )
        return
    _accept_artifacts(draft, active, observed.artifacts)


def _accept_artifacts(draft: Draft, active: ActiveRetrain, artifacts: ArtifactObservation | None) -> None:
    if artifacts is None or artifacts.check is ArtifactCheck.UNREACHABLE:
        detail = artifacts.message if artifacts else "not checked yet"
        draft.condition(
            ConditionType.RETRAINING, TRUE, Reason.VERIFYING_ARTIFACTS, f"Job {active.job} complete; {detail}"
        )
        return
    if artifacts.check is not ArtifactCheck.VERIFIED:
        reason = {
            ArtifactCheck.MANIFEST_MISSING: Reason.MANIFEST_MISSING,
            ArtifactCheck.DIGEST_MISMATCH: Reason.ARTIFACT_DIGEST_MISMATCH,
        }.get(artifacts.check, Reason.ARTIFACTS_INVALID)
        _end_retrain(
            draft,
            active,
            Outcome.RETRAIN_FAILED,
            reason,
            f"Job {active.job} complete but {artifacts.message}",
        )
        return
    candidate = CandidateModel(
        version=active.version,
        job=active.job,
        uri=artifacts.uri,
        sha256=artifacts.model_sha256,
        trigger=active.trigger,
        metrics=contract.numeric_metrics(artifacts.metrics.get("candidate")),
        current_metrics=contract.numeric_metrics(artifacts.metrics.get("current")),
        comparison=_comparisons(artifacts.metrics.get("comparison")),
        created_at=draft.now,
    )
    draft.set("candidate_model", candidate)
    _end_retrain(
        draft,
        active,
        Outcome.RETRAINED,
        Reason.RETRAIN_SUCCEEDED,
        f"candidate {active.version} at {artifacts.uri}",
    )
    draft.condition(
        ConditionType.VALIDATED,
        UNKNOWN,
        Reason.AWAITING_VALIDATION,
        f"candidate {active.version} awaits validation",
    )


def _comparisons(raw: Any) -> dict[str, dict[str, float]]:
    if not isinstance(raw, dict):
        return {}
    return {
        str(name): contract.numeric_metrics(stats) for name, stats in raw.items() if isinstance(stats, dict)
    }


def _end_retrain(draft: Draft, active: ActiveRetrain, outcome: str, reason: str, message: str) -> None:
    draft.set("active_retrain", None)
    draft.set(
        "history",
        append_history(
            draft.get("history"),
            HistoryEntry(
                version=active.version,
                trigger=active.trigger,
                outcome=outcome,
                reason=reason,
                started_at=active.started_at,
                retrained_at=draft.now if outcome == Outcome.RETRAINED else None,
                finished_at=None if outcome == Outcome.RETRAINED else draft.now,
            ),
        ),
    )
    draft.condition(ConditionType.RETRAINING, FALSE, reason, message)


def _consider_retrain(
    draft: Draft,
    loop: LoopState,
    spec: FeedbackLoopSpec,
    observed: Observations,
    policy: OperatorPolicy,
    preflight_ok: bool,
) -> None:
    status = loop.status
    anchor = status.last_schedule_time or loop.created
    triggers = pending_triggers(
        spec,
        draft.get("last_evaluation"),
        observed.retrain_request,
        status.handled_retrain_request,
        anchor,
        draft.now,
    )
    if not triggers:
        draft.set("waiting_reason", None)
        if spec.suspend:
            draft.condition(ConditionType.RETRAINING, FALSE, Reason.SUSPENDED, "spec.suspend is true")
        elif _current_reason(draft, ConditionType.RETRAINING) in _WAITING_REASONS:
            draft.condition(ConditionType.RETRAINING, FALSE, Reason.IDLE, "no retrain trigger is pending")
        return
    first = triggers[0]
    wanted = "; ".join(f"{t.kind}: {t.reason}" for t in triggers)

    if spec.suspend:
        _wait(draft, Reason.SUSPENDED, f"suspended; pending {wanted}")
        return
    if spec.mode is Mode.OBSERVE:
        # Observe reports what it would do; requests and fires are consumed so they do not pile up.
        _consume(draft, triggers)
        _wait(draft, Reason.OBSERVE_ONLY, f"mode Observe: would retrain ({wanted})")
        return
    retrain = spec.retrain_spec()
    cooldown_until = (status.last_retrain_time + retrain.cooldown) if status.last_retrain_time else None
    if first.kind is not Trigger.MANUAL and cooldown_until is not None and draft.now < cooldown_until:
        # Like a CronJob that may not overlap, a fire that lands in the cooldown is skipped, not queued.
        _consume(draft, [t for t in triggers if t.kind is Trigger.SCHEDULE])
        when = cooldown_until.isoformat().replace("+00:00", "Z")
        _wait(draft, Reason.COOLDOWN, f"cooldown until {when}; pending {wanted}")
        return
    if not preflight_ok:
        ready = next(c for c in draft.conditions if c.type == ConditionType.READY)
        _wait(draft, Reason.BLOCKED, f"not ready ({ready.reason}: {ready.message}); pending {wanted}")
        return
    if observed.capacity is None:
        draft.needs_capacity = True
        return
    if not observed.capacity.available:
        _wait(
            draft,
            Reason.QUEUED,
            f"waiting for a retrain slot: {observed.capacity.running}/{observed.capacity.limit} "
            f"running operator-wide; pending {wanted}",
        )
        return
    _start_retrain(draft, loop, spec, first, triggers, policy)


_WAITING_REASONS = frozenset(
    {Reason.SUSPENDED, Reason.OBSERVE_ONLY, Reason.COOLDOWN, Reason.BLOCKED, Reason.QUEUED}
)


def _current_reason(draft: Draft, kind: ConditionType) -> str | None:
    return next((c.reason for c in draft.conditions if c.type == kind), None)


def _wait(draft: Draft, reason: str, message: str) -> None:
    draft.set("waiting_reason", message)
    draft.condition(ConditionType.RETRAINING, FALSE, reason, message)


def _consume(draft: Draft, triggers: list[PendingTrigger]) -> None:
    for trigger in triggers:
        if trigger.kind is Trigger.MANUAL:
            draft.set("handled_retrain_request", trigger.request_id)
        if trigger.kind is Trigger.SCHEDULE:
            draft.set("last_schedule_time", trigger.fire_time)


def _start_retrain(
    draft: Draft,
    loop: LoopState,
    spec: FeedbackLoopSpec,
    first: PendingTrigger,
    triggers: list[PendingTrigger],
    policy: OperatorPolicy,
) -> None:
    current = draft.get("current_model")
    number = max(loop.status.retrain_count, contract.version_number(current.version if current else None)) + 1
    active = ActiveRetrain(
        job=retrain_job_name(loop.ref.name, number),
        version=contract.version_name(number),
        number=number,
        trigger=first.kind,
        reason=first.reason,
        started_at=draft.now,
    )
    _consume(draft, triggers)
    draft.set("retrain_count", number)
    draft.set("active_retrain", active)
    draft.set("last_retrain_time", draft.now)
    draft.set("waiting_reason", None)
    draft.persist_first = True
    _create_job(draft, loop, active, policy)
    draft.condition(ConditionType.RETRAINING, TRUE, Reason.RETRAIN_STARTED, _retrain_text(active))


def _create_job(draft: Draft, loop: LoopState, active: ActiveRetrain, policy: OperatorPolicy) -> None:
    assert loop.spec is not None
    settings = JobSettings(
        image=loop.spec.retrain_spec().image or policy.trainer_images[0],
        s3_endpoint_url=policy.s3_endpoint_url,
        s3_region=policy.s3_region,
    )
    manifest = build_retrain_job(
        loop.ref, loop.spec, active, draft.get("current_model"), settings, active.started_at
    )
    draft.actions.append(CreateJob(manifest))


def _retrain_text(active: ActiveRetrain) -> str:
    return f"Job {active.job} training {active.version} ({active.trigger}: {active.reason})"


def _phase(draft: Draft, spec: FeedbackLoopSpec) -> str:
    if spec.suspend:
        return "Suspended"
    rollout = draft.get("rollout")
    if rollout is not None:
        return {"Progressing": "RollingOut", "Analyzing": "Analyzing"}.get(rollout.phase, "RollingBack")
    if draft.get("active_retrain") is not None:
        return "Retraining"
    degraded = next((c for c in draft.conditions if c.type == ConditionType.DEGRADED), None)
    if degraded is not None and degraded.status == TRUE:
        return "Degraded"
    healthy = next((c for c in draft.conditions if c.type == ConditionType.HEALTHY), None)
    if healthy is not None and healthy.status == FALSE:
        return "Degraded"
    return "Monitoring"


def _finish(draft: Draft, loop: LoopState) -> Decision:
    status = loop.status.model_copy(update={**draft.updates, "conditions": draft.conditions})
    before = {c.type: c for c in loop.status.conditions}
    events = list(draft.events)
    for condition in draft.conditions:
        old = before.get(condition.type)
        if old is not None and (old.status, old.reason) == (condition.status, condition.reason):
            continue
        if old is None and condition.status == UNKNOWN:
            continue
        kind = "Warning" if is_warning(condition.type, condition.status) else "Normal"
        message = f"{condition.type}={condition.status}: {condition.message}".rstrip(": ")
        events.append(Event(kind, condition.reason, message))
    return Decision(
        status=status,
        actions=tuple(draft.actions),
        events=tuple(events),
        persist_status_first=draft.persist_first,
        needs_capacity=draft.needs_capacity,
    )
