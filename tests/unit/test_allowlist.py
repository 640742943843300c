"""The operator's allow-lists of Prometheus URLs and buckets: the checks, the decision, what is observed."""

from __future__ import annotations

import dataclasses

import pytest

from core_inputs import POLICY, T0, healthy_dependencies, loop_state, spec_dict
from feedbackloop.adapters.prometheus import _status_reason
from feedbackloop.api import ConditionStatus, ConditionType, LoopPhase, Reason
from feedbackloop.config import ConfigError, load_config
from feedbackloop.core.allowlist import (
    PrometheusChoice,
    bucket_refusal,
    choose_prometheus,
    normalize_url,
    url_problem,
)
from feedbackloop.core.decide import decide
from feedbackloop.core.plan import plan
from reconcile_fakes import World

ALLOWED = ("http://prometheus:9090",)


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("http://prometheus:9090", "http://prometheus:9090"),
        ("http://Prometheus:9090/", "http://prometheus:9090"),
        ("https://prom.example", "https://prom.example:443"),
        ("https://prom.example:443//", "https://prom.example:443"),
        ("http://prom/tenant/a/", "http://prom:80/tenant/a"),
        ("http://prom/Tenant", "http://prom:80/Tenant"),
        ("http://[::1]:9090/", "http://[::1]:9090"),
    ],
)
def test_urls_normalize_to_scheme_host_port_and_path(url: str, normalized: str) -> None:
    assert normalize_url(url) == normalized


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://admin:hunter2@prometheus:9090", "must not carry user info (user:pass@)"),
        ("http://token@prometheus:9090", "must not carry user info (user:pass@)"),
        ("http://169.254.169.254/latest/meta-data?", "must not have a query (?...)"),
        ("http://prometheus:9090/api/v1/query?query=up", "must not have a query (?...)"),
        ("http://internal-admin:8080/delete#", "must not have a fragment (#...)"),
        ("ftp://prometheus:9090", "must be an http:// or https:// URL"),
        ("http://prometheus:9090/a b", "must not contain whitespace, control characters or backslashes"),
        ("http://prometheus\\@evil:9090", "must not contain whitespace, control characters or backslashes"),
        ("http://:9090", "must name a host"),
        ("http://prometheus:99999", "has an invalid port"),
        ("http://prometheus:0", "has an invalid port"),
    ],
)
def test_unusable_urls_are_refused_without_repeating_them(url: str, problem: str) -> None:
    assert url_problem(url) == problem
    assert normalize_url(url) is None


@pytest.mark.parametrize(
    ("requested", "chosen"),
    [
        (None, "http://prometheus:9090"),
        ("", "http://prometheus:9090"),
        ("http://prometheus:9090", "http://prometheus:9090"),
        ("http://PROMETHEUS:9090/", "http://prometheus:9090"),
    ],
)
def test_an_allowed_or_absent_url_is_answered_with_the_operators_own_spelling(
    requested: str | None, chosen: str
) -> None:
    assert choose_prometheus(requested, ALLOWED) == PrometheusChoice(chosen)


def test_a_default_port_matches_its_absence_and_the_allowed_spelling_is_what_is_queried() -> None:
    assert (
        choose_prometheus("https://prom.example:443/", ("https://prom.example/",)).url
        == "https://prom.example"
    )


@pytest.mark.parametrize(
    "requested",
    [
        "http://prometheus:9091",
        "https://prometheus:9090",
        "http://prometheus:9090/api/v1/admin",
        "http://prometheus:9090/..",
        "http://prometheus:9090/%2e%2e",
        "http://169.254.169.254",
        "http://prometheus.evil:9090",
    ],
)
def test_any_other_url_is_refused_and_named(requested: str) -> None:
    assert choose_prometheus(requested, ALLOWED) == PrometheusChoice(
        None, f"spec.prometheus.url {requested} is not one of the operator's allowed Prometheus URLs"
    )


def test_a_url_with_user_info_is_refused_even_when_its_host_is_allowed_and_the_password_is_not_repeated() -> (
    None
):
    choice = choose_prometheus("http://admin:hunter2@prometheus:9090", (*ALLOWED, "*"))
    assert choice == PrometheusChoice(None, "spec.prometheus.url must not carry user info (user:pass@)")


def test_star_allows_any_usable_url_but_is_never_a_default() -> None:
    assert choose_prometheus("http://elsewhere:9090/", ("*",)) == PrometheusChoice("http://elsewhere:9090")
    assert choose_prometheus(None, ("*", "http://prometheus:9090")).url == "http://prometheus:9090"
    assert choose_prometheus(None, ("*",)) == PrometheusChoice(
        None, "spec.prometheus.url is not set and the operator has no default Prometheus"
    )
    assert choose_prometheus("http://prometheus:9090", ()).url is None


def test_a_bucket_not_allowed_gets_one_message_whatever_it_is() -> None:
    assert bucket_refusal("models", ("models", "shared")) is None
    assert bucket_refusal("anything", ("*",)) is None
    assert bucket_refusal("other-team", ("models",)) == (
        "spec.artifacts.bucket other-team is not one of the operator's allowed buckets"
    )
    assert (
        bucket_refusal("models", ())
        == "spec.artifacts.bucket models is not one of the operator's allowed buckets"
    )


# ---------------------------------------------------------------- the decision and what is observed


def test_a_prometheus_not_allowed_is_not_ready_and_nothing_is_observed_or_started() -> None:
    loop = loop_state(spec_dict(**{"prometheus.url": "http://169.254.169.254"}))
    observation_plan = plan(loop, POLICY, T0)
    assert (observation_plan.queries, observation_plan.probe_dependencies) == (None, False)

    decision = decide(loop, healthy_dependencies(retrain_request="r1"), POLICY, T0)
    ready = decision.status.condition(ConditionType.READY)
    assert ready is not None
    assert (ready.status, ready.reason, ready.message) == (
        ConditionStatus.FALSE,
        Reason.PROMETHEUS_NOT_ALLOWED,
        "spec.prometheus.url http://169.254.169.254 is not one of the operator's allowed Prometheus URLs"
        " (FBL_PROMETHEUS_URLS)",
    )
    assert decision.status.phase is LoopPhase.INVALID
    assert decision.actions == ()


def test_a_bucket_not_allowed_is_not_ready_with_its_own_reason() -> None:
    loop = loop_state(spec_dict(**{"artifacts.bucket": "other-team"}))
    assert plan(loop, POLICY, T0).probe_dependencies is False
    ready = decide(loop, healthy_dependencies(), POLICY, T0).status.condition(ConditionType.READY)
    assert ready is not None
    assert (ready.reason, ready.message) == (
        Reason.ARTIFACT_STORE_NOT_ALLOWED,
        "spec.artifacts.bucket other-team is not one of the operator's allowed buckets"
        " (FBL_ARTIFACT_BUCKETS)",
    )


def test_a_loop_naming_no_prometheus_is_queried_at_the_first_allowed_url() -> None:
    spec = spec_dict()
    del spec["prometheus"]["url"]
    policy = dataclasses.replace(POLICY, prometheus_urls=("*", "http://prom.monitoring:9090/"))
    observation_plan = plan(loop_state(spec), policy, T0)
    assert observation_plan.prometheus_url == "http://prom.monitoring:9090"
    assert observation_plan.queries is not None


def test_the_reconciler_sends_nothing_for_a_loop_the_allow_lists_refuse() -> None:
    refused = spec_dict(**{"prometheus.url": "http://10.0.0.1:8080/admin", "artifacts.bucket": "other-team"})
    world = World("refused", refused, T0)
    calls = world.reconcile()
    assert [
        call.name for call in calls if call.name in {"query", "probe", "probe_bucket", "verify_version"}
    ] == []
    ready = next(c for c in world.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "PrometheusNotAllowed")
    assert "spec.artifacts.bucket other-team is not one of the operator's allowed buckets" in ready["message"]


def test_the_reconciler_queries_the_allowed_spelling_not_the_loops() -> None:
    world = World("spelled", spec_dict(**{"prometheus.url": "http://Prometheus:9090/"}), T0)
    calls = world.reconcile()
    assert [call.args for call in calls if call.name == "probe"] == [("http://prometheus:9090",)]


# ---------------------------------------------------------------- settings


def test_the_allow_lists_are_read_from_the_environment_and_empty_allows_none() -> None:
    config = load_config(
        {"FBL_PROMETHEUS_URLS": "http://prom:9090/, *", "FBL_ARTIFACT_BUCKETS": "models, shared.bucket"}
    )
    assert config.policy.prometheus_urls == ("http://prom:9090/", "*")
    assert config.policy.artifact_buckets == ("models", "shared.bucket")
    unset = load_config({})
    assert (unset.policy.prometheus_urls, unset.policy.artifact_buckets) == ((), ())


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"FBL_PROMETHEUS_URLS": "http://ok:9090,http://admin:hunter2@prom:9090"},
            "entry 2 must not carry user",
        ),
        ({"FBL_PROMETHEUS_URLS": "http://prom:9090/?x=1"}, "entry 1 must not have a query"),
        ({"FBL_ARTIFACT_BUCKETS": "Models"}, "FBL_ARTIFACT_BUCKETS: 'Models' is not a bucket name"),
    ],
)
def test_malformed_allow_lists_stop_the_operator_without_echoing_a_password(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(env)
    assert "hunter2" not in str(raised.value)


# ---------------------------------------------------------------- the adapter's words for a refused answer


@pytest.mark.parametrize(
    ("status", "error_type", "reason"),
    [
        (302, None, "a redirect, not followed"),
        (400, "bad_data", "the query is malformed (bad_data)"),
        (400, "secret words from the body", "the request was refused"),
        (401, None, "authentication or authorization refused"),
        (404, None, "no query API here (is the URL the Prometheus base URL, without /api/v1?)"),
        (500, None, "server error"),
        (503, "unavailable", "Prometheus is unavailable (unavailable)"),
    ],
)
def test_a_refused_answer_is_a_status_and_a_fixed_reason(
    status: int, error_type: str | None, reason: str
) -> None:
    assert _status_reason(status, error_type) == reason
