"""Clients for the real components, and a fresh namespace per test."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
import yaml
from botocore.config import Config
from kubernetes import client, config
from prometheus_api_client import PrometheusConnect

import chaos
import harness
from feedbackloop.api import (
    COMPONENT_RETRAIN,
    CRD_NAME,
    GROUP,
    LABEL_COMPONENT,
    RETRAIN_POD_FINALIZER,
    VERSION,
)
from install_helpers import install_chart  # noqa: F401 - shared fixture
from loop_scenario import exporter, scenario, start_operator, store  # noqa: F401 - shared fixtures


def s3_client(endpoints: harness.Endpoints, secret_key: str | None = None) -> object:
    return boto3.client(
        "s3",
        endpoint_url=endpoints.s3_endpoint_url,
        aws_access_key_id=endpoints.s3_access_key,
        aws_secret_access_key=secret_key or endpoints.s3_secret_key,
        region_name=harness.S3_REGION,
        # boto3 >= 1.36 sends checksum headers by default that S3-compatible stores may refuse.
        config=Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 2},
        ),
    )


@pytest.fixture(scope="session")
def api_client(endpoints: harness.Endpoints) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(endpoints.kubeconfig))


@pytest.fixture(scope="session")
def core_v1(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture
def namespace(cluster: harness.Cluster, core_v1: client.CoreV1Api) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        release_loops(client.CustomObjectsApi(core_v1.api_client), name)
        release_retrain_pods(core_v1, name)
        try:
            core_v1.delete_namespace(name)
        except client.ApiException as err:
            if err.status != 404:  # a test that deletes its namespace (a chaos fault) leaves none to delete
                raise


def release_retrain_pods(core_v1: client.CoreV1Api, namespace: str) -> None:
    """Drops the operator's finalizer from a finished test's retrain pods, as docs/retrain-job-contract.md
    tells whoever uninstalls the operator: its operator has stopped, and would have released them."""
    pods = core_v1.list_namespaced_pod(namespace, label_selector=f"{LABEL_COMPONENT}={COMPONENT_RETRAIN}")
    for pod in pods.items:
        finalizers = pod.metadata.finalizers or []
        if RETRAIN_POD_FINALIZER in finalizers:
            path = f"/metadata/finalizers/{finalizers.index(RETRAIN_POD_FINALIZER)}"
            operations = [
                {"op": "test", "path": path, "value": RETRAIN_POD_FINALIZER},
                {"op": "remove", "path": path},
            ]
            with contextlib.suppress(client.ApiException):  # gone, or its finalizers changed meanwhile
                core_v1.patch_namespaced_pod(pod.metadata.name, namespace, operations)


def release_loops(custom: client.CustomObjectsApi, namespace: str) -> None:
    """Drops the operator's finalizer from a finished test's loops: its operator has stopped, and a namespace
    stuck in Terminating would leave loops behind for a later cluster-wide operator."""
    try:
        loops = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "feedbackloops")
    except client.ApiException as err:
        if err.status == 404:  # the CRD is not installed in this session
            return
        raise
    for loop in loops["items"]:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "feedbackloops", loop["metadata"]["name"],
            {"metadata": {"finalizers": None}},
        )  # fmt: skip


@pytest.fixture(scope="session")
def prometheus(endpoints: harness.Endpoints) -> PrometheusConnect:
    return PrometheusConnect(url=endpoints.prometheus_url, disable_ssl=True)


@pytest.fixture(scope="session")
def s3(endpoints: harness.Endpoints) -> object:
    return s3_client(endpoints)


@pytest.fixture
def bucket(s3: Any) -> str:
    """A fresh bucket per test."""
    name = f"b-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def s3_with_secret(endpoints: harness.Endpoints) -> Callable[[str], object]:
    """An S3 client with the right access key and the given secret key."""
    return lambda secret_key: s3_client(endpoints, secret_key=secret_key)


@pytest.fixture(scope="session")
def crd(cluster: harness.Cluster) -> dict[str, Any]:
    """The FeedbackLoop CRD, installed once; re-applying it is idempotent."""
    path = harness.REPO / "crds" / "feedbackloop.yaml"
    cluster.kubectl("apply", "-f", str(path))
    cluster.kubectl("wait", f"crd/{CRD_NAME}", "--for=condition=Established", "--timeout=30s")
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


# ---------------------------------------------------------------- fault injection (test_chaos.py)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`attempt` runs a chaos test CHAOS_REPEAT times (make chaos: 3; CI: once)."""
    if "attempt" in metafunc.fixturenames:
        metafunc.parametrize("attempt", range(1, chaos.REPEAT + 1), ids=lambda n: f"try{n}")


@pytest.fixture
def inject() -> Iterator[Callable[[str], chaos.Injection]]:
    """Names the fault a test injects; the Injection is logged even when the test fails (not converged)."""
    made: list[chaos.Injection] = []

    def start(fault: str) -> chaos.Injection:
        made.append(chaos.Injection(fault))
        return made[-1]

    yield start
    chaos.CHAOS_LOG.injections.extend(made)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if chaos.CHAOS_LOG.injections:
        terminalreporter.section("fault injection")
        for line in chaos.CHAOS_LOG.table():
            terminalreporter.write_line(line)
