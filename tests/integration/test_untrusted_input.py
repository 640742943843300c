"""What a loop author writes into annotations, or a trainer into metrics.json, is untrusted: on the real
control plane it can neither reach outside the loop, nor block the loop's status, nor make Observe write."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.api import (
    PROMOTE_ANNOTATION,
    RETRAIN_REQUEST_ANNOTATION,
    ROLLBACK_ANNOTATION,
)
from feedbackloop.core import contract
from harness import wait_until
from loop_scenario import (
    BUCKET,
    LOOP,
    PREFIX,
    Scenario,
    deployment,
    served,
    spec_for,
    trainer_report,
    wait_status,
)
from operator_process import OperatorProcess


def write_version_with_metrics(
    store: ArtifactStore, namespace: str, version: str, metrics_json: str, loop: str = LOOP
) -> str:
    """A version as a trainer (or anyone who can write the bucket) leaves it, metrics.json given verbatim."""
    uri = contract.version_uri(BUCKET, PREFIX, namespace, loop, version)
    files = {"model.joblib": f"model {version}".encode(), "metrics.json": metrics_json.encode()}
    store.write_version(uri, version, files, {})
    return uri


def reported(scenario: Scenario, store: ArtifactStore, uri: str) -> dict[str, Any]:
    """The loop's spec; its retrain pod reports the digest of the version at `uri`, as a trainer does."""
    return spec_for(scenario, **{"retrain.podAnnotations": trainer_report(store, uri)})


def status_still_written(scenario: Scenario) -> None:
    """A spec edit the operator must acknowledge in status: the loop's status still takes patches."""
    interval = scenario.loop()["spec"]["monitoring"]["interval"]
    edited = "11s" if interval != "11s" else "12s"
    patch = json.dumps({"spec": {"monitoring": {"interval": edited}}})
    scenario.kubectl("patch", "fbl", LOOP, "--type=merge", "-p", patch)
    generation = scenario.loop()["metadata"]["generation"]
    status = wait_status(scenario, lambda s: s.get("observedGeneration") == generation, timeout=60)
    assert status["observedGeneration"] == generation


def wait_message(scenario: Scenario, kind: str, reason: str, fragment: str) -> dict[str, str]:
    condition: dict[str, str] = wait_until(
        lambda: scenario.condition(kind),
        lambda c: c.get("reason") == reason and fragment in c.get("message", ""),
        timeout=60,
        interval=0.5,
    )
    assert (condition.get("reason"), fragment in condition.get("message", "")) == (reason, True), condition
    return condition


# ---------------------------------------------------------------- hole 3: version names are strict


def test_a_rollback_to_outside_the_loop_is_refused_before_any_s3_read_or_deployment_change(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess], store: ArtifactStore
) -> None:
    other = f"{scenario.namespace}-other"  # another tenant's loop, stored in the same bucket
    metrics = json.dumps({"schemaVersion": 1, "candidate": {"accuracy": 0.99}})
    write_version_with_metrics(store, other, "v3", metrics)
    start_operator()
    scenario.apply_loop(spec_for(scenario))
    scenario.wait_condition("Healthy", "True")
    generation, original = deployment(scenario)["metadata"]["generation"], served(scenario)

    traversal = f"../../{other}/{LOOP}/v3"
    scenario.kubectl("annotate", "fbl", LOOP, f"{ROLLBACK_ANNOTATION}={traversal}")
    refused = scenario.wait_condition("RolledOut", "False", "InvalidVersionName")
    assert refused["message"].startswith(f"{ROLLBACK_ANNOTATION}: '{traversal}' is not a version name")
    assert "manifest" not in refused["message"]  # nothing of the other loop's artifacts was read
    assert scenario.loop()["status"]["handledRollbackRequest"] == traversal

    scenario.kubectl("annotate", "fbl", LOOP, f"{PROMOTE_ANNOTATION}=../v3")
    wait_message(scenario, "RolledOut", "InvalidVersionName", f"{PROMOTE_ANNOTATION}: '../v3'")
    time.sleep(2)
    assert deployment(scenario)["metadata"]["generation"] == generation
    assert served(scenario) == original
    assert any(e["reason"] == "InvalidVersionName" for e in scenario.events())


# ---------------------------------------------------------------- hole 7: untrusted values never block status


def test_non_finite_numbers_in_metrics_json_are_dropped_and_status_stays_writable(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess], store: ArtifactStore
) -> None:
    # json.loads accepts NaN and Infinity; the API server refuses them in a patch.
    metrics = (
        '{"schemaVersion": 1, "candidate": {"accuracy": NaN, "f1": Infinity, "precision": 0.91},'
        ' "current": {"accuracy": -Infinity, "precision": 0.7},'
        ' "comparison": {"accuracy": {"ciLow": NaN, "ciHigh": 0.1}}}'
    )
    uri = write_version_with_metrics(store, scenario.namespace, "v2", metrics)
    start_operator()
    scenario.apply_loop(reported(scenario, store, uri), annotations={RETRAIN_REQUEST_ANNOTATION: "go"})

    validated = scenario.wait_condition("Validated", "False", "GatesFailed")
    assert "accuracy missing from metrics.json" in validated["message"]
    candidate = scenario.loop()["status"]["candidateModel"]
    assert candidate["metrics"] == {"precision": 0.91}
    assert candidate["currentMetrics"] == {"precision": 0.7}
    assert candidate["comparison"] == {"accuracy": {"ciHigh": 0.1}}
    status_still_written(scenario)


def test_more_metrics_than_the_schema_allows_are_capped_and_the_loop_rolls_out(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess], store: ArtifactStore
) -> None:
    many = {f"m{index:03d}": 0.5 for index in range(100)}
    candidate = {"accuracy": 0.93, **many}
    metrics = {"schemaVersion": 1, "candidate": candidate, "current": {"accuracy": 0.7, **many}}
    uri = write_version_with_metrics(store, scenario.namespace, "v2", json.dumps(metrics))
    start_operator()
    scenario.apply_loop(reported(scenario, store, uri), annotations={RETRAIN_REQUEST_ANNOTATION: "go"})

    status = wait_status(scenario, lambda s: s.get("currentModel", {}).get("version") == "v2")
    kept = status["currentModel"]["metrics"]
    assert len(kept) == contract.METRICS_LIMIT == 64
    assert kept == dict(sorted(candidate.items())[: contract.METRICS_LIMIT])
    status_still_written(scenario)


def test_request_annotations_longer_than_the_status_fields_are_handled_once_by_digest(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess], store: ArtifactStore
) -> None:
    metrics = {"schemaVersion": 1, "candidate": {"accuracy": 0.93}, "current": {"accuracy": 0.7}}
    uri = write_version_with_metrics(store, scenario.namespace, "v2", json.dumps(metrics))
    long_request = "r" * 5000  # status.handledRetrainRequest allows 1024 characters, messages 4096

    def digest(value: str) -> str:
        return "sha256:" + hashlib.sha256(value.encode()).hexdigest()

    start_operator()
    scenario.apply_loop(
        reported(scenario, store, uri), annotations={RETRAIN_REQUEST_ANNOTATION: long_request}
    )
    status = wait_status(scenario, lambda s: s.get("currentModel", {}).get("version") == "v2")
    assert status["handledRetrainRequest"] == digest(long_request)
    assert scenario.job_names() == [f"{LOOP}-retrain-2"]

    long_version = "v" * 5000
    scenario.kubectl("annotate", "fbl", LOOP, f"{PROMOTE_ANNOTATION}={long_version}")
    wait_message(scenario, "RolledOut", "InvalidVersionName", PROMOTE_ANNOTATION)
    scenario.kubectl("annotate", "fbl", LOOP, f"{ROLLBACK_ANNOTATION}={long_version}")
    refused = wait_message(scenario, "RolledOut", "InvalidVersionName", ROLLBACK_ANNOTATION)
    assert len(refused["message"]) < 300
    status = scenario.loop()["status"]
    assert status["handledPromoteRequest"] == digest(long_version)
    assert status["handledRollbackRequest"] == digest(long_version)
    status_still_written(scenario)
    assert scenario.job_names() == [f"{LOOP}-retrain-2"]  # the long retrain request was handled once


# ---------------------------------------------------------------- hole 9: gates fail closed


def test_a_delta_gate_fails_when_the_serving_model_has_no_score_in_metrics_json(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess], store: ArtifactStore
) -> None:
    # A trainer that could not score the current model (its MODEL_SHA256 comes from valueFrom, say).
    metrics = {"schemaVersion": 1, "candidate": {"accuracy": 0.93}}
    uri = write_version_with_metrics(store, scenario.namespace, "v2", json.dumps(metrics))
    generation, original = deployment(scenario)["metadata"]["generation"], served(scenario)
    start_operator()
    scenario.apply_loop(reported(scenario, store, uri), annotations={RETRAIN_REQUEST_ANNOTATION: "go"})

    validated = scenario.wait_condition("Validated", "False", "GatesFailed")
    assert "v1 has no accuracy in metrics.json" in validated["message"]
    status = scenario.loop()["status"]
    assert [g["reason"] for g in status["candidateModel"]["gates"]] == [
        "WithinBound",
        "CurrentModelNotScored",
    ]
    assert status["rejectedVersions"] == ["v2"]
    time.sleep(2)
    assert deployment(scenario)["metadata"]["generation"] == generation
    assert served(scenario) == original


# ---------------------------------------------------------------- hole 10: Observe is read-only


def test_observe_mode_refuses_rollback_to_and_promote_and_leaves_the_deployment_alone(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess], store: ArtifactStore
) -> None:
    metrics = json.dumps({"schemaVersion": 1, "candidate": {"accuracy": 0.9}})
    write_version_with_metrics(store, scenario.namespace, "v0", metrics)
    start_operator()
    scenario.apply_loop(spec_for(scenario, mode="Observe"))
    scenario.wait_condition("Healthy", "True")
    generation, original = deployment(scenario)["metadata"]["generation"], served(scenario)

    scenario.kubectl("annotate", "fbl", LOOP, f"{ROLLBACK_ANNOTATION}=v0")
    refused = scenario.wait_condition("RolledOut", "False", "ObserveOnly")
    assert refused["message"] == f"mode Observe: {ROLLBACK_ANNOTATION}=v0 not applied"
    scenario.kubectl("annotate", "fbl", LOOP, f"{PROMOTE_ANNOTATION}=v0")
    wait_message(scenario, "RolledOut", "ObserveOnly", f"{PROMOTE_ANNOTATION}=v0")
    time.sleep(3)
    status = scenario.loop()["status"]
    assert (status["handledRollbackRequest"], status["handledPromoteRequest"]) == ("v0", "v0")
    assert "rollout" not in status
    assert status["currentModel"]["version"] == "v1"
    assert deployment(scenario)["metadata"]["generation"] == generation
    assert served(scenario) == original
