"""Which model versions each command accepts, judged from what the FeedbackLoop's status knows. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from feedbackloop.api import (
    PROMOTE_ANNOTATION,
    REQUESTED_AT_ANNOTATION,
    ROLLBACK_ANNOTATION,
    GateVerdict,
    RolloutKind,
)
from feedbackloop.core import contract
from feedbackloop.core.manual import (
    Refusal,
    failed_retrains,
    known_versions,
    promotable_versions,
    promotion_refusal,
    recorded_models,
    rollback_refusal,
    rollback_targets,
)
from feedbackloop.core.requests import is_handled, quoted
from feedbackloop.core.spec import ArtifactsSpec
from feedbackloop.core.status import FeedbackLoopStatus
from feedbackloop.kubectl_plugin.errors import PluginError

# A version names a directory in S3 and in the local report cache: no separators, no "..".
_SAFE_VERSION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def listing(versions: Iterable[str]) -> str:
    return ", ".join(versions) or "none"


def check_promote(status: FeedbackLoopStatus, loop: str, version: str) -> None:
    """The operator's own rule (core.manual), explained for the person at the terminal."""
    refusal = promotion_refusal(status, version)
    if refusal is None:
        return
    candidate = status.candidate_model
    if refusal is Refusal.NOT_A_VERSION_NAME:
        why = refusal.value
    elif refusal is Refusal.REJECTED:
        why = "the operator rejected it"
    elif candidate is not None and candidate.version == version:
        why = f"its validation is {candidate.validation or 'not finished'}, not {GateVerdict.PASSED}"
    else:
        why = "it is not the validated candidate"
    raise PluginError(
        f'cannot promote {version} on FeedbackLoop "{loop}": {why}; '
        f"promotable: {listing(promotable_versions(status))}; "
        f"known versions: {listing(known_versions(status))}"
    )


def check_rollback(status: FeedbackLoopStatus, loop: str, version: str) -> None:
    if version in rollback_targets(status):
        return
    refusal = rollback_refusal(status, version)
    if refusal is Refusal.NOT_A_VERSION_NAME:
        why = refusal.value
    elif refusal is Refusal.ALREADY_SERVING:
        why = "it is already serving"
    elif refusal is Refusal.REJECTED:
        why = "the operator rejected it"
    elif version in failed_retrains(status):
        why = "its retrain failed, so it has no verified artifacts"
    else:
        why = "the status does not know it (use --force for a version stored outside the status)"
    raise PluginError(
        f'cannot roll FeedbackLoop "{loop}" back to {version}: {why}; '
        f"rollback targets: {listing(rollback_targets(status))}; "
        f"known versions: {listing(known_versions(status))}"
    )


def check_not_in_flight(status: FeedbackLoopStatus, annotation: str, version: str) -> None:
    """A repeat is a new request (a fresh requested-at token), but not one for the rollout in flight: it
    would wait for that rollout, then be refused (already serving, no longer the candidate), hiding how it
    ended."""
    rollout = status.rollout
    kind = RolloutKind.PROMOTION if annotation == PROMOTE_ANNOTATION else RolloutKind.ROLLBACK
    if rollout is not None and rollout.kind is kind and rollout.version == version:
        raise PluginError(
            f"the rollout in flight is already the {kind.lower()} of {version} (phase {rollout.phase}); "
            "ask again once it has ended"
        )


@dataclass(frozen=True)
class VersionRequest:
    """A promote or rollback-to request, as the merge patch of metadata.annotations that makes it."""

    annotations: dict[str, str | None]  # None removes
    warning: str | None = None  # the request it removed was not handled yet


def version_request(
    status: FeedbackLoopStatus, annotations: Mapping[str, str], annotation: str, version: str, token: str
) -> VersionRequest:
    """`annotation`=`version` with a fresh requested-at token, so the same version again is a new request.

    One token is one request (core.manual), so the other request annotation goes in the same patch: left
    beside the new token it would look new, and a promote goes first, so an old promote would take the place
    of a rollback asked for now. It goes even when not handled yet: the later request replaces the earlier."""
    patch: dict[str, str | None] = {annotation: version, REQUESTED_AT_ANNOTATION: token}
    other = ROLLBACK_ANNOTATION if annotation == PROMOTE_ANNOTATION else PROMOTE_ANNOTATION
    value = annotations.get(other)
    if value is None:
        return VersionRequest(patch)
    handled = (
        status.handled_rollback_request if other == ROLLBACK_ANNOTATION else status.handled_promote_request
    )
    if is_handled(value, handled, annotations.get(REQUESTED_AT_ANNOTATION)):
        return VersionRequest({**patch, other: None})
    warning = f"{other}={quoted(value)} was not handled yet: this request replaces it"
    return VersionRequest({**patch, other: None}, warning)


def check_version_name(version: str) -> None:
    if not _SAFE_VERSION.match(version):
        raise PluginError(f"{version!r} is not a version name (letters, digits, '_', '.', '-')")


def report_version(status: FeedbackLoopStatus, loop: str, requested: str | None) -> str:
    """The requested version if the status knows it; without one, the version being served."""
    known = known_versions(status)
    if requested is None:
        if status.current_model is None:
            raise PluginError(
                f'FeedbackLoop "{loop}" serves no known model yet: name a VERSION (known versions: '
                f"{listing(known)})"
            )
        requested = status.current_model.version
    elif requested not in known:
        raise PluginError(
            f'unknown version {requested} of FeedbackLoop "{loop}"; known versions: {listing(known)}'
        )
    check_version_name(requested)
    return requested


def version_uri(
    status: FeedbackLoopStatus, artifacts: ArtifactsSpec | None, namespace: str, loop: str, version: str
) -> str:
    """Where the version's artifacts are: as status records it, else by the layout of spec.artifacts."""
    recorded = {model.version: model.uri for model in recorded_models(status)}
    if status.candidate_model is not None:
        recorded[status.candidate_model.version] = status.candidate_model.uri
    if version in recorded:
        return recorded[version]
    if artifacts is None:
        raise PluginError(f'FeedbackLoop "{loop}" has no spec.artifacts, so {version} has no known location')
    return contract.version_uri(artifacts.bucket, artifacts.prefix, namespace, loop, version)
