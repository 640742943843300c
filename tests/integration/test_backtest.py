"""`feedbackloop backtest` end to end: the CLI, a scratch Prometheus from the cached binary, the real trainer
and decide(), on short seeded streams whose drift is known.

The stream: 200 rows an hour for 30 hours, label y = [x1 + 0.5 x2 > 0]. The loop judges accuracy over the last
hour of the serving version's feedback, must stay >= 0.75 `for` 1h, retrains on the last 90 minutes of
feedback with a Recent holdout, and gates a candidate at accuracy >= 0.75 and no worse than the current model.
Decisions fall on the hourly steps, so a breach seen at one step fires a retrain at the next.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

import harness

IN_CI = os.environ.get("CI", "").lower() == "true"
ROWS, PER_HOUR, CHANGE_AT = 6000, 200, 3000  # the concept changes 15h in
START = pd.Timestamp("2024-01-01", tz="UTC")
SCOPED = "{model={{model}},model_version={{model_version}}}"

LOOP: dict[str, Any] = {
    "apiVersion": "feedbackloop.dev/v1alpha1",
    "kind": "FeedbackLoop",
    "metadata": {"name": "synth", "namespace": "demo"},
    "spec": {
        "mode": "Auto",
        "target": {"deployment": "synth-server", "container": "server"},
        "monitoring": {
            "interval": "60s",
            "labels": {"model": "synth"},
            "metrics": [
                {
                    "name": "accuracy",
                    "query": f"sum(increase(fbl_feedback_correct_total{SCOPED}[1h]))"
                    f" / sum(increase(fbl_feedback_total{SCOPED}[1h]))",
                    "samplesQuery": f"sum(increase(fbl_feedback_total{SCOPED}[1h]))",
                    "minSamples": 20,
                    "threshold": {"min": 0.75},
                    "for": "1h",
                }
            ],
        },
        "retrain": {
            "cooldown": "6h",
            "trainer": {"estimator": {"class": "sklearn.linear_model.LogisticRegression"}, "label": "y"},
            "data": {
                "training": "s3://data/synth/train/",
                "feedback": "s3://data/synth/feedback/",
                "feedbackWindow": "90m",
                "holdoutStrategy": "Recent",
                "holdoutFraction": 0.2,
            },
        },
        "artifacts": {"bucket": "models", "credentialsSecret": "s3"},
        "validation": {
            "gates": [{"metric": "accuracy", "min": 0.75}, {"metric": "accuracy", "minDeltaVsCurrent": 0.0}]
        },
        "rollout": {
            "analysis": {"interval": "10m", "count": 3, "failureLimit": 1, "metrics": ["accuracy"]},
        },
    },
}


@pytest.fixture(scope="module")
def prometheus_bin() -> Path:
    path = harness.binary_paths()["prometheus"]
    if not os.access(path, os.X_OK):
        message = f"no Prometheus binary at {path}: run `make cluster-build`"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def stream(kind: str, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=ROWS), rng.normal(size=ROWS)
    y = (x1 + 0.5 * x2 > 0).astype(int)
    if kind == "drift":
        y[CHANGE_AT:] = 1 - y[CHANGE_AT:]  # an abrupt concept flip
    elif kind == "poison":
        y[CHANGE_AT : CHANGE_AT + 3 * PER_HOUR] = rng.integers(0, 2, size=3 * PER_HOUR)  # 3h of coin flips
    times = START + pd.to_timedelta(np.arange(ROWS) * 3600 / PER_HOUR, unit="s")
    return pd.DataFrame({"ts": times, "x1": x1, "x2": x2, "y": y})


def backtest(tmp_path: Path, prometheus_bin: Path, kind: str, run: str = "a") -> tuple[dict[str, Any], Path]:
    data = tmp_path / f"{kind}.parquet"
    if not data.exists():
        stream(kind).to_parquet(data, index=False)
    loop = tmp_path / "loop.yaml"
    loop.write_text(yaml.safe_dump(LOOP))
    out = tmp_path / f"out-{kind}-{run}"
    argv = [
        sys.executable,
        "-m",
        "feedbackloop_backtest.cli",
        "backtest",
        "-f",
        str(loop),
        "--data",
        str(data),
    ]
    argv += ["--time-column", "ts", "--step", "1h", "--prometheus-bin", str(prometheus_bin)]
    done = subprocess.run([*argv, "--output", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "summary.json").read_text()), out


def decisions(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "decisions.jsonl").read_text().splitlines()]


def transitions(out: Path, kind: str) -> list[dict[str, Any]]:
    return [
        {**line, "transition": t}
        for line in decisions(out)
        for t in line.get("transitions", [])
        if t["kind"] == kind
    ]


def test_an_abrupt_drift_triggers_one_retrain_whose_candidate_is_rolled_out(
    tmp_path: Path, prometheus_bin: Path
) -> None:
    summary, out = backtest(tmp_path, prometheus_bin, "drift")
    assert summary["retrains"] == 1
    assert summary["rejected_candidates"] == 0
    assert summary["rollbacks"] == 0
    assert summary["final_version"] == "v2"
    (started,) = transitions(out, "RetrainStarted")
    # Breaching at the first step that sees the flip (15:36), breached an hour later (`for: 1h`).
    assert started["time"] == "2024-01-01T16:36:00Z"
    assert started["transition"]["trigger"] == "Breach"
    assert started["trainer"]["succeeded"]
    assert [t["transition"]["outcome"] for t in transitions(out, "RolloutFinished")] == ["RolledOut"]
    loop = summary["prequential_accuracy"]
    assert loop > summary["baselines"]["never"]["prequential_accuracy"] + 0.3
    assert summary["baselines"]["periodic"]["retrains"] == 2  # every 10 steps of 30
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The same spec, data and seeds give the same decisions, byte for byte.
    _, again = backtest(tmp_path, prometheus_bin, "drift", run="b")
    assert (out / "decisions.jsonl").read_bytes() == (again / "decisions.jsonl").read_bytes()


def test_a_stream_without_drift_triggers_no_retrain(tmp_path: Path, prometheus_bin: Path) -> None:
    summary, out = backtest(tmp_path, prometheus_bin, "none")
    assert summary["retrains"] == 0
    assert summary["final_version"] == "v1"
    assert summary["prequential_accuracy"] > 0.95
    evaluated = [m for line in decisions(out) for m in line.get("evaluation", [])]
    assert evaluated[-1]["verdict"] == "Healthy"


def test_a_poisoned_label_segment_is_refused_by_the_gates(tmp_path: Path, prometheus_bin: Path) -> None:
    summary, out = backtest(tmp_path, prometheus_bin, "poison")
    assert summary["retrains"] == 1
    assert summary["rejected_candidates"] == 1
    assert summary["rollouts"] == 0
    assert summary["final_version"] == "v1"
    (gated,) = [line for line in decisions(out) if "gates" in line]
    verdicts = {(g["threshold"], g["verdict"]) for g in gated["gates"]}
    assert ("min 0.75", "Failed") in verdicts
