"""The FeedbackLoop CRD as the real kube-apiserver serves it: defaults, schema and CEL admission, explain,
printer columns and the status subresource."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import yaml

import harness
from feedbackloop.api import API_VERSION, CRD_NAME, GROUP
from harness import wait_until

pytestmark = pytest.mark.integration

CRD_PATH = harness.REPO / "crds" / "feedbackloop.yaml"
EXAMPLE_PATH = harness.REPO / "manifests" / "examples" / "feedbackloop.yaml"
CRD_NAME = CRD_NAME

Mutation = Callable[[dict[str, Any]], None]
EXAMPLE: dict[str, Any] = yaml.safe_load(EXAMPLE_PATH.read_text())


def load_crd() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return loaded


def example() -> dict[str, Any]:
    return copy.deepcopy(EXAMPLE)


def apply(cluster: harness.Cluster, namespace: str, obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps(obj), check=False)


def get_json(cluster: harness.Cluster, namespace: str, name: str = "churn") -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        cluster.kubectl("get", "fbl", name, "-n", namespace, "-o", "json").stdout
    )
    return loaded


def patch_status(
    cluster: harness.Cluster, namespace: str, status: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(
        "patch", "fbl", "churn", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}), check=False,
    )  # fmt: skip


def schema_at(crd: dict[str, Any], *path: str) -> dict[str, Any]:
    node: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part in path:
        node = node["properties"][part]
    return node


def _set(path: str, value: Any) -> Mutation:
    """A mutation setting a dotted path (list indexes as numbers) of the object to value."""

    def mutate(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = obj
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _delete(path: str) -> Mutation:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = obj
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[last]

    return mutate


def _both(*mutations: Mutation) -> Mutation:
    def mutate(obj: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(obj)

    return mutate


def missing_from(expected: Any, stored: Any, path: str = "") -> list[str]:
    """Paths of `expected` that `stored` lacks or changed: a schema that prunes a field shows up here."""
    if isinstance(expected, dict) and isinstance(stored, dict):
        return [
            p
            for key, value in expected.items()
            for p in missing_from(value, stored.get(key), f"{path}.{key}")
        ]
    if isinstance(expected, list) and isinstance(stored, list) and len(expected) == len(stored):
        return [
            p
            for i, (e, s) in enumerate(zip(expected, stored, strict=True))
            for p in missing_from(e, s, f"{path}[{i}]")
        ]
    return [] if expected == stored else [path]


@pytest.mark.usefixtures("crd")
def test_example_is_accepted_whole_and_defaults_are_applied(cluster: harness.Cluster, namespace: str) -> None:
    applied = apply(cluster, namespace, example())
    assert applied.returncode == 0, applied.stderr
    assert missing_from(EXAMPLE["spec"], get_json(cluster, namespace)["spec"], "spec") == []

    obj = example()
    obj["metadata"]["name"] = "churn-defaults"
    del obj["spec"]["mode"]
    del obj["spec"]["monitoring"]["noData"]
    del obj["spec"]["retrain"]["cooldown"]
    applied = apply(cluster, namespace, obj)
    assert applied.returncode == 0, applied.stderr

    spec = get_json(cluster, namespace, "churn-defaults")["spec"]
    assert spec["mode"] == "Auto"
    assert spec["suspend"] is False
    assert spec["monitoring"]["noData"] == "Hold"
    assert spec["retrain"]["cooldown"] == "1h"
    assert "maxCooldown" not in spec["retrain"]  # the operator's default (24h) applies
    assert spec["retrain"]["ttlSecondsAfterFinished"] == 86400
    assert spec["retrain"]["trainer"]["task"] == "classification"
    assert spec["retrain"]["data"]["holdoutStrategy"] == "Random"
    assert spec["retrain"]["data"]["seed"] == 0
    latency = spec["monitoring"]["metrics"][1]
    assert (latency["minSamples"], latency["for"], latency["action"]) == (0, "5m", "Alert")
    assert spec["validation"]["customMetrics"] == []
    assert spec["validation"]["gates"][0]["requireSignificance"] is False
    assert spec["rollout"]["analysis"]["inconclusiveLimit"] == 2
    assert spec["rollout"]["analysis"]["maxWait"] == "1h"
    # Free-form estimator params are kept as written, not pruned.
    assert spec["retrain"]["trainer"]["estimator"]["params"] == {"max_iter": 200, "learning_rate": 0.1}


@pytest.mark.usefixtures("crd")
def test_a_loop_naming_no_prometheus_is_admitted_for_the_operators_default(
    cluster: harness.Cluster, namespace: str
) -> None:
    obj = example()
    del obj["spec"]["prometheus"]
    applied = apply(cluster, namespace, obj)
    assert applied.returncode == 0, applied.stderr
    assert get_json(cluster, namespace)["spec"]["prometheus"] == {"timeout": "10s"}


@pytest.mark.usefixtures("crd")
def test_minimal_observe_loop_gets_nested_defaults(cluster: harness.Cluster, namespace: str) -> None:
    obj = {
        "apiVersion": API_VERSION,
        "kind": "FeedbackLoop",
        "metadata": {"name": "watch-only"},
        "spec": {
            "mode": "Observe",
            "target": {"deployment": "churn-server", "container": "server"},
            "prometheus": {"url": "http://prometheus.monitoring:9090"},
            "monitoring": {"metrics": [{"name": "up", "query": "min(up)", "threshold": {"min": 1}}]},
        },
    }
    applied = apply(cluster, namespace, obj)
    assert applied.returncode == 0, applied.stderr

    spec = get_json(cluster, namespace, "watch-only")["spec"]
    assert spec["prometheus"]["timeout"] == "10s"
    assert spec["monitoring"]["interval"] == "60s"
    assert spec["monitoring"]["labels"] == {}
    assert spec["validation"] == {"customMetrics": [], "gates": []}
    assert spec["rollout"] == {
        "strategy": "Replace",
        "stage": {
            "minSamples": 500,
            "maxDuration": "2h",
            "interval": "1m",
            "significance": 0.05,
            "weight": 0.1,
        },
        "progressDeadline": "10m",
        "rollbackOnFailure": True,
        "analysis": {
            "interval": "1m",
            "count": 5,
            "failureLimit": 1,
            "inconclusiveLimit": 2,
            "maxWait": "1h",
        },
    }
    assert "retrain" not in spec


# Each case: one mutation of the valid example, then what stderr must contain (the field path first).
REJECTED = [
    pytest.param(
        _delete("spec.target.deployment"),
        ["spec.target.deployment", "Required value"],
        id="missing-deployment",
    ),
    pytest.param(_set("spec.mode", "Manual"), ["spec.mode", "Unsupported value"], id="bad-mode"),
    pytest.param(
        _set("spec.monitoring.interval", "5s"),
        ["spec.monitoring.interval", "monitoring.interval must be at least 10s"],
        id="interval-5s",
    ),
    pytest.param(
        _set("spec.monitoring.interval", "ten minutes"),
        ["spec.monitoring.interval", "should match"],
        id="interval-not-a-duration",
    ),
    pytest.param(
        _set("spec.monitoring.metrics.0.threshold", {}),
        ["spec.monitoring.metrics[0].threshold", "threshold needs at least one of min or max"],
        id="threshold-without-bounds",
    ),
    pytest.param(
        _set("spec.monitoring.metrics.0.threshold", {"min": 0.9, "max": 0.9}),
        ["spec.monitoring.metrics[0].threshold.min", "threshold.min must be less than threshold.max"],
        id="threshold-min-not-below-max",
    ),
    pytest.param(
        _set("spec.monitoring.metrics.1.threshold", {"max": 0.5, "clearMin": 0.1}),
        ["spec.monitoring.metrics[1].threshold.clearMin", "threshold.clearMin needs threshold.min"],
        id="clear-min-without-min",
    ),
    pytest.param(
        _set("spec.monitoring.metrics.0.threshold", {"min": 0.85, "clearMin": 0.8}),
        [
            "spec.monitoring.metrics[0].threshold.clearMin",
            "threshold.clearMin must be at least threshold.min",
        ],
        id="clear-min-below-min",
    ),
    pytest.param(
        _set("spec.monitoring.metrics.0.threshold", {"min": 0.85, "max": 0.99, "clearMin": 0.99}),
        [
            "spec.monitoring.metrics[0].threshold.clearMin",
            "threshold.clearMin must be less than threshold.max",
        ],
        id="clear-min-not-below-max",
    ),
    pytest.param(
        _set("spec.monitoring.metrics.0.threshold", {"min": 0.85, "clearMax": 0.9}),
        ["spec.monitoring.metrics[0].threshold.clearMax", "threshold.clearMax needs threshold.max"],
        id="clear-max-without-max",
    ),
    pytest.param(
        _set("spec.monitoring.metrics.1.threshold", {"max": 0.5, "clearMax": 0.6}),
        ["spec.monitoring.metrics[1].threshold.clearMax", "threshold.clearMax must be at most threshold.max"],
        id="clear-max-above-max",
    ),
    pytest.param(
        _set("spec.monitoring.metrics.1.threshold", {"min": 0.1, "max": 0.5, "clearMax": 0.1}),
        [
            "spec.monitoring.metrics[1].threshold.clearMax",
            "threshold.clearMax must be greater than threshold.min",
        ],
        id="clear-max-not-above-min",
    ),
    pytest.param(
        _both(
            _delete("spec.monitoring.metrics.0.samplesQuery"),
            _set("spec.monitoring.metrics.0.minSamples", 50),
        ),
        ["spec.monitoring.metrics[0].minSamples", "minSamples needs samplesQuery"],
        id="min-samples-without-samples-query",
    ),
    pytest.param(
        _set("spec.monitoring.metrics.1.name", "accuracy"),
        ["spec.monitoring.metrics", "monitoring.metrics names must be unique", "duplicated: accuracy"],
        id="duplicate-metric-names",
    ),
    pytest.param(
        _set("spec.validation.gates.0.metric", "precision"),
        [
            "spec.validation.gates",
            "validation.gates[].metric must be a built-in trainer metric",
            "unknown: precision",
        ],
        id="gate-unknown-metric",
    ),
    pytest.param(
        _set("spec.validation.gates.0", {"metric": "accuracy"}),
        ["spec.validation.gates[0]", "a validation gate needs at least one of min, max or minDeltaVsCurrent"],
        id="gate-without-bound",
    ),
    pytest.param(
        _set("spec.rollout.analysis.metrics", ["accuracy", "latency"]),
        [
            "spec.rollout.analysis.metrics",
            "rollout.analysis.metrics may only name metrics defined in spec.monitoring.metrics",
            "undefined: latency",
        ],
        id="analysis-metric-undefined",
    ),
    pytest.param(
        _set("spec.rollout.analysis.interval", "5s"),
        ["spec.rollout.analysis.interval", "rollout.analysis.interval must be at least 10s"],
        id="analysis-interval-5s",
    ),
    pytest.param(
        _set("spec.monitoring.labels", {"model": 'churn"} or vector(1) #'}),
        ["spec.monitoring.labels", "prevent PromQL injection", "offending key: model"],
        id="label-value-promql-injection",
    ),
    pytest.param(
        _set("spec.monitoring.labels", {"model-name": "churn"}),
        ["spec.monitoring.labels", "monitoring.labels keys must match", "offending key: model-name"],
        id="label-key-not-an-identifier",
    ),
    pytest.param(
        _set("spec.retrain.data.training", "http://data/churn/train/"),
        ["spec.retrain.data.training", "should match"],
        id="training-not-s3",
    ),
    pytest.param(
        _set("spec.prometheus.timeout", "5m"),
        ["spec.prometheus.timeout", "prometheus.timeout must be at most 60s"],
        id="prometheus-timeout-5m",
    ),
    pytest.param(
        _set("spec.prometheus.url", "http://admin:hunter2@prometheus.monitoring:9090"),
        ["spec.prometheus.url", "spec.prometheus.url must not carry user info (user:pass@)"],
        id="prometheus-url-userinfo",
    ),
    pytest.param(
        _set("spec.prometheus.url", "http://169.254.169.254/latest/meta-data?"),
        ["spec.prometheus.url", "spec.prometheus.url must not have a query (?...)"],
        id="prometheus-url-trailing-query",
    ),
    pytest.param(
        _set("spec.prometheus.url", "http://internal-admin:8080/delete-all#"),
        ["spec.prometheus.url", "spec.prometheus.url must not have a fragment (#...)"],
        id="prometheus-url-trailing-fragment",
    ),
    pytest.param(
        _set("spec.prometheus.url", "http://prometheus:9090:x"),
        ["spec.prometheus.url", "spec.prometheus.url must be a valid absolute URL"],
        id="prometheus-url-not-a-url",
    ),
    pytest.param(
        _set("metadata.name", "churn-" + "x" * 40),
        ["metadata.name: Invalid value", "metadata.name must be at most 45 characters"],
        id="name-longer-than-45",
    ),
    pytest.param(
        _set("spec.retrain.cooldown", "-1h"),
        ["spec.retrain.cooldown", "should match"],
        id="negative-cooldown",
    ),
    pytest.param(
        _set("spec.retrain.maxCooldown", "30m"),
        ["spec.retrain.maxCooldown", "retrain.maxCooldown must be at least retrain.cooldown"],
        id="max-cooldown-below-cooldown",
    ),
    pytest.param(
        _both(_delete("spec.retrain.cooldown"), _set("spec.retrain.maxCooldown", "59m")),
        ["spec.retrain.maxCooldown", "retrain.maxCooldown must be at least retrain.cooldown"],
        id="max-cooldown-below-the-default-cooldown",
    ),
    pytest.param(
        _set("spec.retrain.maxCooldown", "a day"),
        ["spec.retrain.maxCooldown", "should match"],
        id="max-cooldown-not-a-duration",
    ),
    pytest.param(
        _set("spec.retrain.data.widerRows", 500),
        ["spec.retrain.data.widerRows", "retrain.data.widerRows must be 0 or more than retrain.data.minRows"],
        id="wider-rows-not-above-the-default-min-rows",
    ),
    pytest.param(
        _set("spec.retrain.data.widerRows", -1),
        ["spec.retrain.data.widerRows", "should be greater than or equal to 0"],
        id="wider-rows-negative",
    ),
    pytest.param(
        _set("spec.retrain.data.holdoutFraction", 1.5),
        ["spec.retrain.data.holdoutFraction", "should be less than 1"],
        id="holdout-fraction-1.5",
    ),
    pytest.param(
        _set("spec.retrain.data.holdoutFraction", 0),
        ["spec.retrain.data.holdoutFraction", "should be greater than 0"],
        id="holdout-fraction-0",
    ),
    pytest.param(
        _set("spec.retrain.trainer.estimator.class", "os.system"),
        ["spec.retrain.trainer.estimator.class", "should match"],
        id="estimator-not-sklearn",
    ),
    pytest.param(
        _delete("spec.retrain"),
        ["spec.retrain", "spec.retrain and spec.artifacts are required unless spec.mode is Observe"],
        id="auto-without-retrain",
    ),
    pytest.param(
        _set("spec.artifacts.prefix", "churn/../other/"),
        ["spec.artifacts.prefix", "artifacts.prefix must not contain . or .. path segments"],
        id="prefix-dot-dot",
    ),
    pytest.param(
        _set("spec.target.container", "Server_1"),
        ["spec.target.container", "should match"],
        id="bad-container",
    ),
    pytest.param(
        _set("spec.monitoring.metrics.0.minSamples", -1),
        ["spec.monitoring.metrics[0].minSamples", "should be greater than or equal to 0"],
        id="negative-min-samples",
    ),
    pytest.param(
        _set("spec.monitoring.metrics", []),
        ["spec.monitoring.metrics", "should have at least 1"],
        id="no-metrics",
    ),
    pytest.param(
        _set("spec.rollout.strategy", "Canary"),
        ["spec.rollout.strategy", "Unsupported value"],
        id="unknown-strategy",
    ),
    pytest.param(
        _both(_set("spec.rollout.strategy", "Shadow"), _set("spec.rollout.stage", {"requestKey": "X-User"})),
        ["spec.rollout.stage.requestKey", "rollout.stage.requestKey applies to strategy Split only"],
        id="request-key-outside-split",
    ),
    pytest.param(
        _set("spec.rollout.stage", {"requestKey": "X User"}),
        ["spec.rollout.stage.requestKey", "should match"],
        id="request-key-not-a-header",
    ),
    pytest.param(
        _set("spec.rollout.stage", {"weight": 1}),
        ["spec.rollout.stage.weight", "should be less than 1"],
        id="weight-1",
    ),
    pytest.param(
        _set("spec.rollout.stage", {"significance": 0.5}),
        ["spec.rollout.stage.significance", "should be less than 0.5"],
        id="significance-0.5",
    ),
    pytest.param(
        _set("spec.rollout.stage", {"maxDuration": "30s"}),
        ["spec.rollout.stage.maxDuration", "rollout.stage.maxDuration must be at least 1m"],
        id="max-duration-30s",
    ),
    pytest.param(
        _set("spec.rollout.stage", {"minSamples": 5}),
        ["spec.rollout.stage.minSamples", "should be greater than or equal to 10"],
        id="min-samples-5",
    ),
    pytest.param(
        _set("spec.rollout.stage", {"labels": {"model": 'churn"} or vector(1)'}}),
        ["spec.rollout.stage.labels", "rollout.stage.labels values may hold only"],
        id="stage-label-injection",
    ),
]


@pytest.mark.usefixtures("crd")
@pytest.mark.parametrize(("mutate", "expected"), REJECTED)
def test_malformed_loop_is_rejected_naming_the_field(
    cluster: harness.Cluster, namespace: str, mutate: Mutation, expected: list[str]
) -> None:
    obj = example()
    mutate(obj)
    rejected = apply(cluster, namespace, obj)
    assert rejected.returncode != 0, "the apiserver accepted a malformed FeedbackLoop"
    for text in expected:
        assert text in rejected.stderr


ACCEPTED = [
    pytest.param(
        _both(
            _set("spec.validation.customMetrics", ["recall_at_10"]),
            _set("spec.validation.gates.0.metric", "recall_at_10"),
        ),
        id="gate-on-custom-metric",
    ),
    pytest.param(_set("spec.validation.gates.0.metric", "roc_auc"), id="gate-on-built-in-metric"),
    pytest.param(
        _both(_delete("spec.retrain"), _delete("spec.artifacts"), _set("spec.mode", "Observe")),
        id="observe-without-retrain",
    ),
    pytest.param(_set("spec.monitoring.interval", "10s"), id="interval-exactly-10s"),
    pytest.param(_set("spec.monitoring.interval", "1h30m"), id="interval-compound"),
    pytest.param(_set("spec.prometheus.timeout", "60s"), id="timeout-exactly-60s"),
    pytest.param(_set("spec.prometheus.timeout", "1.5s"), id="timeout-fractional"),
    pytest.param(
        _set("spec.prometheus.url", "https://prom.example:443/tenant/a/"), id="prometheus-url-with-path"
    ),
    pytest.param(_delete("spec.prometheus.url"), id="prometheus-url-unset-uses-the-default"),
    pytest.param(_set("spec.retrain.cooldown", "0s"), id="no-cooldown"),
    pytest.param(_set("spec.retrain.maxCooldown", "1h"), id="max-cooldown-equal-to-cooldown-no-backoff"),
    pytest.param(_set("spec.retrain.maxCooldown", "1.5h"), id="max-cooldown-fractional"),
    pytest.param(_set("spec.retrain.data.widerRows", 0), id="wider-rows-off"),
    pytest.param(
        _both(_set("spec.retrain.data.minRows", 100), _set("spec.retrain.data.widerRows", 101)),
        id="wider-rows-just-above-min-rows",
    ),
    # No CRD default for maxCooldown, so a cooldown above 24h stays valid without one.
    pytest.param(_set("spec.retrain.cooldown", "48h"), id="cooldown-above-the-default-max-cooldown"),
    pytest.param(_set("metadata.name", "c" * 45), id="name-of-45"),
    pytest.param(
        _set("spec.monitoring.labels", {"model": "churn", "_env": "prod-eu:1/a.b", "empty": ""}),
        id="label-values-allowed",
    ),
    pytest.param(_delete("spec.rollout.analysis.metrics"), id="analysis-all-metrics"),
    pytest.param(
        _both(_set("spec.rollout.strategy", "Shadow"), _set("spec.rollout.stage", {"minSamples": 200})),
        id="shadow",
    ),
    pytest.param(
        _both(
            _set("spec.rollout.strategy", "Split"),
            _set(
                "spec.rollout.stage", {"weight": 0.2, "requestKey": "X-User-Id", "labels": {"app": "churn"}}
            ),
        ),
        id="split-with-request-key",
    ),
    pytest.param(
        _set("spec.monitoring.metrics.0.threshold", {"min": 0.85, "clearMin": 0.85}), id="clear-min-at-min"
    ),
    pytest.param(
        _set(
            "spec.monitoring.metrics.1.threshold",
            {"min": 0.01, "max": 0.5, "clearMin": 0.02, "clearMax": 0.4},
        ),
        id="clear-min-and-clear-max",
    ),
]


@pytest.mark.usefixtures("crd")
@pytest.mark.parametrize("mutate", ACCEPTED)
def test_valid_variant_is_accepted(cluster: harness.Cluster, namespace: str, mutate: Mutation) -> None:
    obj = example()
    mutate(obj)
    applied = apply(cluster, namespace, obj)
    assert applied.returncode == 0, applied.stderr


def test_explain_shows_the_metrics_description(cluster: harness.Cluster, crd: dict[str, Any]) -> None:
    description = schema_at(crd, "spec", "monitoring", "metrics")["description"]
    expected = " ".join(description.split())

    # Discovery and the OpenAPI document can lag the Established condition by a moment.
    def explain() -> Any:
        return cluster.kubectl("explain", "fbl.spec.monitoring.metrics", check=False)

    result = wait_until(
        explain, lambda r: r.returncode == 0 and expected in " ".join(r.stdout.split()), timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert expected in " ".join(result.stdout.split())
    assert "threshold" in result.stdout


@pytest.mark.usefixtures("crd")
def test_printer_columns_show_the_status(cluster: harness.Cluster, namespace: str) -> None:
    applied = apply(cluster, namespace, example())
    assert applied.returncode == 0, applied.stderr

    header = cluster.kubectl("get", "fbl", "churn", "-n", namespace).stdout.splitlines()[0]
    columns = ("NAME", "MODE", "HEALTHY", "VERSION", "PHASE", "READY", "LAST RETRAIN", "AGE")
    assert [header.index(column) for column in columns] == sorted(header.index(column) for column in columns)

    status = {
        "observedGeneration": 1,
        "phase": "Monitoring",
        "conditions": [
            {
                "type": "Healthy",
                "status": "True",
                "reason": "WithinThresholds",
                "message": "all metrics within thresholds",
                "lastTransitionTime": "2026-01-02T03:04:05Z",
                "observedGeneration": 1,
            },
            {
                "type": "Ready",
                "status": "False",
                "reason": "ArtifactBucketNotFound",
                "message": "artifact store: bucket models does not exist",
                "lastTransitionTime": "2026-01-02T03:04:05Z",
                "observedGeneration": 1,
            },
        ],
        "currentModel": {"version": "v3", "metrics": {"accuracy": 0.91}},
        "lastRetrainTime": "2026-01-02T03:04:05Z",
    }
    patched = patch_status(cluster, namespace, status)
    assert patched.returncode == 0, patched.stderr
    row = cluster.kubectl("get", "fbl", "churn", "-n", namespace, "--no-headers").stdout.split()
    assert row[:6] == ["churn", "Auto", "True", "v3", "Monitoring", "False"]


NOW = "2026-01-02T03:04:05.123456+00:00"
FULL_STATUS: dict[str, Any] = {
    "observedGeneration": 1,
    "phase": "Validating",
    "conditions": [
        {"type": kind, "status": "Unknown", "reason": "Pending", "message": "", "lastTransitionTime": NOW}
        for kind in ("Ready", "Healthy", "Retraining", "Validated", "RolledOut", "Degraded")
    ],
    "lastEvaluation": {
        "time": NOW,
        "metrics": [
            {
                "name": "accuracy",
                "value": 0.8,
                "threshold": {"min": 0.85},
                "samples": 1200,
                "verdict": "Breached",
                "reason": "ThresholdBreached",
                "message": "0.8 < min 0.85",
                "breachingSince": NOW,
            },
            {
                "name": "p99_latency_seconds",
                "threshold": {"max": 0.5},
                "verdict": "NoData",
                "reason": "NoData",
            },
        ],
    },
    "currentModel": {
        "version": "v3",
        "uri": "s3://models/churn/ns/churn/v3/model.joblib",
        "sha256": "a" * 64,
        "metrics": {"accuracy": 0.88},
        "deployedAt": NOW,
    },
    "expectedModel": {
        "version": "v4",
        "uri": "s3://models/churn/ns/churn/v4/",
        "sha256": "c" * 64,
        "metrics": {"accuracy": 0.9},
        "deployedAt": NOW,
    },
    "candidateModel": {
        "version": "v4",
        "job": "churn-retrain-4",
        "uri": "s3://models/churn/ns/churn/v4/model.joblib",
        "sha256": "b" * 64,
        "trigger": "Metric",
        "metrics": {"accuracy": 0.9, "log_loss": 0.3},
        "currentMetrics": {"accuracy": 0.86, "log_loss": 0.35},
        "createdAt": NOW,
        "trainingWindow": "wider",
        "gates": [
            # pValue is not in the schema: gate entries keep extra evidence.
            {"metric": "accuracy", "value": 0.9, "threshold": ">= 0.85", "verdict": "Pass", "pValue": 0.01}
        ],
    },
    "activeRetrain": {
        "job": "churn-retrain-4",
        "version": "v4",
        "number": 4,
        "trigger": "Metric",
        "reason": "accuracy breached",
        "startedAt": NOW,
    },
    "retrainCount": 4,
    "lastRetrainTime": NOW,
    "lastScheduleTime": NOW,
    "waitingReason": "cooldown until 2026-01-02T04:04:05Z",
    "handledRetrainRequest": "2026-01-02T03:00:00Z",
    "rejectedVersions": ["v2"],
    "rollout": {
        "version": "v4",
        "kind": "Promotion",
        "phase": "Staging",
        "startedAt": NOW,
        "stage": {
            "strategy": "Split",
            "champion": "v3",
            "weight": 0.2,
            "liveSince": NOW,
            "deadline": NOW,
            "readAt": NOW,
            "championLabels": 400,
            "candidateLabels": 96,
            "championAnswers": 4000,
            "candidateAnswers": 1000,
            "championValue": 0.7,
            "candidateValue": 0.9,
            "test": "TwoProportionZ",
            "pValue": 0.0004,
            "message": "",
        },
    },
    "history": [
        {
            "version": "v2",
            "trigger": "Schedule",
            "outcome": "Rejected",
            "startedAt": NOW,
            "gateFailures": ["x"],
            "stage": "Shadow Lose: accuracy 0.03 (candidate, 394 labels) vs 0.97 (v1, 394 labels)",
        }
    ],
}


@pytest.mark.usefixtures("crd")
def test_status_round_trips_a_full_merge_patch_without_pruning(
    cluster: harness.Cluster, namespace: str
) -> None:
    applied = apply(cluster, namespace, example())
    assert applied.returncode == 0, applied.stderr

    patched = patch_status(cluster, namespace, FULL_STATUS)
    assert patched.returncode == 0, patched.stderr
    assert get_json(cluster, namespace)["status"] == FULL_STATUS

    # A merge patch's null deletes a field; a null inside a replaced list is pruned, not refused.
    cleared = copy.deepcopy(FULL_STATUS["lastEvaluation"])
    cleared["metrics"][0]["value"] = None
    patched = patch_status(cluster, namespace, {"activeRetrain": None, "lastEvaluation": cleared})
    assert patched.returncode == 0, patched.stderr
    stored = get_json(cluster, namespace)["status"]
    assert "activeRetrain" not in stored
    assert "value" not in stored["lastEvaluation"]["metrics"][0]


@pytest.mark.usefixtures("crd")
def test_status_refuses_a_bad_condition_status(cluster: harness.Cluster, namespace: str) -> None:
    applied = apply(cluster, namespace, example())
    assert applied.returncode == 0, applied.stderr
    bad = patch_status(cluster, namespace, {"conditions": [{"type": "Ready", "status": "Maybe"}]})
    assert bad.returncode != 0
    assert "status.conditions[0].status" in bad.stderr


def _undescribed(node: dict[str, Any], path: str) -> list[str]:
    """Fields without a description; a list's items are described by the list itself."""
    missing = [] if "description" in node else [path]
    properties = {**node.get("properties", {}), **node.get("items", {}).get("properties", {})}
    for name, child in properties.items():
        missing += _undescribed(child, f"{path}.{name}")
    return missing


@pytest.mark.parametrize("part", ["spec", "status"])
def test_every_field_is_described(part: str) -> None:
    assert _undescribed(schema_at(load_crd(), part), part) == []


def test_crd_names_and_example_identity() -> None:
    spec = load_crd()["spec"]
    assert spec["names"] == {
        "kind": "FeedbackLoop",
        "listKind": "FeedbackLoopList",
        "plural": "feedbackloops",
        "singular": "feedbackloop",
        "shortNames": ["fbl"],
        "categories": ["mlops"],
    }
    assert (spec["group"], spec["scope"]) == (GROUP, "Namespaced")
    version = spec["versions"][0]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    metadata = example()["metadata"]
    assert metadata == {"name": "churn"}, "the example must stay namespace-less"
