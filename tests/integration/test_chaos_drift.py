"""Fault injection: GitOps sets MODEL_URI back to the original model after the operator's rollout.

The promise: the loop says so once (InSync=False, reason OutOfSync, one Warning Event), status.currentModel is
what serves, the next retrain's champion is that model, and the operator never re-applies its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import chaos
from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.api import ENV_MODEL_SHA256, ENV_MODEL_URI, RETRAIN_REQUEST_ANNOTATION
from feedbackloop.core import contract
from loop_scenario import (
    Scenario,
    deployment,
    served,
    spec_for,
    trainer_report,
    wait_status,
    write_candidate,
)
from operator_process import OperatorProcess

PROBE_SECONDS = 2  # FBL_PROBE_INTERVAL_SECONDS: the Deployment is read at the first evaluation past it
DETECT = 30  # seconds: one monitoring interval (10 s) after a probe interval, with room for a slow tick
HOLD = 12  # seconds of further evaluations, each reading the Deployment, in which nothing may be re-applied
ORIGINAL_SHA = "1" * 64  # what deploy_server's manifest, the GitOps one, sets


def _events(scenario: Scenario, reason: str) -> list[tuple[str, int]]:
    return [(e["type"], e.get("count", 1)) for e in scenario.events() if e["reason"] == reason]


def _job_env(scenario: Scenario, name: str) -> dict[str, str]:
    job = next(job for job in scenario.jobs() if job["metadata"]["name"] == name)
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_model_uri_changed_out_of_band_is_reported_once_and_never_re_applied(
    attempt: int,
    scenario: Scenario,
    start_operator: Callable[..., OperatorProcess],
    store: ArtifactStore,
    inject: Callable[[str], chaos.Injection],
) -> None:
    injection = inject("MODEL_URI changed out of band")
    candidate = write_candidate(store, scenario.namespace, "v2", accuracy=0.93)
    candidate_sha = store.read_manifest(candidate, "v2").file("model.joblib").sha256  # type: ignore[union-attr]
    start_operator(FBL_PROBE_INTERVAL_SECONDS=str(PROBE_SECONDS))
    scenario.apply_loop(
        spec_for(scenario, **{"retrain.podAnnotations": trainer_report(store, candidate)}),
        annotations={RETRAIN_REQUEST_ANNOTATION: "go"},
    )
    wait_status(
        scenario, lambda s: (s.get("currentModel") or {}).get("version") == "v2" and "rollout" not in s
    )
    assert served(scenario)[0][ENV_MODEL_URI] == candidate
    assert scenario.condition("InSync")["status"] == "True"

    scenario.gitops_apply(scenario.initial_uri, ORIGINAL_SHA, "v1", force_conflicts=True)  # Git still says v1
    injection.fault_ended()
    generation = deployment(scenario)["metadata"]["generation"]

    drifted = scenario.wait_condition("InSync", "False", "OutOfSync", timeout=DETECT)
    assert f"serves v1 ({scenario.initial_uri}), not v2 ({candidate})" in drifted["message"]
    time.sleep(HOLD)
    status = scenario.loop()["status"]
    env, annotation = served(scenario)
    injection.bad_promotions = int(
        (env[ENV_MODEL_URI], env[ENV_MODEL_SHA256], annotation) != (scenario.initial_uri, ORIGINAL_SHA, "v1")
        or deployment(scenario)["metadata"]["generation"] != generation  # the operator applied something
    )
    current = {key: status["currentModel"].get(key) for key in ("version", "uri", "sha256", "metrics")}
    injection.lost_status = int(
        current != {"version": "v1", "uri": scenario.initial_uri, "sha256": ORIGINAL_SHA, "metrics": {}}
    ) + int((status.get("expectedModel") or {}).get("version") != "v2")
    injection.duplicate_jobs = chaos.duplicate_jobs(scenario.jobs(), status["retrainCount"], first_number=2)
    found = (injection.duplicate_jobs, injection.bad_promotions, injection.lost_status)
    assert found == (0, 0, 0), json.dumps(status, indent=1)[:3000]
    assert _events(scenario, "OutOfSync") == [("Warning", 1)]
    assert scenario.condition("InSync")["reason"] == "OutOfSync"  # and it stays so

    scenario.annotate_retrain("after-revert")
    scenario.wait_jobs(["churn-retrain-2", "churn-retrain-3"])
    champion = _job_env(scenario, "churn-retrain-3")
    assert champion[contract.ENV_CURRENT_MODEL_URI] == scenario.initial_uri
    assert champion[contract.ENV_CURRENT_MODEL_SHA256] == ORIGINAL_SHA
    assert champion[contract.ENV_CURRENT_MODEL_VERSION] == "v1"
    injection.converged_now()

    in_sync_events = len(_events(scenario, "InSync"))
    scenario.gitops_apply(candidate, candidate_sha, "v2", force_conflicts=True)  # Git catches up with v2
    cleared = scenario.wait_condition("InSync", "True", "InSync", timeout=DETECT)
    assert cleared["message"] == f"Deployment churn-server/server serves v2 ({candidate})"
    status = scenario.loop()["status"]
    assert (status["currentModel"]["version"], status["currentModel"]["metrics"]) == (
        "v2",
        {"accuracy": 0.93},
    )
    assert "expectedModel" not in status
    assert len(_events(scenario, "InSync")) == in_sync_events + 1
    assert _events(scenario, "OutOfSync") == [("Warning", 1)]
