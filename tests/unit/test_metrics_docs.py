"""README.md documents every operator metric, docs/serving.md every model server metric, each with its type
and exactly the labels it has: a metric or label added, renamed or dropped without its doc row fails here."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from feedbackloop_serve.metrics import ServerMetrics
from prometheus_client.metrics import MetricWrapperBase

from feedbackloop import metrics as operator_metrics

REPO = Path(__file__).resolve().parents[2]
DOCS = {"operator": REPO / "README.md", "server": REPO / "docs" / "serving.md"}
DOC_TYPES = {"counter": "counter", "gauge": "gauge", "gauge (1)": "gauge", "histogram": "histogram"}


def documented(path: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """metric -> (type, labels) from the `| metric | type | labels | meaning |` table."""
    text = path.read_text()
    table = text[text.index("| metric | type | labels | meaning |") :].split("\n\n", 1)[0]
    rows: dict[str, tuple[str, frozenset[str]]] = {}
    for line in table.splitlines()[2:]:
        names, kind, labels, _meaning = (cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip("|")))
        # "(and `le`)" names a label of the _bucket series only, which the family's labels do not list.
        labels = re.sub(r"\(and `le`\)", "", labels)
        for name in re.findall(r"`([a-z_][a-z0-9_]*)`", names):
            rows[name] = (DOC_TYPES[kind], frozenset(re.findall(r"`([a-z_][a-z0-9_]*)`", labels)))
    return rows


def exposed(collectors: list[MetricWrapperBase]) -> dict[str, tuple[str, frozenset[str]]]:
    """Exposition name (counters with _total) -> (type, label names)."""
    found: dict[str, tuple[str, frozenset[str]]] = {}
    for collector in collectors:
        name, kind = str(collector._name), str(collector._type)
        found[f"{name}_total" if kind == "counter" else name] = (kind, frozenset(collector._labelnames))
    return found


def operator_exposed() -> dict[str, tuple[str, frozenset[str]]]:
    return exposed([v for v in vars(operator_metrics).values() if isinstance(v, MetricWrapperBase)])


def server_exposed() -> dict[str, tuple[str, frozenset[str]]]:
    server = ServerMetrics()
    server.watch_drift(lambda: ("m", "v1"), lambda: {"x": 0.1})
    found = exposed([v for v in vars(server).values() if isinstance(v, MetricWrapperBase)])
    for family in server.registry.collect():  # the drift collector is no MetricWrapperBase
        if family.name not in found and family.name + "_total" not in found:
            labels = frozenset().union(*(sample.labels for sample in family.samples))
            found[family.name] = (family.type, labels)
    return found


@pytest.mark.parametrize(("doc", "expose"), [("operator", operator_exposed), ("server", server_exposed)])
def test_every_metric_is_documented_with_its_type_and_exactly_its_labels(
    doc: str, expose: Callable[[], dict[str, tuple[str, frozenset[str]]]]
) -> None:
    assert documented(DOCS[doc]) == expose()


def test_the_table_reader_finds_types_and_labels() -> None:
    rows = documented(DOCS["server"])
    assert rows["fbl_feedback_refused_total"] == ("counter", frozenset({"model", "reason"}))
    assert rows["fbl_prediction_latency_seconds"] == (
        "histogram",
        frozenset({"model", "model_version", "role"}),
    )
    assert rows["fbl_model_ready"] == ("gauge", frozenset())
    assert documented(DOCS["operator"])["feedbackloop_loop_ready"] == (
        "gauge",
        frozenset({"namespace", "loop", "reason"}),
    )
