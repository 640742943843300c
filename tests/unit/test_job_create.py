"""A retrain Job the API server does not accept: the adapter tells a refusal for good from a failure that may
pass, the core counts the tries and backs off between them, creates nothing before the next try, and past the
bound ends the retrain with the API's reason; the reconciler writes status once per try and posts one Warning
when the tries start and one when they end."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import REGISTRY
from urllib3 import HTTPConnectionPool
from urllib3.exceptions import MaxRetryError, ReadTimeoutError

from core_inputs import POLICY, T0, accuracy, created_jobs, healthy_dependencies, loop_state, spec_dict
from feedbackloop.adapters.kube import ApiFailureError, KubeAdapter, api_reason, describe_termination
from feedbackloop.api import RETRAIN_REQUEST_ANNOTATION, ConditionType, EventType, Outcome, Reason
from feedbackloop.config import ConfigError, load_config
from feedbackloop.core.cadence import next_reconcile
from feedbackloop.core.decide import decide
from feedbackloop.core.decision import Decision, Event, RetrainFinished, RetrainStarted
from feedbackloop.core.loop import LoopState, OperatorPolicy
from feedbackloop.core.observations import JobObservation, JobState
from feedbackloop.core.retrain import (
    JobCreateFailure,
    job_create_backoff,
    job_create_failed,
    mark_job_created,
)
from feedbackloop.core.status import FeedbackLoopStatus
from reconcile_fakes import QUOTA_REFUSAL, World

JOB = "churn-retrain-1"
QUOTA = JobCreateFailure(refused=True, message=f"HTTP 403 {QUOTA_REFUSAL.format(name=JOB)}")
UNAVAILABLE = JobCreateFailure(refused=False, message="HTTP 503 ServiceUnavailable")
# A healthy loop asked for a retrain whose Job does not exist (yet).
OBSERVED = healthy_dependencies(
    metrics=(accuracy(0.95),), retrain_request="r1", job=JobObservation(JOB, JobState.MISSING)
)


def attempt(
    loop: LoopState, at: Any, failure: JobCreateFailure, policy: OperatorPolicy = POLICY
) -> tuple[LoopState, list[Event], Decision]:
    """One reconcile at `at` whose Job create fails: the loop after it, every Event posted, and the failure's
    own decision."""
    decision = decide(loop, OBSERVED, policy, at)
    assert [job["metadata"]["name"] for job in created_jobs(decision)] == [JOB]
    failed = job_create_failed(decision.status, failure, at, loop.generation, policy)
    return replace(loop, status=failed.status), [*decision.events, *failed.events], failed


def retraining(status: FeedbackLoopStatus) -> tuple[str, str, str]:
    found = status.condition(ConditionType.RETRAINING)
    assert found is not None
    return found.status, found.reason, found.message


def warnings(events: list[Event]) -> list[str]:
    return [event.reason for event in events if event.type is EventType.WARNING]


# ---------------------------------------------------------------- the core


def test_a_refused_create_counts_the_try_says_why_and_waits_the_base_backoff() -> None:
    loop, events, _ = attempt(loop_state(), T0, QUOTA)
    active = loop.status.active_retrain
    assert active is not None
    assert (active.job, active.create_attempts, active.next_create_at) == (JOB, 1, T0 + timedelta(seconds=10))
    assert active.job_created is False
    assert loop.status.retrain_count == 1
    assert retraining(loop.status) == (
        "False",
        "Blocked",
        f"cannot create Job {JOB}: {QUOTA.message} (try 1); next try at 2026-11-28T12:00:10Z",
    )
    assert warnings(events) == ["Blocked"]


def test_no_job_is_created_before_the_next_try_and_the_wait_posts_nothing() -> None:
    loop, _, _ = attempt(loop_state(), T0, QUOTA)
    early = decide(loop, OBSERVED, POLICY, T0 + timedelta(seconds=9.999))
    assert early.actions == ()
    assert early.events == ()
    assert early.status.active_retrain == loop.status.active_retrain
    assert retraining(early.status) == retraining(loop.status)

    due = decide(loop, OBSERVED, POLICY, T0 + timedelta(seconds=10))
    assert [job["metadata"]["name"] for job in created_jobs(due)] == [JOB]  # the same name: one counter
    assert due.status.retrain_count == 1
    assert not any(isinstance(t, RetrainStarted) for t in due.transitions)
    assert retraining(due.status) == retraining(loop.status)  # no RetrainStarted again, so no Event
    assert due.events == ()


def test_the_backoff_doubles_from_its_base_up_to_five_minutes() -> None:
    ten = timedelta(seconds=10)
    assert [job_create_backoff(ten, n).total_seconds() for n in range(1, 9)] == [
        10, 20, 40, 80, 160, 300, 300, 300,
    ]  # fmt: skip
    assert job_create_backoff(timedelta(seconds=0.5), 3) == timedelta(seconds=2)
    assert job_create_backoff(ten, 1000) == timedelta(minutes=5)


def test_three_refused_tries_end_the_retrain_with_the_api_reason_and_one_warning() -> None:
    loop, at, posted, tried_at = loop_state(), T0, [], []
    for _ in range(2):
        tried_at.append(at)
        loop, events, _ = attempt(loop, at, QUOTA)
        posted += events
        active = loop.status.active_retrain
        assert active is not None and active.next_create_at is not None
        at = active.next_create_at
    tried_at.append(at)
    loop, events, failed = attempt(loop, at, QUOTA)
    posted += events
    assert tried_at == [T0, T0 + timedelta(seconds=10), T0 + timedelta(seconds=30)]
    assert loop.status.active_retrain is None
    entry = loop.status.history[-1]
    assert (entry.version, entry.outcome, entry.reason) == ("v1", Outcome.RETRAIN_FAILED, "JobCreateRefused")
    assert entry.message == f"cannot create Job {JOB}: {QUOTA.message}"
    assert "exceeded quota: no-jobs" in entry.message
    assert retraining(loop.status) == (
        "False",
        "JobCreateRefused",
        f"cannot create Job {JOB}: {QUOTA.message} (gave up after 3 tries)",
    )
    assert warnings(posted) == ["Blocked", "JobCreateRefused"]
    assert failed.transitions == (RetrainFinished(Outcome.RETRAIN_FAILED, Reason.JOB_CREATE_REFUSED),)
    assert loop.status.retrain_count == 1

    after = decide(loop, OBSERVED, POLICY, at + timedelta(hours=1))
    assert after.actions == ()  # request r1 is handled: nothing is tried again until a new trigger


def test_failures_that_may_pass_back_off_alike_but_get_ten_tries() -> None:
    loop, at, waits, posted = loop_state(), T0, [], []
    for _ in range(9):
        loop, events, _ = attempt(loop, at, UNAVAILABLE)
        posted += events
        active = loop.status.active_retrain
        assert active is not None and active.next_create_at is not None
        waits.append((active.next_create_at - at).total_seconds())
        at = active.next_create_at
    assert loop.status.active_retrain is not None
    assert loop.status.active_retrain.create_attempts == 9
    assert waits == [10, 20, 40, 80, 160, 300, 300, 300, 300]
    loop, events, failed = attempt(loop, at, UNAVAILABLE)
    posted += events
    assert loop.status.active_retrain is None
    assert retraining(loop.status)[:2] == ("False", "JobCreateFailed")
    assert loop.status.history[-1].reason == "JobCreateFailed"
    assert failed.transitions == (RetrainFinished(Outcome.RETRAIN_FAILED, Reason.JOB_CREATE_FAILED),)
    assert warnings(posted) == ["Blocked", "JobCreateFailed"]


def test_a_refusal_ends_the_retrain_once_three_tries_in_all_have_failed() -> None:
    loop, _, _ = attempt(loop_state(), T0, UNAVAILABLE)
    loop, _, _ = attempt(loop, T0 + timedelta(seconds=10), UNAVAILABLE)
    assert loop.status.active_retrain is not None
    loop, _, _ = attempt(loop, T0 + timedelta(seconds=30), QUOTA)
    assert loop.status.active_retrain is None
    assert retraining(loop.status)[1] == "JobCreateRefused"


def test_a_job_that_exists_after_failed_tries_forgets_them() -> None:
    loop, _, _ = attempt(loop_state(), T0, UNAVAILABLE)
    marked = mark_job_created(loop.status).active_retrain
    assert marked is not None
    assert (marked.job_created, marked.create_attempts, marked.next_create_at) == (True, 0, None)

    # A create whose answer was lost may have made the Job: seeing it ends the backoff too.
    running = replace(OBSERVED, job=JobObservation(JOB, JobState.RUNNING))
    seen = decide(loop, running, POLICY, T0 + timedelta(seconds=1)).status.active_retrain
    assert seen is not None
    assert (seen.job_created, seen.create_attempts, seen.next_create_at) == (True, 0, None)


def test_a_loop_backing_off_wakes_for_its_next_try_not_every_tick() -> None:
    loop, _, _ = attempt(loop_state(), T0, QUOTA)
    loop = replace(loop, last_probe=T0)
    assert next_reconcile(loop, {RETRAIN_REQUEST_ANNOTATION: "r1"}, POLICY, T0) == T0 + timedelta(seconds=10)
    due = T0 + timedelta(seconds=10)
    assert next_reconcile(loop, {}, POLICY, due) == due + POLICY.tick

    slow = replace(POLICY, job_create_backoff=timedelta(seconds=120))
    waiting, _, _ = attempt(loop_state(), T0, QUOTA, slow)
    interval = timedelta(seconds=60)  # BASE_SPEC's: the evaluation comes first
    assert next_reconcile(waiting, {}, slow, T0 + timedelta(seconds=1)) == T0 + interval


# ---------------------------------------------------------------- the reconciler

_names = itertools.count()


@pytest.fixture
def world() -> World:
    """A loop with a name of its own, so the process-wide metrics of one test never mix with another's."""
    return World(f"quota-{next(_names)}", spec_dict(**{"retrain.cooldown": "0s"}), T0)


def condition(world: World, kind: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in world.status["conditions"] if c["type"] == kind)
    return found


def test_each_refused_try_writes_status_once_and_only_the_first_and_the_last_post_a_warning(
    world: World,
) -> None:
    world.cluster.create_failures.extend([403, 403, 403])
    world.annotate(RETRAIN_REQUEST_ANNOTATION, "r1")
    world.reconcile()  # not raised: the status's backoff, not the handler's fixed retry, sets the next try
    writes = world.writes()
    assert [call.name for call in writes[:3]] == ["patch_loop_status", "create_job", "patch_loop_status"]
    assert [c.args for c in writes[3:] if c.args[0] == "Warning"] == [("Warning", "Blocked")]
    assert world.status["activeRetrain"]["createAttempts"] == 1
    assert world.status["activeRetrain"]["nextCreateAt"] == "2026-11-28T12:00:10Z"
    assert world.reconciled is not None and world.reconciled.next_at == T0 + timedelta(seconds=10)
    assert condition(world, "Ready")["status"] == "True"  # a refused Job is not the loop's readiness

    world.reconcile(after_seconds=9.5)
    assert world.writes() == []

    world.reconcile(after_seconds=0.5)
    assert [call.name for call in world.writes()] == ["create_job", "patch_loop_status"]
    assert world.status["activeRetrain"]["createAttempts"] == 2
    assert world.status["activeRetrain"]["nextCreateAt"] == "2026-11-28T12:00:30Z"

    world.reconcile(after_seconds=20)
    assert [call.name for call in world.writes()] == ["create_job", "patch_loop_status", "post_event"]
    assert world.writes()[-1].args == ("Warning", "JobCreateRefused")
    assert "activeRetrain" not in world.status
    refused = condition(world, "Retraining")
    assert (refused["status"], refused["reason"]) == ("False", "JobCreateRefused")
    assert "exceeded quota: no-jobs" in refused["message"]
    entry = world.status["history"][-1]
    assert (entry["outcome"], entry["reason"]) == ("RetrainFailed", "JobCreateRefused")
    assert "HTTP 403 Forbidden" in entry["message"]
    assert world.cluster.jobs == {}
    finished = {"namespace": world.namespace, "loop": world.name}
    finished |= {"outcome": "RetrainFailed", "reason": "JobCreateRefused"}
    assert REGISTRY.get_sample_value("feedbackloop_retrains_finished_total", finished) == 1

    world.reconcile(after_seconds=600)
    assert "create_job" not in [call.name for call in world.last_calls]

    world.annotate(RETRAIN_REQUEST_ANNOTATION, "r2")  # the quota is lifted; a new request, a new Job
    world.reconcile()
    assert sorted(world.cluster.jobs) == [f"{world.name}-retrain-2"]
    assert world.status["activeRetrain"]["jobCreated"] is True


# ---------------------------------------------------------------- the adapter and the setting


class AnsweringBatch:
    """BatchV1Api's create, failing as the API server or the connection to it does."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def create_namespaced_job(self, namespace: str, body: dict[str, Any], **_: Any) -> None:
        raise self.error


def create_failure(error: Exception) -> ApiFailureError:
    adapter = KubeAdapter(client.ApiClient())
    adapter.batch = AnsweringBatch(error)
    manifest = {"metadata": {"name": JOB, "namespace": "ml", "ownerReferences": [{"uid": "u"}]}}
    with pytest.raises(ApiFailureError) as raised:
        adapter.create_job(manifest)
    return raised.value


def api_error(status: int, reason: str, message: str) -> ApiException:
    error = ApiException(status=status, reason=reason)
    error.body = json.dumps(
        {"kind": "Status", "status": "Failure", "reason": reason, "message": message, "code": status}
    )
    return error


def test_the_adapter_tells_a_refusal_for_good_from_a_failure_that_may_pass() -> None:
    quota = create_failure(api_error(403, "Forbidden", QUOTA_REFUSAL.format(name=JOB).split(": ", 1)[1]))
    assert (quota.status, quota.refused) == (403, True)
    assert quota.answer == f"HTTP 403 {QUOTA_REFUSAL.format(name=JOB)}"
    assert str(quota) == f"create jobs/{JOB}: {quota.answer}"
    for status in (400, 404, 422):
        assert create_failure(api_error(status, "Invalid", "spec: Invalid value")).refused is True
    for status in (429, 500, 503, 504):
        assert create_failure(api_error(status, "InternalError", "try again")).refused is False
    pool = HTTPConnectionPool("api.invalid")  # named in the errors only; nothing connects
    timeout = create_failure(ReadTimeoutError(pool, "/apis/batch/v1", "read timed out"))
    assert (timeout.status, timeout.refused, timeout.answer) == (0, False, "no answer (ReadTimeoutError)")
    refused = create_failure(MaxRetryError(pool, "/apis/batch/v1", ConnectionRefusedError()))
    assert (refused.refused, refused.answer) == (False, "no answer (ConnectionRefusedError)")


def test_the_api_reason_is_short_and_keeps_no_credentials_nor_a_body_that_is_not_a_status() -> None:
    invalid = 'spec.containers[0].env[0].value: Invalid value: "http://key:secret@s3.local:9000"'
    status = json.dumps({"kind": "Status", "reason": "Invalid", "message": invalid})
    assert api_reason(status, "Unprocessable Entity") == (
        'Invalid: spec.containers[0].env[0].value: Invalid value: "http://…@s3.local:9000"'
    )
    assert api_reason("<html>a proxy's page with anything in it</html>", "Bad Gateway") == "Bad Gateway"
    assert api_reason(None, None) == ""
    long = api_reason(json.dumps({"kind": "Status", "reason": "Invalid", "message": "x" * 5000}), None)
    assert len(long) == 300 and long.endswith("…")


def test_the_job_create_backoff_is_a_validated_setting() -> None:
    assert load_config({}).policy.job_create_backoff == timedelta(seconds=10)
    fast = load_config({"FBL_JOB_CREATE_BACKOFF_SECONDS": "0.5"})
    assert fast.policy.job_create_backoff == timedelta(seconds=0.5)
    for value in ("0", "301", "nan", "soon"):
        with pytest.raises(ConfigError, match="FBL_JOB_CREATE_BACKOFF_SECONDS"):
            load_config({"FBL_JOB_CREATE_BACKOFF_SECONDS": value})


@pytest.mark.parametrize(
    ("reason", "exit_code", "message", "described"),
    [
        ("OOMKilled", 137, None, "exit code 137 (OOMKilled)"),
        ("OOMKilled", 137, "killed while fitting\n", "exit code 137 (OOMKilled): killed while fitting"),
        ("Error", 1, "label column 'churned' not found", "exit code 1: label column 'churned' not found"),
        ("Error", 1, "", ""),
        ("Completed", 0, None, ""),
    ],
)
def test_a_container_termination_names_a_telling_reason_even_without_a_message(
    reason: str, exit_code: int, message: str | None, described: str
) -> None:
    terminated = client.V1ContainerStateTerminated(exit_code=exit_code, reason=reason, message=message)
    assert describe_termination(terminated) == described
