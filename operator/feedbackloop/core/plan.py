"""plan(): what to observe for one loop now, so that the reconciler reads only what `decide` will use."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from feedbackloop.core import contract
from feedbackloop.core.allowlist import choose_prometheus
from feedbackloop.core.cadence import probe_due
from feedbackloop.core.loop import LoopState, OperatorPolicy
from feedbackloop.core.monitoring import evaluation_due
from feedbackloop.core.promql import RenderedQuery, UnsafeQueryError, render_queries
from feedbackloop.core.readiness import not_allowed, runtime_spec_errors
from feedbackloop.core.requests import Pending, pending_request
from feedbackloop.core.spec import Mode
from feedbackloop.core.stage import StageQuery, read_due, stage_queries


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
    prometheus_url: str = ""  # the allowed URL the queries and the probe go to
    stage_queries: tuple[StageQuery, ...] | None = None  # a Shadow or Split stage's counts are due


def plan(loop: LoopState, policy: OperatorPolicy, now: datetime) -> ObservationPlan:
    active = loop.status.active_retrain
    spec = loop.spec
    candidate_uri = None
    # activeRetrain.version names an S3 key; whoever can write status must not steer the operator's reads.
    if (
        active is not None
        and spec is not None
        and spec.artifacts is not None
        and contract.is_version_name(active.version)
    ):
        candidate_uri = contract.version_uri(
            spec.artifacts.bucket, spec.artifacts.prefix, loop.ref.namespace, loop.ref.name, active.version
        )
    if spec is None or runtime_spec_errors(loop, policy) or not_allowed(spec, policy):
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
    status = loop.status
    pending = pending_request(
        loop.promote_request,
        status.handled_promote_request,
        rollback_version,
        status.handled_rollback_request,
        loop.request_token,
    )
    if (
        rollback_version
        and pending is Pending.ROLLBACK  # the one core.manual handles next, so its manifest is needed
        and spec.artifacts is not None
        and spec.mode is not Mode.OBSERVE
        and contract.is_version_name(rollback_version)
    ):
        rollback_uri = contract.version_uri(
            spec.artifacts.bucket, spec.artifacts.prefix, loop.ref.namespace, loop.ref.name, rollback_version
        )
    return ObservationPlan(
        # Suspend holds monitoring, not an analysis in flight: a half-judged version is still judged.
        queries=render_queries(loop) if (due and not spec.suspend) or measurement_due else None,
        probe_dependencies=due and probe_due(loop, policy, now),
        job_name=active.job if active else None,
        candidate_uri=candidate_uri,
        candidate_version=active.version if active else None,
        observe_target=rollout is not None,
        rollback_uri=rollback_uri,
        rollback_version=rollback_version if rollback_uri else None,
        prometheus_url=choose_prometheus(spec.prometheus.url, policy.prometheus_urls).url or "",
        stage_queries=_stage_queries(loop, now) if read_due(rollout, now) else None,
    )


def _stage_queries(loop: LoopState, now: datetime) -> tuple[StageQuery, ...]:
    try:
        return stage_queries(loop, now)
    except UnsafeQueryError:
        return ()  # a version no query may carry (a status edited by hand): no counts, so no win
