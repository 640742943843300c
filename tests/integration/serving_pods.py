"""Model server replicas as a Deployment on the local pod runner, and a client that reaches them as a Service
would: requests spread over the ready pods, none to a pod being deleted."""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pod_runner import PodRunner

import harness
from feedbackloop.api import ENV_MODEL_SHA256, ENV_MODEL_URI
from harness import wait_until

PREDICTION_STORE_SECRET = "prediction-store"


@contextlib.contextmanager
def pod_runner(endpoints: harness.Endpoints, core_v1: client.CoreV1Api, state: Path) -> Iterator[PodRunner]:
    """A runner for a node of its own; at the end it lets it finish its pods, then removes the node."""
    node = f"local-{uuid.uuid4().hex[:8]}"
    runner = PodRunner(endpoints.kubeconfig, node, state)
    runner.start()
    try:
        assert runner.wait_schedulable(60), f"node {node} did not become schedulable"
        yield runner
        wait_until(
            lambda: core_v1.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items,
            lambda pods: not pods,
            timeout=45,
            interval=1,
        )
    finally:
        runner.stop()
        for pod in core_v1.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items:
            with contextlib.suppress(ApiException):
                core_v1.delete_namespaced_pod(
                    pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0
                )
        with contextlib.suppress(ApiException):
            core_v1.delete_node(node)


def create_secrets(core_v1: client.CoreV1Api, namespace: str, endpoints: harness.Endpoints) -> None:
    """The S3 credentials, and the shared store with the key every replica signs prediction ids with."""
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    for name, data in (
        (
            "s3-credentials",
            {"AWS_ACCESS_KEY_ID": endpoints.s3_access_key, "AWS_SECRET_ACCESS_KEY": endpoints.s3_secret_key},
        ),
        (
            PREDICTION_STORE_SECRET,
            {"FBL_REDIS_URL": endpoints.redis_url, "FBL_PREDICTION_ID_KEYS": f"k1:{key}"},
        ),
    ):
        core_v1.create_namespaced_secret(
            namespace, client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data=data)
        )


def server_deployment(
    name: str, node: str, replicas: int, uri: str, sha256: str, endpoints: harness.Endpoints, **env: str
) -> dict[str, Any]:
    def secret(key: str, source: str) -> dict[str, Any]:
        return {"name": key, "valueFrom": {"secretKeyRef": {"name": source, "key": key}}}

    settings = {"MODEL_NAME": name, "PORT": "8080", "AWS_ENDPOINT_URL_S3": endpoints.s3_endpoint_url}
    settings |= {"AWS_DEFAULT_REGION": harness.S3_REGION, **env}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": {"app": name},
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "8080"},
                },
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "terminationGracePeriodSeconds": 20,
                    "containers": [
                        {
                            "name": "server",
                            "image": "feedbackloop-operator:0.1.0",
                            "command": ["feedbackloop-serve"],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "env": [
                                {"name": ENV_MODEL_URI, "value": uri},
                                {"name": ENV_MODEL_SHA256, "value": sha256},
                                {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                                {
                                    "name": "POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                },
                                *({"name": k, "value": v} for k, v in settings.items()),
                                secret("AWS_ACCESS_KEY_ID", "s3-credentials"),
                                secret("AWS_SECRET_ACCESS_KEY", "s3-credentials"),
                                secret("FBL_REDIS_URL", PREDICTION_STORE_SECRET),
                                secret("FBL_PREDICTION_ID_KEYS", PREDICTION_STORE_SECRET),
                            ],
                            "readinessProbe": {
                                "httpGet": {"path": "/readyz", "port": "http"},
                                "periodSeconds": 1,
                            },
                            "lifecycle": {"preStop": {"sleep": {"seconds": 1}}},
                        }
                    ],
                },
            },
        },
    }


def ready_pods(core_v1: client.CoreV1Api, namespace: str, app: str) -> list[tuple[str, str]]:
    """(name, IP) of the pods a Service would send to: ready, and not being deleted."""
    pods = core_v1.list_namespaced_pod(namespace, label_selector=f"app={app}").items
    return sorted(
        (p.metadata.name, p.status.pod_ip)
        for p in pods
        if p.status.pod_ip
        and p.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    )


def kill_server_process(pod: str) -> int:
    """SIGKILL the host process of a pod's server, found by the POD_NAME in its environment."""
    marker = f"POD_NAME={pod}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in environ and b"feedbackloop" in command:
            os.kill(int(entry.name), signal.SIGKILL)
            return int(entry.name)
    raise AssertionError(f"no server process of pod {pod}")


@dataclass
class Prediction:
    id: str
    prediction: Any
    label: int
    pod: str


@dataclass
class ServiceClient:
    """Round-robin over the ready pods, refreshed twice a second; every request answer is counted."""

    core_v1: client.CoreV1Api
    namespace: str
    app: str
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))
    errors: list[str] = field(default_factory=list)
    pods_used: set[str] = field(default_factory=set)
    _pods: list[tuple[str, str]] = field(default_factory=list)
    _refreshed: float = 0.0
    _turn: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _next(self, offset: int = 0) -> tuple[str, str]:
        with self._lock:
            if time.monotonic() - self._refreshed > 0.5 or not self._pods:
                self._pods, self._refreshed = (
                    ready_pods(self.core_v1, self.namespace, self.app),
                    time.monotonic(),
                )
            assert self._pods, "no ready pod"
            self._turn += 1
            return self._pods[(self._turn + offset) % len(self._pods)]

    def post(self, path: str, body: dict[str, Any], offset: int = 0) -> tuple[str, dict[str, Any] | None]:
        pod, ip = self._next(offset)
        self.pods_used.add(pod)
        try:
            answer = self.http.post(f"http://{ip}:8080{path}", json=body)
        except httpx.HTTPError as err:
            self.errors.append(f"{path} to {pod}: {type(err).__name__}: {err}")
            return pod, None
        if answer.status_code != 200:
            self.errors.append(f"{path} to {pod}: HTTP {answer.status_code} {answer.text[:200]}")
            return pod, None
        payload: dict[str, Any] = answer.json()
        return pod, payload
