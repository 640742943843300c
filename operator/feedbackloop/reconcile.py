"""observe → decide → act for one FeedbackLoop.

Reads go through the adapters, `core.decide` chooses, and writes go back through the adapters in a fixed
order: status first (it names what the actions create), then the actions, then the Events. The transitions
a decision reports are counted in the operator's metrics once its status is written, and the readiness
gauge follows the Ready condition of every status written (or found unchanged).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from feedbackloop import metrics
from feedbackloop.adapters.kube import ApiFailureError, LoopGoneError, StaleWriteError
from feedbackloop.api import (
    ABORT_ANNOTATION,
    PROMOTE_ANNOTATION,
    REQUESTED_AT_ANNOTATION,
    RETRAIN_REQUEST_ANNOTATION,
    ROLLBACK_ANNOTATION,
    ConditionStatus,
    ConditionType,
)
from feedbackloop.api import (
    FINALIZER as LEGACY_FINALIZER,
)
from feedbackloop.core.cadence import evaluation_lag, next_reconcile, status_write_needed
from feedbackloop.core.decide import decide
from feedbackloop.core.decision import (
    ApplyModel,
    CreateJob,
    Decision,
    Event,
    GateChecked,
    MetricEvaluated,
    RetrainFinished,
    RetrainStarted,
    RollbackStarted,
    RolloutFinished,
    RolloutStarted,
    StagedCandidate,
    StageFinished,
    Transition,
)
from feedbackloop.core.loop import LoopRef, LoopState, OperatorPolicy
from feedbackloop.core.observations import (
    PROBE_QUERY,
    ArtifactObservation,
    HeldPod,
    JobCreation,
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
from feedbackloop.core.plan import ObservationPlan, plan
from feedbackloop.core.readiness import dependency_failed
from feedbackloop.core.retrain import JobCreateFailure, job_create_failed, mark_job_created
from feedbackloop.core.spec import FeedbackLoopSpec, SpecError, parse_spec
from feedbackloop.core.status import FeedbackLoopStatus, ModelRef, parse_status, to_status_dict
from feedbackloop.failpoints import Failpoint
from feedbackloop.index import LoopIndex

log = logging.getLogger(__name__)


class NotLeaderError(RuntimeError):
    """This replica lost its lease mid-reconcile: the write is not made; the leader will decide again."""


class MetricsSource(Protocol):
    def query_all(
        self, url: str, queries: Sequence[str], timeout_seconds: float, deadline: float
    ) -> tuple[QueryResult, ...]:
        """Each query's result in order, all by `deadline` (time.monotonic()); never raises."""
        ...


class Cluster(Protocol):
    """Every method raises on an API failure (the Kubernetes adapter's ApiFailureError)."""

    def get_loop(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def patch_loop_status(
        self, namespace: str, name: str, patch: dict[str, Any], resource_version: str
    ) -> str: ...
    def remove_finalizer(
        self, namespace: str, name: str, finalizers: list[str], resource_version: str
    ) -> None: ...
    def observe_target(self, namespace: str, deployment: str, container: str) -> TargetObservation: ...
    def observe_job(self, namespace: str, name: str, owner_uid: str) -> JobObservation: ...
    def create_job(self, manifest: dict[str, Any]) -> JobCreation: ...
    def apply_model(
        self,
        namespace: str,
        deployment: str,
        container: str,
        model: ModelRef | None,
        candidate: StagedCandidate | None = None,
    ) -> None: ...
    def count_active_retrains(
        self, namespaces: tuple[str, ...], active_jobs: dict[tuple[str, str], str]
    ) -> int: ...
    def post_event(
        self, namespace: str, name: str, uid: str, kind: str, reason: str, message: str
    ) -> None: ...
    def held_retrain_pods(self, namespaces: tuple[str, ...], loop: str | None = None) -> list[HeldPod]: ...
    def release_pod(self, namespace: str, name: str) -> None: ...
    def namespace_terminating(self, namespace: str, name: str, uid: str) -> bool: ...


class ArtifactStoreGateway(Protocol):
    def probe_bucket(self, bucket: str) -> Probe: ...
    def verify_version(self, uri: str, version: str) -> ArtifactObservation: ...


@dataclass(frozen=True)
class Remembered:
    """What this process last knew of a loop: the status as stored at `resource_version`, and the status it
    decided, which may differ from the stored one only by evaluation times and values (see core.cadence)."""

    uid: str
    resource_version: str
    stored: FeedbackLoopStatus
    intended: FeedbackLoopStatus
    last_probe: datetime | None


@dataclass
class _Writing:
    """One reconcile's view of the stored object: each guarded write moves it on."""

    ref: LoopRef
    resource_version: str
    stored: FeedbackLoopStatus


@dataclass(frozen=True)
class Reconciled:
    decision: Decision | None
    next_at: datetime | None  # None: the loop is gone


@dataclass
class Reconciler:
    cluster: Cluster
    prometheus: MetricsSource
    artifacts: ArtifactStoreGateway
    policy: OperatorPolicy
    max_concurrent_retrains: int
    namespaces: tuple[str, ...] = ()
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    failpoint: Failpoint | None = None
    budget_seconds: float = 20.0  # for a reconcile's Prometheus queries, all of them together
    index: LoopIndex = field(default_factory=LoopIndex)
    # Writes only while this returns True: the replica that lost its lease stops before another takes it.
    may_write: Callable[[], bool] = lambda: True
    _memory: dict[tuple[str, str], Remembered] = field(default_factory=dict)
    _loop_locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)
    # Counting running retrains and launching one must not interleave across loops, or the cap leaks.
    _launch_lock: threading.Lock = field(default_factory=threading.Lock)

    def _lock_for(self, namespace: str, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._loop_locks.setdefault((namespace, name), threading.Lock())

    def forget(self, namespace: str, name: str, uid: str | None = None) -> None:
        """A loop gone from this process's watch: drop its readiness series (after any reconcile of it in
        flight) and its lock; if it is gone from the cluster too, not only out of this shard, its pods."""
        with self._lock_for(namespace, name):
            metrics.forget_loop(namespace, name)
            self._memory.pop((namespace, name), None)
            if uid is not None:
                self._release_pods_of_gone_loop(namespace, name, uid)
        with self._locks_guard:
            self._loop_locks.pop((namespace, name), None)

    def sweep_retrain_pods(self) -> int:
        """Release the finalizer of every retrain pod no loop waits on: one left by a crash between the
        status write and the release, or of a loop deleted while no replica watched. Returns how many."""
        if not self.may_write():
            return 0
        held = self.cluster.held_retrain_pods(self.namespaces)  # before the active Jobs: see the race below
        active = self.active_retrain_jobs()  # a pod listed above whose retrain is active is in this view
        indexed = dict(self.index.uids())
        released = 0
        for pod in held:
            if active.get((pod.namespace, pod.job)) == pod.loop_uid:
                continue
            if indexed.get((pod.namespace, pod.loop)) != pod.loop_uid and self._loop_lives(pod):
                continue  # another shard's loop, or one this replica has not indexed yet
            released += self._release(pod)
        return released

    def _loop_lives(self, pod: HeldPod) -> bool:
        body = self.cluster.get_loop(pod.namespace, pod.loop) if pod.loop else None
        return body is not None and body["metadata"].get("uid") == pod.loop_uid

    def _release_pods_of_gone_loop(self, namespace: str, name: str, uid: str) -> None:
        try:
            body = self.cluster.get_loop(namespace, name)
            if (
                body is not None
                and body["metadata"].get("uid") == uid
                and not body["metadata"].get("deletionTimestamp")
            ):
                return  # relabelled out of this shard: the shard that owns it now keeps its pods
            self._release_pods(namespace, name, uid)
        except Exception as err:  # best effort, as an Event: the sweep tries again
            log.warning("cannot release the pods of deleted loop %s/%s: %s", namespace, name, err)

    def _release_pods(self, namespace: str, loop: str, uid: str, job: str | None = None) -> None:
        """Our finalizer off the loop's retrain pods (of one Job, or all), once nothing needs their report."""
        if not self.may_write():
            return
        for pod in self.cluster.held_retrain_pods((namespace,), loop=loop):
            if pod.loop_uid == uid and (job is None or pod.job == job):
                self._release(pod)

    def _release(self, pod: HeldPod) -> int:
        try:
            self.cluster.release_pod(pod.namespace, pod.name)
        except Exception as err:  # best effort, as an Event: the sweep tries again
            log.warning("cannot release pod %s/%s: %s; the sweep tries again", pod.namespace, pod.name, err)
            return 0
        log.info("released retrain pod %s/%s of Job %s", pod.namespace, pod.name, pod.job)
        return 1

    def is_own_write(self, body: Mapping[str, Any]) -> bool:
        """The watch echoing this process's last status write: nothing new to reconcile."""
        meta = body["metadata"]
        remembered = self._memory.get((meta["namespace"], meta["name"]))
        return remembered is not None and remembered.resource_version == meta.get("resourceVersion")

    def reconcile(self, namespace: str, name: str) -> Reconciled:
        started = time.monotonic()
        outcome = "error"
        try:
            with self._lock_for(namespace, name):
                try:
                    reconciled = self._reconcile(namespace, name)
                except LoopGoneError:
                    # Deleted, or its namespace, since it was read: as if the read had found it gone.
                    log.debug("%s/%s is gone: its status is not written", namespace, name)
                    self._gone(namespace, name)
                    reconciled = Reconciled(None, None)
            outcome = "ok"
            return reconciled
        except StaleWriteError:
            outcome = "stale"
            self._memory.pop((namespace, name), None)
            metrics.STATUS_WRITES.labels("stale").inc()
            raise
        finally:
            metrics.RECONCILE_SECONDS.labels(outcome).observe(time.monotonic() - started)

    def report_failure(self, namespace: str, name: str, failure: Exception) -> None:
        """A dependency failed mid-reconcile: say so in Ready, so nothing fails silently."""
        try:
            body = self.cluster.get_loop(namespace, name)
            if body is None or not self.may_write():
                return
            self._memory.pop((namespace, name), None)
            loop, _annotations = loop_state_from_body(body)
            forbidden = bool(getattr(failure, "forbidden", False))
            failed = dependency_failed(loop.status, forbidden, str(failure), self.clock(), loop.generation)
            writing = _Writing(loop.ref, body["metadata"]["resourceVersion"], loop.status)
            self._write_status(writing, failed, self.clock())
        except LoopGoneError:
            log.debug("%s/%s is gone: its failure is not reported", namespace, name)
        except Exception:
            log.exception("cannot report failure on %s/%s", namespace, name)

    def active_retrain_jobs(self) -> dict[tuple[str, str], str]:
        """(namespace, Job) -> loop uid for every loop this process knows whose status names a running Job."""
        active: dict[tuple[str, str], str] = {}
        for key, uid in self.index.uids():
            remembered = self._memory.get(key)
            if remembered is not None and remembered.uid == uid:
                retrain = remembered.intended.active_retrain
                job = retrain.job if retrain else None
            elif (body := self.index.get(key)) is not None:
                job = ((body.get("status") or {}).get("activeRetrain") or {}).get("job")
            else:
                continue
            if isinstance(job, str):
                active[(key[0], job)] = uid
        return active

    def _read(self, namespace: str, name: str) -> tuple[Mapping[str, Any], Remembered | None] | None:
        """The loop as last watched, and what this process remembers of it if that is still true.

        The watch may not yet carry our own last write; then one GET tells a stale copy from someone
        else's write (the remembered status is used only if the stored one is still ours)."""
        key = (namespace, name)
        remembered = self._memory.get(key)
        body = self.index.get(key)
        if body is not None and remembered is not None and _still_ours(body, remembered):
            return body, remembered
        fresh = self.cluster.get_loop(namespace, name)
        if fresh is None:
            return None
        if remembered is not None and _still_ours(fresh, remembered):
            return fresh, remembered
        return fresh, None

    def _reconcile(self, namespace: str, name: str) -> Reconciled:
        read = self._read(namespace, name)
        if read is None:
            self._gone(namespace, name)
            return Reconciled(None, None)
        body, remembered = read
        meta = body["metadata"]
        if LEGACY_FINALIZER in (meta.get("finalizers") or []):
            self._release_legacy_finalizer(body)  # earlier versions' kopf timers put it there
        if meta.get("deletionTimestamp"):
            self._gone(namespace, name)
            self._release_pods_of_gone_loop(namespace, name, str(meta["uid"]))
            return Reconciled(None, None)
        loop, annotations = loop_state_from_body(body, remembered)
        now = self.clock()
        deadline = time.monotonic() + self.budget_seconds
        how = plan(loop, self.policy, now)
        observed = self._observe(loop, how, annotations, deadline)
        decision = decide(loop, observed, self.policy, now)
        writing = _Writing(
            loop.ref, str(meta["resourceVersion"]), remembered.stored if remembered else loop.status
        )
        if decision.needs_capacity:
            with self._launch_lock:
                running = self.cluster.count_active_retrains(self.namespaces, self.active_retrain_jobs())
                observed = replace(observed, capacity=RetrainCapacity(running, self.max_concurrent_retrains))
                decision = decide(loop, observed, self.policy, now)
                final = self._act(loop, writing, decision, now)
        else:
            final = self._act(loop, writing, decision, now)
        self._observe_lag(loop, final)
        if observed.job is not None and observed.job.pods_terminating:
            self._release_pods_if_namespace_goes(loop.ref)
        last_probe = now if how.probe_dependencies else loop.last_probe
        self._memory[(namespace, name)] = Remembered(
            loop.ref.uid, writing.resource_version, writing.stored, final, last_probe
        )
        after = replace(loop, status=final, last_probe=last_probe)
        return Reconciled(decision, next_reconcile(after, annotations, self.policy, now))

    def _gone(self, namespace: str, name: str) -> None:
        metrics.forget_loop(namespace, name)
        self._memory.pop((namespace, name), None)

    def _release_legacy_finalizer(self, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        if not self.may_write():
            return
        kept = [f for f in meta.get("finalizers") or [] if f != LEGACY_FINALIZER]
        self.cluster.remove_finalizer(meta["namespace"], meta["name"], kept, str(meta["resourceVersion"]))
        raise StaleWriteError("release the legacy finalizer", 409, "read the loop again")

    def _observe_lag(self, loop: LoopState, final: FeedbackLoopStatus) -> None:
        if loop.spec is None or loop.generation != loop.status.observed_generation:
            return
        lag = evaluation_lag(
            loop.spec.monitoring.interval, loop.status.last_evaluation, final.last_evaluation
        )
        if lag is not None:
            metrics.EVALUATION_LAG.observe(lag)

    def _observe(
        self, loop: LoopState, how: ObservationPlan, annotations: dict[str, str], deadline: float
    ) -> Observations:
        spec, ref = loop.spec, loop.ref
        observed = Observations(
            retrain_request=annotations.get(RETRAIN_REQUEST_ANNOTATION),
            promote_request=annotations.get(PROMOTE_ANNOTATION),
            rollback_request=annotations.get(ROLLBACK_ANNOTATION),
            abort_request=annotations.get(ABORT_ANNOTATION),
            request_token=annotations.get(REQUESTED_AT_ANNOTATION),
        )
        if spec is None:
            return observed
        metric_observations, prometheus_probe, stage = self._query_prometheus(spec, how, deadline)
        observed = replace(observed, metrics=metric_observations, stage=stage)
        if how.probe_dependencies:
            observed = replace(
                observed,
                prometheus=prometheus_probe,
                artifact_store=self.artifacts.probe_bucket(spec.artifacts.bucket) if spec.artifacts else None,
            )
        if how.probe_dependencies or how.observe_target:
            target = self.cluster.observe_target(ref.namespace, spec.target.deployment, spec.target.container)
            observed = replace(observed, target=target)
        if how.rollback_uri and how.rollback_version:
            verified = self.artifacts.verify_version(how.rollback_uri, how.rollback_version)
            observed = replace(observed, rollback_artifacts=verified)
        if how.job_name is not None:
            job = self.cluster.observe_job(ref.namespace, how.job_name, ref.uid)
            observed = replace(observed, job=job)
            if job.state is JobState.SUCCEEDED and how.candidate_uri and how.candidate_version:
                verified = self.artifacts.verify_version(how.candidate_uri, how.candidate_version)
                observed = replace(observed, artifacts=verified)
        return observed

    def _query_prometheus(
        self, spec: FeedbackLoopSpec, how: ObservationPlan, deadline: float
    ) -> tuple[
        tuple[MetricObservation, ...] | None, Probe | None, tuple[tuple[str, QueryResult], ...] | None
    ]:
        """The metrics (None when no evaluation is due), the probe and a stage's counts, from one concurrent
        batch."""
        batch = [q for rendered in how.queries or () for q in (rendered.query, rendered.samples_query) if q]
        if how.probe_dependencies:
            batch.append(PROBE_QUERY)
        batch.extend(staged.query for staged in how.stage_queries or ())
        if not batch:
            return None, None, None
        timeout = spec.prometheus.timeout.total_seconds()
        answers = iter(self.prometheus.query_all(how.prometheus_url, batch, timeout, deadline))
        metrics_observed = None
        if how.queries is not None:
            metrics_observed = tuple(
                MetricObservation(
                    rendered.name,
                    rendered.query,
                    next(answers),
                    next(answers) if rendered.samples_query else None,
                    rendered.samples_query,
                )
                for rendered in how.queries
            )
        probe = Probe.of_query(next(answers)) if how.probe_dependencies else None
        stage = None
        if how.stage_queries is not None:
            stage = tuple((staged.name, next(answers)) for staged in how.stage_queries)
        return metrics_observed, probe, stage

    def _act(
        self, loop: LoopState, writing: _Writing, decision: Decision, now: datetime
    ) -> FeedbackLoopStatus:
        """Status, then the actions it names, then the Events; returns the status decided last."""
        ref = loop.ref
        status = decision.status
        self._write_status(writing, status, now)
        _count(ref, decision.transitions)
        events = list(decision.events)
        for action in decision.actions:
            match action:
                case ApplyModel():
                    self.cluster.apply_model(
                        action.namespace, action.deployment, action.container, action.model, action.candidate
                    )
                    rollback = any(isinstance(t, RollbackStarted) for t in decision.transitions)
                    self._crash_at(Failpoint.DURING_ROLLBACK if rollback else Failpoint.AFTER_MODEL_APPLY)
                case CreateJob():
                    created = self._create_job(loop, writing, status, action, now)
                    status = created.status
                    _count(ref, created.transitions)
                    events.extend(created.events)
        if events:
            self._crash_at(Failpoint.BEFORE_EVENTS)
        for event in events:
            self._post(ref, event)
        ended = loop.status.active_retrain
        if ended is not None and any(isinstance(t, RetrainFinished) for t in decision.transitions):
            self._release_job_pods(ref, ended.job)  # the result is in the status written above
        return status

    def _release_pods_if_namespace_goes(self, ref: LoopRef) -> None:
        """A namespace being deleted deletes its pods first and the loop only once they are gone: a retrain
        pod our finalizer held for the loop would keep the namespace, and the loop, forever. Nobody is left to
        read its result, so the finalizer goes."""
        try:
            if self.cluster.namespace_terminating(ref.namespace, ref.name, ref.uid):
                log.info(
                    "namespace %s is being deleted: releasing the retrain pods of %s", ref.namespace, ref.name
                )
                self._release_pods(ref.namespace, ref.name, ref.uid)
        except Exception as err:  # best effort: the next reconcile asks again
            log.warning("cannot tell whether namespace %s is being deleted: %s", ref.namespace, err)

    def _release_job_pods(self, ref: LoopRef, job: str) -> None:
        try:
            self._release_pods(ref.namespace, ref.name, ref.uid, job)
        except Exception as err:  # best effort, as an Event: the sweep tries again
            log.warning("cannot release the pods of Job %s/%s: %s; the sweep does", ref.namespace, job, err)

    def _create_job(
        self, loop: LoopState, writing: _Writing, status: FeedbackLoopStatus, action: CreateJob, now: datetime
    ) -> Decision:
        """The Job, then its mark in status; a failed create is one status write, and no exception, so that
        the backoff in that status, not the handler's fixed retry, decides when it is tried again."""
        ref, name = loop.ref, action.manifest["metadata"]["name"]
        self._crash_at(Failpoint.AFTER_COUNTER_WRITE)
        try:
            created = self.cluster.create_job(action.manifest)
        except ApiFailureError as err:
            log.warning("cannot create Job %s for %s/%s: %s", name, ref.namespace, ref.name, err)
            failure = JobCreateFailure(refused=err.refused, message=err.answer)
            failed = job_create_failed(status, failure, now, loop.generation, self.policy)
            self._write_status(writing, failed.status, now)
            return failed
        if created is JobCreation.NAME_TAKEN:
            # Not ours, so not marked created: the next observation reports it and ends this retrain.
            log.warning("Job %s for %s/%s exists with another controller", name, ref.namespace, ref.name)
            return Decision(status)
        log.info("%s Job %s for %s/%s", created, name, ref.namespace, ref.name)
        self._crash_at(Failpoint.AFTER_JOB_CREATE)
        marked = mark_job_created(status)
        self._write_status(writing, marked, now)
        return Decision(marked)

    def _write_status(self, writing: _Writing, after: FeedbackLoopStatus, now: datetime) -> None:
        """A write only when something worth one changed, guarded by the resourceVersion it was decided on."""
        ref = writing.ref
        if status_write_needed(writing.stored, after, now, self.policy):
            patch = merge_patch(to_status_dict(writing.stored), to_status_dict(after))
            if patch:
                if not self.may_write():
                    raise NotLeaderError(f"{ref.namespace}/{ref.name}: not the leader, status not written")
                writing.resource_version = self.cluster.patch_loop_status(
                    ref.namespace, ref.name, patch, writing.resource_version
                )
                metrics.STATUS_WRITES.labels("written").inc()
            writing.stored = after
        else:
            metrics.STATUS_WRITES.labels("unchanged").inc()
        # Also when nothing changed: an operator that restarts publishes every loop on its first reconcile.
        if (ready := after.condition(ConditionType.READY)) is not None:
            metrics.set_loop_ready(
                ref.namespace, ref.name, ready.status == ConditionStatus.TRUE, ready.reason
            )

    def _crash_at(self, point: Failpoint) -> None:
        if self.failpoint == point:
            log.error("failpoint %s: exiting now", point)
            os._exit(137)

    def _post(self, ref: LoopRef, event: Event) -> None:
        try:
            self.cluster.post_event(ref.namespace, ref.name, ref.uid, event.type, event.reason, event.message)
        except Exception as err:
            if isinstance(err, ApiFailureError) and err.namespace_terminating:
                # The Event would go with its namespace, and the loop with it: nobody is left to read it.
                log.debug("event %s for %s/%s dropped: %s", event.reason, ref.namespace, ref.name, err)
                return
            # An Event is best effort: losing one must not fail the reconcile, whose status is written.
            log.warning("cannot post event %s for %s/%s: %s", event.reason, ref.namespace, ref.name, err)
            metrics.EVENTS_LOST.inc()


def _count(ref: LoopRef, transitions: tuple[Transition, ...]) -> None:
    namespace, loop = ref.namespace, ref.name
    for transition in transitions:
        match transition:
            case MetricEvaluated(metric=metric, verdict=verdict, value=value):
                metrics.EVALUATIONS.labels(namespace, loop, metric, verdict).inc()
                metrics.METRIC_VALUE.labels(namespace, loop, metric).set(math.nan if value is None else value)
            case RetrainStarted(trigger=trigger):
                metrics.RETRAINS_STARTED.labels(namespace, loop, trigger).inc()
            case RetrainFinished(outcome=outcome, reason=reason):
                metrics.RETRAINS_FINISHED.labels(namespace, loop, outcome, reason).inc()
            case GateChecked(metric=metric, verdict=gate_verdict):
                metrics.GATE_VERDICTS.labels(namespace, loop, metric, gate_verdict).inc()
            case RolloutStarted(kind=kind):
                metrics.ROLLOUTS_STARTED.labels(namespace, loop, kind).inc()
            case RollbackStarted(reason=reason):
                metrics.ROLLBACKS.labels(namespace, loop, reason).inc()
            case RolloutFinished(outcome=outcome):
                metrics.ROLLOUTS_FINISHED.labels(namespace, loop, outcome).inc()
            case StageFinished(strategy=strategy, verdict=stage_verdict):
                metrics.STAGES_FINISHED.labels(namespace, loop, strategy, stage_verdict).inc()


def loop_state_from_body(
    body: Mapping[str, Any], remembered: Remembered | None = None
) -> tuple[LoopState, dict[str, str]]:
    """The loop as `decide` sees it: the status this process decided last when the stored one is still
    its own write (the remembered one keeps the evaluation times it did not write), else the stored one."""
    meta = body["metadata"]
    spec: FeedbackLoopSpec | None
    try:
        spec, error = parse_spec(body.get("spec") or {}), None
    except SpecError as err:
        spec, error = None, str(err)
    created = datetime.fromisoformat(meta["creationTimestamp"].replace("Z", "+00:00"))
    annotations: dict[str, str] = dict(meta.get("annotations") or {})
    loop = LoopState(
        ref=LoopRef(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"]),
        generation=int(meta.get("generation", 1)),
        created=created,
        spec=spec,
        spec_error=error,
        status=remembered.intended if remembered else parse_status(body.get("status")),
        rollback_request=annotations.get(ROLLBACK_ANNOTATION),
        promote_request=annotations.get(PROMOTE_ANNOTATION),
        request_token=annotations.get(REQUESTED_AT_ANNOTATION),
        last_probe=remembered.last_probe if remembered else None,
    )
    return loop, annotations


def _still_ours(body: Mapping[str, Any], remembered: Remembered) -> bool:
    """The stored status is the one this process last wrote or read (others may have changed metadata)."""
    meta = body["metadata"]
    if meta.get("uid") != remembered.uid:
        return False
    if meta.get("resourceVersion") == remembered.resource_version:
        return True
    return to_status_dict(parse_status(body.get("status"))) == to_status_dict(remembered.stored)
