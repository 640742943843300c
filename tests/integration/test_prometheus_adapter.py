"""The Prometheus adapter against the real Prometheus: every outcome is told apart."""

from __future__ import annotations

import http.server
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

import harness
from feedbackloop.adapters.prometheus import PrometheusAdapter
from feedbackloop.core.observations import QueryOutcome
from harness import wait_until
from operator_process import ModelExporter
from unresponsive_servers import hung_server, serving, trickling_server


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
    with hung_server() as url:
        yield url


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


def test_bad_query_error_carries_a_fixed_reason_chosen_by_prometheus_error_type(
    endpoints: harness.Endpoints,
) -> None:
    result = PrometheusAdapter().query(endpoints.prometheus_url, "sum(", 5)
    assert (result.outcome, result.message) == (
        QueryOutcome.ERROR,
        "HTTP 400: the query is malformed (bad_data)",
    )


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


class RedirectHandler(http.server.BaseHTTPRequestHandler):
    """Sends every request elsewhere, and records what it is asked."""

    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.paths.append(self.path)
        self.send_response(302)
        self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def trickling() -> Iterator[str]:
    with trickling_server() as url:
        yield url


@pytest.fixture
def redirecting() -> Iterator[str]:
    with serving(RedirectHandler) as url:
        yield url


def test_a_body_trickled_byte_by_byte_is_cut_off_at_the_timeout(trickling: str) -> None:
    started = time.monotonic()
    result = PrometheusAdapter().query(trickling, "vector(1)", 1)
    assert result.outcome is QueryOutcome.TIMEOUT
    assert 1 <= time.monotonic() - started < 2.5


def test_a_reconcile_budget_shorter_than_the_timeout_ends_the_request_at_the_budget(trickling: str) -> None:
    started = time.monotonic()
    results = PrometheusAdapter().query_all(trickling, ["a", "b", "c"], 30, started + 1.5)
    assert [r.outcome for r in results] == [QueryOutcome.BUDGET_EXCEEDED] * 3
    assert time.monotonic() - started < 3


def test_a_redirect_is_an_error_and_is_not_followed(redirecting: str) -> None:
    RedirectHandler.paths.clear()
    result = PrometheusAdapter().query(redirecting, "vector(1)", 2)
    assert (result.outcome, result.message) == (QueryOutcome.ERROR, "HTTP 302: a redirect, not followed")
    assert [path.split("?")[0] for path in RedirectHandler.paths] == ["/api/v1/query"]


def test_a_hung_prometheus_opens_its_circuit_after_the_threshold_and_is_then_not_asked(
    blackhole: str, endpoints: harness.Endpoints
) -> None:
    adapter = PrometheusAdapter(failure_threshold=2, cool_down_seconds=2, concurrency_per_url=2)
    started = time.monotonic()
    first = adapter.query_all(blackhole, ["a", "b", "c", "d"], 0.5, started + 10)
    # Two in flight time out; the last one queued finds the circuit open and is never sent (the third may
    # have started between the two failures).
    outcomes = [r.outcome for r in first]
    assert outcomes[:2] == [QueryOutcome.TIMEOUT] * 2 and outcomes[3] is QueryOutcome.CIRCUIT_OPEN
    assert time.monotonic() - started < 2
    assert "circuit open after 2 consecutive failures (last: no answer within 0.5s)" in first[3].message

    skipped_at = time.monotonic()
    refused = adapter.probe(blackhole, 0.5)
    assert (refused.ok, refused.circuit_open) == (False, True)
    assert time.monotonic() - skipped_at < 0.1
    # Another URL is not affected by this one's circuit.
    assert adapter.probe(endpoints.prometheus_url, 5).ok is True

    time.sleep(2)  # the cool-down: one trial goes, times out, and the circuit opens again
    trial = adapter.query_all(blackhole, ["a", "b"], 0.5, time.monotonic() + 10)
    assert {r.outcome for r in trial} == {QueryOutcome.TIMEOUT, QueryOutcome.CIRCUIT_OPEN}
    assert adapter.circuit(blackhole).failures == 3
