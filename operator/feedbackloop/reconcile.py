"""observe → decide → act for one FeedbackLoop.

Reads go through the adapters, `core.decide` chooses, and writes go back through the adapters in a fixed
order: status first (it names what the actions create), then the actions, then the events.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from feedbackloop import metrics
from feedbackloop.core.builders import LoopRef
from feedbackloop.core.conditions import FALSE, Reason, set_condition
from feedbackloop.core.decide import LoopState, ObservationPlan, OperatorPolicy, decide, plan
from feedbackloop.core.draft import ApplyModel, Decision
from feedbackloop.core.observations import (
    ArtifactObservation,
    JobObservation,
    JobState,
    MetricObservation,
    Observations,
    Probe,
    QueryResult,
    RetrainCapacity,
    TargetObservation,
)
from feedbackloop.core.patch import merge_patch
from feedbackloop.core.promotion import PROMOTE_ANNOTATION, ROLLBACK_ANNOTATION
from feedbackloop.core.spec import FeedbackLoopSpec, SpecError, parse_spec
from feedbackloop.core.status import ConditionType, FeedbackLoopStatus, ModelRef, parse_status, to_status_dict
from feedbackloop.core.triggers import RETRAIN_REQUEST_ANNOTATION

log = logging.getLogger(__name__)
# Fault injection for tests (FBL_FAILPOINT): die exactly where a crash would hurt most.
CRASH_BEFORE_JOB_CREATE = "crash-before-job-create"


class MetricsSource(Protocol):
    def query(self, url: str, query: str, timeout_seconds: float) -> QueryResult: ...
    def probe(self, url: str, timeout_seconds: float) -> Probe: ...


class Cluster(Protocol):
    def get_loop(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def patch_loop_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None: ...
    def observe_target(self, namespace: str, deployment: str, container: str) -> TargetObservation: ...
    def observe_job(self, namespace: str, name: str) -> JobObservation: ...
    def create_job(self, manifest: dict[str, Any]) -> bool: ...
    def apply_model(
        self, namespace: str, deployment: str, container: str, model: ModelRef | None
    ) -> None: ...
    def count_active_retrains(self, namespaces: tuple[str, ...]) -> int: ...
    def post_event(
        self, namespace: str, name: str, uid: str, kind: str, reason: str, message: str
    ) -> None: ...


class ArtifactStoreGateway(Protocol):
    def probe_bucket(self, bucket: str) -> Probe: ...
    def verify_version(self, uri: str, version: str) -> ArtifactObservation: ...


@dataclass
class Reconciler:
    cluster: Cluster
    prometheus: MetricsSource
    artifacts: ArtifactStoreGateway
    policy: OperatorPolicy
    max_concurrent_retrains: int
    namespaces: tuple[str, ...] = ()
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    failpoint: str | None = None
    _loop_locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)
    # Counting running retrains and launching one must not interleave across loops, or the cap leaks.
    _launch_lock: threading.Lock = field(default_factory=threading.Lock)

    def _lock_for(self, namespace: str, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._loop_locks.setdefault((namespace, name), threading.Lock())

    def forget(self, namespace: str, name: str) -> None:
        with self._locks_guard:
            self._loop_locks.pop((namespace, name), None)

    def reconcile(self, namespace: str, name: str) -> Decision | None:
        started = time.monotonic()
        outcome = "error"
        try:
            with self._lock_for(namespace, name):
                decision = self._reconcile(namespace, name)
            outcome = "ok"
            return decision
        finally:
            metrics.RECONCILE_SECONDS.labels(outcome).observe(time.monotonic() - started)

    def report_failure(self, namespace: str, name: str, failure: Exception) -> None:
        """A dependency failed mid-reconcile: say so in Ready, so nothing fails silently."""
        try:
            body = self.cluster.get_loop(namespace, name)
            if body is None:
                return
            loop, _annotations = loop_state_from_body(body)
            forbidden = getattr(failure, "forbidden", False)
            reason = Reason.FORBIDDEN if forbidden else Reason.KUBERNETES_API_ERROR
            conditions = set_condition(
                loop.status.conditions,
                ConditionType.READY,
                FALSE,
                reason,
                str(failure),
                self.clock(),
                loop.generation,
            )
            self._write_status(
                loop.ref, loop.status, loop.status.model_copy(update={"conditions": conditions})
            )
        except Exception:
            log.exception("cannot report failure on %s/%s", namespace, name)

    def _reconcile(self, namespace: str, name: str) -> Decision | None:
        # A fresh read, not the watch cache: our own last status write must be visible here.
        body = self.cluster.get_loop(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        loop, annotations = loop_state_from_body(body)
        now = self.clock()
        observation_plan = plan(loop, self.policy, now)
        observed = self._observe(loop, observation_plan, annotations)
        decision = decide(loop, observed, self.policy, now)
        if decision.needs_capacity:
            with self._launch_lock:
                running = self.cluster.count_active_retrains(self.namespaces)
                observed = replace(observed, capacity=RetrainCapacity(running, self.max_concurrent_retrains))
                decision = decide(loop, observed, self.policy, now)
                self._act(loop, decision, now)
        else:
            self._act(loop, decision, now)
        self._record_metrics(loop, decision)
        return decision

    def _observe(self, loop: LoopState, how: ObservationPlan, annotations: dict[str, str]) -> Observations:
        spec, ref = loop.spec, loop.ref
        observed = Observations(
            retrain_request=annotations.get(RETRAIN_REQUEST_ANNOTATION),
            promote_request=annotations.get(PROMOTE_ANNOTATION),
            rollback_request=annotations.get(ROLLBACK_ANNOTATION),
        )
        if spec is None:
            return observed
        timeout = spec.prometheus.timeout.total_seconds()
        if how.queries is not None:
            results = []
            for query in how.queries:
                value = self.prometheus.query(spec.prometheus.url, query.query, timeout)
                samples = (
                    self.prometheus.query(spec.prometheus.url, query.samples_query, timeout)
                    if query.samples_query
                    else None
                )
                results.append(MetricObservation(query.name, query.query, value, samples))
            observed = replace(observed, metrics=tuple(results))
        if how.probe_dependencies:
            observed = replace(
                observed,
                prometheus=self.prometheus.probe(spec.prometheus.url, timeout),
                artifact_store=self.artifacts.probe_bucket(spec.artifacts.bucket) if spec.artifacts else None,
                target=self.cluster.observe_target(
                    ref.namespace, spec.target.deployment, spec.target.container
                ),
            )
        elif how.observe_target:
            observed = replace(
                observed,
                target=self.cluster.observe_target(
                    ref.namespace, spec.target.deployment, spec.target.container
                ),
            )
        if how.rollback_uri and how.rollback_version:
            observed = replace(
                observed,
                rollback_artifacts=self.artifacts.verify_version(how.rollback_uri, how.rollback_version),
            )
        if how.job_name is not None:
            job = self.cluster.observe_job(ref.namespace, how.job_name)
            observed = replace(observed, job=job)
            if job.state is JobState.SUCCEEDED and how.candidate_uri and how.candidate_version:
                observed = replace(
                    observed,
                    artifacts=self.artifacts.verify_version(how.candidate_uri, how.candidate_version),
                )
        return observed

    def _act(self, loop: LoopState, decision: Decision, now: datetime) -> None:
        ref = loop.ref
        status = decision.status
        self._write_status(ref, loop.status, status)
        for action in decision.actions:
            if isinstance(action, ApplyModel):
                self.cluster.apply_model(action.namespace, action.deployment, action.container, action.model)
                continue
            if self.failpoint == CRASH_BEFORE_JOB_CREATE:
                log.error(
                    "failpoint %s: exiting after the status write, before creating the Job", self.failpoint
                )
                os._exit(137)
            try:
                created = self.cluster.create_job(action.manifest)
            except Exception as err:
                # The counter is durable, so the next reconcile retries the same Job name; say why it waits.
                failed = _job_create_failed(status, str(err), now, loop.generation)
                self._write_status(ref, status, failed)
                self.cluster.post_event(ref.namespace, ref.name, ref.uid, "Warning", Reason.BLOCKED, str(err))
                raise
            log.info(
                "%s Job %s for %s/%s",
                "created" if created else "found existing",
                action.manifest["metadata"]["name"],
                ref.namespace,
                ref.name,
            )
            before, status = status, _mark_job_created(status)
            self._write_status(ref, before, status)
        for event in decision.events:
            self.cluster.post_event(ref.namespace, ref.name, ref.uid, event.type, event.reason, event.message)

    def _write_status(self, ref: LoopRef, before: FeedbackLoopStatus, after: FeedbackLoopStatus) -> None:
        patch = merge_patch(to_status_dict(before), to_status_dict(after))
        if patch:
            self.cluster.patch_loop_status(ref.namespace, ref.name, patch)

    def _record_metrics(self, loop: LoopState, decision: Decision) -> None:
        ref = loop.ref
        evaluation = decision.status.last_evaluation
        if evaluation is not None and evaluation != loop.status.last_evaluation:
            for result in evaluation.metrics:
                metrics.EVALUATIONS.labels(ref.namespace, ref.name, result.name, result.verdict).inc()
                value = result.value if result.value is not None else math.nan
                metrics.METRIC_VALUE.labels(ref.namespace, ref.name, result.name).set(value)
        started = decision.status.active_retrain
        if started is not None and loop.status.active_retrain is None:
            metrics.RETRAINS_STARTED.labels(ref.namespace, ref.name, started.trigger).inc()
        before_candidate, candidate = loop.status.candidate_model, decision.status.candidate_model
        if (
            candidate is not None
            and candidate.validation
            and (before_candidate is None or not before_candidate.validation)
        ):
            for gate in candidate.gates:
                metrics.GATE_VERDICTS.labels(ref.namespace, ref.name, gate.metric, gate.verdict).inc()
        before_rollout, rollout = loop.status.rollout, decision.status.rollout
        if rollout is not None and (before_rollout is None or before_rollout.version != rollout.version):
            metrics.ROLLOUTS_STARTED.labels(ref.namespace, ref.name, rollout.kind).inc()
        if (
            rollout is not None
            and rollout.phase == "RollingBack"
            and (before_rollout is None or before_rollout.phase != "RollingBack")
        ):
            metrics.ROLLBACKS.labels(ref.namespace, ref.name, rollout.reason).inc()
        if before_rollout is not None and rollout is None:
            finished = next(
                (e for e in reversed(decision.status.history) if e.version == before_rollout.version), None
            )
            metrics.ROLLOUTS_FINISHED.labels(
                ref.namespace, ref.name, finished.outcome if finished else "Unknown"
            ).inc()
        if len(decision.status.history) > len(loop.status.history) or (
            decision.status.history and decision.status.history[-1:] != loop.status.history[-1:]
        ):
            last = decision.status.history[-1]
            metrics.RETRAINS_FINISHED.labels(ref.namespace, ref.name, last.outcome, last.reason).inc()


def loop_state_from_body(body: dict[str, Any]) -> tuple[LoopState, dict[str, str]]:
    meta = body["metadata"]
    spec: FeedbackLoopSpec | None
    try:
        spec, error = parse_spec(body.get("spec") or {}), None
    except SpecError as err:
        spec, error = None, str(err)
    created = datetime.fromisoformat(meta["creationTimestamp"].replace("Z", "+00:00"))
    annotations: dict[str, str] = meta.get("annotations") or {}
    loop = LoopState(
        ref=LoopRef(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"]),
        generation=int(meta.get("generation", 1)),
        created=created,
        spec=spec,
        spec_error=error,
        status=parse_status(body.get("status")),
        rollback_request=annotations.get(ROLLBACK_ANNOTATION),
    )
    return loop, annotations


def _mark_job_created(status: FeedbackLoopStatus) -> FeedbackLoopStatus:
    active = status.active_retrain
    if active is None or active.job_created:
        return status
    return status.model_copy(update={"active_retrain": active.model_copy(update={"job_created": True})})


def _job_create_failed(
    status: FeedbackLoopStatus, message: str, now: datetime, generation: int
) -> FeedbackLoopStatus:
    conditions = set_condition(
        status.conditions,
        ConditionType.RETRAINING,
        FALSE,
        Reason.BLOCKED,
        f"cannot create the retrain Job: {message}",
        now,
        generation,
    )
    return status.model_copy(update={"conditions": conditions})
