"""Manual operations: the promote, rollback-to and abort annotations, and which versions each one accepts.

The eligibility rules here are the operator's own; `kubectl feedbackloop` asks them too, so the plugin and the
operator never disagree about what a request will do.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from feedbackloop.api import (
    ABORT_ANNOTATION,
    PROMOTE_ANNOTATION,
    REQUESTED_AT_ANNOTATION,
    ROLLBACK_ANNOTATION,
    ConditionStatus,
    ConditionType,
    EventType,
    GateVerdict,
    Outcome,
    Reason,
    RolloutKind,
    RolloutPhase,
    Trigger,
)
from feedbackloop.core import contract
from feedbackloop.core.draft import Draft
from feedbackloop.core.observations import ArtifactCheck, Observations
from feedbackloop.core.requests import Pending, is_handled, pending_request, quoted, request_id
from feedbackloop.core.rollout import start_rollout, stop_rollout
from feedbackloop.core.spec import FeedbackLoopSpec, Mode
from feedbackloop.core.stage import begin_promotion
from feedbackloop.core.status import FeedbackLoopStatus, ModelRef, RolloutState


class Refusal(enum.StrEnum):
    """Why a promote or rollback-to request is refused, judged from the status alone."""

    NOT_A_VERSION_NAME = f"it is not a version name ({contract.VERSION_NAME_RULE})"
    REJECTED = "the version was rejected"
    NOT_VALIDATED = "it is not a validated candidate"
    ALREADY_SERVING = "it is already serving"


def promotion_refusal(status: FeedbackLoopStatus, version: str) -> Refusal | None:
    """Why the operator would refuse to promote `version`, or None: only the validated candidate goes."""
    if not contract.is_version_name(version):
        return Refusal.NOT_A_VERSION_NAME
    if version in status.rejected_versions:
        return Refusal.REJECTED
    candidate = status.candidate_model
    if candidate is None or candidate.version != version or candidate.validation is not GateVerdict.PASSED:
        return Refusal.NOT_VALIDATED
    return None


def rollback_refusal(status: FeedbackLoopStatus, version: str) -> Refusal | None:
    """Why the operator would refuse to roll back to `version` before reading its artifacts, or None."""
    if not contract.is_version_name(version):
        return Refusal.NOT_A_VERSION_NAME
    if version in status.rejected_versions:
        return Refusal.REJECTED
    if status.current_model is not None and status.current_model.version == version:
        return Refusal.ALREADY_SERVING
    return None


def recorded_models(status: FeedbackLoopStatus) -> list[ModelRef]:
    """Models whose S3 location the status records: current, rollout target and its predecessor."""
    models = [status.current_model]
    if status.rollout is not None:
        models += [status.rollout.model, status.rollout.previous]
    return [model for model in models if model is not None]


def known_versions(status: FeedbackLoopStatus) -> list[str]:
    """Every version the status names (history, current, candidate, rollout), by version number."""
    names = [entry.version for entry in status.history]
    names += [model.version for model in recorded_models(status)]
    if status.candidate_model is not None:
        names.append(status.candidate_model.version)
    return _ordered(names)


def failed_retrains(status: FeedbackLoopStatus) -> set[str]:
    """Versions whose retrain failed: they left no verified artifacts behind."""
    return {entry.version for entry in status.history if entry.outcome is Outcome.RETRAIN_FAILED}


def promotable_versions(status: FeedbackLoopStatus) -> list[str]:
    candidate = status.candidate_model
    if candidate is None or promotion_refusal(status, candidate.version) is not None:
        return []
    return [candidate.version]


def rollback_targets(status: FeedbackLoopStatus) -> list[str]:
    """Known versions the operator would roll back to: stored, not rejected, not already serving."""
    failed = failed_retrains(status)
    return [
        version
        for version in known_versions(status)
        if version not in failed and rollback_refusal(status, version) is None
    ]


def _ordered(versions: Iterable[str]) -> list[str]:
    return sorted(set(versions), key=lambda version: (contract.version_number(version), version))


# ---- the requests, as decide() handles them


def handle_abort(draft: Draft, spec: FeedbackLoopSpec, namespace: str, observed: Observations) -> bool:
    """An abort request, each value once, in every mode and while suspended; True when it turned the rollout
    in flight into a rollback. One with nothing to stop is answered by an Event, so it never lingers."""
    # No requested-at token: a token set to repeat a rollback-to must not re-fire an old abort left beside it.
    abort = observed.abort_request
    if not abort or is_handled(abort, draft.status.handled_abort_request):
        return False
    draft.status.handled_abort_request = request_id(abort)
    request = f"{ABORT_ANNOTATION}={quoted(abort)}"
    rollout = draft.status.rollout
    if spec.mode is Mode.OBSERVE:
        _ignore_abort(draft, Reason.OBSERVE_ONLY, f"mode Observe: {request} not applied")
        return False
    if rollout is None:
        retrain = draft.status.active_retrain
        going_on = f"; the retrain of {retrain.version} goes on (abort stops rollouts)" if retrain else ""
        _ignore_abort(
            draft, Reason.ABORT_IGNORED, f"{request}: no rollout in flight, nothing to abort{going_on}"
        )
        return False
    if rollout.kind is RolloutKind.ROLLBACK or rollout.phase is RolloutPhase.ROLLING_BACK:
        # A rollback is the safe direction: stopping it would leave the Deployment half way.
        message = (
            f"{request}: the rollback to {_rollback_target(rollout)} goes on; a rollback is never aborted"
        )
        _ignore_abort(draft, Reason.ABORT_IGNORED, message)
        return False
    target = observed.target
    if target is not None and not (target.deployment_found and target.container_found):
        return False  # nothing to apply to: following the rollout ends it, naming what vanished
    stop_rollout(draft, spec, namespace, rollout, f"aborted by {request} while {rollout.phase}")
    return True


def _rollback_target(rollout: RolloutState) -> str:
    wanted = rollout.model if rollout.kind is RolloutKind.ROLLBACK else rollout.previous
    return wanted.version if wanted else "the Deployment's own env"


def _ignore_abort(draft: Draft, reason: Reason, message: str) -> None:
    """An Event only: the conditions keep describing what serves and what is in flight."""
    draft.event(EventType.WARNING, reason, message)


def handle_manual_requests(
    draft: Draft, spec: FeedbackLoopSpec, namespace: str, observed: Observations
) -> None:
    """Promote and rollback-to requests, each value once; refusals are conditions, never silent. One
    requested-at token is one request (core.requests.pending_request): the other annotation, if new only
    by that token, is recorded as handled with it, so it never fires later."""
    if draft.status.rollout is not None or draft.status.active_retrain is not None:
        return  # busy: the request waits, unhandled
    promote, rollback = observed.promote_request, observed.rollback_request
    token = observed.request_token
    status = draft.status
    pending = pending_request(
        promote, status.handled_promote_request, rollback, status.handled_rollback_request, token
    )
    if pending is Pending.NONE:
        return
    if pending is Pending.ROLLBACK:
        artifacts = observed.rollback_artifacts
        if artifacts is not None and artifacts.check is ArtifactCheck.UNREACHABLE:
            return  # try again when the store answers
    handled_before = (status.handled_promote_request, status.handled_rollback_request)
    if promote:
        status.handled_promote_request = request_id(promote, token)
    if rollback:
        status.handled_rollback_request = request_id(rollback, token)
    if pending is Pending.CONFLICT:
        both = (
            f"{PROMOTE_ANNOTATION}={quoted(promote or '')} and {ROLLBACK_ANNOTATION}={quoted(rollback or '')}"
        )
        message = (
            f"{both} are both new under one {REQUESTED_AT_ANNOTATION} token: neither applied; remove the one "
            "you do not mean and set a new token"
        )
        _refuse(draft, Reason.CONFLICTING_REQUESTS, message)
        return
    if pending is Pending.PROMOTE:
        if rollback and status.handled_rollback_request != handled_before[1]:
            _taken_with(draft, ROLLBACK_ANNOTATION, rollback, PROMOTE_ANNOTATION)
        if promote and _acceptable(draft, spec, PROMOTE_ANNOTATION, promote):
            _promote(draft, spec, namespace, promote)
        return
    if promote and status.handled_promote_request != handled_before[0]:
        _taken_with(draft, PROMOTE_ANNOTATION, promote, ROLLBACK_ANNOTATION)
    if rollback and _acceptable(draft, spec, ROLLBACK_ANNOTATION, rollback):
        _rollback_to(draft, spec, namespace, rollback, observed)


def _taken_with(draft: Draft, annotation: str, value: str, request: str) -> None:
    """An Event, so an old request left beside the new one is never dropped without a word."""
    message = (
        f"{annotation}={quoted(value)} not applied again: {request} is the request of this "
        f"{REQUESTED_AT_ANNOTATION} token (one token, one request)"
    )
    draft.event(EventType.NORMAL, Reason.REQUEST_SUPERSEDED, message)


def _acceptable(draft: Draft, spec: FeedbackLoopSpec, annotation: str, value: str) -> bool:
    """Refuses a value that names no version, and any request in Observe, before anything is read."""
    if not contract.is_version_name(value):
        message = f"{annotation}: {quoted(value)} is not a version name ({contract.VERSION_NAME_RULE})"
        _refuse(draft, Reason.INVALID_VERSION_NAME, message)
        return False
    if spec.mode is Mode.OBSERVE:
        _refuse(draft, Reason.OBSERVE_ONLY, f"mode Observe: {annotation}={value} not applied")
        return False
    return True


def _refuse(draft: Draft, reason: Reason, message: str) -> None:
    draft.condition(ConditionType.ROLLED_OUT, ConditionStatus.FALSE, reason, message)
    draft.event(EventType.WARNING, reason, message)


def _promote(draft: Draft, spec: FeedbackLoopSpec, namespace: str, version: str) -> None:
    refusal = promotion_refusal(draft.status, version)
    candidate = draft.status.candidate_model
    if refusal is not None or candidate is None:
        _refuse(draft, Reason.PROMOTION_REFUSED, f"promote {version}: refused, {refusal}")
        return
    model = ModelRef(version=version, uri=candidate.uri, sha256=candidate.sha256, metrics=candidate.metrics)
    begin_promotion(draft, spec, namespace, model, Trigger.MANUAL_PROMOTE)


def _rollback_to(
    draft: Draft, spec: FeedbackLoopSpec, namespace: str, version: str, observed: Observations
) -> None:
    refusal = rollback_refusal(draft.status, version)
    if refusal is not None:
        _refuse(draft, Reason.ROLLBACK_REFUSED, f"rollback-to {version}: refused, {refusal}")
        return
    artifacts = observed.rollback_artifacts
    if artifacts is None or artifacts.check is not ArtifactCheck.VERIFIED:
        detail = artifacts.message if artifacts else "no artifacts were checked"
        _refuse(draft, Reason.ROLLBACK_REFUSED, f"rollback-to {version}: refused, {detail}")
        return
    metrics = contract.numeric_metrics(artifacts.metrics.get("candidate"))
    model = ModelRef(version=version, uri=artifacts.uri, sha256=artifacts.model_sha256, metrics=metrics)
    start_rollout(draft, spec, namespace, model, RolloutKind.ROLLBACK, Trigger.MANUAL_ROLLBACK)
