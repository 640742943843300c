"""The pure parts of the test-cluster tooling: go.mod generation and the env file."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

import gen_k8s_gomod
import harness

UPSTREAM_SAMPLE = """\
module k8s.io/kubernetes

go 1.26.0

require (
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
)
"""


def test_staging_replaces_become_released_module_versions() -> None:
    modules = gen_k8s_gomod.staging_modules(UPSTREAM_SAMPLE)
    rendered = gen_k8s_gomod.render("v1.36.3", modules, "1.26.0")

    assert modules == ["k8s.io/api", "k8s.io/client-go"]
    assert "\tk8s.io/api => k8s.io/api v0.36.3\n" in rendered
    assert "\tk8s.io/client-go => k8s.io/client-go v0.36.3\n" in rendered
    assert "require k8s.io/kubernetes v1.36.3\n" in rendered
    assert "go 1.26.0\n" in rendered


def test_upstream_without_staging_replaces_is_an_error() -> None:
    with pytest.raises(SystemExit, match="no staging replace"):
        gen_k8s_gomod.staging_modules("module k8s.io/kubernetes\n")


def test_committed_wrapper_gomod_matches_the_pinned_version() -> None:
    """Bumping K8S_VERSION without regenerating go.mod would build a mismatched control plane."""
    version = harness.read_versions()["K8S_VERSION"]
    gomod = (harness.HERE / "k8s" / "go.mod").read_text()
    replaces = re.findall(r"^\t(k8s\.io/\S+) => (k8s\.io/\S+) (v\S+)$", gomod, re.M)

    assert f"\tk8s.io/kubernetes {version}\n" in gomod
    assert len(replaces) >= 30
    assert all(source == target for source, target, _ in replaces)
    assert {release for _, _, release in replaces} == {"v0." + version.removeprefix("v1.")}


def test_env_file_round_trips_values_that_need_quoting(tmp_path: Path) -> None:
    (tmp_path / "endpoints.json").write_text(
        '{"api_server_url": "https://127.0.0.1:1", "admin_token": "a", "user_token": "u", "ca_file": "/ca"}'
    )
    endpoints = harness.Endpoints(
        directory=tmp_path,
        kubeconfig=tmp_path / "admin's kubeconfig",
        limited_kubeconfig=tmp_path / "user.kubeconfig",
        api_server_url="https://127.0.0.1:1",
        admin_token="a",
        user_token="u",
        ca_file=Path("/ca"),
        prometheus_url="http://127.0.0.1:9090",
        s3_endpoint_url="http://127.0.0.1:7070",
        s3_access_key="access",
        s3_secret_key="se$cret'with quote",
        bin_dir=tmp_path / "bin",
        prometheus_targets_file=tmp_path / "targets.json",
    )
    endpoints.write_env_file(tmp_path / "env")

    loaded = harness.Endpoints.from_env_file(tmp_path / "env")

    assert loaded == endpoints
    assert f"export PATH='{tmp_path / 'bin'}':\"$PATH\"" in (tmp_path / "env").read_text()


def test_wait_until_returns_the_last_probe_result_on_timeout() -> None:
    results = iter(range(1000))
    last = harness.wait_until(lambda: next(results), lambda value: value < 0, timeout=0.05, interval=0.01)
    assert last > 0


def test_unit_tests_cannot_reach_the_network() -> None:
    with socket.socket() as sock, pytest.raises(RuntimeError, match="unit test tried to connect"):
        sock.connect(("127.0.0.1", 9))
