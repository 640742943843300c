"""Gates, rollout, analysis, rollback, manual operations and deletion on the real control plane."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from metrics_lint import assert_promtool_clean

import harness
from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.api import (
    ENV_MODEL_SHA256,
    ENV_MODEL_URI,
    MODEL_VERSION_ANNOTATION,
    PROMOTE_ANNOTATION,
    RETRAIN_REQUEST_ANNOTATION,
    ROLLBACK_ANNOTATION,
)
from harness import wait_until
from loop_scenario import (
    BUCKET,
    GITOPS_MANAGER,
    LOOP,
    PREFIX,
    Scenario,
    deployment,
    served,
    spec_for,
    trainer_report,
    wait_status,
    write_candidate,
)
from operator_process import ModelExporter, OperatorProcess


def write_version(
    store: ArtifactStore, scenario: Scenario, version: str, accuracy: float, prefix: str = PREFIX
) -> str:
    uri = f"s3://{BUCKET}/{prefix}{scenario.namespace}/{LOOP}/{version}/"
    metrics = {"schemaVersion": 1, "candidate": {"accuracy": accuracy}, "current": {"accuracy": 0.80}}
    manifest = store.write_version(
        uri,
        version,
        {"model.joblib": f"model {version}".encode(), "metrics.json": json.dumps(metrics).encode()},
        {},
    )
    assert manifest["version"] == version
    return uri


def test_gates_pass_then_rollout_touches_only_our_fields_then_analysis_promotes(
    scenario: Scenario,
    start_operator: Callable[..., OperatorProcess],
    store: ArtifactStore,
    endpoints: harness.Endpoints,
) -> None:
    candidate_uri = write_candidate(store, scenario.namespace, "v2", accuracy=0.93)
    sha = store.read_manifest(candidate_uri, "v2").file("model.joblib").sha256  # type: ignore[union-attr]
    before = deployment(scenario)
    operator = start_operator()
    spec = spec_for(scenario, **{"retrain.podAnnotations": trainer_report(store, candidate_uri)})
    scenario.apply_loop(spec, annotations={RETRAIN_REQUEST_ANNOTATION: "go"})

    status = wait_status(scenario, lambda s: s.get("currentModel", {}).get("version") == "v2")
    env, version = served(scenario)
    assert env[ENV_MODEL_URI] == candidate_uri
    assert env[ENV_MODEL_SHA256] == sha
    assert version == "v2"

    after = deployment(scenario)
    container_before, container_after = (
        d["spec"]["template"]["spec"]["containers"][0] for d in (before, after)
    )
    assert container_after["image"] == container_before["image"]
    assert after["spec"]["replicas"] == before["spec"]["replicas"]
    managers = {m["manager"]: m for m in after["metadata"]["managedFields"]}
    ours = json.dumps(managers["feedbackloop-operator"]["fieldsV1"])
    assert '"k:{\\"name\\":\\"MODEL_URI\\"}"' in ours
    assert '"k:{\\"name\\":\\"MODEL_SHA256\\"}"' in ours
    assert f'"f:{MODEL_VERSION_ANNOTATION}"' in ours
    assert "f:image" not in ours
    assert "f:replicas" not in ours
    gitops = json.dumps(managers[GITOPS_MANAGER]["fieldsV1"])
    assert "f:image" in gitops  # the other manager keeps what it owned

    body = urllib.request.urlopen(operator.metrics_url, timeout=5).read().decode()  # noqa: S310 - loopback
    labels = f'loop="{LOOP}",namespace="{scenario.namespace}"'
    assert f'feedbackloop_rollouts_finished_total{{{labels},outcome="RolledOut"}} 1.0' in body
    gate_labels = f'loop="{LOOP}",metric="accuracy",namespace="{scenario.namespace}",verdict="Passed"'
    assert f"feedbackloop_gate_verdicts_total{{{gate_labels}}} 2.0" in body
    assert_promtool_clean(endpoints, body)  # after a retrain, its gates and a rollout
    assert status["currentModel"]["sha256"] == sha
    assert status["currentModel"]["metrics"] == {"accuracy": 0.93}
    assert "candidateModel" not in status
    assert "rollout" not in status
    assert scenario.condition("RolledOut")["reason"] == "AnalysisSuccessful"
    assert scenario.condition("Degraded")["status"] == "False"
    entry = next(e for e in status["history"] if e["version"] == "v2")
    assert (entry["outcome"], entry["gates"], entry["analysis"]) == ("RolledOut", "Passed", "Successful")
    for moment in (
        "startedAt",
        "retrainedAt",
        "validatedAt",
        "rolloutStartedAt",
        "rolledOutAt",
        "finishedAt",
    ):
        assert moment in entry


def test_failing_gates_never_patch_the_deployment(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess], store: ArtifactStore
) -> None:
    uri = write_candidate(store, scenario.namespace, "v2", accuracy=0.81)
    generation = deployment(scenario)["metadata"]["generation"]
    start_operator()
    scenario.apply_loop(
        spec_for(scenario, **{"retrain.podAnnotations": trainer_report(store, uri)}),
        annotations={RETRAIN_REQUEST_ANNOTATION: "go"},
    )

    validated = scenario.wait_condition("Validated", "False", "GatesFailed")
    assert "accuracy 0.81 < min 0.85" in validated["message"]
    status = scenario.loop()["status"]
    assert status["rejectedVersions"] == ["v2"]
    assert [g["verdict"] for g in status["candidateModel"]["gates"]] == ["Failed", "Passed"]
    time.sleep(2)
    assert deployment(scenario)["metadata"]["generation"] == generation
    assert served(scenario) == ({ENV_MODEL_URI: scenario.initial_uri, ENV_MODEL_SHA256: "1" * 64}, "v1")


def test_failed_analysis_rolls_back_to_the_exact_previous_env(
    scenario: Scenario,
    start_operator: Callable[..., OperatorProcess],
    store: ArtifactStore,
    exporter: ModelExporter,
) -> None:
    uri = write_candidate(store, scenario.namespace, "v2", accuracy=0.93)
    original = served(scenario)
    start_operator()
    scenario.apply_loop(
        spec_for(scenario, **{"retrain.podAnnotations": trainer_report(store, uri)}),
        annotations={RETRAIN_REQUEST_ANNOTATION: "go"},
    )
    wait_status(scenario, lambda s: "rollout" in s)
    exporter.set(scenario.model, accuracy=0.5)  # the new version does badly in production

    degraded = scenario.wait_condition("Degraded", "True", "AnalysisFailed", timeout=60)
    assert "v2" in degraded["message"]
    status = wait_status(scenario, lambda s: "rollout" not in s)
    assert scenario.condition("RolledOut")["reason"] == "RolledBack"
    assert served(scenario) == original
    assert status["rejectedVersions"] == ["v2"]
    assert status["currentModel"]["version"] == "v1"
    assert next(e for e in status["history"] if e["version"] == "v2")["outcome"] == "RolledBack"
    assert any(e["reason"] == "RolledBack" for e in scenario.events())


def test_progress_deadline_rolls_back(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess], store: ArtifactStore
) -> None:
    # Pods of a MODEL_URI carrying the marker never become ready in this cluster.
    prefix = f"{harness.NEVER_READY_MARKER}/"
    uri = write_version(store, scenario, "v2", accuracy=0.93, prefix=prefix)
    original = served(scenario)
    start_operator()
    changes = {"artifacts.prefix": prefix, "rollout.progressDeadline": "15s"}
    spec = spec_for(scenario, **changes, **{"retrain.podAnnotations": trainer_report(store, uri)})
    scenario.apply_loop(spec, annotations={RETRAIN_REQUEST_ANNOTATION: "go"})

    scenario.wait_condition("Degraded", "True", "ProgressDeadlineExceeded", timeout=90)
    wait_status(scenario, lambda s: "rollout" not in s, timeout=60)
    assert scenario.condition("RolledOut")["reason"] == "RolledBack"
    assert served(scenario) == original
    scenario.kubectl("rollout", "status", "deployment/churn-server", "--timeout=60s")


def test_recommend_mode_waits_for_a_manual_promote(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess], store: ArtifactStore
) -> None:
    candidate_uri = write_candidate(store, scenario.namespace, "v2", accuracy=0.93)
    start_operator()
    report = trainer_report(store, candidate_uri)
    spec = spec_for(scenario, mode="Recommend", **{"retrain.podAnnotations": report})
    scenario.apply_loop(spec, annotations={RETRAIN_REQUEST_ANNOTATION: "go"})
    status = wait_status(scenario, lambda s: s.get("recommendedVersion") == "v2")
    time.sleep(2)
    assert served(scenario)[1] == "v1"  # nothing patched

    scenario.kubectl("annotate", "fbl", LOOP, f"{PROMOTE_ANNOTATION}=v7")
    refused = scenario.wait_condition("RolledOut", "False", "PromotionRefused")
    assert "not a validated candidate" in refused["message"]

    scenario.kubectl("annotate", "fbl", LOOP, f"{PROMOTE_ANNOTATION}=v2", "--overwrite")
    status = wait_status(scenario, lambda s: s.get("currentModel", {}).get("version") == "v2")
    assert served(scenario)[0][ENV_MODEL_URI] == candidate_uri
    assert status["handledPromoteRequest"] == "v2"


def test_manual_rollback_to_a_stored_version(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess], store: ArtifactStore
) -> None:
    v0_uri = write_version(store, scenario, "v0", accuracy=0.9)
    sha = store.read_manifest(v0_uri, "v0").file("model.joblib").sha256  # type: ignore[union-attr]
    start_operator()
    scenario.apply_loop(spec_for(scenario))
    scenario.wait_condition("Healthy", "True")

    scenario.kubectl("annotate", "fbl", LOOP, f"{ROLLBACK_ANNOTATION}=v0")
    status = wait_status(scenario, lambda s: s.get("currentModel", {}).get("version") == "v0")
    assert served(scenario) == ({ENV_MODEL_URI: v0_uri, ENV_MODEL_SHA256: sha}, "v0")
    assert status["handledRollbackRequest"] == "v0"

    scenario.kubectl("annotate", "fbl", LOOP, f"{ROLLBACK_ANNOTATION}=v9", "--overwrite")
    refused = scenario.wait_condition("RolledOut", "False", "RollbackRefused")
    assert "manifest.json is missing" in refused["message"]


def test_deleting_a_loop_mid_rollout_cleans_its_job_and_leaves_deployment_and_artifacts(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess], store: ArtifactStore, s3: Any
) -> None:
    prefix = f"{harness.NEVER_READY_MARKER}/"
    uri = write_version(store, scenario, "v2", accuracy=0.93, prefix=prefix)
    start_operator()
    changes = {"artifacts.prefix": prefix, "rollout.progressDeadline": "10m"}
    spec = spec_for(scenario, **changes, **{"retrain.podAnnotations": trainer_report(store, uri)})
    scenario.apply_loop(spec, annotations={RETRAIN_REQUEST_ANNOTATION: "go"})
    wait_status(scenario, lambda s: s.get("rollout", {}).get("phase") == "Progressing")
    assert scenario.job_names() == [f"{LOOP}-retrain-2"]
    env_during = served(scenario)

    scenario.kubectl("delete", "fbl", LOOP, "--wait=true", "--timeout=60s")
    remaining = wait_until(scenario.job_names, lambda names: names == [], timeout=60)
    assert remaining == []  # the owned Job was garbage-collected
    time.sleep(2)
    assert served(scenario) == env_during  # the Deployment is left as it is
    bucket, key = uri[len("s3://") :].split("/", 1)
    keys = {item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix=key)["Contents"]}
    assert {key + "manifest.json", key + "model.joblib"} <= keys


def test_deleting_a_loop_mid_retrain_removes_its_job(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator()
    holding = spec_for(scenario, **{"retrain.podAnnotations": {harness.KWOK_OUTCOME_ANNOTATION: "hold"}})
    scenario.apply_loop(holding, annotations={RETRAIN_REQUEST_ANNOTATION: "go"})
    scenario.wait_jobs([f"{LOOP}-retrain-2"])
    scenario.kubectl("delete", "fbl", LOOP, "--wait=true", "--timeout=60s")
    assert wait_until(scenario.job_names, lambda names: names == [], timeout=60) == []
