"""The chart as `helm template` renders it (helm from the binary cache, offline): the optional NetworkPolicy,
the probes and the resources."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import harness

CHART = harness.REPO / "helm" / "feedbackloop-operator"
MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
PROMETHEUS = {**MONITORING, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
STORE = {"ipBlock": {"cidr": "10.20.0.0/24"}}
ENABLED = {
    "networkPolicy": {
        "enabled": True,
        "apiServer": {"cidrs": ["10.0.0.10/32", "10.0.0.11/32"], "port": 443},
        "prometheus": [
            {"to": [PROMETHEUS], "ports": [9090]},
            {"to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}], "ports": [80, 443]},
        ],
        "artifactStore": [{"to": [STORE], "ports": [9000]}],
        "metricsFrom": [MONITORING],
    }
}


@pytest.fixture(scope="module")
def helm() -> Path:
    path = harness.binary_paths()["helm"]
    if not os.access(path, os.X_OK):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"helm is missing ({path}): run `make cluster-build`")
        pytest.skip(f"helm is missing ({path}): run `make cluster-build`")
    return path


def template(
    helm: Path, tmp_path: Path, values: dict[str, Any] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values or {}))
    home = tmp_path / "helm"  # helm's cache and config stay in the test's directory, not in ~
    env = {**os.environ, **{f"HELM_{kind}_HOME": str(home / kind) for kind in ("CACHE", "CONFIG", "DATA")}}
    return subprocess.run(
        [str(helm), "template", "fbl", str(CHART), "-n", "ops", "-f", str(values_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=check,
    )


def objects(rendered: subprocess.CompletedProcess[str], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc and doc["kind"] == kind]


def test_no_network_policy_by_default(helm: Path, tmp_path: Path) -> None:
    assert objects(template(helm, tmp_path), "NetworkPolicy") == []


def test_the_network_policy_allows_exactly_the_configured_egress_and_the_two_ports_in(
    helm: Path, tmp_path: Path
) -> None:
    rendered = template(helm, tmp_path, ENABLED)
    [policy] = objects(rendered, "NetworkPolicy")
    [deployment] = objects(rendered, "Deployment")
    assert policy["metadata"]["namespace"] == "ops"
    spec = policy["spec"]
    # It selects the operator's pods, of every shard, and nothing else.
    selected = spec["podSelector"]["matchLabels"]
    assert selected.items() <= deployment["spec"]["selector"]["matchLabels"].items()
    assert set(deployment["spec"]["selector"]["matchLabels"]) - set(selected) == {"feedbackloop.dev/shard"}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [
        {"ports": [{"port": 8080, "protocol": "TCP"}], "from": [MONITORING]},
        {"ports": [{"port": 8081, "protocol": "TCP"}]},
    ]
    kube_dns = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    }
    assert spec["egress"] == [
        {
            "to": [{"ipBlock": {"cidr": "10.0.0.10/32"}}, {"ipBlock": {"cidr": "10.0.0.11/32"}}],
            "ports": [{"port": 443, "protocol": "TCP"}],
        },
        {"to": [PROMETHEUS], "ports": [{"port": 9090, "protocol": "TCP"}]},
        {
            "to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}],
            "ports": [{"port": 80, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}],
        },
        {"to": [STORE], "ports": [{"port": 9000, "protocol": "TCP"}]},
        {"to": [kube_dns], "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
    ]
    ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert {p["name"]: p["containerPort"] for p in ports} == {"metrics": 8080, "health": 8081}


def test_without_dns_or_metrics_peers_the_policy_has_no_dns_rule_and_any_source_may_scrape(
    helm: Path, tmp_path: Path
) -> None:
    values = {"networkPolicy": {**ENABLED["networkPolicy"], "metricsFrom": [], "dns": {"enabled": False}}}
    [policy] = objects(template(helm, tmp_path, values), "NetworkPolicy")
    assert policy["spec"]["ingress"][0] == {"ports": [{"port": 8080, "protocol": "TCP"}]}
    assert [rule["ports"][0]["port"] for rule in policy["spec"]["egress"]] == [443, 9090, 80, 9000]


def test_the_policy_refuses_to_render_without_the_api_server_or_with_an_open_destination(
    helm: Path, tmp_path: Path
) -> None:
    no_api_server = template(helm, tmp_path, {"networkPolicy": {"enabled": True}}, check=False)
    assert no_api_server.returncode != 0
    assert "networkPolicy.apiServer.cidrs is required" in no_api_server.stderr
    # An entry without `to` would allow every destination on its ports.
    open_entry = {"networkPolicy": {**ENABLED["networkPolicy"], "prometheus": [{"ports": [9090]}]}}
    refused = template(helm, tmp_path, open_entry, check=False)
    assert refused.returncode != 0
    assert "/networkPolicy/prometheus/0" in refused.stderr
    assert "missing property 'to'" in refused.stderr


def test_readiness_differs_from_liveness_and_ephemeral_storage_covers_tmp(helm: Path, tmp_path: Path) -> None:
    [deployment] = objects(template(helm, tmp_path), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    [tmp] = [v for v in pod["volumes"] if v["name"] == "tmp"]
    resources = container["resources"]
    assert resources["requests"]["ephemeral-storage"] == tmp["emptyDir"]["sizeLimit"] == "64Mi"
    assert resources["limits"] == {"cpu": "1", "memory": "512Mi", "ephemeral-storage": "256Mi"}


def operator_env(rendered: subprocess.CompletedProcess[str]) -> dict[str, str]:
    [deployment] = objects(rendered, "Deployment")
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    return {item["name"]: item.get("value", "") for item in env}


def test_the_allow_lists_default_to_any_and_pass_listed_values_through(helm: Path, tmp_path: Path) -> None:
    defaults = operator_env(template(helm, tmp_path))
    assert (defaults["FBL_PROMETHEUS_URLS"], defaults["FBL_ARTIFACT_BUCKETS"]) == ("*", "*")
    listed = {
        "prometheus": {"allowedUrls": ["http://prom-team-a.monitoring:8080", "https://prom.example/"]},
        "artifactStore": {"allowedBuckets": ["ml-models", "shared.models"]},
    }
    env = operator_env(template(helm, tmp_path, listed))
    assert env["FBL_PROMETHEUS_URLS"] == "http://prom-team-a.monitoring:8080,https://prom.example/"
    assert env["FBL_ARTIFACT_BUCKETS"] == "ml-models,shared.models"


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"prometheus": {"allowedUrls": ["http://admin:pw@prom:9090"]}}, "/prometheus/allowedUrls/0"),
        ({"prometheus": {"allowedUrls": ["http://prom:9090/?x=1"]}}, "/prometheus/allowedUrls/0"),
        ({"prometheus": {"allowedUrls": ["http://a:9090,http://b:9090"]}}, "/prometheus/allowedUrls/0"),
        ({"artifactStore": {"allowedBuckets": ["Team_Bucket"]}}, "/artifactStore/allowedBuckets/0"),
    ],
)
def test_the_schema_refuses_an_allow_list_entry_the_operator_would_refuse(
    helm: Path, tmp_path: Path, values: dict[str, Any], where: str
) -> None:
    refused = template(helm, tmp_path, values, check=False)
    assert refused.returncode != 0
    assert where in refused.stderr


def test_the_retrain_job_policy_is_strict_by_default_and_passes_listed_values_through(
    helm: Path, tmp_path: Path
) -> None:
    defaults = operator_env(template(helm, tmp_path))
    assert (defaults["FBL_CREDENTIALS_SECRET_PREFIX"], defaults["FBL_POD_METADATA_PREFIXES"]) == (
        "feedbackloop-",
        "",
    )
    listed = {
        "trainer": {"credentialsSecretPrefix": "", "podMetadataPrefixes": ["a.example/", "b.example/x-"]}
    }
    env = operator_env(template(helm, tmp_path, listed))
    assert (env["FBL_CREDENTIALS_SECRET_PREFIX"], env["FBL_POD_METADATA_PREFIXES"]) == (
        "",
        "a.example/,b.example/x-",
    )


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"trainer": {"credentialsSecretPrefix": "Team_"}}, "/trainer/credentialsSecretPrefix"),
        ({"trainer": {"podMetadataPrefixes": ["a.example/,b.example/"]}}, "/trainer/podMetadataPrefixes/0"),
    ],
)
def test_the_schema_refuses_a_retrain_job_policy_the_operator_would_refuse(
    helm: Path, tmp_path: Path, values: dict[str, Any], where: str
) -> None:
    refused = template(helm, tmp_path, values, check=False)
    assert refused.returncode != 0
    assert where in refused.stderr
