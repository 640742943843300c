"""Which model versions each command accepts, judged from what the FeedbackLoop's status knows. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable

from feedbackloop.core import contract
from feedbackloop.core.promotion import Outcome
from feedbackloop.core.spec import ArtifactsSpec
from feedbackloop.core.status import FeedbackLoopStatus, ModelRef
from feedbackloop.kubectl_plugin.errors import PluginError

VALIDATION_PASSED = "Passed"  # CandidateModel.validation once every gate passed
# A version names a directory in S3 and in the local report cache: no separators, no "..".
_SAFE_VERSION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def _ordered(versions: Iterable[str]) -> list[str]:
    return sorted(set(versions), key=lambda version: (contract.version_number(version), version))


def listing(versions: Iterable[str]) -> str:
    return ", ".join(versions) or "none"


def _recorded_models(status: FeedbackLoopStatus) -> list[ModelRef]:
    """Models whose S3 location the status records: current, rollout target and its predecessor."""
    models = [status.current_model]
    if status.rollout is not None:
        rollout = status.rollout
        models += [
            ModelRef(version=rollout.version, uri=rollout.uri, sha256=rollout.sha256),
            rollout.previous,
        ]
    return [model for model in models if model is not None]


def known_versions(status: FeedbackLoopStatus) -> list[str]:
    """Every version the status names (history, current, candidate, rollout), by version number."""
    names = [entry.version for entry in status.history]
    names += [model.version for model in _recorded_models(status)]
    if status.candidate_model is not None:
        names.append(status.candidate_model.version)
    return _ordered(names)


def promotable_versions(status: FeedbackLoopStatus) -> list[str]:
    """The operator promotes only the validated candidate, and never a rejected version."""
    candidate = status.candidate_model
    if (
        candidate is None
        or candidate.validation != VALIDATION_PASSED
        or candidate.version in status.rejected_versions
    ):
        return []
    return [candidate.version]


def rollback_targets(status: FeedbackLoopStatus) -> list[str]:
    """Known versions the operator would roll back to: stored, not rejected, not already serving."""
    current = status.current_model.version if status.current_model else None
    # A failed retrain left no verified artifacts behind.
    unfinished = {entry.version for entry in status.history if entry.outcome == Outcome.RETRAIN_FAILED}
    excluded = {current, *status.rejected_versions, *unfinished}
    return [version for version in known_versions(status) if version not in excluded]


def check_promote(status: FeedbackLoopStatus, loop: str, version: str) -> None:
    if version in promotable_versions(status):
        return
    candidate = status.candidate_model
    if version in status.rejected_versions:
        why = "the operator rejected it"
    elif candidate is not None and candidate.version == version:
        why = f"its validation is {candidate.validation or 'not finished'}, not {VALIDATION_PASSED}"
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
    if status.current_model is not None and status.current_model.version == version:
        why = "it is already serving"
    elif version in status.rejected_versions:
        why = "the operator rejected it"
    elif version in known_versions(status):
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
    recorded = {model.version: model.uri for model in _recorded_models(status)}
    if status.candidate_model is not None:
        recorded[status.candidate_model.version] = status.candidate_model.uri
    if version in recorded:
        return recorded[version]
    if artifacts is None:
        raise PluginError(f'FeedbackLoop "{loop}" has no spec.artifacts, so {version} has no known location')
    return contract.version_uri(artifacts.bucket, artifacts.prefix, namespace, loop, version)
