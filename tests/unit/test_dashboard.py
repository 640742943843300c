"""The Grafana dashboard shipped with the chart queries only metrics and labels the operator and the model
server expose, or the scrape adds, so renaming a metric or a label breaks this test rather than a panel."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from feedbackloop_serve.metrics import ServerMetrics
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from feedbackloop import metrics as operator_metrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "helm" / "feedbackloop-operator" / "files" / "dashboard.json"

# Sample-name suffixes of each metric type in the Prometheus text format.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}
IDENTIFIER = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
# What every scrape adds: Prometheus's job and instance, and the target's namespace and pod (the chart's
# ServiceMonitor and the usual prometheus.io/* pod discovery both add them). The operator's per-loop metrics
# bring their own namespace, the loop's, which the ServiceMonitor keeps with honorLabels: without it they
# would arrive as exported_namespace, a label no query may rely on.
TARGET_LABELS = {"job", "instance", "namespace", "pod"}


# ---------------------------------------------------------------- what the two processes expose


def exposed_by(collectors: Iterable[Collector]) -> dict[str, set[str]]:
    """Sample name -> label names, from each collector's description (no samples needed)."""
    exposed: dict[str, set[str]] = {}
    for collector in collectors:
        labels = set(getattr(collector, "_labelnames", ()))
        # A custom collector need not describe itself: collect it instead.
        describe = getattr(collector, "describe", None)
        families = (list(describe()) if describe is not None else []) or list(collector.collect())
        for family in families:
            family_labels = labels | {key for sample in family.samples for key in sample.labels}
            for suffix in SUFFIXES[family.type]:
                extra = {"le"} if suffix == "_bucket" else set()
                exposed[family.name + suffix] = family_labels | extra
    return exposed


def server_metrics() -> ServerMetrics:
    server = ServerMetrics()
    server.watch_drift(lambda: ("churn", "v3"), lambda: {"tenure": 0.12})
    return server


def operator_collectors() -> list[MetricWrapperBase]:
    return [value for value in vars(operator_metrics).values() if isinstance(value, MetricWrapperBase)]


def server_collectors(server: ServerMetrics) -> Iterator[Collector]:
    yield from (value for value in vars(server).values() if isinstance(value, MetricWrapperBase))
    registered = server.registry._collector_to_names  # the drift collector exists only in the registry
    yield from (c for c in registered if not isinstance(c, MetricWrapperBase))


def exposed_metrics() -> dict[str, set[str]]:
    return {**exposed_by(operator_collectors()), **exposed_by(server_collectors(server_metrics()))}


def scraped_metrics() -> dict[str, set[str]]:
    return {name: labels | TARGET_LABELS for name, labels in exposed_metrics().items()}


def test_the_description_of_the_server_metrics_matches_what_it_really_exposes() -> None:
    """Checks `exposed_by` itself: every series a scrape of a busy server returns, with its labels."""
    server = server_metrics()
    for value in vars(server).values():
        if isinstance(value, MetricWrapperBase):
            child = value.labels(*(["x"] * len(value._labelnames))) if value._labelnames else value
            (getattr(child, "inc", None) or child.observe)(1)  # type: ignore[attr-defined]
    scraped: dict[str, set[str]] = {}
    for family in server.registry.collect():
        for sample in family.samples:
            scraped.setdefault(sample.name, set()).update(sample.labels)
    assert scraped == exposed_by(server_collectors(server))


# ---------------------------------------------------------------- what the dashboard queries


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.*),\s*(" + IDENTIFIER + r")\)", variable["definition"])
            assert match, variable["definition"]
            selector, label = match.groups()
            yield f"variable {variable['name']}", f"sum by ({label}) ({selector})"


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)  # dashboard variables
    names = set()
    for match in re.finditer(IDENTIFIER, expr):
        followed_by_call = re.match(r"\s*\(", expr[match.end() :])
        before = expr[match.start() - 1] if match.start() > 0 else " "
        is_number_part = before.isdigit() or before == "."  # the "e3" of 1e3, the "m" of 5m
        if not followed_by_call and not is_number_part and match.group().lower() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def selectors(expr: str) -> Iterator[tuple[str, set[str]]]:
    """(metric, label names in its matchers) for each `metric{...}` in the query."""
    for match in re.finditer(rf"({IDENTIFIER})\s*\{{([^}}]*)\}}", expr):
        labels = set(re.findall(rf"({IDENTIFIER})\s*(?:=~|!~|!=|=)", match.group(2)))
        yield match.group(1), labels


def grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    return labels


def test_the_parser_finds_metrics_and_skips_functions_labels_and_variables() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, model_version) "
        '(rate(fbl_prediction_latency_seconds_bucket{model=~"$model"}[$__rate_interval]))) '
        "/ sum(up offset 5m) * 1e3"
    )
    assert metric_names(expr) == {"fbl_prediction_latency_seconds_bucket", "up"}
    assert dict(selectors(expr)) == {"fbl_prediction_latency_seconds_bucket": {"model"}}
    assert grouping_labels(expr) == {"le", "model_version"}


QUERIES = list(queries(load_dashboard()))


def test_the_dashboard_has_queries() -> None:
    assert len(QUERIES) >= 12


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=[where for where, _ in QUERIES])
def test_every_query_uses_exposed_metrics_and_their_labels(where: str, expr: str) -> None:
    exposed = scraped_metrics()
    names = metric_names(expr)
    assert names, f"{where}: no metric found in {expr!r}"
    assert names <= exposed.keys(), f"{where}: not exposed: {sorted(names - exposed.keys())}"
    for metric, labels in selectors(expr):
        assert labels <= exposed[metric], f"{where}: {metric} has no label {sorted(labels - exposed[metric])}"
    available = set().union(*(exposed[name] for name in names))
    grouped = grouping_labels(expr)
    assert grouped <= available, f"{where}: no metric in the query has {sorted(grouped - available)}"


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=[where for where, _ in QUERIES])
def test_the_namespace_filter_applies_exactly_to_series_of_a_loops_namespace(where: str, expr: str) -> None:
    """A per-loop operator series is in its loop's namespace, a model server's in its pod's: both filter.
    An operator-wide series is in the operator's namespace, which a loop's filter would hide."""
    if where == "variable namespace":
        return
    exposed = exposed_metrics()
    for metric, labels in selectors(expr):
        operator_wide = metric.startswith("feedbackloop_") and "namespace" not in exposed[metric]
        assert ("namespace" in labels) != operator_wide, f"{where}: {metric}"
    for name in metric_names(expr) - {metric for metric, _ in selectors(expr)}:
        assert name.startswith("feedbackloop_") and "namespace" not in exposed[name], f"{where}: {name}"


def test_the_loop_variables_list_every_loop_whatever_it_monitors() -> None:
    """feedbackloop_loop_ready has one series per loop; a loop not yet evaluated has no metric value."""
    variables = {variable["name"]: variable for variable in load_dashboard()["templating"]["list"]}
    assert variables["namespace"]["definition"] == "label_values(feedbackloop_loop_ready, namespace)"
    assert variables["loop"]["definition"].startswith("label_values(feedbackloop_loop_ready{")


def test_the_dashboard_covers_every_operator_metric_and_the_server_essentials() -> None:
    used = set().union(*(metric_names(expr) for _, expr in QUERIES))
    families = {name.removesuffix("_total").removesuffix("_bucket") for name in used}
    operator_families = {next(iter(collector.describe())).name for collector in operator_collectors()}
    assert operator_families <= families
    assert {
        "fbl_feedback_correct",
        "fbl_feedback",
        "fbl_predictions",
        "fbl_prediction_latency_seconds",
        "fbl_feature_drift_psi",
    } <= families


def test_panel_ids_are_unique_and_targets_use_the_datasource_variable() -> None:
    dashboard = load_dashboard()
    panels = list(all_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        assert all(target["datasource"] == panel["datasource"] for target in panel["targets"])
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))


def test_the_dashboard_declares_its_variables() -> None:
    dashboard = load_dashboard()
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "loop", "model"} <= variables.keys()
    used = "".join(expr for _, expr in QUERIES)
    for name in ("namespace", "loop", "model"):
        assert f"${name}" in used, f"variable {name} is declared but no query uses it"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"]
