#!/usr/bin/env python3
"""Trainer overhead: feedbackloop-train against a bare "read parquet + fit + predict holdout" baseline.

Both run in the same session, on the same synthetic data in the same S3 server, each in a fresh process so
that peak RSS is its own. One discarded warm-up of each fills the page cache and the S3 server's; then the
two alternate which goes first. Prints the phases of both sides, medians over --repeats and, last, one line:
overhead_ratio=<x> trainer_s=<t> baseline_s=<t> peak_rss_mb=<m>
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "cluster"))

import harness  # noqa: E402 - the test harness starts the S3 server
from feedbackloop.adapters.artifacts import ArtifactStore, s3_client  # noqa: E402

ESTIMATOR = "sklearn.ensemble.HistGradientBoostingClassifier"
PARAMS = {"max_iter": 50, "random_state": 0}
CHUNK_ROWS = 250_000

BASELINE = r"""
import io, json, resource, sys, time
import boto3, numpy as np, pyarrow.parquet as pq, pandas as pd
from botocore.config import Config
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder
start = time.monotonic()
bucket, prefix = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", config=Config(request_checksum_calculation="when_required", s3={"addressing_style": "path"}))
keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"])
frame = pd.concat([pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=k)["Body"].read())).to_pandas() for k in keys], ignore_index=True)
loaded = time.monotonic()
mask = np.random.default_rng(0).random(len(frame)) < 0.2
train, holdout = frame[~mask], frame[mask]
features = [c for c in frame.columns if c != "label"]
categorical = [c for c in features if c.startswith("c")]
numeric = [c for c in features if c not in categorical]
model = Pipeline([("p", ColumnTransformer([("n", "passthrough", numeric), ("c", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical)])), ("m", HistGradientBoostingClassifier(max_iter=50, random_state=0))])
model.fit(train[features], train["label"])
fitted = time.monotonic()
accuracy = float((model.predict(holdout[features]) == holdout["label"]).mean())
end = time.monotonic()
phases = {"load": loaded - start, "fit": fitted - loaded, "predict": end - fitted}
print(json.dumps({"seconds": end - start, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "accuracy": accuracy, "phases": phases}))
"""

TRAINER = r"""
import json, resource, sys, time
from feedbackloop_train.main import main
start = time.monotonic()
code = main()
print(json.dumps({"seconds": time.monotonic() - start, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "code": code}))
"""


def synthetic(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(rows, 15))
    frame = pd.DataFrame(numeric, columns=[f"n{i}" for i in range(15)])
    for i in range(5):
        frame[f"c{i}"] = rng.choice(["a", "b", "c", "d"], rows)
    signal = numeric[:, 0] + 0.5 * numeric[:, 1] - numeric[:, 2] + (frame["c0"] == "a") * 0.8
    frame["label"] = (signal + rng.normal(0, 0.5, rows) > 0).astype(int)
    return frame


def run(code: str, args: list[str], env: dict[str, str]) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"run failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def trainer_phases(durations: dict[str, float], seconds: float) -> dict[str, float]:
    """The manifest's durations; "other" is the rest of the run: settings, S3 client, uploads, manifest."""
    return {
        "load": durations["loadSeconds"],
        "fit": durations["fitSeconds"],
        "evaluate": durations["evaluateSeconds"],
        "artifacts": durations["totalSeconds"]
        - durations["loadSeconds"]
        - durations["fitSeconds"]
        - durations["evaluateSeconds"],
        "other": seconds - durations["totalSeconds"],
    }


def phase_text(phases: dict[str, float]) -> str:
    return "[" + " ".join(f"{name} {value:.2f}" for name, value in phases.items()) + "]"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=1, help="measured runs per side, after one warm-up")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="fbl-bench-") as tmp,
        harness.running_cluster(Path(tmp), 1) as cluster,
    ):
        endpoints = cluster.endpoints
        assert endpoints is not None
        store = ArtifactStore(
            s3_client(
                endpoints.s3_endpoint_url, harness.S3_REGION, endpoints.s3_access_key, endpoints.s3_secret_key
            )
        )
        store.create_bucket("bench")
        frame = synthetic(args.rows)
        for start in range(0, args.rows, CHUNK_ROWS):
            buffer = io.BytesIO()
            frame.iloc[start : start + CHUNK_ROWS].to_parquet(buffer, index=False)
            store.put_bytes("bench", f"train/part-{start // CHUNK_ROWS:04d}.parquet", buffer.getvalue())
        print(
            f"data: {args.rows} rows x 20 features in {len(range(0, args.rows, CHUNK_ROWS))} Parquet objects"
        )

        env = {
            **os.environ,
            "AWS_ENDPOINT_URL_S3": endpoints.s3_endpoint_url,
            "AWS_ACCESS_KEY_ID": endpoints.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": endpoints.s3_secret_key,
            "AWS_DEFAULT_REGION": harness.S3_REGION,
            "FBL_TRAINING_DATA_URI": "s3://bench/train/",
            "FBL_LABEL_COLUMN": "label",
            "FBL_ESTIMATOR_CLASS": ESTIMATOR,
            "FBL_ESTIMATOR_PARAMS": json.dumps(PARAMS),
            "FBL_TERMINATION_MESSAGE_PATH": str(Path(tmp) / "termination-log"),
        }
        baseline, trainer = [], []
        for repeat in range(args.repeats + 1):
            version = f"v{repeat}"
            version_env = {**env, "FBL_VERSION": version, "FBL_ARTIFACT_URI": f"s3://bench/models/{version}/"}
            if repeat % 2:
                trainer_run = run(TRAINER, [], version_env)
                baseline_run = run(BASELINE, ["bench", "train/"], env)
            else:
                baseline_run = run(BASELINE, ["bench", "train/"], env)
                trainer_run = run(TRAINER, [], version_env)
            manifest = store.read_manifest(f"s3://bench/models/{version}/", version).raw
            trainer_run["phases"] = trainer_phases(manifest["durations"], trainer_run["seconds"])
            label = "warm-up (discarded)" if repeat == 0 else f"repeat {repeat}"
            print(
                f"{label}: baseline {baseline_run['seconds']:.2f}s {baseline_run['rss_mb']:.0f} MB "
                f"(accuracy {baseline_run['accuracy']:.3f}) {phase_text(baseline_run['phases'])}; "
                f"trainer {trainer_run['seconds']:.2f}s {trainer_run['rss_mb']:.0f} MB "
                f"{phase_text(trainer_run['phases'])}"
            )
            if repeat:
                baseline.append(baseline_run)
                trainer.append(trainer_run)
    baseline_s = statistics.median(r["seconds"] for r in baseline)
    trainer_s = statistics.median(r["seconds"] for r in trainer)
    for side, runs in (("baseline", baseline), ("trainer", trainer)):
        medians = {name: statistics.median(r["phases"][name] for r in runs) for name in runs[0]["phases"]}
        print(f"median phases, {side}: {phase_text(medians)}")
    peak = max(r["rss_mb"] for r in trainer)
    baseline_peak = max(r["rss_mb"] for r in baseline)
    print(
        f"peak RSS: trainer {peak:.0f} MB, baseline {baseline_peak:.0f} MB, ratio {peak / baseline_peak:.2f}"
    )
    print(
        f"overhead_ratio={trainer_s / baseline_s:.3f} trainer_s={trainer_s:.2f} baseline_s={baseline_s:.2f} peak_rss_mb={peak:.0f}"
    )


if __name__ == "__main__":
    main()
