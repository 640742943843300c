"""The Prometheus adapter against the real Prometheus: every outcome is told apart."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

import harness
from feedbackloop.adapters.prometheus import PrometheusAdapter
from feedbackloop.core.observations import QueryOutcome
from harness import wait_until
from operator_process import ModelExporter


@pytest.fixture(scope="module")
def values(endpoints: harness.Endpoints) -> Iterator[str]:
    """Series with special values, scraped by the real Prometheus."""
    exporter = ModelExporter(endpoints)
    tag = f"adapter{int(time.time())}"
    exporter.set(f"{tag}-nan", float("nan"))
    exporter.set(f"{tag}-inf", float("inf"))
    exporter.set(f"{tag}-value", 0.875)
    exporter.set(f"{tag}-other", 0.5)
    adapter = PrometheusAdapter()
    wait_until(
        lambda: adapter.query(endpoints.prometheus_url, f'count(fbl_test_accuracy{{model=~"{tag}-.*"}})', 5),
        lambda r: r.value == 4,
        timeout=30,
    )
    yield tag
    exporter.close()


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A server that accepts connections and never answers: a hung Prometheus."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for conn in accepted:
        conn.close()
    server.close()


@pytest.mark.parametrize(
    ("query", "outcome", "value"),
    [
        ('max(fbl_test_accuracy{{model="{tag}-value"}})', QueryOutcome.VALUE, 0.875),
        ('fbl_test_accuracy{{model="{tag}-value"}}', QueryOutcome.VALUE, 0.875),
        ("scalar(vector(0.25))", QueryOutcome.VALUE, 0.25),
        ('max(fbl_test_accuracy{{model="{tag}-nan"}})', QueryOutcome.NAN, None),
        ('max(fbl_test_accuracy{{model="{tag}-inf"}})', QueryOutcome.INFINITE, None),
        ('max(fbl_test_accuracy{{model="{tag}-missing"}})', QueryOutcome.EMPTY, None),
        ('fbl_test_accuracy{{model=~"{tag}-(value|other)"}}', QueryOutcome.MULTIPLE_SERIES, None),
        ("sum(rate(fbl_test_accuracy[5m]", QueryOutcome.ERROR, None),
        ('fbl_test_accuracy{{model="{tag}-value"}}[1m]', QueryOutcome.ERROR, None),
    ],
)
def test_outcomes_from_the_real_prometheus(
    endpoints: harness.Endpoints, values: str, query: str, outcome: QueryOutcome, value: float | None
) -> None:
    result = PrometheusAdapter().query(endpoints.prometheus_url, query.format(tag=values), 5)
    assert result.outcome is outcome, result
    assert result.value == value


def test_bad_query_error_carries_prometheus_message(endpoints: harness.Endpoints) -> None:
    result = PrometheusAdapter().query(endpoints.prometheus_url, "sum(", 5)
    assert result.outcome is QueryOutcome.ERROR
    assert "parse error" in result.message


def test_a_hung_prometheus_is_a_timeout_not_an_error(blackhole: str) -> None:
    started = time.monotonic()
    result = PrometheusAdapter().query(blackhole, "vector(1)", 0.5)
    assert result.outcome is QueryOutcome.TIMEOUT
    assert time.monotonic() - started < 5


def test_an_unreachable_prometheus_is_an_error_and_fails_the_probe() -> None:
    url = f"http://127.0.0.1:{harness.free_port()}"
    adapter = PrometheusAdapter()
    result = adapter.query(url, "vector(1)", 1)
    assert result.outcome is QueryOutcome.ERROR
    assert "unreachable" in result.message
    assert adapter.probe(url, 1).ok is False


def test_probe_of_the_real_prometheus_succeeds(endpoints: harness.Endpoints) -> None:
    assert PrometheusAdapter().probe(endpoints.prometheus_url, 5).ok is True
