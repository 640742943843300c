"""The Helm chart and the kustomize base on the real API server: lint, server-side dry run, install,
upgrade, uninstall, Pod Security "restricted", and the two installs rendering the same objects."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

import harness
from feedbackloop.api import API_VERSION, CRD_NAME, KIND
from harness import wait_until
from install_helpers import CHART, RESTRICTED, Release, create_namespace, helm, objects
from loop_scenario import loop_spec

HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")
VARIANT_VALUES = [
    "--set", "watchNamespaces={team-a,team-b}",
    "--set", "metrics.serviceMonitor.enabled=true",
    "--set", "grafanaDashboard.enabled=true",
    "--set", "artifactStore.endpoint=http://minio.minio:9000",
    "--set", "artifactStore.credentials.existingSecret=artifact-reader",
]  # fmt: skip


def kinds(rendered: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    return sorted((o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in rendered)


def operator_env(deployment: dict[str, Any]) -> dict[str, Any]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_helm_lint_passes_for_default_and_variant_values(endpoints: harness.Endpoints) -> None:
    for values in ([], VARIANT_VALUES):
        done = helm(endpoints, "lint", "--strict", str(CHART), *values)
        assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


def test_values_schema_rejects_unknown_and_malformed_values(endpoints: harness.Endpoints) -> None:
    unknown = helm(endpoints, "template", "x", str(CHART), "--set", "replicas=2", check=False)
    assert unknown.returncode != 0
    assert "additional properties 'replicas' not allowed" in unknown.stderr
    bad_namespace = helm(
        endpoints, "template", "x", str(CHART), "--set", "watchNamespaces={Team_A}", check=False
    )
    assert bad_namespace.returncode != 0
    assert "/watchNamespaces/0" in bad_namespace.stderr


def test_variant_values_render_roles_per_namespace_monitor_dashboard_and_secret_refs(
    endpoints: harness.Endpoints,
) -> None:
    rendered = objects(helm(endpoints, "template", "fbl", str(CHART), "-n", "ops", *VARIANT_VALUES).stdout)
    found = kinds(rendered)
    assert ("Role", "fbl-feedbackloop-operator", "team-a") in found
    assert ("RoleBinding", "fbl-feedbackloop-operator", "team-b") in found
    assert not [k for k in found if k[0] in ("ClusterRole", "ClusterRoleBinding")]
    assert ("ServiceMonitor", "fbl-feedbackloop-operator", "ops") in found
    # The per-loop metrics carry their loop's namespace: kept, not renamed exported_namespace.
    monitor = next(o for o in rendered if o["kind"] == "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    dashboard = next(o for o in rendered if o["kind"] == "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["feedbackloop.json"])["panels"]
    env = operator_env(next(o for o in rendered if o["kind"] == "Deployment"))
    assert env["FBL_WATCH_NAMESPACES"] == "team-a,team-b"
    assert env["FBL_S3_ENDPOINT_URL"] == "http://minio.minio:9000"
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "artifact-reader", "key": "AWS_SECRET_ACCESS_KEY"}
    }


@pytest.mark.parametrize("variant", [False, True], ids=["defaults", "namespaced"])
def test_rendered_chart_is_accepted_by_the_api_server(cluster: harness.Cluster, variant: bool) -> None:
    namespace = create_namespace(cluster, "fbl-dry", RESTRICTED)
    watched = create_namespace(cluster, "fbl-dry-watched")
    values = ["--set", f"watchNamespaces={{{watched}}}"] if variant else []
    assert cluster.endpoints is not None
    rendered = helm(cluster.endpoints, "template", "fbl", str(CHART), "-n", namespace, *values).stdout
    # Every namespaced object names its namespace; the Roles live in the watched one.
    done = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input_text=rendered)
    assert "violate" not in done.stderr, done.stderr  # no Pod Security warning either
    assert "deployment.apps/fbl-feedbackloop-operator created (server dry run)" in done.stdout
    role = "role" if variant else "clusterrole"
    assert (
        f"{role}.rbac.authorization.k8s.io/fbl-feedbackloop-operator created (server dry run)" in done.stdout
    )


def test_the_network_policy_is_accepted_by_the_api_server(cluster: harness.Cluster) -> None:
    namespace = create_namespace(cluster, "fbl-np")
    assert cluster.endpoints is not None
    prometheus = [{"to": [{"podSelector": {"matchLabels": {"app": "prometheus"}}}], "ports": [9090]}]
    store = [{"to": [{"ipBlock": {"cidr": "10.20.0.0/24"}}], "ports": [9000]}]
    rendered = helm(
        cluster.endpoints, "template", "fbl", str(CHART), "-n", namespace,
        "--set", "networkPolicy.enabled=true", "--set", "networkPolicy.apiServer.cidrs={10.0.0.1/32}",
        "--set-json", f"networkPolicy.prometheus={json.dumps(prometheus)}",
        "--set-json", f"networkPolicy.artifactStore={json.dumps(store)}",
    ).stdout  # fmt: skip
    done = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input_text=rendered)
    assert "networkpolicy.networking.k8s.io/fbl-feedbackloop-operator created (server dry run)" in done.stdout


def normalised(obj: dict[str, Any]) -> dict[str, Any]:
    obj = json.loads(json.dumps(obj))
    metadata = obj["metadata"]
    for key in HELM_ONLY_LABELS:
        metadata.get("labels", {}).pop(key, None)
    metadata.get("annotations", {}).pop("helm.sh/resource-policy", None)
    for field in ("labels", "annotations"):
        if metadata.get(field) == {}:
            del metadata[field]
    return obj


def by_kind_and_name(items: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): normalised(o) for o in items}


def test_kustomize_base_renders_the_same_objects_as_the_chart_defaults(endpoints: harness.Endpoints) -> None:
    chart = objects(
        helm(endpoints, "template", "feedbackloop-operator", str(CHART), "-n", "feedbackloop-system").stdout
    )
    kustomized = objects(
        subprocess.run(
            [str(endpoints.bin_dir / "kubectl"), "kustomize", str(harness.REPO / "manifests")],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    namespaces = [o for o in kustomized if o["kind"] == "Namespace"]
    assert [n["metadata"]["name"] for n in namespaces] == [
        "feedbackloop-system"
    ]  # helm gets --create-namespace
    expected = by_kind_and_name(chart)
    for obj in kustomized:
        if obj["kind"].startswith("ValidatingAdmissionPolicy"):
            # kustomize's schema misses that these are cluster-scoped; the API server drops the namespace.
            obj["metadata"].pop("namespace", None)
    got = by_kind_and_name([o for o in kustomized if o["kind"] != "Namespace"])
    assert sorted(got) == sorted(expected)
    for key, obj in expected.items():
        assert got[key] == obj, f"{key} differs: run `make manifests`"
    # CRD, SA, ClusterRole and binding, Lease Role and binding, Service, Deployment, PDB, the pod-update
    # admission policy and its binding: nothing missed.
    assert len(expected) == 11


def test_kustomize_install_creates_an_operator_pod_under_pod_security_restricted(
    cluster: harness.Cluster,
) -> None:
    done = cluster.kubectl("apply", "-k", str(harness.REPO / "manifests"))
    try:
        assert "violate" not in done.stderr, done.stderr
        pods = wait_until(
            lambda: json.loads(
                cluster.kubectl("get", "pods", "-n", "feedbackloop-system", "-o", "json").stdout
            )["items"],
            lambda items: len(items) >= 2,
            timeout=60,
        )
        # A leader and a standby.
        assert [p["spec"]["serviceAccountName"] for p in pods] == ["feedbackloop-operator"] * 2
        replica_sets = json.loads(
            cluster.kubectl("get", "rs", "-n", "feedbackloop-system", "-o", "json").stdout
        )
        failures = [c for rs in replica_sets["items"] for c in rs["status"].get("conditions", [])]
        assert failures == []  # a Pod Security rejection shows here as ReplicaFailure
    finally:
        # Not `delete -k`: that would delete the CRD, and every FeedbackLoop, for the rest of the session.
        cluster.kubectl("delete", "namespace", "feedbackloop-system", "--wait=false", check=False)
        cluster.kubectl(
            "delete", "clusterrole,clusterrolebinding", "feedbackloop-operator", "--ignore-not-found"
        )


def test_helm_install_upgrade_uninstall_keeps_the_crd_and_the_loops(
    cluster: harness.Cluster,
    endpoints: harness.Endpoints,
    install_chart: Callable[..., Release],
    namespace: str,
) -> None:
    release = install_chart("--wait", "--timeout", "90s")

    def deployment() -> dict[str, Any]:
        got = cluster.kubectl(
            "get", "deployment", release.service_account, "-n", release.namespace, "-o", "json"
        )
        found: dict[str, Any] = json.loads(got.stdout)
        return found

    first = deployment()
    assert first["status"].get("readyReplicas") == 2  # its pods passed Pod Security "restricted"
    assert operator_env(first)["FBL_TICK_SECONDS"] == "5"
    crd = json.loads(cluster.kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release.name

    loop = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "kept", "namespace": namespace},
        "spec": {**loop_spec("kept"), "prometheus": {"url": "http://prometheus:9090"}},
    }
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(loop))

    helm(
        endpoints, "upgrade", release.name, str(CHART), "-n", release.namespace, "--reuse-values",
        "--set", "operator.tickSeconds=2", "--set", "trainer.images={registry.example/trainer:2}",
    )  # fmt: skip
    env = operator_env(deployment())
    assert (env["FBL_TICK_SECONDS"], env["FBL_TRAINER_IMAGES"]) == ("2", "registry.example/trainer:2")
    history = json.loads(
        helm(endpoints, "history", release.name, "-n", release.namespace, "-o", "json").stdout
    )
    assert [(h["revision"], h["status"]) for h in history] == [(1, "superseded"), (2, "deployed")]

    helm(endpoints, "uninstall", release.name, "-n", release.namespace, "--wait")
    gone = cluster.kubectl(
        "get", "deployment,serviceaccount,service", "-n", release.namespace, "-l",
        f"app.kubernetes.io/instance={release.name}", "-o", "name",
    ).stdout  # fmt: skip
    assert gone == ""
    roles = cluster.kubectl("get", "clusterrole", release.service_account, check=False)
    assert "NotFound" in roles.stderr
    assert cluster.kubectl("get", "crd", CRD_NAME, "-o", "name").stdout.strip()
    kept = json.loads(cluster.kubectl("get", "fbl", "kept", "-n", namespace, "-o", "json").stdout)
    assert kept["spec"]["monitoring"]["labels"] == {"model": "kept"}
