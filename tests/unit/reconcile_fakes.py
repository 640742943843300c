"""In-memory implementations of the reconciler's three Protocols: plain classes that keep state and record
every call in one shared journal, so a test can check what was written and in which order. No mock library.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from core_inputs import POLICY
from feedbackloop.adapters.kube import ApiFailureError, LoopGoneError, StaleWriteError
from feedbackloop.api import API_VERSION, KIND, LABEL_LOOP, RETRAIN_POD_FINALIZER
from feedbackloop.core import contract
from feedbackloop.core.decision import StagedCandidate
from feedbackloop.core.loop import OperatorPolicy
from feedbackloop.core.observations import (
    PROBE_QUERY,
    ArtifactCheck,
    ArtifactObservation,
    DeployedModel,
    DeploymentProgress,
    HeldPod,
    JobCreation,
    JobObservation,
    JobState,
    Probe,
    QueryOutcome,
    QueryResult,
    TargetObservation,
)
from feedbackloop.core.status import ModelRef
from feedbackloop.reconcile import Reconciled, Reconciler

__all__ = [
    "QUOTA_REFUSAL",
    "Call",
    "FakeApiError",
    "FakeArtifacts",
    "FakeCluster",
    "FakePrometheus",
    "ManualClock",
    "World",
    "apply_merge_patch",
]


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Any, ...] = ()


class FakeApiError(Exception):
    """What a failing write raises, shaped like the Kubernetes adapter's ApiFailureError."""

    def __init__(self, operation: str, forbidden: bool = False) -> None:
        super().__init__(f"{operation}: HTTP {403 if forbidden else 500} injected")
        self.forbidden = forbidden


# What the API server answers a Job create that a ResourceQuota of `count/jobs.batch: "0"` forbids.
QUOTA_REFUSAL = (
    'Forbidden: jobs.batch "{name}" is forbidden: exceeded quota: no-jobs, requested: count/jobs.batch=1, '
    "used: count/jobs.batch=0, limited: count/jobs.batch=0"
)


def apply_merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386, as the API server applies a status merge patch."""
    result = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = apply_merge_patch(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


@dataclass
class FakeCluster:
    journal: list[Call]
    loops: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    job_states: dict[str, JobState] = field(default_factory=dict)
    deployed_uri: str | None = None
    deployed_candidate_uri: str | None = None
    rollout_completes: bool = True
    failing: set[str] = field(default_factory=set)  # method names that raise FakeApiError
    # HTTP statuses the next Job creates fail with, in order (0: no answer), as the adapter's ApiFailureError.
    create_failures: list[int] = field(default_factory=list)
    version: int = 1  # the last resourceVersion handed out
    # Retrain pods still carrying the operator's finalizer, by pod name: one per Job created.
    held_pods: dict[str, HeldPod] = field(default_factory=dict)
    # Namespaces being deleted: the API server refuses every create in them (403, NamespaceTerminating).
    terminating: set[str] = field(default_factory=set)

    def _call(self, name: str, *args: Any) -> None:
        self.journal.append(Call(name, args))
        if name in self.failing:
            raise FakeApiError(name)

    def get_loop(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._call("get_loop", namespace, name)
        body = self.loops.get((namespace, name))
        return copy.deepcopy(body) if body is not None else None

    def patch_loop_status(
        self, namespace: str, name: str, patch: dict[str, Any], resource_version: str
    ) -> str:
        self._call("patch_loop_status", namespace, name, copy.deepcopy(patch))
        body = self.loops.get((namespace, name))
        if body is None:
            raise LoopGoneError(f"patch {name}/status", 404, "the loop is gone")
        if body["metadata"]["resourceVersion"] != resource_version:
            raise StaleWriteError(f"patch {name}/status", 409, "changed since read")
        body["status"] = apply_merge_patch(body.get("status") or {}, patch)
        return self.bump(namespace, name)

    def bump(self, namespace: str, name: str) -> str:
        """A new resourceVersion, as every write to the object gets."""
        self.version += 1
        self.loops[(namespace, name)]["metadata"]["resourceVersion"] = str(self.version)
        return str(self.version)

    def remove_finalizer(
        self, namespace: str, name: str, finalizers: list[str], resource_version: str
    ) -> None:
        self._call("remove_finalizer", namespace, name, list(finalizers))
        body = self.loops[(namespace, name)]
        if body["metadata"]["resourceVersion"] != resource_version:
            raise StaleWriteError(f"patch {name}", 409, "changed since read")
        body["metadata"]["finalizers"] = finalizers
        self.bump(namespace, name)

    def observe_target(self, namespace: str, deployment: str, container: str) -> TargetObservation:
        self._call("observe_target", namespace, deployment, container)
        progress = DeploymentProgress(
            generation=2,
            observed_generation=2,
            replicas=2,
            updated=2 if self.rollout_completes else 1,
            available=2 if self.rollout_completes else 1,
            total=2 if self.rollout_completes else 3,
        )
        deployed = (
            DeployedModel(self.deployed_uri, None, None, self.deployed_candidate_uri)
            if self.deployed_uri
            else None
        )
        return TargetObservation(True, True, (container,), deployed, progress)

    def observe_job(self, namespace: str, name: str, owner_uid: str) -> JobObservation:
        self._call("observe_job", namespace, name)
        state = self.job_states.get(name, JobState.MISSING)
        version = contract.version_name(int(name.rsplit("-", 1)[1]))
        succeeded = state is JobState.SUCCEEDED
        report = contract.success_message(fake_manifest_sha256(version)) if succeeded else ""
        deleting = state is JobState.RUNNING and namespace in self.terminating  # its pods go first
        return JobObservation(name, state, report, pods_terminating=deleting)

    def create_job(self, manifest: dict[str, Any]) -> JobCreation:
        name = manifest["metadata"]["name"]
        self._call("create_job", name)
        if self.create_failures:
            status = self.create_failures.pop(0)
            reason = QUOTA_REFUSAL.format(name=name) if status == 403 else "injected"
            raise ApiFailureError(f"create jobs/{name}", status, reason)
        if self.job_states.get(name) is JobState.FOREIGN:
            return JobCreation.NAME_TAKEN
        if name in self.jobs:
            return JobCreation.EXISTED
        self.jobs[name] = copy.deepcopy(manifest)
        self.job_states[name] = JobState.RUNNING
        trainer = manifest["spec"]["template"]["spec"]["containers"][0]
        env = {variable["name"]: variable.get("value") for variable in trainer["env"]}
        if RETRAIN_POD_FINALIZER in manifest["spec"]["template"]["metadata"].get("finalizers", []):
            meta = manifest["metadata"]
            loop = meta["labels"][LABEL_LOOP]
            pod = HeldPod(meta["namespace"], f"{name}-pod", loop, env[contract.ENV_LOOP_UID], name)
            self.held_pods[pod.name] = pod
        return JobCreation.CREATED

    def apply_model(
        self,
        namespace: str,
        deployment: str,
        container: str,
        model: ModelRef | None,
        candidate: StagedCandidate | None = None,
    ) -> None:
        self._call("apply_model", deployment, model.version if model else None)
        self.deployed_uri = model.uri if model else None
        self.deployed_candidate_uri = candidate.model.uri if candidate else None

    def count_active_retrains(
        self, namespaces: tuple[str, ...], active_jobs: dict[tuple[str, str], str]
    ) -> int:
        self._call("count_active_retrains", namespaces)
        return sum(1 for state in self.job_states.values() if state is JobState.RUNNING)

    def post_event(self, namespace: str, name: str, uid: str, kind: str, reason: str, message: str) -> None:
        self._call("post_event", kind, reason)
        if namespace in self.terminating:
            message = f"unable to create new content in namespace {namespace} because it is being terminated"
            raise ApiFailureError("create events", 403, f"Forbidden: {message}", namespace_terminating=True)

    def held_retrain_pods(self, namespaces: tuple[str, ...], loop: str | None = None) -> list[HeldPod]:
        self._call("held_retrain_pods", namespaces, loop)
        return [
            pod
            for pod in self.held_pods.values()
            if (not namespaces or pod.namespace in namespaces) and (loop is None or pod.loop == loop)
        ]

    def release_pod(self, namespace: str, name: str) -> None:
        self._call("release_pod", namespace, name)
        self.held_pods.pop(name, None)

    def namespace_terminating(self, namespace: str, name: str, uid: str) -> bool:
        self._call("namespace_terminating", namespace)
        return namespace in self.terminating


@dataclass
class FakePrometheus:
    journal: list[Call]
    value: float = 0.9  # what every value query answers
    samples: float = 500.0  # what every samples query answers
    reachable: bool = True  # what every probe answers

    def query_all(
        self, url: str, queries: Sequence[str], timeout_seconds: float, deadline: float
    ) -> tuple[QueryResult, ...]:
        return tuple(self._answer(url, query) for query in queries)

    def _answer(self, url: str, query: str) -> QueryResult:
        if query == PROBE_QUERY:
            self.journal.append(Call("probe", (url,)))
            refused = QueryResult(QueryOutcome.ERROR, message="connection refused")
            return QueryResult.of(1) if self.reachable else refused
        self.journal.append(Call("query", (query,)))
        return QueryResult.of(self.samples if "samples" in query else self.value)


def fake_manifest_sha256(version: str) -> str:
    """The digest of a version's manifest: what the fake trainer reports and the fake store serves."""
    return hashlib.sha256(f"manifest of {version}".encode()).hexdigest()


@dataclass
class FakeArtifacts:
    journal: list[Call]
    candidate_metrics: dict[str, float] = field(default_factory=lambda: {"accuracy": 0.9})

    def probe_bucket(self, bucket: str) -> Probe:
        self.journal.append(Call("probe_bucket", (bucket,)))
        return Probe(ok=True)

    def verify_version(self, uri: str, version: str) -> ArtifactObservation:
        self.journal.append(Call("verify_version", (uri, version)))
        return ArtifactObservation(
            ArtifactCheck.VERIFIED,
            uri=uri,
            model_sha256=hashlib.sha256(version.encode()).hexdigest(),
            metrics={"schemaVersion": 1, "candidate": self.candidate_metrics, "current": None},
            manifest_sha256=fake_manifest_sha256(version),
        )


@dataclass
class ManualClock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class World:
    """One loop on a fake cluster, Prometheus and store, and the Reconciler that works on them."""

    def __init__(self, name: str, spec: dict[str, Any], start: datetime, limit: int = 2) -> None:
        self.name, self.namespace = name, "ml"
        self.journal: list[Call] = []
        self.cluster = FakeCluster(self.journal)
        self.prometheus = FakePrometheus(self.journal)
        self.artifacts = FakeArtifacts(self.journal)
        self.clock = ManualClock(start)
        self.watch_lags = False
        self.reconciled: Reconciled | None = None  # what the last reconcile returned
        self.cluster.loops[(self.namespace, name)] = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "uid": f"uid-{name}",
                "generation": 1,
                "resourceVersion": "1",
                "creationTimestamp": (start - timedelta(days=1)).isoformat().replace("+00:00", "Z"),
                "annotations": {},
                "labels": {LABEL_LOOP: name},
            },
            "spec": spec,
        }
        self.reconciler = Reconciler(
            cluster=self.cluster,
            prometheus=self.prometheus,
            artifacts=self.artifacts,
            policy=OperatorPolicy(
                trainer_images=("registry.example/trainer:1",),
                prometheus_urls=POLICY.prometheus_urls,
                artifact_buckets=POLICY.artifact_buckets,
            ),
            max_concurrent_retrains=limit,
            clock=self.clock,
        )

    @property
    def body(self) -> dict[str, Any]:
        return self.cluster.loops[(self.namespace, self.name)]

    @property
    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.body.get("status") or {}
        return status

    def annotate(self, key: str, value: str) -> None:
        self.body["metadata"]["annotations"][key] = value
        self.cluster.bump(self.namespace, self.name)

    def reconcile(self, after_seconds: float = 0) -> list[Call]:
        """Advance the clock, reconcile once, and return the calls that reconcile made.

        The watch is caught up first (the index holds the stored loop) unless `watch_lags` is set."""
        self.clock.advance(after_seconds)
        if not self.watch_lags:
            stored = self.cluster.loops.get((self.namespace, self.name))
            if stored is None:
                self.reconciler.index.remove((self.namespace, self.name))
            else:
                self.reconciler.index.put(copy.deepcopy(stored))
        start = len(self.journal)
        try:
            self.reconciled = self.reconciler.reconcile(self.namespace, self.name)
        finally:
            self.last_calls = self.journal[start:]
        return self.last_calls

    def writes(self, calls: list[Call] | None = None) -> list[Call]:
        """The calls that change something: status patches, Jobs, applies, Events."""
        writing = {"patch_loop_status", "create_job", "apply_model", "post_event"}
        return [call for call in (self.last_calls if calls is None else calls) if call.name in writing]
