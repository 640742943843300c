"""Kubernetes through the official client: FeedbackLoops, Jobs, the target Deployment, Events.

Writes are patches or creates, never a whole-object PUT. A Job create that meets an existing Job (409) counts
as success only when that Job's controller is the same loop (by uid), because Job names come from durable
status; anyone who can create Jobs can take a name first.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError, MaxRetryError

from feedbackloop.api import (
    API_VERSION,
    COMPONENT_RETRAIN,
    ENV_CANDIDATE_MODE,
    ENV_CANDIDATE_MODEL_SHA256,
    ENV_CANDIDATE_MODEL_URI,
    ENV_CANDIDATE_REQUEST_KEY,
    ENV_CANDIDATE_WEIGHT,
    ENV_MODEL_SHA256,
    ENV_MODEL_URI,
    FIELD_MANAGER,
    GROUP,
    KIND,
    LABEL_COMPONENT,
    LABEL_LOOP,
    LABEL_MANAGED_BY,
    MODEL_VERSION_ANNOTATION,
    PLURAL,
    RETRAIN_POD_FINALIZER,
    VERSION,
)
from feedbackloop.core import contract
from feedbackloop.core.decision import StagedCandidate
from feedbackloop.core.lease import LeaseRecord
from feedbackloop.core.observations import (
    DeployedModel,
    DeploymentProgress,
    HeldPod,
    JobCreation,
    JobObservation,
    JobState,
    ListedJob,
    TargetObservation,
)
from feedbackloop.core.retrain import count_running_retrains
from feedbackloop.core.status import ModelRef

log = logging.getLogger(__name__)
_REQUEST_TIMEOUT = (5, 30)  # (connect, read) seconds for every API call
_LEASE_TIMEOUT = (2, 3)  # a renewal slower than this cannot keep the lease anyway
_MAX_MESSAGE = 1024
_MAX_REASON = 300  # the API's reason in a condition or an Event: enough for a quota's or a field's name
# The API server judged the request itself: sent again, it meets the same answer until someone acts.
_REFUSED_FOR_GOOD = frozenset({400, 403, 404, 422})
_URL_USERINFO = re.compile(r"(?<=://)[^\s/@\"']+@")
_JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
_RETRAIN_PODS = f"{LABEL_COMPONENT}={COMPONENT_RETRAIN},{LABEL_MANAGED_BY}={FIELD_MANAGER}"
# The cause the API server gives a create refused in a namespace being deleted (NamespaceLifecycle).
_NAMESPACE_TERMINATING = "NamespaceTerminating"


def load_kube_config() -> None:
    """In-cluster credentials when running in a pod; otherwise $KUBECONFIG or ~/.kube/config."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


@dataclass(frozen=True)
class ApiFailureError(Exception):
    """An API call failed for a reason other than 404/409; `forbidden` marks RBAC problems."""

    operation: str
    status: int  # 0: no answer (a timeout or a connection error)
    reason: str
    namespace_terminating: bool = False
    """A create refused (403) because its namespace is being deleted: nothing to retry, nobody to tell."""

    @property
    def forbidden(self) -> bool:
        return self.status == 403

    @property
    def refused(self) -> bool:
        """Refused for good (400, 403 by RBAC or a ResourceQuota, 404, 422), unlike 5xx, 429 or no answer."""
        return self.status in _REFUSED_FOR_GOOD

    @property
    def answer(self) -> str:
        """What the API server said, without the operation: `HTTP 403 Forbidden: ...`."""
        return f"HTTP {self.status} {self.reason}" if self.status else self.reason

    def __str__(self) -> str:
        return f"{self.operation}: {self.answer}"


class StaleWriteError(ApiFailureError):
    """A write guarded by resourceVersion met a newer object: read again and decide again."""


class LoopGoneError(ApiFailureError):
    """A write to the loop answered 404: the loop, or its namespace, was deleted since it was read."""


def _failure(operation: str, err: ApiException) -> ApiFailureError:
    status = int(err.status or 0)
    terminating = status == 403 and _NAMESPACE_TERMINATING in _causes(err.body)
    return ApiFailureError(operation, status, api_reason(err.body, err.reason), terminating)


def _status_object(body: str | bytes | None) -> dict[str, Any]:
    """The body as a Status object; empty for any body that is not one, which may be anything a proxy in
    between sends."""
    try:
        status = json.loads(body) if body else None
    except ValueError:
        status = None
    return status if isinstance(status, dict) and status.get("kind") == "Status" else {}


def _causes(body: str | bytes | None) -> set[str]:
    """The reasons of the Status object's details.causes."""
    details = _status_object(body).get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    if not isinstance(causes, list):
        return set()
    return {str(cause.get("reason")) for cause in causes if isinstance(cause, dict)}


def api_reason(body: str | bytes | None, http_reason: str | None) -> str:
    """The Status object's reason and message, short and without URL credentials; never a body that is not a
    Status, which may be anything a proxy in between sends."""
    status = _status_object(body)
    parts = (str(status.get("reason") or http_reason or ""), str(status.get("message") or ""))
    text = _URL_USERINFO.sub("…@", ": ".join(part for part in parts if part))
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


# The kubelet's generic reasons; any other (OOMKilled, ContainerCannotRun, ...) says why by itself.
_GENERIC_TERMINATIONS = frozenset({"Error", "Completed", ""})


def describe_termination(terminated: client.V1ContainerStateTerminated) -> str:
    """`exit code N (Reason): message`; empty when neither a telling reason nor a message says anything."""
    reason = terminated.reason or ""
    message = (terminated.message or "").strip()
    if reason in _GENERIC_TERMINATIONS and not message:
        return ""
    text = f"exit code {terminated.exit_code}"
    if reason not in _GENERIC_TERMINATIONS:
        text += f" ({reason})"
    return f"{text}: {message}" if message else text


class KubeAdapter:
    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.api = api_client or client.ApiClient()
        self.custom = client.CustomObjectsApi(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.coordination = client.CoordinationV1Api(self.api)

    # ---------------------------------------------------------------- FeedbackLoops
    def get_loop(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            body: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=_REQUEST_TIMEOUT
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise _failure(f"get {PLURAL}/{name}", err) from None
        return body

    def patch_loop_status(
        self, namespace: str, name: str, patch: dict[str, Any], resource_version: str
    ) -> str:
        """A JSON merge patch on the status subresource, applied only if the loop is still at
        `resource_version` (else StaleWriteError; LoopGoneError if it is gone); None values delete fields.
        Returns the new version."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": patch}
        try:
            written = self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, body, _request_timeout=_REQUEST_TIMEOUT
            )
        except ApiException as err:
            if err.status == 409:
                raise StaleWriteError(f"patch {PLURAL}/{name}/status", 409, "changed since read") from None
            if err.status == 404:
                raise LoopGoneError(f"patch {PLURAL}/{name}/status", 404, "the loop is gone") from None
            raise _failure(f"patch {PLURAL}/{name}/status", err) from None
        return str(written["metadata"]["resourceVersion"])

    def remove_finalizer(
        self, namespace: str, name: str, finalizers: list[str], resource_version: str
    ) -> None:
        """Set metadata.finalizers to `finalizers` (ours removed), only if unchanged since read."""
        body = {"metadata": {"resourceVersion": resource_version, "finalizers": finalizers or None}}
        try:
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, body, _request_timeout=_REQUEST_TIMEOUT
            )
        except ApiException as err:
            if err.status == 409:
                raise StaleWriteError(f"patch {PLURAL}/{name}", 409, "changed since read") from None
            if err.status != 404:
                raise _failure(f"patch {PLURAL}/{name}", err) from None

    # ---------------------------------------------------------------- target Deployment
    def observe_target(self, namespace: str, deployment: str, container: str) -> TargetObservation:
        """Read as plain JSON: building the client's model classes for a Deployment cost more CPU than the
        rest of a probe."""
        try:
            response = self.apps.read_namespaced_deployment(
                deployment, namespace, _request_timeout=_REQUEST_TIMEOUT, _preload_content=False
            )
            found: dict[str, Any] = json.loads(response.data)
        except ApiException as err:
            if err.status == 404:
                return TargetObservation(deployment_found=False, container_found=False)
            raise _failure(f"get deployments/{deployment}", err) from None
        template = found.get("spec", {}).get("template", {})
        pod_containers = template.get("spec", {}).get("containers") or []
        containers = tuple(str(c.get("name")) for c in pod_containers)
        target = next((c for c in pod_containers if c.get("name") == container), None)
        if target is None:
            return TargetObservation(deployment_found=True, container_found=False, containers=containers)
        env = {e["name"]: e["value"] for e in target.get("env") or [] if e.get("value") is not None}
        annotations = (template.get("metadata") or {}).get("annotations") or {}
        deployed = DeployedModel(
            uri=env.get(ENV_MODEL_URI),
            sha256=env.get(ENV_MODEL_SHA256),
            version=annotations.get(MODEL_VERSION_ANNOTATION),
            candidate_uri=env.get(ENV_CANDIDATE_MODEL_URI),
        )
        return TargetObservation(True, True, containers, deployed, _progress(found))

    def apply_model(
        self,
        namespace: str,
        deployment: str,
        container: str,
        model: ModelRef | None,
        candidate: StagedCandidate | None = None,
    ) -> None:
        """Server-side apply owning only MODEL_URI, MODEL_SHA256, a stage's CANDIDATE_* env and the version
        annotation. Each apply names all the fields we want: what an earlier apply set and this one omits
        (a finished stage's candidate) is removed.

        With `model` None the apply is empty: our fields are released and the Deployment's own env returns.
        """
        body: dict[str, Any] = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": deployment, "namespace": namespace},
        }
        if model is not None:
            env = [{"name": ENV_MODEL_URI, "value": model.uri}]
            if model.sha256:
                env.append({"name": ENV_MODEL_SHA256, "value": model.sha256})
            if candidate is not None:
                env.extend({"name": name, "value": value} for name, value in _candidate_env(candidate))
            body["spec"] = {
                "template": {
                    "metadata": {"annotations": {MODEL_VERSION_ANNOTATION: model.version}},
                    "spec": {"containers": [{"name": container, "env": env}]},
                }
            }
        try:
            self.apps.patch_namespaced_deployment(
                deployment,
                namespace,
                body,
                field_manager=FIELD_MANAGER,
                force=True,  # take over exactly these fields, even if a manifest set them first
                _content_type="application/apply-patch+yaml",
                _request_timeout=_REQUEST_TIMEOUT,
            )
        except ApiException as err:
            raise _failure(f"apply deployments/{deployment}", err) from None

    # ---------------------------------------------------------------- Jobs
    def create_job(self, manifest: dict[str, Any]) -> JobCreation:
        """CREATED; EXISTED when the Job of that name is already this loop's (a repeat); else NAME_TAKEN.
        Any other failure raises ApiFailureError; `refused` tells a refusal for good from a passing one."""
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        owner_uid = manifest["metadata"]["ownerReferences"][0]["uid"]
        try:
            self.batch.create_namespaced_job(namespace, manifest, _request_timeout=_REQUEST_TIMEOUT)
        except ApiException as err:
            if err.status != 409:
                raise _failure(f"create jobs/{name}", err) from None
            existing = self.observe_job(namespace, name, owner_uid)
            return JobCreation.NAME_TAKEN if existing.state is JobState.FOREIGN else JobCreation.EXISTED
        except (HTTPError, OSError) as err:
            # No answer: the Job may exist or not; the next try's 409 tells, as after a crash.
            cause = err.reason if isinstance(err, MaxRetryError) and err.reason is not None else err
            raise ApiFailureError(f"create jobs/{name}", 0, f"no answer ({type(cause).__name__})") from None
        return JobCreation.CREATED

    def observe_job(self, namespace: str, name: str, owner_uid: str) -> JobObservation:
        """The Job's state, or FOREIGN when the FeedbackLoop of uid `owner_uid` is not its controller."""
        try:
            job = self.batch.read_namespaced_job(name, namespace, _request_timeout=_REQUEST_TIMEOUT)
        except ApiException as err:
            if err.status == 404:
                return self._vanished_job(namespace, name, owner_uid)
            raise _failure(f"get jobs/{name}", err) from None
        if _controller_loop_uid(job) != owner_uid:
            message = f"Job {name} exists but this FeedbackLoop is not its controller; it is not adopted"
            return JobObservation(name, JobState.FOREIGN, message)
        conditions = {c.type: c for c in (job.status.conditions or []) if c.status == "True"}
        if "Complete" in conditions:
            return JobObservation(name, JobState.SUCCEEDED, self._success_report(namespace, job))
        if "Failed" in conditions or "FailureTarget" in conditions:
            failed = conditions.get("Failed") or conditions["FailureTarget"]
            state = JobState.DEADLINE_EXCEEDED if failed.reason == "DeadlineExceeded" else JobState.FAILED
            message = self._termination_message(namespace, name) or failed.message or failed.reason or ""
            return JobObservation(name, state, message[:_MAX_MESSAGE])
        terminating = bool(getattr(job.status, "terminating", None))
        return JobObservation(name, JobState.RUNNING, pods_terminating=terminating)

    def _termination_message(self, namespace: str, job: str) -> str:
        """The newest terminated container's message among the Job's pods."""
        try:
            pods = self.core.list_namespaced_pod(
                namespace,
                label_selector=f"batch.kubernetes.io/job-name={job}",
                _request_timeout=_REQUEST_TIMEOUT,
            ).items
        except ApiException as err:
            log.warning("cannot read pods of job %s/%s: %s", namespace, job, err.reason)
            return ""
        newest: tuple[datetime, str] | None = None
        for pod in pods:
            for status in pod.status.container_statuses or []:
                for state in (status.state, status.last_state):
                    terminated = state.terminated if state else None
                    if terminated is None or not (described := describe_termination(terminated)):
                        continue
                    at = terminated.finished_at or datetime.min.replace(tzinfo=UTC)
                    if newest is None or at > newest[0]:
                        newest = (at, described)
        return newest[1] if newest else ""

    def _success_report(self, namespace: str, job: client.V1Job) -> str:
        """The termination message of the newest container that exited 0 in a pod this very Job controls."""
        uid = job.metadata.uid
        try:
            pods = self.core.list_namespaced_pod(
                namespace,
                label_selector=f"batch.kubernetes.io/controller-uid={uid}",
                _request_timeout=_REQUEST_TIMEOUT,
            ).items
        except ApiException as err:
            log.warning("cannot read pods of job %s/%s: %s", namespace, job.metadata.name, err.reason)
            return ""
        controlled = [
            pod
            for pod in pods
            if any(ref.controller and ref.uid == uid for ref in pod.metadata.owner_references or [])
        ]
        return _newest_success(controlled)

    def _vanished_job(self, namespace: str, name: str, owner_uid: str) -> JobObservation:
        """A Job deleted before the operator saw it finish: SUCCEEDED when a pod of it, which our finalizer
        keeps, exited 0 with the trainer's report (a Job garbage-collected at once); else MISSING."""
        try:
            pods = self.core.list_namespaced_pod(
                namespace,
                label_selector=f"{_RETRAIN_PODS},{_JOB_NAME_LABEL}={name}",
                _request_timeout=_REQUEST_TIMEOUT,
            ).items
        except ApiException as err:
            raise _failure(f"list pods of jobs/{name}", err) from None
        # The loop's uid is in the pod spec the operator wrote; the Job's uid died with it.
        report = _newest_success([pod for pod in pods if _pod_loop_uid(pod) == owner_uid])
        if report:
            return JobObservation(name, JobState.SUCCEEDED, report)
        return JobObservation(name, JobState.MISSING)

    def held_retrain_pods(self, namespaces: tuple[str, ...], loop: str | None = None) -> list[HeldPod]:
        """Retrain pods that still carry our finalizer, in `namespaces` (none: cluster-wide), of one loop
        name or all."""
        selector = _RETRAIN_PODS if loop is None else f"{_RETRAIN_PODS},{LABEL_LOOP}={loop}"
        try:
            if namespaces:
                pods = [
                    pod
                    for namespace in namespaces
                    for pod in self.core.list_namespaced_pod(
                        namespace, label_selector=selector, _request_timeout=_REQUEST_TIMEOUT
                    ).items
                ]
            else:
                pods = self.core.list_pod_for_all_namespaces(
                    label_selector=selector, _request_timeout=_REQUEST_TIMEOUT
                ).items
        except ApiException as err:
            raise _failure("list retrain pods", err) from None
        return [
            HeldPod(
                pod.metadata.namespace,
                pod.metadata.name,
                labels.get(LABEL_LOOP, ""),
                _pod_loop_uid(pod),
                labels.get(_JOB_NAME_LABEL, ""),
            )
            for pod in pods
            if RETRAIN_POD_FINALIZER in (pod.metadata.finalizers or [])
            for labels in [pod.metadata.labels or {}]
        ]

    def release_pod(self, namespace: str, name: str) -> None:
        """Remove our finalizer from the pod, leaving every other one; a pod already gone is released."""
        for _ in range(3):  # the Job controller may drop its own finalizer in between
            try:
                pod = self.core.read_namespaced_pod(name, namespace, _request_timeout=_REQUEST_TIMEOUT)
                finalizers = pod.metadata.finalizers or []
                if RETRAIN_POD_FINALIZER not in finalizers:
                    return
                path = f"/metadata/finalizers/{finalizers.index(RETRAIN_POD_FINALIZER)}"
                operations = [
                    {"op": "test", "path": path, "value": RETRAIN_POD_FINALIZER},
                    {"op": "remove", "path": path},
                ]
                self.core.patch_namespaced_pod(name, namespace, operations, _request_timeout=_REQUEST_TIMEOUT)
                return
            except ApiException as err:
                if err.status == 404:
                    return
                if err.status not in (409, 422):
                    raise _failure(f"release pods/{name}", err) from None
        raise ApiFailureError(f"release pods/{name}", 409, "its finalizers kept changing")

    def count_active_retrains(
        self, namespaces: tuple[str, ...], active_jobs: dict[tuple[str, str], str]
    ) -> int:
        """Unfinished retrain Jobs that are a loop's active retrain (`active_jobs`: (namespace, Job) -> the
        loop's uid, from the operator's own view of its loops) and controlled by that loop: labels alone are
        anyone's to copy. Lists Jobs cluster-wide or across the watched namespaces."""
        selector = f"{LABEL_COMPONENT}={COMPONENT_RETRAIN},{LABEL_MANAGED_BY}={FIELD_MANAGER}"
        try:
            if namespaces:
                jobs = [
                    job
                    for namespace in namespaces
                    for job in self.batch.list_namespaced_job(
                        namespace, label_selector=selector, _request_timeout=_REQUEST_TIMEOUT
                    ).items
                ]
            else:
                jobs = self.batch.list_job_for_all_namespaces(
                    label_selector=selector, _request_timeout=_REQUEST_TIMEOUT
                ).items
        except ApiException as err:
            raise _failure("list jobs", err) from None
        listed = [
            ListedJob(job.metadata.namespace, job.metadata.name, _controller_loop_uid(job), _finished(job))
            for job in jobs
        ]
        return count_running_retrains(listed, active_jobs)

    # ---------------------------------------------------------------- leader election
    def read_lease(self, namespace: str, name: str) -> tuple[LeaseRecord, str] | None:
        """The Lease's record and resourceVersion, or None when there is none."""
        try:
            lease = self.coordination.read_namespaced_lease(name, namespace, _request_timeout=_LEASE_TIMEOUT)
        except ApiException as err:
            if err.status == 404:
                return None
            raise _failure(f"get leases/{name}", err) from None
        spec = lease.spec
        renewed = spec.renew_time.isoformat() if spec.renew_time else None
        record = LeaseRecord(
            holder=spec.holder_identity,
            duration=timedelta(seconds=spec.lease_duration_seconds or 0),
            renew_time=renewed,
            transitions=spec.lease_transitions or 0,
        )
        return record, str(lease.metadata.resource_version)

    def write_lease(
        self,
        namespace: str,
        name: str,
        record: LeaseRecord,
        acquired_at: datetime,
        resource_version: str | None,
    ) -> bool:
        """Create the Lease (`resource_version` None) or replace it only if unchanged since read.
        False when another replica wrote first."""
        now = datetime.now(UTC)
        spec = client.V1LeaseSpec(
            holder_identity=record.holder,
            lease_duration_seconds=int(record.duration.total_seconds()),
            renew_time=now,
            acquire_time=acquired_at,
            lease_transitions=record.transitions,
        )
        meta = client.V1ObjectMeta(name=name, namespace=namespace, resource_version=resource_version)
        lease = client.V1Lease(metadata=meta, spec=spec)
        try:
            if resource_version is None:
                self.coordination.create_namespaced_lease(namespace, lease, _request_timeout=_LEASE_TIMEOUT)
            else:
                self.coordination.replace_namespaced_lease(
                    name, namespace, lease, _request_timeout=_LEASE_TIMEOUT
                )
        except ApiException as err:
            if err.status == 409:
                return False
            raise _failure(f"write leases/{name}", err) from None
        return True

    # ---------------------------------------------------------------- Events
    def post_event(self, namespace: str, name: str, uid: str, kind: str, reason: str, message: str) -> None:
        event = _event(namespace, name, uid, kind, reason, message)
        try:
            self.core.create_namespaced_event(namespace, event, _request_timeout=_REQUEST_TIMEOUT)
        except ApiException as err:
            raise _failure(f"create events for {PLURAL}/{name}", err) from None

    def namespace_terminating(self, namespace: str, name: str, uid: str) -> bool:
        """Whether the loop's namespace is being deleted (or gone), as the API server's NamespaceLifecycle
        admission tells a dry-run create of an Event about the loop: no permission beyond the Events the
        operator posts anyway, none on Namespaces."""
        event = _event(namespace, name, uid, "Normal", "NamespaceCheck", "dry run: never stored")
        try:
            self.core.create_namespaced_event(
                namespace, event, dry_run="All", _request_timeout=_REQUEST_TIMEOUT
            )
        except ApiException as err:
            failure = _failure(f"dry-run create events for {PLURAL}/{name}", err)
            if failure.namespace_terminating or failure.status == 404:
                return True
            raise failure from None
        return False


def _event(namespace: str, name: str, uid: str, kind: str, reason: str, message: str) -> client.CoreV1Event:
    now = datetime.now(UTC)
    return client.CoreV1Event(
        metadata=client.V1ObjectMeta(name=f"{name}.{uuid.uuid4().hex[:16]}", namespace=namespace),
        involved_object=client.V1ObjectReference(
            api_version=API_VERSION, kind=KIND, name=name, namespace=namespace, uid=uid
        ),
        reason=reason,
        message=message[:_MAX_MESSAGE],
        type=kind,
        first_timestamp=now,
        last_timestamp=now,
        count=1,
        source=client.V1EventSource(component=FIELD_MANAGER),
        reporting_component=FIELD_MANAGER,
        reporting_instance=FIELD_MANAGER,
    )


def _progress(deployment: dict[str, Any]) -> DeploymentProgress:
    status = deployment.get("status") or {}
    spec = deployment.get("spec") or {}
    replicas = spec.get("replicas")
    return DeploymentProgress(
        generation=deployment.get("metadata", {}).get("generation") or 0,
        observed_generation=status.get("observedGeneration") or 0,
        replicas=replicas if replicas is not None else 1,
        updated=status.get("updatedReplicas") or 0,
        available=status.get("availableReplicas") or 0,
        total=status.get("replicas") or 0,
        progress_deadline_exceeded=any(
            c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
            for c in status.get("conditions") or []
        ),
    )


def _pod_loop_uid(pod: client.V1Pod) -> str:
    """FBL_LOOP_UID as the operator wrote it into the trainer's env."""
    for container in pod.spec.containers or []:
        for variable in container.env or []:
            if variable.name == contract.ENV_LOOP_UID and variable.value:
                return str(variable.value)
    return ""


def _newest_success(pods: Iterable[client.V1Pod]) -> str:
    """The termination message of the newest container that exited 0 with one, among `pods`."""
    newest: tuple[datetime, str] | None = None
    for pod in pods:
        for status in pod.status.container_statuses or []:
            terminated = status.state.terminated if status.state else None
            if terminated is None or terminated.exit_code != 0 or not terminated.message:
                continue
            at = terminated.finished_at or datetime.min.replace(tzinfo=UTC)
            if newest is None or at > newest[0]:
                newest = (at, terminated.message.strip()[:_MAX_MESSAGE])
    return newest[1] if newest else ""


def _controller_loop_uid(job: client.V1Job) -> str | None:
    """The uid of the Job's controller ownerReference if that controller is a FeedbackLoop."""
    for ref in job.metadata.owner_references or []:
        if ref.controller and ref.kind == KIND and ref.api_version.split("/")[0] == GROUP:
            return str(ref.uid)
    return None


# FailureTarget: failed, its pods still terminating (Kubernetes 1.31+ adds Failed only once they are gone,
# which a pod our finalizer holds may delay).
_JOB_ENDED = ("Complete", "Failed", "FailureTarget")


def job_finished(conditions: Iterable[tuple[str | None, str | None]]) -> bool:
    """From a Job's (type, status) conditions: it finished once Complete, Failed or FailureTarget is True."""
    return any(kind in _JOB_ENDED and status == "True" for kind, status in conditions)


def _finished(job: client.V1Job) -> bool:
    if job.metadata.deletion_timestamp is not None:
        return True  # on its way out: it no longer holds a slot
    return job_finished((c.type, c.status) for c in job.status.conditions or [])


def _candidate_env(candidate: StagedCandidate) -> list[tuple[str, str]]:
    """The serving contract's CANDIDATE_* env of a stage (docs/serving.md)."""
    assert candidate.model.sha256 is not None
    env = [
        (ENV_CANDIDATE_MODEL_URI, candidate.model.uri),
        (ENV_CANDIDATE_MODEL_SHA256, candidate.model.sha256),
        (ENV_CANDIDATE_MODE, candidate.mode),
    ]
    if candidate.weight is not None:
        env.append((ENV_CANDIDATE_WEIGHT, repr(candidate.weight)))
    if candidate.request_key is not None:
        env.append((ENV_CANDIDATE_REQUEST_KEY, candidate.request_key))
    return env
