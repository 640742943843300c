"""A retrain Job the API server refuses for good, on the real control plane: a ResourceQuota that allows no
Jobs makes every create a 403; the operator tries a bounded number of times with a backoff, then ends the
retrain with the API's reason and one Warning, and the next request after the quota is gone gets its Job."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from feedbackloop.api import RETRAIN_REQUEST_ANNOTATION
from loop_scenario import LOOP, Scenario, loop_spec
from operator_process import OperatorProcess

QUOTA = "no-jobs"


def forbid_jobs(scenario: Scenario) -> None:
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": QUOTA},
        "spec": {"hard": {"count/jobs.batch": "0"}},
    }
    scenario.kubectl("apply", "-f", "-", input_text=json.dumps(quota))
    # The test cluster runs no quota controller, and admission counts against status: write what it would.
    usage = {"status": {"hard": {"count/jobs.batch": "0"}, "used": {"count/jobs.batch": "0"}}}
    scenario.kubectl(
        "patch", "resourcequota", QUOTA, "--subresource=status", "--type=merge", "-p", json.dumps(usage)
    )


def test_a_quota_that_forbids_jobs_ends_the_retrain_with_its_reason_and_lifting_it_lets_the_next_run(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess]
) -> None:
    forbid_jobs(scenario)
    start_operator(FBL_JOB_CREATE_BACKOFF_SECONDS="0.5")
    scenario.apply_loop(loop_spec(scenario.model), annotations={RETRAIN_REQUEST_ANNOTATION: "quota-1"})

    refused = scenario.wait_condition("Retraining", "False", "JobCreateRefused")
    assert f"cannot create Job {LOOP}-retrain-2: HTTP 403 Forbidden" in refused["message"]
    assert f"exceeded quota: {QUOTA}" in refused["message"]
    assert refused["message"].endswith("(gave up after 3 tries)")
    status = scenario.loop()["status"]
    assert "activeRetrain" not in status
    assert status["retrainCount"] == 2  # the served v1 makes this retrain v2
    entry = status["history"][-1]
    assert (entry["version"], entry["outcome"]) == ("v2", "RetrainFailed")
    assert entry["reason"] == "JobCreateRefused"
    assert f"exceeded quota: {QUOTA}" in entry["message"]

    time.sleep(3)  # three more ticks: no further try, no further Event
    assert scenario.job_names() == []
    assert scenario.loop()["status"]["retrainCount"] == 2
    events = scenario.events()
    gave_up = [e for e in events if e["reason"] == "JobCreateRefused"]
    assert [(e["type"], e["count"]) for e in gave_up] == [("Warning", 1)]
    assert f"exceeded quota: {QUOTA}" in gave_up[0]["message"]
    assert [e["type"] for e in events if e["reason"] == "Blocked"] == ["Warning"]  # the first try's alone

    scenario.kubectl("delete", "resourcequota", QUOTA)
    scenario.annotate_retrain("quota-2")
    scenario.wait_jobs([f"{LOOP}-retrain-3"])
    assert scenario.loop()["status"]["retrainCount"] == 3
