#!/usr/bin/env python3
"""`make bench-loop`: does a loop with the default policy beat `never` and `periodic` on drifting streams?

The streams are river's synthetic generators (river.datasets.synth, bundled in its wheel; nothing is
downloaded), each with a known drift and four seeds:

- sea_abrupt: SEA (Street and Kim 2001), 10 % label noise, its four concepts (variants 0, 1, 2, 3) in turn,
  switching abruptly at each quarter of the replay;
- agrawal_abrupt: Agrawal's loan-function generator, functions 0 → 2 → 5 switching at each third;
- hyperplane_gradual: a rotating-hyperplane concept blended into another by river's ConceptDriftStream over
  a fifth of the replay (a gradual drift), 5 % noise;
- stagger_recurring: STAGGER's boolean concepts 0 → 1 → 2 → 0 → 1 → 2, one per sixth: concepts recur;
- sea_stable: SEA concept 0 throughout (no drift): a loop should not lose to `never` on it.

Each stream is replayed by `feedbackloop backtest` (in-process, with a scratch Prometheus) for one loop spec
that writes only what a user must: the label, the data prefixes, and a threshold on the served version's
feedback accuracy, set a few points under what the initial model scores before the replay starts (what a
user sees on their dashboard). Everything else (for, cooldown, the retrain data window, gates, analysis) is
the operator's default. The table compares the loop with the two baselines of the backtest: `never` (the
loop's own initial model for ever) and `periodic` (from that model, retrain every --periodic-every steps on
the last --periodic-window steps of labelled rows, no gates). The last line is the worst margin: the loop minus the better baseline.

    loop_efficacy.py [--prometheus-bin PATH] [--quick] [--streams a,b] [--seeds 1,2,3,4] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from river.datasets import synth

STEP_ROWS = 100  # rows per hourly step
INITIAL_STEPS = 20  # steps of rows before --start: the initial model's training data
STEPS = 200  # replayed steps
QUICK_STEPS = 80
MARGIN = 0.05  # the threshold sits this far under the initial model's accuracy
LABEL_DELAY = "10m"
PERIODIC_EVERY = 10
PERIODIC_WINDOW = 10
SCOPED = "{model={{model}},model_version={{model_version}}}"
ESTIMATOR: dict[str, Any] = {
    "class": "sklearn.tree.DecisionTreeClassifier",
    "params": {"max_depth": 8, "random_state": 0},
}

Sample = tuple[dict[Any, Any], Any]


def segments(
    makers: Sequence[Callable[..., Iterator[Sample]]], initial: int, replayed: int
) -> Iterator[Sample]:
    """Concepts one after another, switching abruptly at equal shares of the replay (the first concept also
    makes the rows before it)."""
    length = replayed // len(makers)
    for index, make in enumerate(makers):
        count = length + (initial if index == 0 else 0) + (replayed % len(makers) if index == 0 else 0)
        yield from itertools.islice(make(), count)


def sea_abrupt(seed: int, initial: int, replayed: int) -> Iterator[Sample]:
    variants = [0, 1, 2, 3]
    makers = [lambda v=v: iter(synth.SEA(variant=v, noise=0.1, seed=seed * 10 + v)) for v in variants]
    return segments(makers, initial, replayed)


def sea_stable(seed: int, initial: int, replayed: int) -> Iterator[Sample]:
    return iter(synth.SEA(variant=0, noise=0.1, seed=seed))


def agrawal_abrupt(seed: int, initial: int, replayed: int) -> Iterator[Sample]:
    functions = [0, 2, 5]
    makers = [
        lambda f=f: iter(synth.Agrawal(classification_function=f, seed=seed * 10 + f)) for f in functions
    ]
    return segments(makers, initial, replayed)


def hyperplane_gradual(seed: int, initial: int, replayed: int) -> Iterator[Sample]:
    before = synth.Hyperplane(seed=seed, n_features=6, noise_percentage=0.05)
    after = synth.Hyperplane(seed=seed + 1000, n_features=6, noise_percentage=0.05)
    return iter(
        synth.ConceptDriftStream(
            before, after, position=initial + replayed // 2, width=replayed // 5, seed=seed
        )
    )


def stagger_recurring(seed: int, initial: int, replayed: int) -> Iterator[Sample]:
    functions = [0, 1, 2, 0, 1, 2]
    makers = [
        lambda i=i, f=f: iter(synth.STAGGER(classification_function=f, seed=seed * 10 + i))
        for i, f in enumerate(functions)
    ]
    return segments(makers, initial, replayed)


STREAMS: dict[str, Callable[[int, int, int], Iterator[Sample]]] = {
    "sea_abrupt": sea_abrupt,
    "agrawal_abrupt": agrawal_abrupt,
    "hyperplane_gradual": hyperplane_gradual,
    "stagger_recurring": stagger_recurring,
    "sea_stable": sea_stable,
}
DRIFTING = {"sea_abrupt", "agrawal_abrupt", "hyperplane_gradual", "stagger_recurring"}


def frame(name: str, seed: int, steps: int) -> pd.DataFrame:
    initial, replayed = INITIAL_STEPS * STEP_ROWS, steps * STEP_ROWS
    rows = list(itertools.islice(STREAMS[name](seed, initial, replayed), initial + replayed))
    features = pd.DataFrame([x for x, _ in rows])
    features.columns = [f"f{c}" if isinstance(c, int) else str(c) for c in features.columns]
    data = features.astype(float)
    data["label"] = np.asarray([int(y) for _, y in rows])
    # One row every 36 s: STEP_ROWS rows an hour, from a fixed epoch.
    data.insert(
        0, "ts", pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(np.arange(len(rows)) * 36, "s")
    )
    return data


def threshold(data: pd.DataFrame) -> float:
    """What the initial model scores on the newest fifth of its own data, less MARGIN: the bound a user would
    write after looking at their model's accuracy."""
    from sklearn.tree import DecisionTreeClassifier

    before = data.iloc[: INITIAL_STEPS * STEP_ROWS]
    cut = int(len(before) * 0.8)
    features = [c for c in data.columns if c not in ("ts", "label")]
    model = DecisionTreeClassifier(**ESTIMATOR["params"]).fit(before[features][:cut], before["label"][:cut])
    score = float((model.predict(before[features][cut:]) == before["label"][cut:]).mean())
    return round(score - MARGIN, 2)


def loop_spec(name: str, minimum: float) -> dict[str, Any]:
    """A loop that writes only thresholds: every policy knob is the operator's default."""
    return {
        "apiVersion": "feedbackloop.dev/v1alpha1",
        "kind": "FeedbackLoop",
        "metadata": {"name": name.replace("_", "-"), "namespace": "bench"},
        "spec": {
            "target": {"deployment": "server", "container": "server"},
            "monitoring": {
                "labels": {"model": name},
                "metrics": [
                    {
                        "name": "accuracy",
                        "query": f"sum(increase(fbl_feedback_correct_total{SCOPED}[1h]))"
                        f" / sum(increase(fbl_feedback_total{SCOPED}[1h]))",
                        "samplesQuery": f"sum(increase(fbl_feedback_total{SCOPED}[1h]))",
                        "minSamples": 30,
                        "threshold": {"min": minimum},
                    }
                ],
            },
            "retrain": {
                "trainer": {"estimator": ESTIMATOR, "label": "label"},
                "data": {"training": f"s3://data/{name}/train/", "feedback": f"s3://data/{name}/feedback/"},
            },
            "artifacts": {"bucket": "models", "credentialsSecret": "feedbackloop-s3"},
        },
    }


def override(spec: dict[str, Any], assignment: str) -> None:
    """--set retrain.cooldown=2h: a dotted spec path and a YAML value (what a knob's before/after is run with)."""
    path, _, text = assignment.partition("=")
    *parents, last = path.split(".")
    node: Any = spec
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = yaml.safe_load(text)
    else:
        node[last] = yaml.safe_load(text)


def run_one(
    name: str, seed: int, steps: int, prometheus_bin: str, out: Path, sets: list[str]
) -> dict[str, Any]:
    from feedbackloop_backtest.cli import main as backtest

    where = out / f"{name}-{seed}"
    where.mkdir(parents=True, exist_ok=True)
    data = frame(name, seed, steps)
    data.to_parquet(where / "history.parquet", index=False)
    minimum = threshold(data)
    loop = loop_spec(name, minimum)
    for assignment in sets:
        override(loop["spec"], assignment)
    (where / "loop.yaml").write_text(yaml.safe_dump(loop, sort_keys=False))
    start = data["ts"].iloc[INITIAL_STEPS * STEP_ROWS - 1].isoformat().replace("+00:00", "Z")
    argv = [
        "backtest", "-f", str(where / "loop.yaml"), "--data", str(where / "history.parquet"),
        "--time-column", "ts", "--step", "1h", "--label-delay", LABEL_DELAY, "--start", start,
        "--prometheus-bin", prometheus_bin, "--output", str(where), "--progress", "never",
        "--periodic-every", str(PERIODIC_EVERY), "--periodic-window", str(PERIODIC_WINDOW),
    ]  # fmt: skip
    started = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()):
        code = backtest(argv)
    if code != 0:
        raise SystemExit(f"backtest of {name} seed {seed} failed (exit {code}); see {where}")
    summary: dict[str, Any] = json.loads((where / "summary.json").read_text())
    summary["seconds"] = time.monotonic() - started
    summary["threshold"] = minimum
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--prometheus-bin",
        default=os.environ.get("FBL_PROMETHEUS_BIN")
        or str(Path.home() / ".cache/feedbackloop/bin/prometheus-v0.316.0"),
    )
    parser.add_argument("--quick", action="store_true", help=f"one seed, {QUICK_STEPS} steps per stream")
    parser.add_argument("--streams", default=",".join(STREAMS), help="comma-separated stream names")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 1,2,3,4; --quick: 1)")
    parser.add_argument("--out", default="bench-loop-out")
    parser.add_argument("--json", help="also write every run's figures to this file")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a spec field, e.g. --set retrain.cooldown=2h (to measure a knob; the table is of the "
        "defaults without it)",
    )
    args = parser.parse_args()
    steps = QUICK_STEPS if args.quick else STEPS
    seeds = [int(s) for s in (args.seeds or ("1" if args.quick else "1,2,3,4")).split(",")]
    names = [n for n in args.streams.split(",") if n]
    unknown = sorted(set(names) - set(STREAMS))
    if unknown:
        parser.error(f"unknown streams: {', '.join(unknown)} (known: {', '.join(STREAMS)})")
    out = Path(args.out)
    header = (
        f"{'stream':<22} {'seed':>4} {'min':>5} {'loop':>7} {'retr':>5} {'rej':>4} {'rb':>3} {'reuse':>5} "
        f"{'never':>7} {'periodic':>8} {'retr':>5} {'margin':>7} {'secs':>5}"
    )
    print(header)
    print("-" * len(header))
    worst: tuple[float, str] | None = None
    results = []
    for name in names:
        for seed in seeds:
            s = run_one(name, seed, steps, args.prometheus_bin, out, args.set)
            loop = s["prequential_accuracy"]
            never = s["baselines"]["never"]["prequential_accuracy"]
            periodic = s["baselines"]["periodic"]["prequential_accuracy"]
            margin = loop - max(never, periodic)
            results.append({"stream": name, "seed": seed, **s})
            print(
                f"{name:<22} {seed:>4} {s['threshold']:>5.2f} {loop:>7.4f} {s['retrains']:>5} "
                f"{s['rejected_candidates']:>4} {s['rollbacks']:>3} {s.get('reused_candidates', 0):>5} {never:>7.4f} {periodic:>8.4f} "
                f"{s['baselines']['periodic']['retrains']:>5} {margin:>+7.4f} {s['seconds']:>5.1f}",
                flush=True,
            )
            if worst is None or margin < worst[0]:
                worst = (margin, f"{name} seed {seed}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, sort_keys=True))
    assert worst is not None
    print(f"worst margin (loop - better baseline): {worst[0]:+.4f} on {worst[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
