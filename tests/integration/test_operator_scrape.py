"""The operator as a pod in a namespace of its own, found and scraped by the cluster's Prometheus through the
API server (prometheus.io/* annotations, the target labelled with the pod's namespace, as in a cluster): a
loop's series keep the loop's namespace, so `{namespace="<the loop's>"}` finds them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client
from serving_pods import pod_runner

import harness
from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.api import API_VERSION, KIND
from harness import wait_until
from loop_scenario import LOOP, WAIT, loop_spec
from operator_process import ARTIFACT_BUCKET, TRAINER_IMAGE, ModelExporter

OPERATOR_POD = f"feedbackloop-operator-{uuid.uuid4().hex[:6]}"  # its series of an earlier run never match


def query(endpoints: harness.Endpoints, promql: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{endpoints.prometheus_url}/api/v1/query", params={"query": promql}, timeout=5)
    result: list[dict[str, Any]] = answer.json()["data"]["result"]
    return result


@pytest.fixture
def operator_namespace(core_v1: client.CoreV1Api) -> Iterator[str]:
    name = f"op-{uuid.uuid4().hex[:10]}"
    core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core_v1.delete_namespace(name)


def operator_pod(node: str, watched: str, endpoints: harness.Endpoints) -> dict[str, Any]:
    metrics_port, health_port = harness.free_port(), harness.free_port()
    env = {
        "KUBECONFIG": str(endpoints.kubeconfig),  # the runner mounts no service account token
        "FBL_WATCH_NAMESPACES": watched,
        "FBL_TICK_SECONDS": "1",
        "FBL_METRICS_PORT": str(metrics_port),
        "FBL_HEALTH_ENDPOINT": f"http://0.0.0.0:{health_port}/healthz",
        "FBL_TRAINER_IMAGES": TRAINER_IMAGE,
        "FBL_PROMETHEUS_URLS": endpoints.prometheus_url,
        "FBL_ARTIFACT_BUCKETS": ARTIFACT_BUCKET,
        "FBL_S3_ENDPOINT_URL": endpoints.s3_endpoint_url,
        "AWS_ACCESS_KEY_ID": endpoints.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": endpoints.s3_secret_key,
        "AWS_DEFAULT_REGION": harness.S3_REGION,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": OPERATOR_POD,
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(metrics_port)},
        },
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 10,
            "containers": [
                {
                    "name": "operator",
                    "image": TRAINER_IMAGE,
                    "command": ["python", "-m", "feedbackloop"],
                    "env": [{"name": key, "value": value} for key, value in env.items()],
                }
            ],
        },
    }


def target_deployment(cluster: harness.Cluster, namespace: str) -> None:
    """The loop's Deployment with no replicas: Ready needs it to exist, and no pod may land on the runner."""
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "churn-server"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "churn"}},
            "template": {
                "metadata": {"labels": {"app": "churn"}},
                "spec": {"containers": [{"name": "server", "image": "feedbackloop-server:test"}]},
            },
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps(deployment))


def test_a_loops_series_are_found_by_the_loops_namespace_not_exported_namespace(
    cluster: harness.Cluster,
    endpoints: harness.Endpoints,
    core_v1: client.CoreV1Api,
    namespace: str,
    operator_namespace: str,
    crd: dict[str, Any],
    exporter: ModelExporter,
    store: ArtifactStore,
    tmp_path: Path,
) -> None:
    model = namespace
    exporter.set(model, accuracy=0.95)
    target_deployment(cluster, namespace)
    spec = loop_spec(model)
    spec["prometheus"]["url"] = endpoints.prometheus_url
    loop = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": LOOP}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps({**loop, "spec": spec}))

    with pod_runner(endpoints, core_v1, tmp_path / "runner") as runner:
        core_v1.create_namespaced_pod(
            operator_namespace, operator_pod(runner.node_name, namespace, endpoints)
        )
        try:
            ready = wait_until(
                lambda: query(endpoints, f'feedbackloop_loop_ready{{namespace="{namespace}",loop="{LOOP}"}}'),
                lambda found: bool(found) and found[0]["value"][1] == "1",
                timeout=WAIT,
                interval=1,
            )
            assert ready, "Prometheus has no ready series under the loop's namespace"
            [series] = ready
            assert series["metric"] == {
                "__name__": "feedbackloop_loop_ready",
                "namespace": namespace,
                "loop": LOOP,
                "reason": "Ready",
                "pod": OPERATOR_POD,
                "job": "kubernetes-pods",
                "instance": series["metric"]["instance"],
            }
            # The loop may be Ready before Prometheus has scraped the exporter: its first value can be NaN.
            value = wait_until(
                lambda: query(
                    endpoints, f'feedbackloop_metric_value{{namespace="{namespace}",loop="{LOOP}"}}'
                ),
                lambda found: [s["value"][1] for s in found] == ["0.95"],
                timeout=WAIT,
                interval=1,
            )
            assert [(s["metric"]["metric"], s["value"][1]) for s in value] == [("accuracy", "0.95")]
            # Nothing the operator exposes was renamed; its operator-wide series are in its own namespace.
            assert query(endpoints, f'{{pod="{OPERATOR_POD}",exported_namespace!=""}}') == []
            reconciles = query(
                endpoints, f'feedbackloop_reconcile_duration_seconds_count{{pod="{OPERATOR_POD}"}}'
            )
            assert {s["metric"]["namespace"] for s in reconciles} == {operator_namespace}
        finally:
            core_v1.delete_namespaced_pod(OPERATOR_POD, operator_namespace)
            exporter.remove(model)
