"""What a loop may hand to its retrain Job. The operator creates the Job, so a loop's author must not reach
through it what their own RBAC does not give them: a Secret they cannot read, a label a NetworkPolicy trusts,
an annotation that assumes a cloud role."""

from __future__ import annotations

from feedbackloop.api import Reason
from feedbackloop.core.loop import OperatorPolicy
from feedbackloop.core.spec import FeedbackLoopSpec


def retrain_refusals(spec: FeedbackLoopSpec, policy: OperatorPolicy) -> list[tuple[Reason, str]]:
    """Each Secret name and pod metadata key of the loop that the operator's policy does not allow."""
    refusals = []
    secret = spec.artifacts.credentials_secret if spec.artifacts is not None else None
    if secret is not None and not secret.startswith(policy.credentials_secret_prefix):
        refusals.append(
            (
                Reason.SECRET_NOT_OPTED_IN,
                f"spec.artifacts.credentialsSecret: Secret {secret!r} is not opted in to FeedbackLoops: "
                f"its name must start with {policy.credentials_secret_prefix!r} "
                "(FBL_CREDENTIALS_SECRET_PREFIX)",
            )
        )
    if spec.retrain is None:
        return refusals
    allowed = ", ".join(repr(prefix) for prefix in policy.pod_metadata_prefixes) or "none"
    for field, metadata in (
        ("podLabels", spec.retrain.pod_labels),
        ("podAnnotations", spec.retrain.pod_annotations),
    ):
        for key in sorted(metadata):
            if not key.startswith(policy.pod_metadata_prefixes):
                refusals.append(
                    (
                        Reason.POD_METADATA_NOT_ALLOWED,
                        f"spec.retrain.{field}: key {key!r} is not under an allowed prefix "
                        f"(allowed: {allowed}; FBL_POD_METADATA_PREFIXES)",
                    )
                )
    return refusals
