"""Fixtures shared by the integration and e2e suites: one real cluster per test session (per xdist worker).

Set FBL_CLUSTER_ENV=.cluster/env to reuse a cluster from `make cluster-up` instead of starting one.
With CI=true a cluster that cannot start fails the tests; elsewhere, missing binaries skip them.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

import harness

IN_CI = os.environ.get("CI", "").lower() == "true"
_CLUSTER_KEY = pytest.StashKey["harness.Cluster"]()


class ExternalCluster(harness.Cluster):
    """A cluster started elsewhere (make cluster-up); the session must not stop it."""

    def stop(self) -> None:
        return None


def _start_cluster(directory: Path) -> harness.Cluster:
    env_file = os.environ.get("FBL_CLUSTER_ENV")
    if env_file:
        endpoints = harness.Endpoints.from_env_file(Path(env_file))
        return ExternalCluster(directory=endpoints.directory, endpoints=endpoints)
    missing = harness.missing_binaries()
    if missing and not IN_CI:
        pytest.skip(f"test cluster binaries missing {missing}: run `make cluster-build`")
    try:
        return harness.Cluster.start(directory)
    except harness.ClusterStartError as err:
        pytest.fail(f"the test cluster did not start: {err}", pytrace=False)


@pytest.fixture(scope="session")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[harness.Cluster]:
    running = _start_cluster(tmp_path_factory.mktemp("cluster"))
    request.config.stash[_CLUSTER_KEY] = running
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def endpoints(cluster: harness.Cluster) -> harness.Endpoints:
    assert cluster.endpoints is not None
    return cluster.endpoints


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the suite folder it lives in, so `-m "not integration"` works everywhere; tests that
    restart or stop control-plane components run last, so no other test meets the aftermath (namespaces
    whose deletion was cut short by a restart finish late); e2e runs first, so with `-n` its minutes overlap
    the other workers' tests instead of ending the run alone."""
    for item in items:
        suite = item.path.relative_to(Path(__file__).parent).parts[0]
        if suite in {"integration", "e2e"}:
            item.add_marker(getattr(pytest.mark, suite))
    items.sort(
        key=lambda item: (
            item.get_closest_marker("disrupts_control_plane") is not None,
            item.get_closest_marker("e2e") is None,
        )
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    running = item.config.stash.get(_CLUSTER_KEY, None)
    if report.failed and running is not None and "cluster" in getattr(item, "fixturenames", ()):
        report.sections.append(("test cluster logs", running.log_tails(lines=25)))
    return report
