#!/usr/bin/env python3
"""Model server throughput and latency against a bare in-process model.predict, in the same run.

A churn-like model (HistGradientBoosting in the trainer's default pipeline) is written as a verified version
to the test S3 server; `python -m feedbackloop_serve` serves it on loopback. An asyncio load generator in this
process keeps --concurrency requests in flight for --seconds, at batch sizes 1 and 100. The baseline calls the
same pipeline's predict_proba in-process on the same rows. Then the prediction store is filled to its bound and
the server's RSS is read.

The last line is: predict_rps=<r> p99_ms=<l> baseline_ratio=<x>
where predict_rps and p99_ms are for batch size 1 under --concurrency clients, and baseline_ratio is the
server's median latency for one client over the bare predict's median, at batch size 1 (how many times slower
than calling the model in-process). Latency is measured with one client, so it holds no queueing.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "cluster"))

import harness  # noqa: E402 - the test harness starts the S3 server
from feedbackloop.adapters.artifacts import ArtifactStore, s3_client  # noqa: E402
from feedbackloop_train import model as trainer_model  # noqa: E402
from feedbackloop_train import reference  # noqa: E402

FEATURES = ["tenure", "monthly", "plan", "region"]


def churn(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "tenure": rng.integers(1, 72, rows).astype(float),
            "monthly": rng.normal(60, 15, rows).round(2),
            "plan": rng.choice(["basic", "pro", "max"], rows),
            "region": rng.choice(["north", "south"], rows),
        }
    )
    risk = (frame["tenure"] < 24).astype(int) + (frame["plan"] == "basic") + (frame["monthly"] > 70)
    frame["churned"] = (risk >= 2).astype(int)
    return frame


def write_version(store: ArtifactStore, bucket: str) -> tuple[str, str, Any, pd.DataFrame]:
    train = churn(20_000, seed=1)
    pipeline = trainer_model.build_pipeline(
        "sklearn.ensemble.HistGradientBoostingClassifier", {"max_iter": 50}, "classification", train, FEATURES
    )
    trainer_model.fit(pipeline, train, FEATURES, "churned")
    buffer = io.BytesIO()
    joblib.dump(pipeline, buffer)
    files = {
        "model.joblib": buffer.getvalue(),
        "metrics.json": json.dumps({"task": "classification", "candidate": {"accuracy": 1.0}}).encode(),
        "reference.json": json.dumps(reference.build_reference(train, FEATURES)).encode(),
    }
    uri = f"s3://{bucket}/bench/ml/churn/v1/"
    manifest = store.write_version(uri, "v1", files, {"features": FEATURES, "label": "churned"})
    return uri, manifest["files"]["model.joblib"]["sha256"], pipeline, train


def rows_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {"tenure": float(r.tenure), "monthly": float(r.monthly), "plan": r.plan, "region": r.region}
        for r in frame.itertuples()
    ]


async def load(
    url: str, batches: list[list[dict[str, Any]]], seconds: float, concurrency: int
) -> dict[str, float]:
    latencies: list[float] = []
    rows = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def worker(offset: int) -> None:
            nonlocal rows
            index = offset
            while time.monotonic() < deadline:
                batch = batches[index % len(batches)]
                started = time.perf_counter()
                response = await client.post("/predict", json={"rows": batch})
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise SystemExit(f"/predict answered {response.status_code}: {response.text[:300]}")
                rows += len(batch)
                index += concurrency

        started = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "requests_per_s": len(latencies) / elapsed,
        "rows_per_s": rows / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def baseline(pipeline: Any, frame: pd.DataFrame, batch: int, seconds: float) -> dict[str, float]:
    """The same pipeline scored in-process, one call per batch, as fast as it goes."""
    frames = [
        frame.iloc[i : i + batch].reset_index(drop=True) for i in range(0, len(frame) - batch + 1, batch)
    ]
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    index = 0
    started = time.monotonic()
    while time.monotonic() < deadline:
        part = frames[index % len(frames)]
        begin = time.perf_counter()
        pipeline.predict_proba(trainer_model.prepare(part, pipeline, FEATURES))
        latencies.append(time.perf_counter() - begin)
        index += 1
    elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "requests_per_s": len(latencies) / elapsed,
        "rows_per_s": len(latencies) * batch / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="load per batch size")
    parser.add_argument("--concurrency", type=int, default=8, help="clients in flight for throughput")
    parser.add_argument("--store-size", type=int, default=100_000, help="FBL_PREDICTION_STORE_SIZE to fill")
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
        uri, sha256, pipeline, _ = write_version(store, "bench")
        port = harness.free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FBL_", "MODEL_", "AWS_"))},
            "AWS_ACCESS_KEY_ID": endpoints.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": endpoints.s3_secret_key,
            "AWS_ENDPOINT_URL_S3": endpoints.s3_endpoint_url,
            "AWS_DEFAULT_REGION": harness.S3_REGION,
            "MODEL_URI": uri,
            "MODEL_SHA256": sha256,
            "MODEL_NAME": "churn",
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "FBL_PREDICTION_STORE_SIZE": str(args.store_size),
        }
        log = Path(tmp) / "server.log"
        with log.open("wb") as handle:
            server = subprocess.Popen(
                [sys.executable, "-m", "feedbackloop_serve"], env=env, stdout=handle, stderr=subprocess.STDOUT
            )
        url = f"http://127.0.0.1:{port}"
        try:
            ready = harness.wait_until(lambda: _ready(url), bool, timeout=60)
            if not ready:
                raise SystemExit(f"server not ready:\n{log.read_text()[-3000:]}")
            frame = churn(5_000, seed=2)
            rows = rows_of(frame)
            before = rss_mb(server.pid)
            filled = _fill_store(url, rows, args.store_size)
            after = rss_mb(server.pid)
            print(
                f"prediction store: {filled} entries; server RSS {before:.0f} MB empty, {after:.0f} MB full "
                f"(~{(after - before) * 1024 * 1024 / max(filled, 1):.0f} bytes per stored prediction)"
            )
            results: dict[int, dict[str, dict[str, float]]] = {}
            for batch in (1, 100):
                batches = [rows[i : i + batch] for i in range(0, len(rows) - batch + 1, batch)]
                asyncio.run(load(url, batches[:20], 1.0, args.concurrency))  # warm-up, discarded
                alone = asyncio.run(load(url, batches, args.seconds / 2, 1))
                loaded = asyncio.run(load(url, batches, args.seconds / 2, args.concurrency))
                bare = baseline(pipeline, frame[FEATURES], batch, args.seconds / 2)
                results[batch] = {"alone": alone, "loaded": loaded, "baseline": bare}
                print(
                    f"batch {batch:>3}: one client p50 {alone['p50_ms']:.2f} ms p99 {alone['p99_ms']:.2f} ms; "
                    f"{args.concurrency} clients {loaded['requests_per_s']:.0f} req/s {loaded['rows_per_s']:.0f} "
                    f"rows/s p50 {loaded['p50_ms']:.2f} ms p99 {loaded['p99_ms']:.2f} ms | in-process "
                    f"{bare['requests_per_s']:.0f} calls/s {bare['rows_per_s']:.0f} rows/s p50 {bare['p50_ms']:.2f} "
                    f"ms | latency ratio {alone['p50_ms'] / bare['p50_ms']:.2f}, "
                    f"rows/s ratio {loaded['rows_per_s'] / bare['rows_per_s']:.2f}"
                )
        finally:
            server.terminate()
            server.wait(30)
    one = results[1]
    print(
        f"predict_rps={one['loaded']['requests_per_s']:.0f} p99_ms={one['loaded']['p99_ms']:.2f} "
        f"baseline_ratio={one['alone']['p50_ms'] / one['baseline']['p50_ms']:.2f}"
    )


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _fill_store(url: str, rows: list[dict[str, Any]], size: int) -> int:
    with httpx.Client(base_url=url, timeout=60) as client:
        sent = 0
        while sent < size:
            batch = rows[: min(1000, size - sent)]
            assert client.post("/predict", json={"rows": batch}).status_code == 200
            sent += len(batch)
        text = client.get("/metrics").text
    line = next(line for line in text.splitlines() if line.startswith("fbl_prediction_store_entries "))
    return int(float(line.split()[1]))


if __name__ == "__main__":
    main()
