"""The harness stops and starts one component as it was: same address, same data, the rest unharmed.

These are the helpers fault-injection tests stand on (an API server restarted mid-watch, etcd stopped)."""

from __future__ import annotations

import os
import textwrap
import time
import uuid
from typing import Any

import pytest
from kubernetes import client
from prometheus_api_client import PrometheusConnect

import harness
from harness import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def own_cluster(cluster: harness.Cluster) -> harness.Cluster:
    if not cluster.processes:
        reason = "a cluster from FBL_CLUSTER_ENV runs elsewhere: its processes are not this session's"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI starts its own cluster, so these tests must run there")
        pytest.skip(reason)
    return cluster


def pid_of(cluster: harness.Cluster, name: str) -> int:
    return next(p.popen.pid for p in cluster.processes if p.name == name)


def readyz(cluster: harness.Cluster) -> str:
    result = cluster.kubectl("get", "--raw", "/readyz", check=False)
    return result.stdout.strip() if result.returncode == 0 else f"failed: {result.stderr.strip()}"


def config_map(core_v1: client.CoreV1Api, namespace: str) -> str:
    name = f"kept-{uuid.uuid4().hex[:6]}"
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data={"written": "before"})
    core_v1.create_namespaced_config_map(namespace, body)
    return name


@pytest.mark.disrupts_control_plane
def test_api_server_restart_keeps_objects_and_the_cluster_works_after_it(
    own_cluster: harness.Cluster, core_v1: client.CoreV1Api, namespace: str
) -> None:
    name = config_map(core_v1, namespace)
    before = pid_of(own_cluster, "kube-apiserver")

    own_cluster.restart_component("kube-apiserver")

    assert pid_of(own_cluster, "kube-apiserver") != before
    # kubectl's kubeconfig still names the address from before the restart.
    assert readyz(own_cluster) == "ok"
    assert core_v1.read_namespaced_config_map(name, namespace).data == {"written": "before"}
    # The controllers and kwok watched through the restart: a new Deployment still becomes available.
    manifest = textwrap.dedent(
        """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: after-restart}
        spec:
          replicas: 1
          selector: {matchLabels: {app: after-restart}}
          template:
            metadata: {labels: {app: after-restart}}
            spec:
              containers: [{name: web, image: example.invalid/web:1}]
        """
    )
    own_cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=manifest)
    own_cluster.kubectl(
        "wait", "-n", namespace, "deployment/after-restart", "--for=condition=Available", "--timeout=90s"
    )
    own_cluster.check_alive()


@pytest.mark.disrupts_control_plane
def test_etcd_stopped_makes_the_api_server_unready_until_it_is_back_with_its_data(
    own_cluster: harness.Cluster, core_v1: client.CoreV1Api, namespace: str
) -> None:
    name = config_map(core_v1, namespace)

    own_cluster.stop_component("etcd")
    try:
        down = wait_until(lambda: readyz(own_cluster), lambda answer: answer != "ok", timeout=30)
    finally:
        own_cluster.start_component("etcd")
    back = wait_until(lambda: readyz(own_cluster), lambda answer: answer == "ok", timeout=60)

    assert down.startswith("failed"), down
    assert back == "ok"
    assert core_v1.read_namespaced_config_map(name, namespace).data == {"written": "before"}
    own_cluster.check_alive()


def test_prometheus_restart_keeps_its_samples_and_scrapes_again(
    own_cluster: harness.Cluster, prometheus: PrometheusConnect
) -> None:
    def last_scrape() -> float:
        # The sample's own time: an instant query's result is stamped with the evaluation time instead.
        result = prometheus.custom_query('timestamp(up{job="prometheus"})')
        return float(result[0]["value"][1]) if result else 0.0

    scraped_at = wait_until(last_scrape, lambda at: at > 0, timeout=30)

    own_cluster.restart_component("prometheus")
    restarted_at = time.time()

    kept = prometheus.custom_query('up{job="prometheus"}', params={"time": scraped_at})
    assert [sample["value"][1] for sample in kept] == ["1"]
    assert wait_until(last_scrape, lambda at: at > restarted_at, timeout=30) > restarted_at
    own_cluster.check_alive()


def test_versitygw_restart_keeps_buckets_and_objects(
    own_cluster: harness.Cluster, s3: Any, bucket: str
) -> None:
    s3.put_object(Bucket=bucket, Key="kept.txt", Body=b"before")

    own_cluster.restart_component("versitygw")

    assert s3.get_object(Bucket=bucket, Key="kept.txt")["Body"].read() == b"before"
    own_cluster.check_alive()


def test_only_a_stopped_component_can_be_started(own_cluster: harness.Cluster) -> None:
    with pytest.raises(ValueError, match="prometheus was not stopped"):
        own_cluster.start_component("prometheus")
    with pytest.raises(ValueError, match="no component 'kubelet'"):
        harness.component_named("kubelet")
