"""What the Deployment actually serves, compared with what this loop rolled out (the InSync condition).

A GitOps sync or a person may set MODEL_URI back after a rollout. The loop then says so once (InSync=False,
OutOfSync, one Warning), and status.currentModel follows what serves, so that the next retrain's champion is
the served model. Nothing is re-applied: fighting the Deployment's other manager would flap the model on every
sync; a rollback-to, the next promotion, or fixing the manifest ends the drift.
"""

from __future__ import annotations

from feedbackloop.api import ConditionStatus, ConditionType, EventType, Reason
from feedbackloop.core import contract
from feedbackloop.core.draft import Draft
from feedbackloop.core.loop import LoopRef
from feedbackloop.core.observations import DeployedModel, Observations
from feedbackloop.core.spec import FeedbackLoopSpec
from feedbackloop.core.status import ModelRef

UNKNOWN_VERSION = "unknown"  # a served URI that is neither a model the status records nor this loop's layout


def follow_served_model(
    draft: Draft, spec: FeedbackLoopSpec, ref: LoopRef, observed: Observations, rollout_ended: bool = False
) -> None:
    """Compare the Deployment's model env, when it was observed, with what this loop expects to serve."""
    if rollout_ended:
        # The rollout applied this loop's own choice: any earlier drift is over.
        draft.status.expected_model = None
    target = observed.target
    if target is None or not target.container_found or target.deployed is None:
        return
    deployed, current = target.deployed, draft.status.current_model
    expected = draft.status.expected_model or current
    if expected is None:
        return  # no model yet: the Deployment sets no MODEL_URI and nothing was rolled out
    where = f"Deployment {spec.target.deployment}/{spec.target.container}"
    if _serves(deployed, expected):
        draft.status.current_model = expected
        draft.status.expected_model = None
        message = f"{where} serves {_describe(expected)}"
        draft.condition(ConditionType.IN_SYNC, ConditionStatus.TRUE, Reason.IN_SYNC, message)
        return
    served = _served_model(draft, spec, ref, deployed, expected)
    if expected.deployed_at is None:
        # Adopted, never rolled out here: the Deployment's owner changes its own model, which is not drift.
        draft.status.current_model = served
        message = (
            f"{where} serves {_describe(served)}, set outside this loop and adopted as its current model"
        )
        draft.condition(ConditionType.IN_SYNC, ConditionStatus.TRUE, Reason.IN_SYNC, message)
        return
    message = (
        f"{where} serves {_describe(served)}, not {_describe(expected)} that this loop rolled out: changed "
        "outside the operator, not re-applied; the next retrain's champion is what serves"
    )
    retargeted = draft.status.expected_model is not None and current != served
    draft.status.expected_model = expected
    draft.status.current_model = served
    draft.condition(ConditionType.IN_SYNC, ConditionStatus.FALSE, Reason.OUT_OF_SYNC, message)
    if retargeted:
        # Still out of sync, so the condition posts no Event: this one says what serves now.
        draft.event(EventType.WARNING, Reason.OUT_OF_SYNC, message)


def _serves(deployed: DeployedModel, model: ModelRef) -> bool:
    return deployed.uri == model.uri and _same_digest(deployed.sha256, model.sha256)


def _same_digest(deployed: str | None, recorded: str | None) -> bool:
    """Equal when both name one: a model adopted from a Deployment without MODEL_SHA256 records none."""
    return deployed is None or recorded is None or deployed == recorded


def _served_model(
    draft: Draft, spec: FeedbackLoopSpec, ref: LoopRef, deployed: DeployedModel, expected: ModelRef
) -> ModelRef | None:
    """The served model as the status knows it: a recorded model's version (and its metrics when the digest
    matches too), else the version its URI names in this loop's artifact layout, else UNKNOWN_VERSION."""
    if not deployed.uri:
        return None
    candidate = draft.status.candidate_model
    recorded = [expected, draft.status.current_model]
    if candidate is not None:
        recorded.append(
            ModelRef(
                version=candidate.version,
                uri=candidate.uri,
                sha256=candidate.sha256,
                metrics=candidate.metrics,
            )
        )
    for model in recorded:
        if model is not None and model.uri == deployed.uri:
            metrics = model.metrics if _same_digest(deployed.sha256, model.sha256) else {}
            return ModelRef(version=model.version, uri=deployed.uri, sha256=deployed.sha256, metrics=metrics)
    version = _layout_version(spec, ref, deployed.uri) or UNKNOWN_VERSION
    return ModelRef(version=version, uri=deployed.uri, sha256=deployed.sha256)


def _layout_version(spec: FeedbackLoopSpec, ref: LoopRef, uri: str) -> str | None:
    """The version whose artifacts this loop keeps at `uri`, or None."""
    if spec.artifacts is None:
        return None
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    if not contract.is_version_name(name):
        return None
    layout = contract.version_uri(spec.artifacts.bucket, spec.artifacts.prefix, ref.namespace, ref.name, name)
    return name if uri.rstrip("/") == layout.rstrip("/") else None


def _describe(model: ModelRef | None) -> str:
    return f"{model.version} ({model.uri})" if model is not None else "no MODEL_URI"
