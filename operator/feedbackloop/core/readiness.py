"""Ready: the spec checks admission cannot make, and the preflight of the loop's dependencies."""

from __future__ import annotations

from datetime import datetime

from feedbackloop.api import ConditionStatus, ConditionType, Reason
from feedbackloop.core.allowlist import bucket_refusal, choose_prometheus
from feedbackloop.core.conditions import INITIAL_CONDITIONS, set_condition
from feedbackloop.core.draft import Draft, WorkingStatus, edit_status
from feedbackloop.core.loop import LoopState, OperatorPolicy
from feedbackloop.core.observations import Observations
from feedbackloop.core.promql import UnsafeQueryError, render_queries
from feedbackloop.core.retrain_policy import retrain_refusals
from feedbackloop.core.spec import FeedbackLoopSpec
from feedbackloop.core.status import FeedbackLoopStatus, ModelRef
from feedbackloop.core.triggers import schedule_error


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


def not_allowed(spec: FeedbackLoopSpec, policy: OperatorPolicy) -> list[tuple[Reason, str]]:
    """What the loop names that the operator's allow-lists refuse: nothing refused is ever requested."""
    refusals = []
    if prometheus := choose_prometheus(spec.prometheus.url, policy.prometheus_urls).refusal:
        refusals.append((Reason.PROMETHEUS_NOT_ALLOWED, f"{prometheus} (FBL_PROMETHEUS_URLS)"))
    bucket = bucket_refusal(spec.artifacts.bucket, policy.artifact_buckets) if spec.artifacts else None
    if bucket:
        refusals.append((Reason.ARTIFACT_STORE_NOT_ALLOWED, f"{bucket} (FBL_ARTIFACT_BUCKETS)"))
    refusals.extend(retrain_refusals(spec, policy))
    return refusals


def initialize_conditions(draft: Draft) -> None:
    present = {c.type for c in draft.status.conditions}
    for kind, (status, reason) in INITIAL_CONDITIONS.items():
        if kind not in present:
            draft.condition(kind, status, reason)


def preflight(draft: Draft, spec: FeedbackLoopSpec, observed: Observations) -> bool:
    """Ready reflects the dependencies; without fresh probes the previous verdict stands."""
    problems: list[tuple[Reason, str]] = []
    if observed.prometheus is not None and not observed.prometheus.ok:
        message = f"Prometheus {spec.prometheus.url or '(the default)'}: {observed.prometheus.message}"
        circuit_open = observed.prometheus.circuit_open
        reason = Reason.PROMETHEUS_CIRCUIT_OPEN if circuit_open else Reason.PROMETHEUS_UNREACHABLE
        problems.append((reason, message))
    store = observed.artifact_store
    if store is not None and not store.ok and store.not_found and spec.artifacts is not None:
        # The store answered: retrying will not help until someone creates the bucket or fixes its name.
        message = f"artifact store: bucket {spec.artifacts.bucket} does not exist"
        problems.append((Reason.ARTIFACT_BUCKET_NOT_FOUND, message))
    elif store is not None and not store.ok and store.access_denied:
        # The store answered and refused: waiting will not help until someone fixes the credentials or policy.
        message = f"artifact store, with the operator's credentials: {store.message}"
        problems.append((Reason.ACCESS_DENIED, message))
    elif store is not None and not store.ok:
        problems.append((Reason.ARTIFACT_STORE_UNREACHABLE, f"artifact store: {store.message}"))
    if observed.target is not None:
        target = spec.target
        if not observed.target.deployment_found:
            problems.append((Reason.TARGET_NOT_FOUND, f"Deployment {target.deployment} not found"))
        elif not observed.target.container_found:
            names = ", ".join(observed.target.containers) or "none"
            message = f"Deployment {target.deployment} has no container {target.container} (has: {names})"
            problems.append((Reason.CONTAINER_NOT_FOUND, message))
    probed = (
        observed.prometheus is not None or observed.artifact_store is not None or observed.target is not None
    )
    if problems:
        message = "; ".join(message for _, message in problems)
        draft.condition(ConditionType.READY, ConditionStatus.FALSE, problems[0][0], message)
        return False
    if probed:
        count = len(spec.monitoring.metrics)
        message = f"monitoring {count} metric{'s' if count != 1 else ''}"
        draft.condition(ConditionType.READY, ConditionStatus.TRUE, Reason.READY, message)
        return True
    return draft.condition_is(ConditionType.READY, ConditionStatus.TRUE)


def adopt_deployed_model(draft: Draft, observed: Observations) -> None:
    """The first time, the model the Deployment already serves becomes status.currentModel."""
    if draft.status.current_model is not None or observed.target is None:
        return
    if draft.status.expected_model is not None:
        return  # out of sync: core.served names what serves, never from this loop's own stale annotation
    deployed = observed.target.deployed
    if deployed is None or not deployed.uri:
        return
    version = deployed.version or deployed.uri.rstrip("/").rsplit("/", 1)[-1]
    draft.status.current_model = ModelRef(version=version, uri=deployed.uri, sha256=deployed.sha256)


def dependency_failed(
    status: FeedbackLoopStatus, forbidden: bool, message: str, now: datetime, generation: int
) -> FeedbackLoopStatus:
    """A Kubernetes call failed mid-reconcile: Ready says so, so nothing fails silently."""
    reason = Reason.FORBIDDEN if forbidden else Reason.KUBERNETES_API_ERROR

    def not_ready(working: WorkingStatus) -> None:
        working.conditions = set_condition(
            working.conditions, ConditionType.READY, ConditionStatus.FALSE, reason, message, now, generation
        )

    return edit_status(status, not_ready)
