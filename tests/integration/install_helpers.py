"""Helm releases of the chart on the test control plane, and kubeconfigs for its ServiceAccount."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import harness

CHART = harness.REPO / "helm" / "feedbackloop-operator"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def helm(endpoints: harness.Endpoints, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    home = endpoints.directory / "helm"  # helm's cache and config stay with the cluster, not in ~
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    done = subprocess.run(
        [str(endpoints.bin_dir / "helm"), "--kubeconfig", str(endpoints.kubeconfig), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {done.returncode}:\n{done.stderr}{done.stdout}")
    return done


def objects(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def create_namespace(cluster: harness.Cluster, prefix: str, labels: dict[str, str] | None = None) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    if labels:
        cluster.kubectl("label", "namespace", name, *(f"{k}={v}" for k, v in labels.items()))
    return name


@dataclass
class Release:
    name: str
    namespace: str
    service_account: str


@pytest.fixture
def install_chart(cluster: harness.Cluster, endpoints: harness.Endpoints) -> Iterator[Callable[..., Release]]:
    """Installs the chart into a fresh namespace that enforces Pod Security "restricted"; uninstalls after."""
    installed: list[Release] = []

    def install(*values: str) -> Release:
        namespace = create_namespace(cluster, "fbl-op", RESTRICTED)
        name = f"rel-{uuid.uuid4().hex[:6]}"
        release = Release(name, namespace, f"{name}-feedbackloop-operator")
        installed.append(release)
        helm(endpoints, "install", name, str(CHART), "-n", namespace, "--take-ownership", *values)
        return release

    yield install
    for release in installed:
        helm(endpoints, "uninstall", release.name, "-n", release.namespace, "--wait", check=False)
        cluster.kubectl("delete", "namespace", release.namespace, "--wait=false", check=False)


def service_account_kubeconfig(cluster: harness.Cluster, release: Release, path: Path) -> Path:
    """A kubeconfig holding a short-lived token of the release's ServiceAccount, as its pod would get."""
    assert cluster.endpoints is not None
    token = cluster.kubectl(
        "create", "token", release.service_account, "-n", release.namespace, "--duration=1h"
    ).stdout.strip()
    user = f"system:serviceaccount:{release.namespace}:{release.service_account}"
    harness.write_kubeconfig(path, cluster.endpoints.api_server_url, cluster.endpoints.ca_file, user, token)
    return path


def granted(cluster: harness.Cluster, kubeconfig: Path, namespace: str) -> dict[str, set[str]]:
    """`kubectl auth can-i --list` as a map of resource -> verbs (non-resource URLs left out)."""
    assert cluster.endpoints is not None
    kubectl = [str(cluster.endpoints.bin_dir / "kubectl"), "--kubeconfig", str(kubeconfig)]
    out = subprocess.run(
        [*kubectl, "auth", "can-i", "--list", "-n", namespace, "--no-headers"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    rules: dict[str, set[str]] = {}
    for line in out.splitlines():
        # Columns: Resources, Non-Resource URLs, Resource Names, Verbs; resource rows have "[]" for URLs.
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[1] == "[]" and parts[0] != "[]":
            verbs = parts[3].strip().strip("[]").split()
            rules.setdefault(parts[0], set()).update(verbs)
    return rules
