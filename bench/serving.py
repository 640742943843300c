#!/usr/bin/env python3
"""Model server throughput and latency against the same pipeline scored in-process, in the same run.

A churn-like model (HistGradientBoosting in the trainer's default pipeline) is written as a verified version
to the test S3 server; `python -m feedbackloop_serve` serves it on loopback with the shared prediction store
(Redis). The load generator is a minimal HTTP/1.1 keep-alive client (asyncio streams, requests encoded once),
so the figures are the server's, not a client library's; it keeps --concurrency requests in flight for
--seconds at batch sizes 1 and 100. The baseline calls the same pipeline's predict_proba in-process on the
same rows. Also printed: GET /healthz on the same client (the HTTP floor), /healthz while a 10,000-row batch
is scored, the store's cost per request (a second server without the store, batch 1, one client), and bytes
per stored prediction in Redis with the server's RSS before and after filling it. Then the cost of a stage
(issue 19): the same server with the same version loaded again as a shadow candidate, and as a split
candidate answering half the requests, each measured in alternating slices against a server without one
(latency at one client and at --concurrency clients, and RSS per pod after the load).

The last line is: predict_rps=<r> p99_ms=<l> baseline_ratio=<x> rows_ratio=<y>
where predict_rps and p99_ms are for batch size 1 under --concurrency clients, baseline_ratio is the server's
median latency for one client over the in-process median at batch size 1, and rows_ratio is the server's
rows/s with --concurrency clients at batch size 100 over the in-process rows/s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
from redis import Redis
from threadpoolctl import threadpool_limits

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


class Connection:
    """One keep-alive HTTP/1.1 connection; a request is bytes encoded once, an answer is read by Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def send(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def post(path: str, body: Any) -> bytes:
    payload = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"


async def load(
    port: int, requests: list[tuple[bytes, int]], seconds: float, concurrency: int
) -> dict[str, float]:
    """Keep `concurrency` requests in flight for `seconds`; each entry is (request, rows in it)."""
    latencies: list[float] = []
    rows = 0
    deadline = time.monotonic() + seconds

    async def worker(offset: int) -> None:
        nonlocal rows
        connection = await Connection.open("127.0.0.1", port)
        index = offset
        while time.monotonic() < deadline:
            request, count = requests[index % len(requests)]
            started = time.perf_counter()
            status, answer = await connection.send(request)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                raise SystemExit(f"answered {status}: {answer[:300]!r}")
            rows += count
            index += concurrency
        connection.close()

    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.monotonic() - started
    return summary(latencies, len(latencies) / elapsed, rows / elapsed)


def summary(latencies: list[float], per_second: float, rows_per_second: float) -> dict[str, float]:
    latencies.sort()
    return {
        "requests_per_s": per_second,
        "rows_per_s": rows_per_second,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "max_ms": 1000 * latencies[-1],
    }


async def healthz_while_scoring(port: int, rows: list[dict[str, Any]]) -> dict[str, float]:
    """/healthz polled on its own connection while one 10,000-row batch is scored."""
    big = await Connection.open("127.0.0.1", port)
    probe = await Connection.open("127.0.0.1", port)
    scoring = asyncio.create_task(big.send(post("/predict", {"rows": (rows * 3)[:10_000]})))
    latencies: list[float] = []
    started = time.perf_counter()
    while not scoring.done():
        begin = time.perf_counter()
        await probe.send(HEALTHZ)
        latencies.append(time.perf_counter() - begin)
        await asyncio.sleep(0.002)
    status, _ = await scoring
    batch_s = time.perf_counter() - started
    big.close()
    probe.close()
    assert status == 200
    result = summary(latencies, 0.0, 0.0)
    result["batch_ms"] = 1000 * batch_s
    result["probes"] = len(latencies)
    return result


def baseline(pipeline: Any, frame: pd.DataFrame, batch: int, seconds: float) -> dict[str, float]:
    """The same pipeline scored in-process on one thread (as one server worker scores), as fast as it goes."""
    with threadpool_limits(limits=1):
        return _baseline(pipeline, frame, batch, seconds)


def _baseline(pipeline: Any, frame: pd.DataFrame, batch: int, seconds: float) -> dict[str, float]:
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
    parser.add_argument("--seconds", type=float, default=1.5, help="length of one measurement slice")
    parser.add_argument("--rounds", type=int, default=5, help="alternating server / in-process slices")
    parser.add_argument("--concurrency", type=int, default=8, help="clients in flight for throughput")
    parser.add_argument(
        "--stored", type=int, default=100_000, help="predictions to store for the memory figures"
    )
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
        frame = churn(5_000, seed=2)
        rows = rows_of(frame)
        with serving(Path(tmp), endpoints, uri, sha256, shared_store=False) as (bare_port, _):
            asyncio.run(load(bare_port, requests_of(rows, 1)[:50], 1.0, 1))  # warm-up, discarded
            without_store = asyncio.run(load(bare_port, requests_of(rows, 1), args.seconds * args.rounds, 1))
        with serving(Path(tmp), endpoints, uri, sha256, shared_store=True) as (port, pid):
            results = measure(port, rows, frame, pipeline, args)
            floor = asyncio.run(load(port, [(HEALTHZ, 0)], args.seconds, 1))
            during = asyncio.run(healthz_while_scoring(port, rows))
            memory = fill_store(port, pid, endpoints.redis_url, rows, args.stored)
        stage_cost(Path(tmp), endpoints, uri, sha256, rows, args)
    one = results[1]
    store_cost = one["alone"]["p50_ms"] - without_store["p50_ms"]
    print(
        f"HTTP floor (GET /healthz, one client): p50 {floor['p50_ms']:.3f} ms | store cost per request (batch 1, "
        f"one client): p50 {one['alone']['p50_ms']:.3f} ms with, {without_store['p50_ms']:.3f} ms without: "
        f"{store_cost:+.3f} ms"
    )
    print(
        f"/healthz while a 10,000-row batch is scored ({during['batch_ms']:.0f} ms, {during['probes']:.0f} probes): "
        f"p50 {during['p50_ms']:.2f} ms, max {during['max_ms']:.2f} ms"
    )
    print(
        f"stored predictions: {memory['stored']} in Redis, {memory['bytes_per_prediction']:.0f} bytes each; "
        f"server RSS {memory['rss_before_mb']:.0f} MB before, {memory['rss_after_mb']:.0f} MB after"
    )
    print(
        f"predict_rps={one['loaded']['requests_per_s']:.0f} p99_ms={one['loaded']['p99_ms']:.2f} "
        f"baseline_ratio={one['ratios']['latency']:.2f} rows_ratio={results[100]['ratios']['rows']:.2f}"
    )


def requests_of(rows: list[dict[str, Any]], batch: int) -> list[tuple[bytes, int]]:
    return [
        (post("/predict", {"rows": rows[i : i + batch]}), batch)
        for i in range(0, len(rows) - batch + 1, batch)
    ]


def measure(
    port: int, rows: list[dict[str, Any]], frame: pd.DataFrame, pipeline: Any, args: argparse.Namespace
) -> dict[int, dict[str, dict[str, float]]]:
    """Server and in-process slices alternate, so both see the same machine; ratios are medians per round."""
    results: dict[int, dict[str, dict[str, float]]] = {}
    for batch in (1, 100):
        requests = requests_of(rows, batch)
        asyncio.run(load(port, requests[:50], 1.0, args.concurrency))  # warm-up, discarded
        rounds: list[dict[str, dict[str, float]]] = []
        for _ in range(args.rounds):
            rounds.append(
                {
                    "alone": asyncio.run(load(port, requests, args.seconds, 1)),
                    "baseline": baseline(pipeline, frame[FEATURES], batch, args.seconds),
                    "loaded": asyncio.run(load(port, requests, args.seconds, args.concurrency)),
                }
            )
        alone, bare, loaded = (median_of(rounds, side) for side in ("alone", "baseline", "loaded"))
        latency_ratio = statistics.median(r["alone"]["p50_ms"] / r["baseline"]["p50_ms"] for r in rounds)
        rows_ratio = statistics.median(
            r["loaded"]["rows_per_s"] / r["baseline"]["rows_per_s"] for r in rounds
        )
        results[batch] = {
            "alone": alone,
            "loaded": loaded,
            "baseline": bare,
            "ratios": {"latency": latency_ratio, "rows": rows_ratio},
        }
        print(
            f"batch {batch:>3} (median of {args.rounds} rounds): one client p50 {alone['p50_ms']:.2f} ms "
            f"p99 {alone['p99_ms']:.2f} ms; {args.concurrency} clients {loaded['requests_per_s']:.0f} req/s "
            f"{loaded['rows_per_s']:.0f} rows/s p99 {loaded['p99_ms']:.2f} ms | in-process "
            f"{bare['rows_per_s']:.0f} rows/s p50 {bare['p50_ms']:.2f} ms | latency ratio {latency_ratio:.2f}, "
            f"rows/s ratio {rows_ratio:.2f}"
        )
    return results


def median_of(rounds: list[dict[str, dict[str, float]]], side: str) -> dict[str, float]:
    return {key: statistics.median(r[side][key] for r in rounds) for key in rounds[0][side]}


@contextlib.contextmanager
def serving(
    tmp: Path,
    endpoints: harness.Endpoints,
    uri: str,
    sha256: str,
    shared_store: bool,
    extra: dict[str, str] | None = None,
) -> Iterator[tuple[int, int]]:
    """(port, pid) of a server process, stopped at the end."""
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
        "FBL_SCORING_THREADS": "1",  # one worker: the in-process baseline scores on one thread too
        "FBL_DRAIN_SECONDS": "0",
    }
    if shared_store:
        key = base64.b64encode(secrets.token_bytes(32)).decode()
        env |= {"FBL_REDIS_URL": endpoints.redis_url, "FBL_PREDICTION_ID_KEYS": f"bench:{key}"}
    env |= extra or {}
    log = tmp / f"server-{port}.log"
    with log.open("wb") as handle:
        server = subprocess.Popen(
            [sys.executable, "-m", "feedbackloop_serve"], env=env, stdout=handle, stderr=subprocess.STDOUT
        )
    try:
        ready = _candidate_ready if extra and "CANDIDATE_MODE" in extra else _ready
        if not harness.wait_until(lambda: ready(f"http://127.0.0.1:{port}"), bool, timeout=60):
            raise SystemExit(f"server not ready:\n{log.read_text()[-3000:]}")
        yield port, server.pid
    finally:
        server.terminate()
        server.wait(30)


def fill_store(
    port: int, pid: int, redis_url: str, rows: list[dict[str, Any]], count: int
) -> dict[str, float]:
    """Store `count` predictions through /predict; Redis's used_memory and the server's RSS around it."""
    redis = Redis.from_url(redis_url)
    before, rss_before = int(redis.info("memory")["used_memory"]), rss_mb(pid)
    requests = [(post("/predict", {"rows": (rows * 2)[i : i + 1000]}), 1000) for i in range(0, 5000, 1000)]

    async def send() -> None:
        connection = await Connection.open("127.0.0.1", port)
        for index in range(count // 1000):
            status, answer = await connection.send(requests[index % len(requests)][0])
            assert status == 200, answer[:300]
        connection.close()

    asyncio.run(send())
    after = int(redis.info("memory")["used_memory"])
    stored = count // 1000 * 1000
    return {
        "stored": stored,
        "bytes_per_prediction": (after - before) / stored,
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_mb(pid),
    }


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _candidate_ready(url: str) -> bool:
    try:
        answer = httpx.get(f"{url}/readyz", timeout=2)
    except httpx.HTTPError:
        return False
    return answer.status_code == 200 and answer.json().get("candidate", {}).get("status") == "loaded"


def stage_cost(
    tmp: Path, endpoints: harness.Endpoints, uri: str, sha256: str, rows: list[dict[str, Any]], args: Any
) -> None:
    """Latency and RSS with a candidate beside the champion, against a server without one, same run."""
    requests = requests_of(rows, 1)
    candidate = {"CANDIDATE_MODEL_URI": uri, "CANDIDATE_MODEL_SHA256": sha256}
    stages = {
        "shadow": {**candidate, "CANDIDATE_MODE": "shadow"},
        "split": {**candidate, "CANDIDATE_MODE": "split", "CANDIDATE_WEIGHT": "0.5"},
    }
    for name, extra in stages.items():
        with (
            serving(tmp, endpoints, uri, sha256, True) as (plain_port, plain_pid),
            serving(tmp, endpoints, uri, sha256, True, extra) as (stage_port, stage_pid),
        ):
            for port in (plain_port, stage_port):
                asyncio.run(load(port, requests[:50], 1.0, args.concurrency))  # warm-up, discarded
            rounds = [
                {
                    "plain": asyncio.run(load(plain_port, requests, args.seconds, 1)),
                    "stage": asyncio.run(load(stage_port, requests, args.seconds, 1)),
                    "plain_loaded": asyncio.run(load(plain_port, requests, args.seconds, args.concurrency)),
                    "stage_loaded": asyncio.run(load(stage_port, requests, args.seconds, args.concurrency)),
                }
                for _ in range(args.rounds)
            ]
            plain_rss, stage_rss = rss_mb(plain_pid), rss_mb(stage_pid)
        plain, stage = median_of(rounds, "plain"), median_of(rounds, "stage")
        plain_loaded, stage_loaded = median_of(rounds, "plain_loaded"), median_of(rounds, "stage_loaded")
        ratio = statistics.median(r["stage"]["p50_ms"] / r["plain"]["p50_ms"] for r in rounds)
        loaded_ratio = statistics.median(
            r["stage_loaded"]["p99_ms"] / r["plain_loaded"]["p99_ms"] for r in rounds
        )
        print(
            f"{name} candidate (batch 1, median of {args.rounds} rounds): one client p50 {stage['p50_ms']:.2f} ms "
            f"vs {plain['p50_ms']:.2f} ms without (ratio {ratio:.2f}), p99 {stage['p99_ms']:.2f} vs "
            f"{plain['p99_ms']:.2f} ms; {args.concurrency} clients p99 {stage_loaded['p99_ms']:.2f} vs "
            f"{plain_loaded['p99_ms']:.2f} ms (ratio {loaded_ratio:.2f}), {stage_loaded['requests_per_s']:.0f} vs "
            f"{plain_loaded['requests_per_s']:.0f} req/s; RSS {stage_rss:.0f} MB vs {plain_rss:.0f} MB "
            f"({stage_rss - plain_rss:+.0f} MB per pod)"
        )


if __name__ == "__main__":
    main()
