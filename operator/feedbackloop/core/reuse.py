"""Which earlier versions a breach retrain may reuse (retrain.reuse, docs/policy.md).

The list comes from status.history, the operator's own record: a version qualifies by the digest of the
manifest the operator verified when the version was a candidate, never by what the bucket holds now.
"""

from __future__ import annotations

from feedbackloop.api import Outcome
from feedbackloop.core import contract
from feedbackloop.core.status import FeedbackLoopStatus

# A version that passed its gates and was rolled out (or recommended to a person) is worth scoring again.
REUSABLE_OUTCOMES = frozenset({Outcome.ROLLED_OUT, Outcome.RECOMMENDED})
# One entry of these for a version rules it out, whatever its other entries say.
REFUSED_OUTCOMES = frozenset(
    {Outcome.REJECTED, Outcome.ROLLED_BACK, Outcome.ROLLBACK_FAILED, Outcome.DEGRADED, Outcome.ABORTED}
)


def reusable_versions(status: FeedbackLoopStatus, limit: int) -> tuple[contract.ReusableVersion, ...]:
    """The newest `limit` earlier versions that were rolled out or recommended, never rejected, rolled back,
    degraded or aborted, with a recorded manifest digest, newest first; one per distinct model (a reused
    version and its original are the same model), and none that is the model serving now."""
    current = status.current_model
    refused = set(status.rejected_versions)
    refused.update(entry.version for entry in status.history if entry.outcome in REFUSED_OUTCOMES)
    if current is not None:
        refused.add(current.version)
    models = {current.sha256} if current is not None and current.sha256 else set()
    found: list[contract.ReusableVersion] = []
    for entry in reversed(status.history):
        if len(found) >= min(limit, contract.REUSE_VERSIONS_LIMIT):
            break
        if (
            entry.outcome not in REUSABLE_OUTCOMES
            or entry.version in refused
            or not contract.is_version_name(entry.version)
            or not contract.is_sha256(entry.manifest_sha256)
            or entry.sha256 in models
            or any(known.version == entry.version for known in found)
        ):
            continue
        assert entry.manifest_sha256 is not None
        found.append(contract.ReusableVersion(entry.version, entry.manifest_sha256))
        if entry.sha256:
            models.add(entry.sha256)
    return tuple(found)
