#!/usr/bin/env python3
"""`make backtest-demo`: a FeedbackLoop backtested on the SEA concepts stream, in one command.

SEA (Street and Kim, "A streaming ensemble algorithm (SEA) for large-scale classification", KDD 2001) is the
public drifting-stream benchmark also shipped by MOA and river (river.datasets.synth.SEA): three features
uniform on [0, 10], label f1 + f2 <= theta, 10 % label noise, and abrupt drifts as theta moves through the
concepts 8, 9, 7 and 9.5. This script generates it with the published definition and a fixed seed (no
download), writes a loop that retrains on a breach of feedback accuracy, and runs `feedbackloop backtest`
with a scratch Prometheus. Out: backtest-demo-out/ (summary.json, decisions.jsonl, timeline.png).

    backtest_demo.py --prometheus-bin PATH [--out DIR] [--rows N] [--steps S]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

THETAS = (8.0, 9.0, 7.0, 9.5)  # SEA's four concepts, in the published order
NOISE = 0.1

LOOP = {
    "apiVersion": "feedbackloop.dev/v1alpha1",
    "kind": "FeedbackLoop",
    "metadata": {"name": "sea", "namespace": "demo"},
    "spec": {
        "mode": "Auto",
        "target": {"deployment": "sea-server", "container": "server"},
        "monitoring": {
            "interval": "60s",
            "labels": {"model": "sea"},
            "metrics": [
                {
                    "name": "accuracy",
                    "query": "sum(increase(fbl_feedback_correct_total{model={{model}},model_version={{model_version}}}[2h]))"
                    " / sum(increase(fbl_feedback_total{model={{model}},model_version={{model_version}}}[2h]))",
                    "samplesQuery": "sum(increase(fbl_feedback_total{model={{model}},model_version={{model_version}}}[2h]))",
                    "minSamples": 50,
                    "threshold": {"min": 0.8},
                    "for": "1h",
                }
            ],
        },
        "retrain": {
            "cooldown": "4h",
            "trainer": {
                "estimator": {
                    "class": "sklearn.tree.DecisionTreeClassifier",
                    "params": {"max_depth": 6, "random_state": 0},
                },
                "label": "label",
            },
            "data": {
                "training": "s3://data/sea/train/",
                "feedback": "s3://data/sea/feedback/",
                "feedbackWindow": "6h",
                "holdoutStrategy": "Recent",
                "holdoutFraction": 0.2,
            },
        },
        "artifacts": {"bucket": "models", "credentialsSecret": "feedbackloop-s3"},
        "validation": {
            "gates": [{"metric": "accuracy", "min": 0.8}, {"metric": "accuracy", "minDeltaVsCurrent": 0.0}]
        },
        "rollout": {"analysis": {"interval": "15m", "count": 3, "failureLimit": 1, "metrics": ["accuracy"]}},
    },
}


def sea(rows: int, hours: int, seed: int = 42) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    features = rng.uniform(0, 10, size=(rows, 3))
    concept = np.minimum(np.arange(rows) * len(THETAS) // rows, len(THETAS) - 1)
    theta = np.asarray(THETAS)[concept]
    label = (features[:, 0] + features[:, 1] <= theta).astype(int)
    noisy = rng.random(rows) < NOISE
    label[noisy] = 1 - label[noisy]
    times = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(
        np.arange(rows) * hours * 3600 / rows, unit="s"
    )
    return pd.DataFrame(
        {"ts": times, "f1": features[:, 0], "f2": features[:, 1], "f3": features[:, 2], "label": label}
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus-bin", required=True)
    parser.add_argument("--out", default="backtest-demo-out")
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--steps", type=int, default=200, help="hours of stream, one step each")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sea(args.rows, args.steps).to_parquet(out / "sea.parquet", index=False)
    (out / "loop.yaml").write_text(yaml.safe_dump(LOOP, sort_keys=False))
    from feedbackloop_backtest.cli import main as backtest

    started = time.monotonic()
    code = backtest(
        [
            "backtest", "-f", str(out / "loop.yaml"), "--data", str(out / "sea.parquet"),
            "--time-column", "ts", "--step", "1h", "--label-delay", "30m",
            "--prometheus-bin", args.prometheus_bin, "--output", str(out), "--progress", "always",
            "--periodic-every", "24", "--periodic-window", "24",
        ]
    )  # fmt: skip
    print(f"backtest took {time.monotonic() - started:.1f}s; see {out}/timeline.png")
    return code


if __name__ == "__main__":
    sys.exit(main())
