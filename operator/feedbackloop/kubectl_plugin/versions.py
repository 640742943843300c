"""Which model versions each command accepts, judged from what the FeedbackLoop's status knows. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable

from feedbackloop.api import GateVerdict
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


def check_not_handled(handled_request: str | None, annotation: str, version: str) -> None:
    """The operator handles each annotation value once; the same value again would be ignored silently."""
    if handled_request == version:
        raise PluginError(
            f"the operator already handled {annotation}={version} on this loop and handles each value "
            "once, so it would ignore this request"
        )


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
