"""The chart's RBAC on the real API server (RBAC on): the operator runs with a token of the chart's
ServiceAccount and retrains and rolls out with zero 403s; a removed rule surfaces as a Forbidden condition."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import harness
from argocd_health import argo_health_everywhere
from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.api import CRD_NAME, ENV_MODEL_URI, RETRAIN_POD_FINALIZER, RETRAIN_REQUEST_ANNOTATION
from harness import wait_until
from install_helpers import RESTRICTED, Release, create_namespace, granted, service_account_kubeconfig
from loop_scenario import Scenario, served, spec_for, trainer_report, wait_status, write_candidate
from operator_process import OperatorProcess

# What any authenticated user may do (system:basic-user); everything else must come from the chart.
SELF_REVIEWS = {
    "selfsubjectreviews.authentication.k8s.io": {"create"},
    "selfsubjectaccessreviews.authorization.k8s.io": {"create"},
    "selfsubjectrulesreviews.authorization.k8s.io": {"create"},
}
OPERATOR_RULES = {
    CRD_NAME: {"get", "list", "watch", "patch"},
    f"{CRD_NAME}/status": {"patch"},
    "jobs.batch": {"create", "get", "list", "watch", "delete"},
    "deployments.apps": {"get", "list", "watch", "patch"},
    "pods": {"get", "list", "patch"},
    "events": {"create"},
}
# In the release namespace only: create any Lease (create takes no names), get and update the chart's.
LEASE_RULES = {"leases.coordination.k8s.io": {"create", "get", "update"}}
FORBIDDEN_IN_LOG = re.compile(r"\b403\b|Forbidden|forbidden")


def test_cluster_wide_install_grants_exactly_the_listed_verbs_and_no_secrets(
    cluster: harness.Cluster, install_chart: Callable[..., Release], namespace: str, tmp_path: Path
) -> None:
    release = install_chart("--set", "crds.enabled=false")
    kubeconfig = service_account_kubeconfig(cluster, release, tmp_path / "sa.kubeconfig")
    assert granted(cluster, kubeconfig, namespace) == {**SELF_REVIEWS, **OPERATOR_RULES}
    assert granted(cluster, kubeconfig, release.namespace) == {
        **SELF_REVIEWS,
        **OPERATOR_RULES,
        **LEASE_RULES,
    }
    for verb, resource in (("get", "secrets"), ("list", "configmaps"), ("create", "deployments")):
        answer = cluster.kubectl(
            "--kubeconfig", str(kubeconfig), "auth", "can-i", verb, resource, "-A", check=False
        )
        assert answer.stdout.strip() == "no", (verb, resource)
    assert_pod_patch_only_removes_the_finalizer(cluster, kubeconfig, namespace)


def assert_pod_patch_only_removes_the_finalizer(
    cluster: harness.Cluster, kubeconfig: Path, namespace: str
) -> None:
    """RBAC grants `patch` on pods; the chart's admission policy narrows it to removing our finalizer."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "tenant-pod", "namespace": namespace, "finalizers": [RETRAIN_POD_FINALIZER]},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
    }
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(pod))
    as_operator = ("--kubeconfig", str(kubeconfig), "-n", namespace)
    # The API server loads a new policy and binding asynchronously: wait until a dry run is refused.
    wait_until(
        lambda: (
            cluster.kubectl(
                *as_operator, "label", "pod", "tenant-pod", "probe=yes", "--dry-run=server", check=False
            ).returncode
        ),
        lambda returncode: returncode != 0,
        timeout=30,
    )
    relabel = cluster.kubectl(*as_operator, "label", "pod", "tenant-pod", "stolen=yes", check=False)
    assert relabel.returncode != 0
    assert "may only remove its finalizer" in relabel.stderr, relabel.stderr
    image = json.dumps({"spec": {"containers": [{"name": "app", "image": "registry.example/evil:1"}]}})
    swapped = cluster.kubectl(*as_operator, "patch", "pod", "tenant-pod", "-p", image, check=False)
    assert "may only remove its finalizer" in swapped.stderr, swapped.stderr
    release = json.dumps([{"op": "remove", "path": "/metadata/finalizers/0"}])
    cluster.kubectl(*as_operator, "patch", "pod", "tenant-pod", "--type=json", "-p", release)
    left = cluster.kubectl("get", "pod", "tenant-pod", "-n", namespace, "-o", "json").stdout
    assert json.loads(left)["metadata"].get("finalizers") in (None, [])
    assert json.loads(left)["metadata"].get("labels", {}).get("stolen") is None


def test_namespaced_install_grants_the_watched_namespaces_only(
    cluster: harness.Cluster, install_chart: Callable[..., Release], tmp_path: Path
) -> None:
    watched = create_namespace(cluster, "fbl-watched")
    release = install_chart("--set", "crds.enabled=false", "--set", f"watchNamespaces={{{watched}}}")
    kubeconfig = service_account_kubeconfig(cluster, release, tmp_path / "sa.kubeconfig")
    assert granted(cluster, kubeconfig, watched) == {**SELF_REVIEWS, **OPERATOR_RULES}
    assert granted(cluster, kubeconfig, release.namespace) == {**SELF_REVIEWS, **LEASE_RULES}
    roles = cluster.kubectl("get", "clusterrole", release.service_account, check=False)
    assert "NotFound" in roles.stderr


def assert_admitted_under_restricted(cluster: harness.Cluster, job: dict[str, Any]) -> None:
    """The operator's retrain Job, re-created (server dry run) where Pod Security "restricted" is enforced."""
    namespace = create_namespace(
        cluster, "fbl-psa", {**RESTRICTED, "pod-security.kubernetes.io/warn": "restricted"}
    )
    template = job["spec"]["template"]
    generated = (
        "controller-uid",
        "job-name",
        "batch.kubernetes.io/controller-uid",
        "batch.kubernetes.io/job-name",
    )
    labels = {k: v for k, v in template["metadata"]["labels"].items() if k not in generated}
    copy = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job["metadata"]["name"], "namespace": namespace},
        "spec": {**{k: v for k, v in job["spec"].items() if k != "selector"},
                 "template": {**template, "metadata": {**template["metadata"], "labels": labels}}},
    }  # fmt: skip
    done = cluster.kubectl("create", "--dry-run=server", "-f", "-", input_text=json.dumps(copy))
    assert "created (server dry run)" in done.stdout
    assert "violate" not in done.stderr, done.stderr  # the warn label reports what enforce would refuse
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")


def foreign_loops(cluster: harness.Cluster, namespace: str) -> list[str]:
    items = json.loads(cluster.kubectl("get", "fbl", "-A", "-o", "json").stdout)["items"]
    return [
        f"{i['metadata']['namespace']}/{i['metadata']['name']}"
        for i in items
        if i["metadata"]["namespace"] != namespace
    ]


def run_with_chart_identity(
    cluster: harness.Cluster,
    scenario: Scenario,
    install_chart: Callable[..., Release],
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
    cluster_wide: bool = False,
    drop_rule_for: str | None = None,
) -> OperatorProcess:
    """Installs the chart, then runs the operator on its ServiceAccount's token, as the chart would."""
    watch = [] if cluster_wide else ["--set", f"watchNamespaces={{{scenario.namespace}}}"]
    release = install_chart("--set", "crds.enabled=false", *watch)
    if cluster_wide:
        # Earlier tests' namespaces finish deleting first: their loops are not this scenario's to reconcile.
        left = wait_until(
            lambda: foreign_loops(cluster, scenario.namespace), lambda got: got == [], timeout=90
        )
        assert left == []
    if drop_rule_for is not None:
        kind = "clusterrole" if cluster_wide else "role"
        role = json.loads(scenario.kubectl("get", kind, release.service_account, "-o", "json").stdout)
        index = next(i for i, rule in enumerate(role["rules"]) if drop_rule_for in rule["resources"])
        scenario.kubectl(
            "patch", kind, release.service_account, "--type=json",
            "-p", json.dumps([{"op": "remove", "path": f"/rules/{index}"}]),
        )  # fmt: skip
    kubeconfig = service_account_kubeconfig(cluster, release, tmp_path / "sa.kubeconfig")
    env = {"FBL_WATCH_NAMESPACES": ""} if cluster_wide else {}
    # The Lease the chart's Deployment names, in the release namespace: the only one its Role may update.
    lease = {"FBL_LEASE_NAMESPACE": release.namespace, "FBL_LEASE_NAME": release.service_account}
    return start_operator(KUBECONFIG=str(kubeconfig), **env, **lease)


@pytest.mark.parametrize("cluster_wide", [False, True], ids=["namespaced", "cluster-wide"])
def test_operator_with_the_chart_service_account_retrains_and_rolls_out_with_no_403(
    cluster: harness.Cluster,
    scenario: Scenario,
    install_chart: Callable[..., Release],
    start_operator: Callable[..., OperatorProcess],
    store: ArtifactStore,
    tmp_path: Path,
    cluster_wide: bool,
) -> None:
    candidate_uri = write_candidate(store, scenario.namespace, "v2", accuracy=0.93)
    operator = run_with_chart_identity(
        cluster, scenario, install_chart, start_operator, tmp_path, cluster_wide
    )
    spec = spec_for(scenario, **{"retrain.podAnnotations": trainer_report(store, candidate_uri)})
    scenario.apply_loop(spec, annotations={RETRAIN_REQUEST_ANNOTATION: "rbac"})

    status = wait_status(scenario, lambda s: s.get("currentModel", {}).get("version") == "v2")
    env, version = served(scenario)
    assert (env[ENV_MODEL_URI], version) == (candidate_uri, "v2")
    assert scenario.condition("RolledOut")["reason"] == "AnalysisSuccessful"
    assert scenario.condition("Ready")["status"] == "True"
    assert [e["outcome"] for e in status["history"]] == ["RolledOut"]
    health, message = argo_health_everywhere(scenario.loop())
    assert (health, message.split(";")[0]) == ("Healthy", "serving model version v2")
    jobs = scenario.jobs()
    assert len(jobs) == 1
    assert_admitted_under_restricted(cluster, jobs[0])
    reasons = {e["reason"] for e in scenario.events()}
    assert {"RetrainStarted", "GatesPassed", "AnalysisSuccessful"} <= reasons  # events create is allowed too
    log = operator.log()
    assert "feedbackloop operator configured" in log  # the log is the operator's, not an empty file
    assert FORBIDDEN_IN_LOG.findall(log) == []
    # The finished trainer pod was released through the chart's admission policy, not held for good.
    held = wait_until(lambda: _held_retrain_pods(scenario), lambda names: names == [], timeout=60)
    assert held == []


def _held_retrain_pods(scenario: Scenario) -> list[str]:
    pods = json.loads(scenario.kubectl("get", "pods", "-o", "json").stdout)["items"]
    return [
        p["metadata"]["name"] for p in pods if RETRAIN_POD_FINALIZER in p["metadata"].get("finalizers", [])
    ]


def test_a_removed_rule_fails_the_scenario_with_a_forbidden_condition(
    cluster: harness.Cluster,
    scenario: Scenario,
    install_chart: Callable[..., Release],
    start_operator: Callable[..., OperatorProcess],
    store: ArtifactStore,
    tmp_path: Path,
) -> None:
    write_candidate(store, scenario.namespace, "v2", accuracy=0.93)
    operator = run_with_chart_identity(
        cluster, scenario, install_chart, start_operator, tmp_path, drop_rule_for="deployments"
    )
    scenario.apply_loop(spec_for(scenario), annotations={RETRAIN_REQUEST_ANNOTATION: "rbac"})

    ready = scenario.wait_condition("Ready", "False", reason="Forbidden")
    assert "deployments" in ready["message"]
    assert "churn-server" in ready["message"]
    _env, version = served(scenario)
    assert version == "v1"  # nothing was rolled out
    health, message = argo_health_everywhere(scenario.loop())  # what Argo CD would show for this object
    assert (health, message.split(":")[0]) == ("Degraded", "Forbidden")
    assert (
        "currentModel" not in scenario.loop()["status"]
        or scenario.loop()["status"]["currentModel"].get("version") != "v2"
    )
    assert FORBIDDEN_IN_LOG.search(operator.log())
