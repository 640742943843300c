"""Fault injection: a retrain Job that finished and vanished while the operator was down.

With `ttlSecondsAfterFinished: 0` the TTL controller deletes the Job (foreground) the moment it completes;
someone may also delete a finished Job (background). Either way the operator has not seen the result yet.
The promise: the complete version written before is still found (the operator's finalizer keeps the pod and
the digest in its termination message), it rolls out, no Job is created again, and once the status holds
the result the pods are released and gone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

import chaos
from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.api import ENV_MODEL_URI, RETRAIN_POD_FINALIZER, RETRAIN_REQUEST_ANNOTATION
from feedbackloop.failpoints import Failpoint
from harness import wait_until
from loop_scenario import Scenario, served, spec_for, trainer_report, wait_status, write_candidate
from operator_process import OperatorProcess

CONVERGE = 150  # seconds a loop may take to settle once a fault ends
JOB = "churn-retrain-2"


def _job(scenario: Scenario) -> dict[str, Any] | None:
    return next((job for job in scenario.jobs() if job["metadata"]["name"] == JOB), None)


def _pods(scenario: Scenario) -> list[dict[str, Any]]:
    listed = scenario.kubectl("get", "pods", "-l", f"batch.kubernetes.io/job-name={JOB}", "-o", "json")
    items: list[dict[str, Any]] = json.loads(listed.stdout)["items"]
    return items


def _succeeded(pods: list[dict[str, Any]]) -> bool:
    return any((pod.get("status") or {}).get("phase") == "Succeeded" for pod in pods)


@pytest.mark.parametrize("vanishing", ["TTL 0", "deleted"])
def test_a_finished_job_gone_before_the_operator_saw_it_is_still_found(
    vanishing: str,
    attempt: int,
    scenario: Scenario,
    start_operator: Callable[..., OperatorProcess],
    store: ArtifactStore,
    inject: Callable[[str], chaos.Injection],
) -> None:
    injection = inject(f"retrain Job finished, gone unseen ({vanishing})")
    candidate = write_candidate(store, scenario.namespace, "v2", accuracy=0.93)
    ttl = 0 if vanishing == "TTL 0" else 3600
    report = trainer_report(store, candidate)
    spec = spec_for(scenario, **{"retrain.podAnnotations": report, "retrain.ttlSecondsAfterFinished": ttl})
    # Down right after the create: the Job runs, finishes and vanishes with no operator watching.
    crashing = start_operator(FBL_FAILPOINT=Failpoint.AFTER_JOB_CREATE.value)
    scenario.apply_loop(spec, annotations={RETRAIN_REQUEST_ANNOTATION: "go"})
    assert crashing.wait_exit(timeout=CONVERGE) == 137
    pods = wait_until(lambda: _pods(scenario), _succeeded, timeout=60, interval=0.5)
    assert _succeeded(pods), pods
    assert all(RETRAIN_POD_FINALIZER in pod["metadata"].get("finalizers", []) for pod in pods)
    if ttl == 0:
        # The TTL controller deletes in the foreground: the Job waits, terminating, for its held pod.
        job = wait_until(
            lambda: _job(scenario), lambda j: bool(j and j["metadata"].get("deletionTimestamp")), timeout=60
        )
        assert job is not None and job["metadata"].get("deletionTimestamp"), job
    else:
        scenario.kubectl("delete", "job", JOB, "--cascade=background", "--wait=false")
        assert wait_until(lambda: _job(scenario), lambda j: j is None, timeout=60) is None
        # Without the finalizer the garbage collector would have deleted the pod, and its report, by now.
        time.sleep(3)
        assert _succeeded(_pods(scenario))
    injection.fault_ended()

    start_operator()
    status = wait_status(
        scenario,
        lambda s: (s.get("currentModel") or {}).get("version") == "v2" and "rollout" not in s,
        timeout=CONVERGE,
    )
    entry = next(e for e in status["history"] if e["version"] == "v2")
    assert entry["outcome"] == "RolledOut", entry
    assert served(scenario)[0].get(ENV_MODEL_URI) == candidate
    # Released once the status holds the result, so the pods go, and with them a foreground-deleted Job.
    assert wait_until(lambda: _pods(scenario), lambda pods: pods == [], timeout=60) == []
    assert wait_until(lambda: _job(scenario), lambda j: j is None, timeout=60) is None
    status = scenario.loop()["status"]
    injection.duplicate_jobs = chaos.duplicate_jobs(scenario.jobs(), status["retrainCount"], first_number=2)
    injection.bad_promotions = int(served(scenario)[0].get(ENV_MODEL_URI) != candidate)
    injection.lost_status = int(status.get("handledRetrainRequest") != "go")
    assert (injection.duplicate_jobs, injection.bad_promotions, injection.lost_status) == (0, 0, 0)
    assert status["retrainCount"] == 2  # found, not retrained again
    injection.converged_now()
