"""A loop whose namespace is deleted mid-flight (the chaos fault "namespace deleted"): the API server refuses
every create in a namespace being terminated, and answers 404 once the loop is gone. Neither is a failure to
retry or warn about: the Event is dropped, and a status write that meets a gone loop ends the reconcile as if
its read had found the loop gone."""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import REGISTRY
from test_reconcile import ready_series, spec

from core_inputs import T0
from feedbackloop.adapters.kube import ApiFailureError, KubeAdapter, LoopGoneError, StaleWriteError
from feedbackloop.api import RETRAIN_REQUEST_ANNOTATION
from feedbackloop.core.observations import JobObservation, JobState
from reconcile_fakes import World

NAMESPACE = "ml"


def terminating_refusal(namespace: str = NAMESPACE) -> ApiException:
    """What the API server's NamespaceLifecycle admission answers a create in a namespace being deleted."""
    error = ApiException(status=403, reason="Forbidden")
    error.body = json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": 'events "churn.1" is forbidden: unable to create new content in namespace '
            f"{namespace} because it is being terminated",
            "reason": "Forbidden",
            "details": {
                "name": "churn.1",
                "kind": "events",
                "causes": [
                    {
                        "reason": "NamespaceTerminating",
                        "message": f"namespace {namespace} is being terminated",
                        "field": "metadata.namespace",
                    }
                ],
            },
            "code": 403,
        }
    )
    return error


def rbac_refusal() -> ApiException:
    error = ApiException(status=403, reason="Forbidden")
    error.body = json.dumps(
        {
            "kind": "Status",
            "status": "Failure",
            "reason": "Forbidden",
            "message": 'events is forbidden: User "system:serviceaccount:ops:feedbackloop" cannot create '
            'resource "events" in API group "" in the namespace "ml"',
            "details": {"kind": "events"},
            "code": 403,
        }
    )
    return error


class RefusingApi:
    """CoreV1Api's Event create and CustomObjectsApi's status patch, each failing with `error` (None: the
    create succeeds, and its keyword arguments are kept)."""

    def __init__(self, error: ApiException | None) -> None:
        self.error = error
        self.created: list[dict[str, Any]] = []

    def create_namespaced_event(self, namespace: str, body: Any, **kwargs: Any) -> None:
        self.created.append(kwargs)
        if self.error is not None:
            raise self.error

    def patch_namespaced_custom_object_status(self, *args: Any, **_: Any) -> None:
        assert self.error is not None
        raise self.error


def post_failure(error: ApiException) -> ApiFailureError:
    adapter = KubeAdapter(client.ApiClient())
    adapter.core = RefusingApi(error)
    with pytest.raises(ApiFailureError) as raised:
        adapter.post_event(NAMESPACE, "churn", "uid-1", "Normal", "RetrainStarted", "started")
    return raised.value


def status_failure(status: int) -> ApiFailureError:
    adapter = KubeAdapter(client.ApiClient())
    adapter.custom = RefusingApi(ApiException(status=status, reason="any"))
    with pytest.raises(ApiFailureError) as raised:
        adapter.patch_loop_status(NAMESPACE, "churn", {"retrainCount": 2}, "7")
    return raised.value


# ---------------------------------------------------------------- the adapter


def test_the_adapter_tells_a_namespace_being_terminated_from_any_other_refusal() -> None:
    terminating = post_failure(terminating_refusal())
    assert (terminating.status, terminating.namespace_terminating) == (403, True)
    assert "because it is being terminated" in terminating.answer
    forbidden = post_failure(rbac_refusal())
    assert (forbidden.forbidden, forbidden.namespace_terminating) == (True, False)
    proxy = ApiException(status=403, reason="Forbidden")
    proxy.body = "<html>NamespaceTerminating</html>"  # not a Status: says nothing, whatever it contains
    assert post_failure(proxy).namespace_terminating is False


def test_a_status_write_answered_404_says_the_loop_is_gone() -> None:
    gone = status_failure(404)
    assert type(gone) is LoopGoneError
    assert type(status_failure(409)) is StaleWriteError
    assert type(status_failure(500)) is ApiFailureError


def test_the_namespace_check_is_a_dry_run_that_the_namespace_lifecycle_answers() -> None:
    adapter = KubeAdapter(client.ApiClient())
    for error, terminating in (
        (terminating_refusal(), True),
        (ApiException(status=404), True),
        (None, False),
    ):
        api = RefusingApi(error)
        adapter.core = api
        assert adapter.namespace_terminating(NAMESPACE, "churn", "uid-1") is terminating
        assert api.created[0]["dry_run"] == "All"  # never stored
    adapter.core = RefusingApi(rbac_refusal())
    with pytest.raises(ApiFailureError):
        adapter.namespace_terminating(NAMESPACE, "churn", "uid-1")


# ---------------------------------------------------------------- the reconciler


@pytest.fixture
def world(request: pytest.FixtureRequest) -> World:
    return World(f"ns-{request.node.name[5:40].replace('_', '-')}", spec(), T0)


def test_an_event_refused_because_the_namespace_is_being_terminated_is_dropped_quietly(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    lost = REGISTRY.get_sample_value("feedbackloop_events_lost_total") or 0.0
    world.cluster.terminating.add(world.namespace)
    with caplog.at_level(logging.DEBUG, logger="feedbackloop.reconcile"):
        world.annotate(RETRAIN_REQUEST_ANNOTATION, "r1")
        world.reconcile()
    assert [call for call in world.last_calls if call.name == "post_event"], "no Event was tried"
    assert world.status["activeRetrain"]["jobCreated"] is True  # the reconcile itself went on
    assert REGISTRY.get_sample_value("feedbackloop_events_lost_total") == lost  # not lost: nobody to read it
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any("dropped" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


def test_an_event_refused_otherwise_is_still_lost_with_a_warning(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.cluster.failing.add("post_event")
    with caplog.at_level(logging.WARNING, logger="feedbackloop.reconcile"):
        world.annotate(RETRAIN_REQUEST_ANNOTATION, "r1")
        world.reconcile()
    assert any("cannot post event" in r.getMessage() for r in caplog.records)


def test_a_status_write_that_finds_the_loop_gone_ends_the_reconcile_as_a_read_would(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.reconcile()
    assert ready_series(world) == {"Ready": 1.0}
    world.annotate(RETRAIN_REQUEST_ANNOTATION, "r1")
    world.reconciler.index.put(copy.deepcopy(world.body))  # the watch delivered the request...
    del world.cluster.loops[(world.namespace, world.name)]  # ...then the namespace, and the loop, went
    world.watch_lags = True  # ...before the watch said so
    with caplog.at_level(logging.WARNING):
        calls = world.reconcile(after_seconds=1)
    assert world.reconciled is not None and world.reconciled.next_at is None  # nothing to run again
    assert [call.name for call in world.writes(calls)] == ["patch_loop_status"]  # no Job after it
    assert ready_series(world) == {}  # its series go as they do for a loop found gone
    assert caplog.records == []


def test_a_failure_report_that_finds_the_loop_gone_logs_no_error(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.reconcile()

    def gone(namespace: str, name: str, patch: dict[str, Any], resource_version: str) -> str:
        raise LoopGoneError(f"patch {name}/status", 404, "the loop is gone")

    world.cluster.patch_loop_status = gone  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING):
        world.reconciler.report_failure(world.namespace, world.name, ApiFailureError("get x", 503, "down"))
    assert caplog.records == []


def test_a_retrain_pod_held_in_a_namespace_being_deleted_is_released(world: World) -> None:
    """Pods go first when a namespace is deleted, the loop after them: holding the pod would hold both."""
    world.annotate(RETRAIN_REQUEST_ANNOTATION, "r1")
    world.reconcile()
    assert len(world.cluster.held_pods) == 1
    calls = world.reconcile(after_seconds=1)
    assert "namespace_terminating" not in [call.name for call in calls]  # asked only when pods go

    world.cluster.terminating.add(world.namespace)
    calls = world.reconcile(after_seconds=1)
    assert [call.name for call in calls if call.name in ("namespace_terminating", "release_pod")] == [
        "namespace_terminating",
        "release_pod",
    ]
    assert world.cluster.held_pods == {}


def test_pods_deleted_in_a_namespace_that_stays_are_held_for_their_result(world: World) -> None:
    world.annotate(RETRAIN_REQUEST_ANNOTATION, "r1")
    world.reconcile()
    job = next(iter(world.cluster.jobs))
    world.cluster.observe_job = lambda namespace, name, owner_uid: JobObservation(  # type: ignore[method-assign]
        name, JobState.RUNNING, pods_terminating=True
    )
    calls = world.reconcile(after_seconds=1)
    assert "namespace_terminating" in [call.name for call in calls]
    assert [pod.job for pod in world.cluster.held_pods.values()] == [job]
