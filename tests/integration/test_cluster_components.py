"""Proof that every part of the test environment is the real thing, not a stand-in."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from prometheus_api_client import PrometheusConnect
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from redis import Redis
from redis.exceptions import AuthenticationError

import harness
from harness import wait_until

pytestmark = pytest.mark.integration


def test_api_server_is_the_pinned_kubernetes_version(cluster: harness.Cluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    expected = harness.read_versions()["K8S_VERSION"]
    assert version["serverVersion"]["gitVersion"] == expected
    assert version["clientVersion"]["gitVersion"] == expected


def test_deployment_with_two_replicas_becomes_available_on_kwok_nodes(
    cluster: harness.Cluster, namespace: str
) -> None:
    manifest = textwrap.dedent(
        """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web}
        spec:
          replicas: 2
          selector: {matchLabels: {app: web}}
          template:
            metadata: {labels: {app: web}}
            spec:
              containers: [{name: web, image: example.invalid/web:1}]
        """
    )
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=manifest)
    cluster.kubectl("wait", "-n", namespace, "deployment/web", "--for=condition=Available", "--timeout=60s")

    status = json.loads(cluster.kubectl("get", "-n", namespace, "deployment/web", "-o", "json").stdout)[
        "status"
    ]
    assert status["availableReplicas"] == 2
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", "app=web", "-o", "json").stdout)
    nodes = {pod["spec"]["nodeName"] for pod in pods["items"]}
    assert len(pods["items"]) == 2
    assert all(node.startswith("kwok-node-") for node in nodes), nodes
    assert {pod["status"]["phase"] for pod in pods["items"]} == {"Running"}


def test_job_reaches_complete(cluster: harness.Cluster, namespace: str) -> None:
    manifest = textwrap.dedent(
        """
        apiVersion: batch/v1
        kind: Job
        metadata: {name: once}
        spec:
          backoffLimit: 0
          template:
            spec:
              restartPolicy: Never
              containers: [{name: once, image: example.invalid/job:1}]
        """
    )
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=manifest)
    cluster.kubectl("wait", "-n", namespace, "job/once", "--for=condition=Complete", "--timeout=60s")

    job = json.loads(cluster.kubectl("get", "-n", namespace, "job/once", "-o", "json").stdout)
    assert job["status"]["succeeded"] == 1


WIDGET_CRD = textwrap.dedent(
    """
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata: {name: widgets.probe.feedbackloop.dev}
    spec:
      group: probe.feedbackloop.dev
      names: {kind: Widget, plural: widgets, singular: widget}
      scope: Namespaced
      versions:
        - name: v1
          served: true
          storage: true
          schema:
            openAPIV3Schema:
              type: object
              properties:
                spec:
                  type: object
                  description: What a widget should be.
                  properties:
                    size:
                      type: integer
                      description: How many sprockets the widget holds.
                    minSize: {type: integer, description: The smallest size allowed.}
                  x-kubernetes-validations:
                    - rule: "!has(self.size) || !has(self.minSize) || self.size >= self.minSize"
                      message: size must be at least minSize
                      fieldPath: .size
    """
)


def test_crd_schema_cel_and_explain_are_served(cluster: harness.Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-f", "-", input_text=WIDGET_CRD)
    cluster.kubectl(
        "wait", "crd/widgets.probe.feedbackloop.dev", "--for=condition=Established", "--timeout=30s"
    )

    # Discovery of a new CRD can lag its Established condition by a moment.
    explain = wait_until(
        lambda: cluster.kubectl("explain", "widgets.spec.size", check=False),
        lambda r: r.returncode == 0,
        timeout=30,
    )
    assert "How many sprockets the widget holds." in explain.stdout

    good = (
        "apiVersion: probe.feedbackloop.dev/v1\nkind: Widget\nmetadata: {name: ok}\n"
        "spec: {size: 3, minSize: 1}\n"
    )
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=good)

    bad_cel = good.replace("name: ok", "name: bad").replace("size: 3", "size: 0")
    rejected = cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=bad_cel, check=False)
    assert rejected.returncode != 0
    assert "spec.size" in rejected.stderr
    assert "size must be at least minSize" in rejected.stderr

    bad_type = good.replace("name: ok", "name: bad2").replace("size: 3", 'size: "three"')
    rejected = cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=bad_type, check=False)
    assert rejected.returncode != 0
    assert "spec.size" in rejected.stderr


def test_plain_user_is_forbidden_until_rbac_grants_access(cluster: harness.Cluster, namespace: str) -> None:
    denied = cluster.kubectl("get", "secrets", "-n", namespace, limited=True, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    assert harness.PLAIN_USER in denied.stderr

    rbac = textwrap.dedent(
        f"""
        apiVersion: rbac.authorization.k8s.io/v1
        kind: Role
        metadata: {{name: read-secrets, namespace: {namespace}}}
        rules: [{{apiGroups: [""], resources: [secrets], verbs: [list]}}]
        ---
        apiVersion: rbac.authorization.k8s.io/v1
        kind: RoleBinding
        metadata: {{name: read-secrets, namespace: {namespace}}}
        roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: read-secrets}}
        subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {harness.PLAIN_USER}}}]
        """
    )
    cluster.kubectl("apply", "-f", "-", input_text=rbac)
    allowed = wait_until(
        lambda: cluster.kubectl("get", "secrets", "-n", namespace, limited=True, check=False),
        lambda r: r.returncode == 0,
        timeout=10,
    )
    assert allowed.returncode == 0
    # The grant is namespaced: other namespaces stay forbidden.
    elsewhere = cluster.kubectl("get", "secrets", "-n", "kube-system", limited=True, check=False)
    assert elsewhere.returncode != 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_prometheus_scrapes_an_exporter_and_the_client_reads_the_exact_value(
    endpoints: harness.Endpoints, prometheus: PrometheusConnect
) -> None:
    registry = CollectorRegistry()
    marker = f"probe_{uuid.uuid4().hex[:8]}"
    gauge = Gauge("fbl_probe_value", "A value the test sets and reads back.", ["run"], registry=registry)
    gauge.labels(run=marker).set(42.125)
    port = _free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    targets_file = endpoints.prometheus_targets_file
    # Other tests' exporters are listed in the same file for the whole session: add ours, remove only ours.
    before: list[dict[str, object]] = json.loads(targets_file.read_text() or "[]")
    ours = {"targets": [f"127.0.0.1:{port}"], "labels": {"suite": "cluster"}}
    try:
        targets_file.write_text(json.dumps([*before, ours]))
        result = wait_until(
            lambda: prometheus.custom_query(f'fbl_probe_value{{run="{marker}"}}'),
            lambda r: bool(r),
            timeout=30,
        )
        assert float(result[0]["value"][1]) == 42.125
        assert result[0]["metric"]["suite"] == "cluster"
    finally:
        now: list[dict[str, object]] = json.loads(targets_file.read_text() or "[]")
        targets_file.write_text(json.dumps([group for group in now if group != ours]))
        server.shutdown()
        thread.join(5)


def test_s3_round_trip_multipart_and_wrong_secret(
    s3: object, s3_with_secret: Callable[[str], object]
) -> None:
    bucket = f"probe-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    s3.put_object(Bucket=bucket, Key="small.txt", Body=b"hello feedback loop")  # type: ignore[attr-defined]
    body = s3.get_object(Bucket=bucket, Key="small.txt")["Body"].read()  # type: ignore[attr-defined]
    assert body == b"hello feedback loop"

    part_size = 5 * 1024 * 1024
    parts_data = [bytes([i]) * part_size for i in range(2)] + [b"tail"]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="big.bin")  # type: ignore[attr-defined]
    parts = []
    for number, data in enumerate(parts_data, start=1):
        etag = s3.upload_part(  # type: ignore[attr-defined]
            Bucket=bucket, Key="big.bin", UploadId=upload["UploadId"], PartNumber=number, Body=data
        )["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    s3.complete_multipart_upload(  # type: ignore[attr-defined]
        Bucket=bucket, Key="big.bin", UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    big = s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read()  # type: ignore[attr-defined]
    assert big == b"".join(parts_data)
    assert len(big) == 2 * part_size + 4

    intruder = s3_with_secret("not-the-secret-key-at-all")
    with pytest.raises(ClientError) as refused:
        intruder.get_object(Bucket=bucket, Key="small.txt")  # type: ignore[attr-defined]
    assert refused.value.response["Error"]["Code"] in {"SignatureDoesNotMatch", "AccessDenied"}
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "prometheus",
    "versitygw",
    "redis",
)
ENV_KEYS: tuple[str, ...] = (
    "KUBECONFIG",
    "LIMITED_KUBECONFIG",
    "PROMETHEUS_URL",
    "S3_ENDPOINT_URL",
    "REDIS_URL",
)
ENV_KEYS += ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def test_redis_asks_for_its_password(endpoints: harness.Endpoints) -> None:
    authorised = Redis.from_url(endpoints.redis_url)
    assert authorised.ping() is True
    assert authorised.config_get("appendonly") == {"appendonly": "yes"}
    anonymous = Redis(host="127.0.0.1", port=authorised.connection_pool.connection_kwargs["port"])
    with pytest.raises(AuthenticationError):
        anonymous.ping()


def test_harness_shell_up_and_down_leaves_no_process(tmp_path: Path) -> None:
    """`harness.py up` then `down`, as `make cluster-up/-down` run them, with nothing left running."""
    directory = tmp_path / "shell-cluster"
    script = str(harness.HERE / "harness.py")
    command = [sys.executable, script]
    up = subprocess.run(
        [*command, "up", "--dir", str(directory), "--nodes", "1"], capture_output=True, text=True, check=False
    )
    assert up.returncode == 0, up.stderr
    env = harness.Endpoints.from_env_file(directory / "env")
    pids = json.loads((directory / "endpoints.json").read_text())["pids"]
    assert set(pids) == set(COMPONENTS)
    assert env.prometheus_url.startswith("http://127.0.0.1:")
    env_text = (directory / "env").read_text()
    for key in ENV_KEYS:
        assert f"export {key}=" in env_text

    down = subprocess.run(
        [*command, "down", "--dir", str(directory)], capture_output=True, text=True, check=False
    )
    assert down.returncode == 0, down.stderr
    still_running = [name for name, pid in pids.items() if _alive(pid)]
    assert still_running == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is already dead; it only waits for its reaper.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
