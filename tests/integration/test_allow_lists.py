"""A loop author reaches only what the operator's allow-lists name: the real operator, API server, Prometheus
and S3, with local servers that record every request the operator sends them."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from http_stubs import Answer, RecordingProxy, RecordingServer

import harness
from loop_scenario import LOOP, Scenario, loop_spec
from operator_process import ARTIFACT_BUCKET, OperatorProcess

pytestmark = pytest.mark.integration

TICKS = 4  # seconds of operator ticks (FBL_TICK_SECONDS=1) during which a refused URL must get nothing
SECRET = "wJalrXUtnFEMI-K7MDENG-s3cr3t-token"
A_VALUE = json.dumps(
    {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "0.95"]}]}}
).encode()


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], RecordingServer]]:
    started: list[RecordingServer] = []

    def start(answer: Answer) -> RecordingServer:
        started.append(RecordingServer(answer))
        return started[-1]

    yield start
    for server in started:
        server.close()


def everything_the_loop_shows(scenario: Scenario, operator: OperatorProcess) -> str:
    """Status, Events and the operator's log: everywhere a message could leak to."""
    events = [event.get("message", "") for event in scenario.events()]
    return json.dumps(scenario.loop().get("status", {})) + json.dumps(events) + operator.log()


def test_a_prometheus_not_on_the_list_is_refused_and_never_requested(
    scenario: Scenario,
    start_operator: Callable[..., OperatorProcess],
    serve: Callable[[Answer], RecordingServer],
) -> None:
    # It answers like a healthy Prometheus, so only the allow-list keeps the loop from using it.
    elsewhere = serve(lambda _path: (200, {"Content-Type": "application/json"}, A_VALUE))
    start_operator()
    scenario.apply_loop(loop_spec(scenario.model, **{"prometheus.url": f"{elsewhere.url}/"}))

    ready = scenario.wait_condition("Ready", "False", "PrometheusNotAllowed")
    assert ready["message"] == (
        f"spec.prometheus.url {elsewhere.url}/ is not one of the operator's allowed Prometheus URLs"
        " (FBL_PROMETHEUS_URLS)"
    )
    assert scenario.loop()["status"]["phase"] == "Invalid"
    time.sleep(TICKS)
    assert elsewhere.requests == []
    assert scenario.jobs() == []


def test_a_loop_naming_no_prometheus_queries_the_first_allowed_one(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator(FBL_PROMETHEUS_URLS=f"{scenario.endpoints.prometheus_url}/,http://127.0.0.1:1")
    spec = loop_spec(scenario.model)
    del spec["prometheus"]["url"]
    scenario.apply_loop(spec)

    scenario.wait_condition("Healthy", "True", "WithinThresholds")
    assert scenario.condition("Ready")["status"] == "True"
    assert "url" not in scenario.loop()["spec"]["prometheus"]


def test_a_redirect_is_not_followed(
    scenario: Scenario,
    start_operator: Callable[..., OperatorProcess],
    serve: Callable[[Answer], RecordingServer],
) -> None:
    # An allowed URL redirecting to a Prometheus that answers: following it would make the loop healthy.
    real = scenario.endpoints.prometheus_url
    redirecting = serve(lambda path: (302, {"Location": f"{real}{path}"}, b""))
    start_operator(FBL_PROMETHEUS_URLS=redirecting.url)
    scenario.apply_loop(loop_spec(scenario.model, **{"prometheus.url": redirecting.url}))

    ready = scenario.wait_condition("Ready", "False", "PrometheusUnreachable")
    assert ready["message"] == f"Prometheus {redirecting.url}: HTTP 302: a redirect, not followed"
    healthy = scenario.wait_condition("Healthy", "Unknown", "NoData")
    assert "HTTP 302: a redirect, not followed" in healthy["message"]
    assert redirecting.requests, "the operator never asked the allowed URL"
    assert all(request.startswith("GET /api/v1/query?") for request in redirecting.requests)


@pytest.mark.parametrize(
    ("status", "content_type", "body", "reason"),
    [
        pytest.param(
            500, "text/plain", f"panic: AWS_SECRET_ACCESS_KEY={SECRET}", "server error", id="500-text"
        ),
        pytest.param(
            400,
            "application/json",
            json.dumps({"status": "error", "errorType": "bad_data", "error": f"token {SECRET} leaked"}),
            "the query is malformed (bad_data)",
            id="400-prometheus-error-json",
        ),
    ],
)
def test_an_error_answer_is_a_status_and_a_fixed_reason_never_its_body(
    scenario: Scenario,
    start_operator: Callable[..., OperatorProcess],
    serve: Callable[[Answer], RecordingServer],
    status: int,
    content_type: str,
    body: str,
    reason: str,
) -> None:
    failing = serve(lambda _path: (status, {"Content-Type": content_type}, body.encode()))
    operator = start_operator(FBL_PROMETHEUS_URLS=failing.url)
    scenario.apply_loop(loop_spec(scenario.model, **{"prometheus.url": failing.url}))

    ready = scenario.wait_condition("Ready", "False", "PrometheusUnreachable")
    assert ready["message"] == f"Prometheus {failing.url}: HTTP {status}: {reason}"
    healthy = scenario.wait_condition("Healthy", "Unknown", "NoData")
    assert f"HTTP {status}: {reason}" in healthy["message"]
    shown = wait_until_events(scenario, "PrometheusUnreachable")
    assert f"HTTP {status}: {reason}" in shown
    assert SECRET not in everything_the_loop_shows(scenario, operator)


def wait_until_events(scenario: Scenario, reason: str) -> str:
    events = harness.wait_until(
        scenario.events, lambda found: any(event.get("reason") == reason for event in found), timeout=30
    )
    return json.dumps([event.get("message", "") for event in events if event.get("reason") == reason])


def test_a_bucket_not_on_the_list_is_refused_alike_whether_it_exists_or_not_and_never_requested(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess], bucket: str
) -> None:
    # Every S3 request of the operator goes through the proxy, which records it.
    proxy = RecordingProxy(scenario.endpoints.s3_endpoint_url)
    try:
        start_operator(FBL_S3_ENDPOINT_URL=proxy.url, FBL_ARTIFACT_BUCKETS=ARTIFACT_BUCKET)
        absent = f"absent-{uuid.uuid4().hex[:10]}"
        scenario.apply_loop(loop_spec(scenario.model, **{"artifacts.bucket": bucket}), name="other-team")
        scenario.apply_loop(loop_spec(scenario.model, **{"artifacts.bucket": absent}), name="no-bucket")
        scenario.apply_loop(loop_spec(scenario.model))

        existing = scenario.wait_condition("Ready", "False", "ArtifactStoreNotAllowed", name="other-team")
        missing = scenario.wait_condition("Ready", "False", "ArtifactStoreNotAllowed", name="no-bucket")
        allowed = scenario.wait_condition("Ready", "True", "Ready", name=LOOP)
        time.sleep(TICKS)
    finally:
        proxy.close()

    assert existing["message"] == (
        f"spec.artifacts.bucket {bucket} is not one of the operator's allowed buckets (FBL_ARTIFACT_BUCKETS)"
    )
    assert existing["message"].replace(bucket, absent) == missing["message"]
    assert allowed["status"] == "True"
    assert f"HEAD /{ARTIFACT_BUCKET}" in proxy.requests  # the proxy did see the operator's S3 traffic
    assert [request for request in proxy.requests if bucket in request or absent in request] == []
