"""The chart as `helm template` renders it (helm from the binary cache, offline): the probes and the
resources."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import harness

CHART = harness.REPO / "helm" / "feedbackloop-operator"


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
