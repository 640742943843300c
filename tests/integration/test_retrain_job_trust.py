"""The retrain Job on the real API server, Prometheus and S3, against a loop author or a neighbour who tries
to reach through it what their own RBAC does not give them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import harness
from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.api import (
    COMPONENT_RETRAIN,
    FIELD_MANAGER,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    RETRAIN_REQUEST_ANNOTATION,
)
from feedbackloop.core import contract
from harness import wait_until
from loop_scenario import BUCKET, LOOP, PREFIX, Scenario, loop_spec, trainer_report, write_candidate
from operator_process import OperatorProcess

RETRAIN_LABELS = {LABEL_COMPONENT: COMPONENT_RETRAIN, LABEL_MANAGED_BY: FIELD_MANAGER}


def foreign_job(
    scenario: Scenario, name: str, owner: dict[str, Any] | None = None, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """A suspended Job anyone with `create jobs` could make: it never runs a pod."""
    metadata: dict[str, Any] = {"name": name, "labels": labels or {}}
    if owner is not None:
        metadata["ownerReferences"] = [owner]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "suspend": True,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "busybox", "command": ["true"]}],
                }
            },
        },
    }
    scenario.kubectl("create", "-f", "-", input_text=json.dumps(job))
    created: dict[str, Any] = json.loads(scenario.kubectl("get", "job", name, "-o", "json").stdout)
    return created


def test_a_secret_not_opted_in_is_never_handed_to_a_job(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess]
) -> None:
    scenario.kubectl(
        "create", "secret", "generic", "team-database",
        "--from-literal=AWS_ACCESS_KEY_ID=dba", "--from-literal=AWS_SECRET_ACCESS_KEY=not-for-loops",
    )  # fmt: skip
    start_operator()
    spec = loop_spec(scenario.model, **{"artifacts.credentialsSecret": "team-database"})
    scenario.apply_loop(spec, annotations={RETRAIN_REQUEST_ANNOTATION: "steal"})

    ready = scenario.wait_condition("Ready", "False", "SecretNotOptedIn")
    assert "Secret 'team-database' is not opted in" in ready["message"]
    assert "must start with 'feedbackloop-'" in ready["message"]
    time.sleep(3)  # more ticks: the request waits, no Job mounts the Secret
    assert scenario.job_names() == []
    assert "activeRetrain" not in scenario.loop()["status"]


def test_pod_labels_and_annotations_off_the_allow_list_are_refused_naming_the_key(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator()  # allows only kwok.feedbackloop.dev/ keys (operator_process)
    spec = loop_spec(
        scenario.model,
        **{
            "retrain.podLabels": {"allow-egress-to": "payments"},
            "retrain.podAnnotations": {"iam.amazonaws.com/role": "payments-admin"},
        },
    )
    scenario.apply_loop(spec, annotations={RETRAIN_REQUEST_ANNOTATION: "escalate"})

    ready = scenario.wait_condition("Ready", "False", "PodMetadataNotAllowed")
    assert "spec.retrain.podLabels: key 'allow-egress-to'" in ready["message"]
    assert "spec.retrain.podAnnotations: key 'iam.amazonaws.com/role'" in ready["message"]
    assert "allowed: 'kwok.feedbackloop.dev/'" in ready["message"]
    time.sleep(3)
    assert scenario.job_names() == []


def test_jobs_that_copy_the_retrain_labels_take_no_retrain_slot(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator(FBL_MAX_CONCURRENT_RETRAINS="2")
    scenario.apply_loop(loop_spec(scenario.model))
    scenario.wait_condition("Ready", "True")
    loop = scenario.loop()["metadata"]
    # One with the labels alone, one that also names the loop as controller: neither is its active retrain.
    foreign_job(scenario, "squatter", labels=RETRAIN_LABELS)
    owner = {"apiVersion": "feedbackloop.dev/v1alpha1", "kind": "FeedbackLoop", "name": LOOP,
             "uid": loop["uid"], "controller": True}  # fmt: skip
    foreign_job(scenario, "decoy", owner=owner, labels=RETRAIN_LABELS)

    scenario.annotate_retrain("go")
    started = scenario.wait_condition("Retraining", "True")
    assert started["reason"] in {"RetrainStarted", "RetrainRunning"}
    assert f"{LOOP}-retrain-2" in scenario.job_names()


def test_a_foreign_job_with_the_retrain_jobs_name_is_not_adopted(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess]
) -> None:
    squatted = foreign_job(scenario, f"{LOOP}-retrain-2", labels=RETRAIN_LABELS)
    start_operator()
    scenario.apply_loop(loop_spec(scenario.model), annotations={RETRAIN_REQUEST_ANNOTATION: "go"})

    taken = scenario.wait_condition("Retraining", "False", "JobNameTaken")
    assert taken["message"] == (
        f"Job {LOOP}-retrain-2 exists but this FeedbackLoop is not its controller; it is not adopted"
    )
    status = scenario.loop()["status"]
    assert "activeRetrain" not in status
    assert (status["history"][-1]["version"], status["history"][-1]["reason"]) == ("v2", "JobNameTaken")
    job = json.loads(scenario.kubectl("get", "job", f"{LOOP}-retrain-2", "-o", "json").stdout)
    assert job["metadata"].get("ownerReferences") is None
    assert job["metadata"]["uid"] == squatted["metadata"]["uid"]
    assert job["spec"]["suspend"] is True


def test_a_model_and_manifest_swapped_after_the_trainer_wrote_them_are_refused(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess], store: ArtifactStore
) -> None:
    uri = write_candidate(store, scenario.namespace, "v2")
    report = trainer_report(store, uri)  # what the trainer's termination message says it wrote
    # Whoever can write the version prefix swaps model and manifest together: consistent, not the trainer's.
    store.write_version(
        uri, "v2", {"model.joblib": b"a pickle that runs code", "metrics.json": b'{"candidate": {}}'}, {}
    )
    start_operator()
    spec = loop_spec(scenario.model, **{"retrain.podAnnotations": report})
    scenario.apply_loop(spec, annotations={RETRAIN_REQUEST_ANNOTATION: "go"})

    tampered = scenario.wait_condition("Retraining", "False", "ManifestTampered")
    written = json.loads(report[harness.KWOK_MESSAGE_ANNOTATION])[contract.TERMINATION_MANIFEST_SHA256]
    assert f"wrote a manifest with sha256 {written[:12]}…" in tampered["message"]
    assert f"s3://{BUCKET}/{PREFIX}{scenario.namespace}/{LOOP}/v2/manifest.json has" in tampered["message"]
    status = scenario.loop()["status"]
    assert "candidateModel" not in status
    assert status["history"][-1]["reason"] == "ManifestTampered"
    served = wait_until(lambda: scenario.loop()["status"].get("rollout"), lambda r: r is None, timeout=3)
    assert served is None
