"""The backtest's pure parts: input checks, time steps and label windows, prequential scoring, baselines, the
server's counters and their OTLP encoding, the in-memory S3 behind the real ArtifactStore, and a short replay
through the real decide() with a stand-in for Prometheus."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.core.observations import ArtifactCheck, QueryOutcome, QueryResult
from feedbackloop.core.spec import Task, TrainerSpec
from feedbackloop.kubectl_plugin import cli as plugin
from feedbackloop_backtest import cli
from feedbackloop_backtest.errors import BacktestError
from feedbackloop_backtest.history import prepare_history, read_table
from feedbackloop_backtest.replay import Replay, ReplayConfig
from feedbackloop_backtest.s3memory import MemoryS3Client
from feedbackloop_backtest.scoring import aggregate, label_window, per_row, per_step, run_baselines, step_of
from feedbackloop_backtest.series import ServerCounters, otlp_payload, scrape_grid

HOUR = 3600.0


def stream(n: int = 400, per_hour: int = 40, flip_at: int | None = None, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    y = (x1 + 0.5 * x2 > 0).astype(int)
    if flip_at is not None:
        y[flip_at:] = 1 - y[flip_at:]
    times = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(np.arange(n) * HOUR / per_hour, unit="s")
    return pd.DataFrame({"ts": times, "x1": x1, "x2": x2, "y": y})


def loop_body(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "target": {"deployment": "server", "container": "server"},
        "monitoring": {
            "labels": {"model": "m"},
            "metrics": [
                {
                    "name": "accuracy",
                    "query": "sum(increase(fbl_feedback_correct_total{model={{model}}}[1h]))"
                    " / sum(increase(fbl_feedback_total{model={{model}}}[1h]))",
                    "threshold": {"min": 0.8},
                }
            ],
        },
        "retrain": {
            "trainer": {"estimator": {"class": "sklearn.linear_model.LogisticRegression"}, "label": "y"},
            "data": {"training": "s3://data/train/", "feedback": "s3://data/feedback/"},
        },
        "artifacts": {"bucket": "models", "credentialsSecret": "s3"},
        **overrides,
    }
    return {
        "apiVersion": "feedbackloop.dev/v1alpha1",
        "kind": "FeedbackLoop",
        "metadata": {"name": "m"},
        "spec": spec,
    }


# ---------------------------------------------------------------- input checks


def test_history_is_sorted_split_at_two_percent_and_loses_its_time_column() -> None:
    history = prepare_history(stream(), "h.parquet", "ts", "y", None)
    assert history.start_index == 8  # ceil(400 * 0.02)
    assert history.features == ["x1", "x2"]
    assert "ts" not in history.frame.columns
    assert history.times[1] - history.times[0] == pytest.approx(90.0)


def test_start_flag_picks_the_first_row_at_or_after_it() -> None:
    data = stream()
    start = float(pd.Timestamp("2024-01-01T01:00:00Z").timestamp())
    assert prepare_history(data, "h", "ts", "y", start).start_index == 40


@pytest.mark.parametrize(
    ("change", "time_column", "start", "expected"),
    [
        (lambda d: d, "when", None, "--time-column when: no such column in h.csv (columns: ts, x1, x2, y)"),
        (lambda d: d.drop(columns=["y"]), "ts", None, "spec.retrain.trainer.label y: no such column"),
        (lambda d: d.iloc[:0], "ts", None, "--data h.csv: the history has no rows"),
        (lambda d: d.iloc[::-1], "ts", None, "--time-column ts: the history is not sorted by time (row 1"),
        (lambda d: d.assign(ts=pd.NaT), "ts", None, "--time-column ts: 400 rows have no timestamp"),
        (lambda d: d.assign(ts="yesterday"), "ts", None, "--time-column ts: not timestamps"),
        (lambda d: d[["ts", "y"]], "ts", None, "--data h.csv: no feature columns besides ts and y"),
        (lambda d: d, "ts", 0.0, "--start: fewer than 2 rows come before it"),
        (lambda d: d, "ts", 4e9, "--start: no row comes at or after it"),
    ],
)
def test_bad_history_is_refused_naming_the_flag_or_column(
    change: Any, time_column: str, start: float | None, expected: str
) -> None:
    with pytest.raises(BacktestError) as caught:
        prepare_history(change(stream()), "h.csv", time_column, "y", start)
    assert expected in str(caught.value)


def test_missing_and_unknown_files_name_the_flag(tmp_path: Path) -> None:
    with pytest.raises(BacktestError, match=r"--data .*nope.parquet: no such file"):
        read_table(str(tmp_path / "nope.parquet"))
    (tmp_path / "h.json").write_text("{}")
    with pytest.raises(BacktestError, match=r"not a .parquet, .pq or .csv file"):
        read_table(str(tmp_path / "h.json"))
    stream().to_csv(tmp_path / "h.csv", index=False)
    assert len(read_table(str(tmp_path / "h.csv"))) == 400


def test_a_spec_that_does_not_parse_is_refused_naming_the_field(tmp_path: Path) -> None:
    body = loop_body()
    body["spec"]["monitoring"]["metrics"][0]["threshold"] = {}
    path = tmp_path / "loop.yaml"
    path.write_text(json.dumps(body))
    with pytest.raises(BacktestError, match=r"spec.monitoring.metrics.0.threshold"):
        cli.load_loop(str(path))
    path.write_text(json.dumps({**body, "spec": {**loop_body()["spec"], "mode": "Observe", "retrain": None}}))
    with pytest.raises(BacktestError, match=r"spec.retrain and spec.artifacts are needed"):
        cli.load_loop(str(path))


def test_cli_errors_are_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text(json.dumps(loop_body()))
    stream().to_parquet(tmp_path / "h.parquet", index=False)
    argv = ["backtest", "-f", str(path), "--data", str(tmp_path / "h.parquet"), "--time-column", "ts"]
    code = cli.main([*argv, "--step", "0s", "--output", str(tmp_path / "out")])
    assert code == 1
    assert capsys.readouterr().err == "error: --step 0s: must be positive\n"
    code = cli.main([*argv, "--time-column", "when", "--output", str(tmp_path / "out")])
    assert code == 1
    assert capsys.readouterr().err.startswith("error: --time-column when: no such column")


# ---------------------------------------------------------------- time and scoring


def test_steps_hold_their_end_and_not_their_start() -> None:
    times = np.array([0.0, 1.0, HOUR, HOUR + 1, 2 * HOUR])
    assert step_of(times, 0.0, HOUR).tolist() == [0, 0, 0, 1, 1]


def test_label_window_counts_only_labels_known_by_now() -> None:
    times = np.array([0.0, HOUR, 2 * HOUR, 3 * HOUR])
    assert label_window(times, 3 * HOUR, None, HOUR).tolist() == [True, True, True, False]
    assert label_window(times, 3 * HOUR, 2 * HOUR, 0.0).tolist() == [False, False, True, True]


def test_prequential_accuracy_and_rmse_skip_rows_without_a_label() -> None:
    truth = np.array([1, 0, 1, np.nan])
    scores = per_row(Task.CLASSIFICATION, truth, np.array([1, 1, 1, 0]))
    assert aggregate(Task.CLASSIFICATION, scores) == pytest.approx(2 / 3)
    errors = per_row(Task.REGRESSION, np.array([1.0, 3.0]), np.array([2.0, 1.0]))
    assert aggregate(Task.REGRESSION, errors) == pytest.approx(math.sqrt((1 + 4) / 2))
    assert per_step(Task.CLASSIFICATION, scores, np.array([0, 0, 2, 2]), 3) == [0.5, None, 1.0]
    assert aggregate(Task.CLASSIFICATION, np.array([])) is None


def test_baselines_never_retrains_and_periodic_retrains_every_p_steps() -> None:
    data = stream(n=400, per_hour=40, flip_at=200)
    history = prepare_history(data, "h", "ts", "y", None)
    trainer = TrainerSpec.model_validate(
        {"label": "y", "estimator": {"class": "sklearn.linear_model.LogisticRegression"}}
    )
    never, periodic = run_baselines(
        trainer, history.frame, history.times, history.features, history.start_index, HOUR, 10, 0.0, 3, 2
    )
    assert periodic.retrains == 3  # at steps 3, 6 and 9
    replayed = len(data) - history.start_index
    assert len(never.scores) == len(periodic.scores) == replayed
    # The retrain at step 9 (start + 9h) sees only rows of the last two steps, all after the flip at 5h.
    after = slice(
        int(np.searchsorted(history.times, history.start_time + 9 * HOUR)) - history.start_index, None
    )
    assert never.scores[after].mean() < 0.2
    assert periodic.scores[after].mean() > 0.8


# ---------------------------------------------------------------- the server's counters


def test_counters_count_as_the_server_does() -> None:
    counters = ServerCounters("m", "classification")
    counters.predicted(10.0, "v1", 1)
    counters.predicted(20.0, "v1", 1)
    counters.labelled(30.0, "v1", 1, 0)  # wrong: fbl_feedback_correct still exists, at 0
    counters.labelled(40.0, "v1", 1, 1)
    grid = scrape_grid(0.0, 60.0, 0.0, 15.0)
    assert grid == [15.0, 30.0, 45.0, 60.0]
    values = {c.name: points for c, points in counters.samples(grid, {"v1"})}
    assert values["fbl_predictions"] == [(15.0, 1.0), (30.0, 2.0), (45.0, 2.0), (60.0, 2.0)]
    assert values["fbl_feedback_correct"] == [(30.0, 0.0), (45.0, 1.0), (60.0, 1.0)]
    assert counters.samples(grid, {"v2"}) == []
    regression = ServerCounters("m", "regression")
    regression.labelled(1.0, "v1", 3.0, 1.0)
    names = {c.name: c.value_at(1.0) for c, _ in regression.samples([1.0], {"v1"})}
    assert names == {"fbl_feedback": 1.0, "fbl_feedback_abs_error": 2.0, "fbl_feedback_squared_error": 4.0}


def test_otlp_payload_is_a_monotonic_cumulative_sum_per_counter() -> None:
    counters = ServerCounters("m", "classification")
    counters.predicted(1.5, "v1", 3)
    payload = otlp_payload(counters.samples([2.0], {"v1"}))
    (metric,) = payload["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
    assert metric["name"] == "fbl_predictions"
    assert metric["sum"]["isMonotonic"] is True
    assert metric["sum"]["aggregationTemporality"] == 2
    (point,) = metric["sum"]["dataPoints"]
    assert point["timeUnixNano"] == "2000000000"
    assert point["startTimeUnixNano"] == "1500000000"
    assert point["asDouble"] == 3.0
    labels = {a["key"]: a["value"]["stringValue"] for a in point["attributes"]}
    assert labels == {"model": "m", "model_version": "v1", "role": "champion"}


# ---------------------------------------------------------------- the artifact store in memory


def test_the_real_artifact_store_verifies_versions_in_memory() -> None:
    client = MemoryS3Client()
    store = ArtifactStore(client)
    assert store.probe_bucket("models").not_found
    client.create_bucket("models")
    assert store.probe_bucket("models").ok
    uri = "s3://models/ns/loop/v1/"
    assert store.verify_version(uri, "v1").check is ArtifactCheck.MANIFEST_MISSING
    files = {"model.joblib": b"model", "metrics.json": b'{"candidate": {"accuracy": 0.9}}'}
    store.write_version(uri, "v1", files, {})
    verified = store.verify_version(uri, "v1")
    assert verified.check is ArtifactCheck.VERIFIED
    assert verified.metrics == {"candidate": {"accuracy": 0.9}}
    store.put_bytes("models", "ns/loop/v1/model.joblib", b"tampered")
    assert store.verify_version(uri, "v1").check is ArtifactCheck.DIGEST_MISMATCH
    assert store.list_keys("models", "ns/loop/") == [
        "ns/loop/v1/manifest.json",
        "ns/loop/v1/metrics.json",
        "ns/loop/v1/model.joblib",
    ]


# ---------------------------------------------------------------- a short replay, Prometheus stood in for


class SilentPrometheus:
    """Answers every query with no data, and keeps what was pushed."""

    url = "http://prometheus.invalid"

    def __init__(self) -> None:
        self.pushed: list[dict[str, Any]] = []
        self.queries: list[tuple[str, float]] = []

    def push(self, payload: dict[str, Any]) -> None:
        self.pushed.append(payload)

    def query(self, query: str, at: float, timeout_seconds: float) -> QueryResult:
        self.queries.append((query, at))
        if query == "vector(1)":
            return QueryResult.of(1.0)
        return QueryResult(QueryOutcome.EMPTY, message="no series")


def test_a_replay_serves_the_initial_model_and_holds_without_data(tmp_path: Path) -> None:
    body = loop_body()
    _, spec = cli.load_loop_body(body)
    history = prepare_history(stream(), "h", "ts", "y", None)
    prometheus = SilentPrometheus()
    config = ReplayConfig(step=pd.Timedelta(hours=1).to_pytimedelta())
    replay = Replay(body, spec, history, prometheus, config, tmp_path)  # type: ignore[arg-type]
    result = replay.run()
    assert result.steps == 10
    assert result.retrains == 0
    assert set(result.versions) == {"v1"}
    assert float(np.nanmean(result.scores)) > 0.7  # the concept never changes; v1 saw only 8 rows
    # One evaluation per step boundary, at the simulated time: the start and ten boundaries.
    times = sorted({at for query, at in prometheus.queries if query != "vector(1)"})
    assert len(times) == 11
    assert times[1] - times[0] == HOUR
    pushed = [p["resourceMetrics"][0]["scopeMetrics"][0]["metrics"] for p in prometheus.pushed]
    assert {m["name"] for metrics in pushed for m in metrics} == {
        "fbl_predictions",
        "fbl_feedback",
        "fbl_feedback_correct",
    }
    assert result.decisions[0]["serving"] == "v1"
    assert result.decisions[0]["evaluation"][0]["verdict"] == "NoData"


# ---------------------------------------------------------------- kubectl feedbackloop backtest


@pytest.mark.parametrize("argv", [["backtest", "-f", "l.yaml"], ["-n", "ns", "backtest", "-f", "l.yaml"]])
def test_the_kubectl_plugin_hands_backtest_over_without_importing_it(
    monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    ran: list[list[str]] = []

    def execv(path: str, command: list[str]) -> None:
        ran.append(command)

    monkeypatch.setattr("os.execv", execv)
    assert plugin.main(argv) == 1  # execv returned, which a real one never does
    (command,) = ran
    assert command[-3:] == ["backtest", "-f", "l.yaml"]
    assert command[0].endswith("feedbackloop") or command[1:3] == ["-m", "feedbackloop_backtest.cli"]
