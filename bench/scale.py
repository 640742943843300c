#!/usr/bin/env python3
"""The operator at scale: N FeedbackLoops in one namespace, against a no-op kopf operator on the same objects.

One test control plane (kwok nodes, Prometheus, S3) serves every size in --n, each in a fresh namespace
(deleted afterwards). Per size: N serving Deployments (one replica each; kwok runs their pods) and N loops,
each with one accuracy metric plus a samplesQuery, `interval: 10s`, `for: 10s`, two validation gates, and the
operator's default FBL_TICK_SECONDS=5. One exporter serves a series per loop to Prometheus (scraped every
second). Then, one after the other, never at the same time:

1. The no-op kopf operator (bench/noop_operator.py) watches the loops: after --settle seconds, an idle window
   of --window seconds gives its CPU, RSS, and the API and Prometheus requests made with it running.
2. The operator under test (`python -m feedbackloop` from --operator-src, --shards processes) starts on the
   existing loops. Measured: the time from its start until every loop has status.observedGeneration equal to
   its generation and a status.lastEvaluation; then, after --settle seconds, the same idle window: evaluation
   lag (actual minus scheduled evaluation time: the operator's feedbackloop_evaluation_lag_seconds histogram
   when it exports one, else (t_i - t_i-1) - interval of the status.lastEvaluation.time values seen on a watch
   of the loops, a watch the bench keeps open only then), API requests/s by resource and verb from the
   kube-apiserver's apiserver_request_total minus the no-op window's, status writes per loop per 10 minutes,
   Prometheus /api/v1/query requests/s (its own prometheus_http_requests_total), CPU cores (utime+stime from
   /proc) and RSS (VmRSS) per process.
3. --breaches loops (default 20) drop below their threshold at once in the exporter. Measured on watches,
   by the time the bench receives each change: breach -> retrain Job seen, minus `for`; the Job's Complete
   condition -> the serving Deployment's MODEL_URI changed. The retrain pods run on kwok, which completes them
   with the termination message a trainer writes (the digest of a candidate the bench wrote to S3 beforehand,
   as the integration tests do); the Job controller marks the Job Complete, the operator verifies the
   candidate, checks its gates and rolls it out. FBL_MAX_CONCURRENT_RETRAINS is --breaches, so the operator-
   wide cap does not serialise the Jobs. The bench writes no object status itself.
4. 409 and 429 answers to the requests the operator makes (feedbackloops, Job creates, Deployment patches,
   Events) over the operator's whole run.

API figures are the operator window minus the no-op window (kwok's node heartbeats, the controllers' and
Prometheus' own requests cancel out); WATCH is left out of requests/s (a watch is counted when it ends).
With --shards K, K operator processes run, process i with FBL_SHARD_SELECTOR=feedbackloop.dev/shard=shard-<i>,
and loop j is labelled shard-<j mod K>; the figures are also printed per shard (CPU and RSS per process; the
last line sums CPU and takes the largest RSS). --quick (N=50, 10 breaches, 10 s settle, 20 s windows) takes a
few minutes.

Prints a table per size, then one row per size in the shape of the issue's table, and last, one line for the
largest size: n= observed_s= lag_p50_s= lag_p99_s= breach_job_p50_s= breach_job_p99_s= complete_patch_p50_s=
complete_patch_p99_s= api_rps= patch_rps= get_rps= status_writes_per_loop_10min= prom_qps= cpu_cores=
rss_mb= noop_rss_mb= rss_ratio= conflicts_409= throttled_429= (nan when not measured).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "cluster"))

import harness  # noqa: E402 - the test harness starts the control plane, kwok, Prometheus and S3
from feedbackloop.adapters.artifacts import ArtifactStore, s3_client  # noqa: E402
from feedbackloop.api import (  # noqa: E402
    API_VERSION,
    COMPONENT_RETRAIN,
    ENV_MODEL_SHA256,
    ENV_MODEL_URI,
    GROUP,
    LABEL_COMPONENT,
    LABEL_LOOP,
    MODEL_VERSION_ANNOTATION,
    PLURAL,
    VERSION,
)
from feedbackloop.core import contract  # noqa: E402
from operator_process import ARTIFACT_BUCKET, ModelExporter, OperatorProcess  # noqa: E402

INTERVAL_S = 10.0
FOR_S = 10.0
TICK_SECONDS = "5"  # the operator's default, said out loud: OperatorProcess sets 1 for the tests
HEALTHY, BREACHED, THRESHOLD = 0.95, 0.5, 0.85
PREFIX = "scale/"
CREDENTIALS_SECRET = "feedbackloop-s3-credentials"  # noqa: S105 - a Secret's name
SHARD_LABEL = "feedbackloop.dev/shard"
BREACH_LABEL = "bench.feedbackloop.dev/breach"
SERVER_CONTAINER = "server"
# What the operator reads and writes; the API figures are for these resources.
RESOURCES = ("feedbackloops", "jobs", "deployments", "events", "leases", "pods")
# The requests only the operator makes on them, for its 409s and 429s (the controllers PUT jobs/status, ...).
OPERATOR_VERBS = {
    "feedbackloops": None,  # any verb
    "jobs": {"POST", "PATCH", "DELETE"},
    "deployments": {"PATCH", "APPLY"},
    "events": {"POST", "PATCH"},
}
PODS_PER_NODE = 100  # the harness's kwok nodes allow 110
LAG_METRIC = "feedbackloop_evaluation_lag_seconds"
NOOP = REPO / "bench" / "noop_operator.py"
NAN = float("nan")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------------ the API server
class KubeError(RuntimeError):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:300]}")
        self.status = status


class Kube:
    """A small JSON client on the harness's admin token: one keep-alive connection per thread, no models."""

    def __init__(self, endpoints: harness.Endpoints) -> None:
        url = urllib.parse.urlsplit(endpoints.api_server_url)
        self.host, self.port = url.hostname or harness.LOCALHOST, url.port or 443
        self.context = ssl.create_default_context(cafile=str(endpoints.ca_file))
        self.headers = {"Authorization": f"Bearer {endpoints.admin_token}", "Accept": "application/json"}
        self._local = threading.local()

    def connection(self, timeout: float = 60) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=timeout)

    def _request(self, method: str, path: str, body: bytes | None, content_type: str) -> tuple[int, bytes]:
        for attempt in range(4):
            conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self.connection()
            headers = dict(self.headers)
            if body is not None:
                headers["Content-Type"] = content_type
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 3:
                    raise
                time.sleep(0.5)
                continue
            if response.status in (429, 500, 502, 503, 504) and attempt < 3:
                time.sleep(1 + attempt)
                continue
            return response.status, data
        raise AssertionError("unreachable")

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
        missing_ok: bool = False,
    ) -> dict[str, Any]:
        status, data = self._request(
            method, path, None if body is None else json.dumps(body).encode(), content_type
        )
        if status == 404 and missing_ok:
            return {}
        if status >= 400:
            raise KubeError(status, data.decode(errors="replace"))
        loaded: dict[str, Any] = json.loads(data) if data else {}
        return loaded

    def text(self, path: str) -> str:
        status, data = self._request("GET", path, None, "")
        if status >= 400:
            raise KubeError(status, data.decode(errors="replace"))
        return data.decode()


def loops_path(namespace: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"


def deployments_path(namespace: str) -> str:
    return f"/apis/apps/v1/namespaces/{namespace}/deployments"


def jobs_path(namespace: str) -> str:
    return f"/apis/batch/v1/namespaces/{namespace}/jobs"


class Watcher:
    """List, then watch from the list's resourceVersion, calling on_event(type, object, received) for every
    ADDED/MODIFIED/DELETED (the list's items come as ADDED); relists after 410 Gone. `received` is
    time.monotonic() when the bench read the event."""

    def __init__(
        self,
        kube: Kube,
        path: str,
        on_event: Callable[[str, dict[str, Any], float], None],
        selector: str = "",
    ) -> None:
        self.kube, self.path, self.on_event = kube, path, on_event
        self.query = f"labelSelector={urllib.parse.quote(selector)}" if selector else ""
        self._stop = threading.Event()
        self._conn: http.client.HTTPSConnection | None = None
        self.listed = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch {path}")

    def start(self) -> Watcher:
        self._thread.start()
        if not self.listed.wait(120):
            raise RuntimeError(f"cannot list {self.path}")
        return self

    def _list(self) -> str:
        listed = self.kube.call("GET", f"{self.path}?{self.query}")
        received = time.monotonic()
        for item in listed.get("items", []):
            self.on_event("ADDED", item, received)
        self.listed.set()
        return str(listed["metadata"]["resourceVersion"])

    def _run(self) -> None:
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    version = self._list()
                conn = self._conn = self.kube.connection(timeout=330)
                query = f"watch=1&allowWatchBookmarks=true&timeoutSeconds=240&resourceVersion={version}"
                conn.request("GET", f"{self.path}?{query}&{self.query}", headers=self.kube.headers)
                response = conn.getresponse()
                if response.status != 200:
                    response.read()
                    version = ""
                    time.sleep(1)
                    continue
                for line in response:
                    event = json.loads(line)
                    received = time.monotonic()
                    kind, body = event["type"], event["object"]
                    if kind == "ERROR":
                        version = ""  # 410 Gone, or worse: relist
                        break
                    version = body["metadata"]["resourceVersion"]
                    if kind != "BOOKMARK":
                        self.on_event(kind, body, received)
                conn.close()
            except (OSError, http.client.HTTPException, ValueError, KubeError):
                if self._stop.is_set():
                    return
                time.sleep(0.5)

    def stop(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)


# ------------------------------------------------------------------------------------------ what watches see
def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class LoopTracker:
    """Per loop: when the bench first saw it observed, and every distinct status.lastEvaluation.time."""

    shard_of: dict[str, int]
    observed_at: dict[str, float] = field(default_factory=dict)
    evaluations: dict[str, list[datetime]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_event(self, kind: str, body: dict[str, Any], received: float) -> None:
        name = body["metadata"]["name"]
        if kind == "DELETED" or name not in self.shard_of:
            return
        status = body.get("status") or {}
        last = (status.get("lastEvaluation") or {}).get("time")
        with self.lock:
            if (
                last
                and name not in self.observed_at
                and status.get("observedGeneration") == body["metadata"].get("generation")
            ):
                self.observed_at[name] = received
            if last:
                when = parse_time(last)
                seen = self.evaluations[name]
                if not seen or seen[-1] != when:
                    seen.append(when)

    def all_observed(self) -> bool:
        with self.lock:
            return len(self.observed_at) == len(self.shard_of)

    def lags(self, start: datetime, end: datetime, shard: int | None = None) -> list[float]:
        """(t_i - t_i-1) - interval for every evaluation t_i inside [start, end]."""
        found = []
        with self.lock:
            for name, times in self.evaluations.items():
                if shard is not None and self.shard_of[name] != shard:
                    continue
                for before, after in itertools.pairwise(times):
                    if start <= after <= end:
                        found.append((after - before).total_seconds() - INTERVAL_S)
        return found


@dataclass
class BreachTracker:
    """Retrain Jobs (first seen, Complete seen) and the breached loops' Deployments (MODEL_URI changed)."""

    deployment_loop: dict[str, str]
    jobs_seen: dict[str, float] = field(default_factory=dict)
    jobs_complete: dict[str, float] = field(default_factory=dict)
    initial_uri: dict[str, str | None] = field(default_factory=dict)
    patched: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_job(self, kind: str, body: dict[str, Any], received: float) -> None:
        loop = (body["metadata"].get("labels") or {}).get(LABEL_LOOP)
        if kind == "DELETED" or loop is None:
            return
        conditions = (body.get("status") or {}).get("conditions") or []
        with self.lock:
            self.jobs_seen.setdefault(loop, received)
            if any(c.get("type") == "Complete" and c.get("status") == "True" for c in conditions):
                self.jobs_complete.setdefault(loop, received)

    def on_deployment(self, kind: str, body: dict[str, Any], received: float) -> None:
        loop = self.deployment_loop.get(body["metadata"]["name"])
        if kind == "DELETED" or loop is None:
            return
        containers = body["spec"]["template"]["spec"]["containers"]
        server: dict[str, Any] = next((c for c in containers if c["name"] == SERVER_CONTAINER), {})
        uri = next((e.get("value") for e in server.get("env") or [] if e["name"] == ENV_MODEL_URI), None)
        with self.lock:
            initial = self.initial_uri.setdefault(loop, uri)
            if uri != initial:
                self.patched.setdefault(loop, received)


# ------------------------------------------------------------------------------------------ measurements
LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str, name: str) -> Iterator[tuple[dict[str, str], float]]:
    """The samples of one metric name in a Prometheus text exposition."""
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = LINE.match(line)
        if match and match.group(1) == name:
            yield dict(LABEL.findall(match.group(2) or "")), float(match.group(3))


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=15) as response:  # noqa: S310 - loopback URLs of this run
        return str(response.read().decode())


ApiKey = tuple[str, str, str, str]  # resource, subresource, verb, code


@dataclass
class Snapshot:
    at: float
    wall: datetime
    api: dict[ApiKey, float]
    prometheus_queries: float
    cpu_s: dict[int, float]
    rss_mb: dict[int, float]
    lag: dict[int, dict[float, float] | None]  # per operator process: cumulative buckets, None when absent


def proc_cpu_rss(pid: int) -> tuple[float, float]:
    """utime + stime in seconds, VmRSS in MB."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return cpu, rss


def lag_buckets(metrics_url: str | None) -> dict[float, float] | None:
    if metrics_url is None:
        return None
    try:
        text = http_text(metrics_url)
    except OSError:
        return None
    buckets: dict[float, float] = defaultdict(float)
    for labels, value in samples(text, f"{LAG_METRIC}_bucket"):
        buckets[float(labels["le"])] += value
    return dict(buckets) or None


def snapshot(kube: Kube, prometheus_url: str, processes: dict[int, str | None]) -> Snapshot:
    """processes: pid -> its /metrics URL (None for the no-op operator)."""
    api: dict[ApiKey, float] = defaultdict(float)
    for labels, value in samples(kube.text("/metrics"), "apiserver_request_total"):
        key = (labels.get("resource", ""), labels.get("subresource", ""), labels["verb"], labels["code"])
        api[key] += value
    handler = "/api/v1/query"
    queries = sum(
        value
        for labels, value in samples(http_text(f"{prometheus_url}/metrics"), "prometheus_http_requests_total")
        if labels.get("handler") == handler
    )
    cpu: dict[int, float] = {}
    rss: dict[int, float] = {}
    for pid in processes:
        cpu[pid], rss[pid] = proc_cpu_rss(pid)
    lag = {pid: lag_buckets(url) for pid, url in processes.items()}
    return Snapshot(time.monotonic(), datetime.now(UTC), api, queries, cpu, rss, lag)


def quantile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return NAN
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """As PromQL's histogram_quantile, on cumulative bucket counts."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return NAN
    rank = q * buckets[bounds[-1]]
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return previous_bound
            if count == previous_count:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / (
                count - previous_count
            )
        previous_bound, previous_count = bound, count
    return previous_bound


@dataclass
class Window:
    """Rates over one idle window: the difference of two snapshots."""

    seconds: float
    api: dict[ApiKey, float]  # requests/s
    prometheus_qps: float
    cpu_cores: dict[int, float]
    rss_mb: dict[int, float]
    lag: dict[int, dict[float, float] | None]
    start: datetime
    end: datetime

    @classmethod
    def between(cls, before: Snapshot, after: Snapshot) -> Window:
        seconds = after.at - before.at
        api = {key: (value - before.api.get(key, 0)) / seconds for key, value in after.api.items()}
        lag: dict[int, dict[float, float] | None] = {}
        for pid, buckets in after.lag.items():
            earlier = before.lag.get(pid)
            if buckets is None or earlier is None:
                lag[pid] = None
            else:
                lag[pid] = {le: count - earlier.get(le, 0.0) for le, count in buckets.items()}
        return cls(
            seconds,
            {key: rate for key, rate in api.items() if rate},
            (after.prometheus_queries - before.prometheus_queries) / seconds,
            {pid: (after.cpu_s[pid] - before.cpu_s[pid]) / seconds for pid in after.cpu_s},
            dict(after.rss_mb),
            lag,
            before.wall,
            after.wall,
        )

    def rate(
        self, resource: str | None = None, verb: str | None = None, subresource: str | None = None
    ) -> float:
        """Requests/s over RESOURCES (or one), WATCH left out."""
        return sum(
            value
            for (res, sub, v, _code), value in self.api.items()
            if (res == resource if resource else res in RESOURCES)
            and (v == verb if verb else v != "WATCH")
            and (subresource is None or sub == subresource)
        )


def count_codes(before: Snapshot, after: Snapshot, code: str, operator_only: bool) -> dict[str, float]:
    found: dict[str, float] = defaultdict(float)
    for (resource, sub, verb, answered), value in after.api.items():
        if answered != code:
            continue
        delta = value - before.api.get((resource, sub, verb, answered), 0)
        if not delta:
            continue
        if operator_only:
            if resource not in OPERATOR_VERBS:
                continue
            verbs = OPERATOR_VERBS[resource]
            if verbs is not None and (verb not in verbs or sub):
                continue
        found[f"{resource}{'/' + sub if sub else ''} {verb}"] += delta
    return dict(found)


# ------------------------------------------------------------------------------------------ processes
def operator_source(directory: Path) -> str:
    """`<dir> @ <short HEAD>[+dirty]` of the tree the operator runs from."""
    head = subprocess.run(
        ["git", "-C", str(directory), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(directory), "status", "--porcelain", "--", "."],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{directory} @ {head or 'not a git tree'}{' (+ uncommitted changes)' if dirty else ''}"


def python_path(source: Path) -> str:
    return os.pathsep.join(p for p in (str(source), os.environ.get("PYTHONPATH", "")) if p)


def imported_from(source: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", "import feedbackloop; print(feedbackloop.__file__)"],
        env={**os.environ, "PYTHONPATH": python_path(source)},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


class NoopOperator:
    def __init__(self, endpoints: harness.Endpoints, namespace: str, log_path: Path) -> None:
        self.health_url = f"http://{harness.LOCALHOST}:{harness.free_port()}/healthz"
        self.log_path = log_path
        with log_path.open("ab") as handle:
            self.popen = subprocess.Popen(
                [sys.executable, str(NOOP), "--namespace", namespace, "--liveness", self.health_url],
                env={**os.environ, **endpoints.env()},
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_healthy(self) -> None:
        def healthy() -> bool:
            if self.popen.poll() is not None:
                raise RuntimeError(f"no-op operator exited:\n{harness.tail(self.log_path)}")
            try:
                return harness._http_ok(self.health_url)
            except Exception:
                return False

        if not harness.wait_until(healthy, bool, timeout=60):
            raise RuntimeError(f"no-op operator not healthy:\n{harness.tail(self.log_path)}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)


# ------------------------------------------------------------------------------------------ the set-up
@dataclass
class Layout:
    n: int
    shards: int
    namespace: str
    breach_indexes: list[int]

    def loop(self, i: int) -> str:
        return f"loop-{i:05d}"

    def deployment(self, i: int) -> str:
        return f"serve-{i:05d}"

    def model(self, i: int) -> str:
        return f"{self.namespace}-{i}"

    def shard(self, i: int) -> int:
        return i % self.shards


def loop_spec(
    layout: Layout, i: int, prometheus_url: str, annotations: dict[str, str] | None
) -> dict[str, Any]:
    retrain: dict[str, Any] = {
        "trainer": {"label": "churned"},
        "data": {"training": "s3://data/churn/train/"},
    }
    if annotations:
        retrain["podAnnotations"] = annotations
    return {
        "mode": "Auto",
        "target": {"deployment": layout.deployment(i), "container": SERVER_CONTAINER},
        "prometheus": {"url": prometheus_url, "timeout": "5s"},
        "monitoring": {
            "interval": f"{INTERVAL_S:g}s",
            "labels": {"model": layout.model(i)},
            "metrics": [
                {
                    "name": "accuracy",
                    "query": "max(fbl_test_accuracy{model={{model}}})",
                    "samplesQuery": "max(fbl_test_samples{model={{model}}})",
                    "minSamples": 10,
                    "threshold": {"min": THRESHOLD},
                    "for": f"{FOR_S:g}s",
                }
            ],
        },
        "retrain": retrain,
        "artifacts": {"bucket": ARTIFACT_BUCKET, "prefix": PREFIX, "credentialsSecret": CREDENTIALS_SECRET},
        "validation": {
            "gates": [
                {"metric": "accuracy", "min": THRESHOLD},
                {"metric": "accuracy", "minDeltaVsCurrent": 0.0},
            ]
        },
    }


def deployment_body(layout: Layout, i: int, breach: bool) -> dict[str, Any]:
    name = layout.deployment(i)
    uri = contract.version_uri(ARTIFACT_BUCKET, PREFIX, layout.namespace, layout.loop(i), "v1")
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {BREACH_LABEL: "true"} if breach else {}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {MODEL_VERSION_ANNOTATION: "v1"}},
                "spec": {
                    "containers": [
                        {
                            "name": SERVER_CONTAINER,
                            "image": "feedbackloop-server:bench",
                            "env": [
                                {"name": ENV_MODEL_URI, "value": uri},
                                {"name": ENV_MODEL_SHA256, "value": "1" * 64},
                            ],
                        }
                    ]
                },
            },
        },
    }


def write_candidate(store: ArtifactStore, layout: Layout, i: int) -> dict[str, str]:
    """v2 as a trainer writes it, and the pod annotation that makes kwok report its manifest's digest."""
    loop = layout.loop(i)
    uri = contract.version_uri(ARTIFACT_BUCKET, PREFIX, layout.namespace, loop, "v2")
    metrics = {"schemaVersion": 1, "candidate": {"accuracy": 0.93}, "current": {"accuracy": 0.71}}
    store.write_version(
        uri,
        "v2",
        {
            "model.joblib": b"not a model: never unpickled by the operator",
            "metrics.json": json.dumps(metrics).encode(),
        },
        {"job": {"name": f"{loop}-retrain-2"}},
    )
    bucket, key = contract.version_file(uri, contract.MANIFEST_FILE)
    digest = contract.sha256_hex(store.get_bytes(bucket, key))
    return {harness.KWOK_MESSAGE_ANNOTATION: contract.success_message(digest)}


def parallel(work: Callable[[int], object], items: Iterable[int], workers: int = 16) -> None:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done in [pool.submit(work, item) for item in items]:
            done.result()


def prometheus_count(prometheus_url: str, query: str) -> float:
    url = f"{prometheus_url}/api/v1/query?query={urllib.parse.quote(query)}"
    result = json.loads(http_text(url))["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def wait_for(what: str, done: Callable[[], bool], timeout: float, interval: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(interval)
    ok = done()
    if not ok:
        log(f"timed out after {timeout:.0f} s waiting for {what}")
    return ok


def deployments_settled(kube: Kube, namespace: str, n: int) -> bool:
    items = kube.call("GET", deployments_path(namespace))["items"]
    available = sum(
        1
        for d in items
        if (d.get("status") or {}).get("availableReplicas") == 1
        and d["status"].get("observedGeneration") == d["metadata"]["generation"]
    )
    return available == n


# ------------------------------------------------------------------------------------------ one size
@dataclass
class Result:
    n: int
    shards: int
    observed_s: float = NAN
    observed: int = 0
    observed_by_shard: dict[int, float] = field(default_factory=dict)
    lag: list[float] = field(default_factory=list)
    lag_p50: float = NAN
    lag_p99: float = NAN
    lag_source: str = "not measured"
    lag_by_shard: dict[int, tuple[float, float]] = field(default_factory=dict)
    breach_job: list[float] = field(default_factory=list)
    breach_job_by_shard: dict[int, list[float]] = field(default_factory=dict)
    complete_patch: list[float] = field(default_factory=list)
    complete_patch_by_shard: dict[int, list[float]] = field(default_factory=dict)
    breaches: int = 0
    window: Window | None = None
    noop_window: Window | None = None
    cpu_by_shard: dict[int, float] = field(default_factory=dict)
    rss_by_shard: dict[int, float] = field(default_factory=dict)
    noop_cpu: float = NAN
    noop_rss: float = NAN
    conflicts: dict[str, float] = field(default_factory=dict)
    throttled: dict[str, float] = field(default_factory=dict)
    all_409: dict[str, float] = field(default_factory=dict)
    all_429: dict[str, float] = field(default_factory=dict)

    # The operator's own API rates: its window minus the no-op's.
    def own(
        self, resource: str | None = None, verb: str | None = None, subresource: str | None = None
    ) -> float:
        if self.window is None or self.noop_window is None:
            return NAN
        return self.window.rate(resource, verb, subresource) - self.noop_window.rate(
            resource, verb, subresource
        )

    @property
    def status_writes_per_loop_10min(self) -> float:
        if self.window is None:
            return NAN
        writes = sum(self.window.rate("feedbackloops", verb, "status") for verb in ("PATCH", "PUT", "APPLY"))
        return writes * 600 / self.n

    @property
    def prom_qps(self) -> float:
        if self.window is None or self.noop_window is None:
            return NAN
        return self.window.prometheus_qps - self.noop_window.prometheus_qps

    @property
    def cpu_cores(self) -> float:
        return sum(self.cpu_by_shard.values()) if self.cpu_by_shard else NAN

    @property
    def rss_mb(self) -> float:
        """The largest operator process's RSS (the one to compare with the no-op's)."""
        return max(self.rss_by_shard.values()) if self.rss_by_shard else NAN


@dataclass
class Context:
    args: argparse.Namespace
    cluster: harness.Cluster
    endpoints: harness.Endpoints
    kube: Kube
    store: ArtifactStore
    exporter: ModelExporter
    work: Path
    source: Path


def run_size(ctx: Context, n: int) -> Result:
    args, kube = ctx.args, ctx.kube
    breaches = min(args.breaches, n)
    layout = Layout(
        n,
        args.shards,
        f"scale-{n}-{secrets.token_hex(3)}",
        sorted({k * n // breaches for k in range(breaches)}),
    )
    result = Result(n, args.shards, breaches=len(layout.breach_indexes))
    ns = layout.namespace
    log(f"N={n}: namespace {ns}, {len(layout.breach_indexes)} loops to breach, {args.shards} shard(s)")
    kube.call("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    try:
        setup(ctx, layout)
        measure(ctx, layout, result)
    finally:
        teardown(ctx, layout)
    return result


def setup(ctx: Context, layout: Layout) -> None:
    kube, n, ns = ctx.kube, layout.n, layout.namespace
    kube.call(
        "POST",
        f"/api/v1/namespaces/{ns}/secrets",
        {
            "metadata": {"name": CREDENTIALS_SECRET},
            "stringData": {"AWS_ACCESS_KEY_ID": "trainer", "AWS_SECRET_ACCESS_KEY": "trainer-secret"},
        },
    )
    breach = set(layout.breach_indexes)
    started = time.monotonic()
    parallel(
        lambda i: kube.call("POST", deployments_path(ns), deployment_body(layout, i, i in breach)), range(n)
    )
    log(f"{n} Deployments created in {time.monotonic() - started:.1f} s")
    for i in range(n):
        ctx.exporter.set(layout.model(i), accuracy=HEALTHY, samples=1000)
    annotations = {i: write_candidate(ctx.store, layout, i) for i in layout.breach_indexes}

    def create_loop(i: int) -> None:
        labels = {SHARD_LABEL: f"shard-{layout.shard(i)}"} if layout.shards > 1 else {}
        body = {
            "apiVersion": API_VERSION,
            "kind": "FeedbackLoop",
            "metadata": {"name": layout.loop(i), "labels": labels},
            "spec": loop_spec(layout, i, ctx.endpoints.prometheus_url, annotations.get(i)),
        }
        kube.call("POST", loops_path(ns), body)

    started = time.monotonic()
    parallel(create_loop, range(n))
    log(f"{n} FeedbackLoops created in {time.monotonic() - started:.1f} s")
    series = f'count(fbl_test_accuracy{{model=~"{ns}-.*"}})'
    wait_for(
        "Prometheus to scrape every loop's series",
        lambda: prometheus_count(ctx.endpoints.prometheus_url, series) == n,
        120,
    )
    started = time.monotonic()
    wait_for(
        f"{n} Deployments available (the controllers' client rate limits)",
        lambda: deployments_settled(kube, ns, n),
        120 + 0.6 * n,
        interval=5,
    )
    log(f"Deployments available {time.monotonic() - started:.0f} s later")


def idle_window(ctx: Context, processes: dict[int, str | None], what: str) -> Window:
    log(f"{what}: settling {ctx.args.settle:.0f} s, then an idle window of {ctx.args.window:.0f} s")
    time.sleep(ctx.args.settle)
    before = snapshot(ctx.kube, ctx.endpoints.prometheus_url, processes)
    time.sleep(ctx.args.window)
    after = snapshot(ctx.kube, ctx.endpoints.prometheus_url, processes)
    return Window.between(before, after)


def measure(ctx: Context, layout: Layout, result: Result) -> None:
    kube, endpoints, args, ns = ctx.kube, ctx.endpoints, ctx.args, layout.namespace
    # 1. the no-op kopf operator on the same objects
    noop = NoopOperator(endpoints, ns, ctx.work / f"noop-{ns}.log")
    try:
        noop.wait_healthy()
        result.noop_window = idle_window(ctx, {noop.popen.pid: None}, "no-op operator")
        result.noop_cpu = result.noop_window.cpu_cores[noop.popen.pid]
        result.noop_rss = result.noop_window.rss_mb[noop.popen.pid]
    finally:
        noop.stop()
    log(f"no-op operator: {result.noop_cpu:.3f} cores, {result.noop_rss:.0f} MB")

    # 2. the operator under test, started on the existing loops
    shard_of = {layout.loop(i): layout.shard(i) for i in range(layout.n)}
    loops = LoopTracker(shard_of)
    loop_watch = Watcher(kube, loops_path(ns), loops.on_event).start()
    operators: list[OperatorProcess] = []
    deployment_loop = {layout.deployment(i): layout.loop(i) for i in layout.breach_indexes}
    breach = BreachTracker(deployment_loop)
    watches = [loop_watch]
    try:
        run_start = snapshot(kube, endpoints.prometheus_url, {})
        started = time.monotonic()
        for shard in range(layout.shards):
            env = {
                "PYTHONPATH": python_path(ctx.source),
                "FBL_TICK_SECONDS": TICK_SECONDS,
                # the operator-wide cap (default 2) would otherwise serialise the breached loops' Jobs
                "FBL_MAX_CONCURRENT_RETRAINS": str(max(len(layout.breach_indexes), 1)),
            }
            if layout.shards > 1:
                env["FBL_SHARD_SELECTOR"] = f"{SHARD_LABEL}=shard-{shard}"
            operator = OperatorProcess(endpoints, ctx.work / f"operator-{ns}-{shard}.log", [ns], **env)
            operators.append(operator)
        for operator in operators:
            operator.start()
        log(
            f"operator{'s' if len(operators) > 1 else ''} healthy {time.monotonic() - started:.1f} s after start"
        )

        def observed() -> bool:
            alive(operators)
            return loops.all_observed()

        wait_for(f"all {layout.n} loops observed", observed, 60 + 0.3 * layout.n, interval=0.2)
        with loops.lock:
            times = dict(loops.observed_at)
        result.observed = len(times)
        if len(times) == layout.n:
            result.observed_s = max(times.values()) - started
        for shard in range(layout.shards):
            mine = [t for name, t in times.items() if shard_of[name] == shard]
            if len(mine) == sum(1 for s in shard_of.values() if s == shard):
                result.observed_by_shard[shard] = max(mine) - started
        log(f"{result.observed}/{layout.n} loops observed after {result.observed_s:.1f} s")

        pids: dict[int, str | None] = {op.popen.pid: op.metrics_url for op in operators if op.popen}
        has_histogram = any(lag_buckets(url) is not None for url in pids.values())
        if has_histogram:
            loop_watch.stop()  # not needed for the lag: spare the 2 cores its parsing
            watches.remove(loop_watch)
        window = idle_window(ctx, pids, "operator")
        alive(operators)
        result.window = window
        for shard, operator in enumerate(operators):
            assert operator.popen is not None
            result.cpu_by_shard[shard] = window.cpu_cores[operator.popen.pid]
            result.rss_by_shard[shard] = window.rss_mb[operator.popen.pid]
        lag_of(result, window, loops, operators, has_histogram)

        # 3. breach
        watches.append(
            Watcher(kube, jobs_path(ns), breach.on_job, f"{LABEL_COMPONENT}={COMPONENT_RETRAIN}").start()
        )
        watches.append(
            Watcher(kube, deployments_path(ns), breach.on_deployment, f"{BREACH_LABEL}=true").start()
        )
        breached_at = time.monotonic()
        for i in layout.breach_indexes:
            ctx.exporter.set(layout.model(i), accuracy=BREACHED, samples=1000)
        log(f"{len(layout.breach_indexes)} loops breached")
        expected = {layout.loop(i) for i in layout.breach_indexes}

        def all_jobs() -> bool:
            alive(operators)
            with breach.lock:
                return expected <= set(breach.jobs_seen)

        wait_for("every breached loop's retrain Job", all_jobs, 120 + 0.05 * layout.n, interval=0.2)

        def all_patched() -> bool:
            alive(operators)
            with breach.lock:
                return expected <= set(breach.patched)

        wait_for("every breached loop's Deployment patched", all_patched, args.patch_timeout, interval=0.2)
        run_end = snapshot(kube, endpoints.prometheus_url, {})
        with breach.lock:
            for loop in expected:
                shard = shard_of[loop]
                if loop in breach.jobs_seen:
                    delay = breach.jobs_seen[loop] - breached_at - FOR_S
                    result.breach_job.append(delay)
                    result.breach_job_by_shard.setdefault(shard, []).append(delay)
                if loop in breach.jobs_complete and loop in breach.patched:
                    delay = breach.patched[loop] - breach.jobs_complete[loop]
                    result.complete_patch.append(delay)
                    result.complete_patch_by_shard.setdefault(shard, []).append(delay)
        result.conflicts = count_codes(run_start, run_end, "409", operator_only=True)
        result.throttled = count_codes(run_start, run_end, "429", operator_only=True)
        result.all_409 = count_codes(run_start, run_end, "409", operator_only=False)
        result.all_429 = count_codes(run_start, run_end, "429", operator_only=False)
    except Exception as err:
        log(f"N={layout.n} stopped early: {type(err).__name__}: {err}")
        for operator in operators:
            print(f"----- {operator.log_path.name} -----\n{harness.tail(operator.log_path, 30)}", flush=True)
    finally:
        for watch in watches:
            watch.stop()
        for operator in operators:
            operator.stop()
        for i in layout.breach_indexes:
            ctx.exporter.set(layout.model(i), accuracy=HEALTHY, samples=1000)


def alive(operators: list[OperatorProcess]) -> None:
    for operator in operators:
        if operator.popen is not None and operator.popen.poll() is not None:
            raise RuntimeError(
                f"operator exited with {operator.popen.returncode}:\n{harness.tail(operator.log_path)}"
            )


def lag_of(
    result: Result, window: Window, loops: LoopTracker, operators: list[OperatorProcess], has_histogram: bool
) -> None:
    if has_histogram:
        total: dict[float, float] = defaultdict(float)
        for shard, operator in enumerate(operators):
            assert operator.popen is not None
            buckets = window.lag.get(operator.popen.pid) or {}
            for le, count in buckets.items():
                total[le] += count
            result.lag_by_shard[shard] = (histogram_quantile(0.5, buckets), histogram_quantile(0.99, buckets))
        observations = max(total.values(), default=0)
        result.lag_p50, result.lag_p99 = histogram_quantile(0.5, total), histogram_quantile(0.99, total)
        result.lag_source = (
            f"the operator's {LAG_METRIC} histogram ({observations:.0f} evaluations in the window)"
        )
        return
    result.lag = loops.lags(window.start, window.end)
    result.lag_p50, result.lag_p99 = quantile(result.lag, 0.5), quantile(result.lag, 0.99)
    result.lag_source = (
        f"no {LAG_METRIC} on the operator's /metrics: status.lastEvaluation.time on a watch, "
        f"(t_i - t_i-1) - {INTERVAL_S:g}s over {len(result.lag)} evaluations in the window"
    )
    for shard in range(result.shards):
        mine = loops.lags(window.start, window.end, shard)
        result.lag_by_shard[shard] = (quantile(mine, 0.5), quantile(mine, 0.99))


def teardown(ctx: Context, layout: Layout) -> None:
    """Drop finalizers the stopped operator left, delete the namespace and wait until it is gone."""
    kube, ns = ctx.kube, layout.namespace
    for i in range(layout.n):
        ctx.exporter.remove(layout.model(i))
    try:
        items = kube.call("GET", loops_path(ns))["items"]
        held = [item["metadata"]["name"] for item in items if item["metadata"].get("finalizers")]

        def release(name: str) -> None:
            kube.call(
                "PATCH",
                f"{loops_path(ns)}/{name}",
                {"metadata": {"finalizers": None}},
                "application/merge-patch+json",
                missing_ok=True,
            )

        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(release, held))
        kube.call("DELETE", f"/api/v1/namespaces/{ns}", missing_ok=True)
        started = time.monotonic()
        gone = wait_for(
            f"namespace {ns} deleted",
            lambda: not kube.call("GET", f"/api/v1/namespaces/{ns}", missing_ok=True),
            120 + 0.3 * layout.n,
            interval=2,
        )
        if gone:
            log(f"namespace {ns} deleted in {time.monotonic() - started:.0f} s")
    except (KubeError, OSError) as err:
        log(f"cleanup of {ns} failed: {err}")


# ------------------------------------------------------------------------------------------ reporting
def f(value: float, digits: int = 1, unit: str = "") -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}{unit}"


def p50_p99(values: list[float], unit: str = " s") -> str:
    if not values:
        return "n/a"
    return f"{quantile(values, 0.5):.1f}{unit} / {quantile(values, 0.99):.1f}{unit}"


def codes_text(found: dict[str, float]) -> str:
    total = sum(found.values())
    if not total:
        return "0"
    return f"{total:.0f} (" + ", ".join(f"{key} {value:.0f}" for key, value in sorted(found.items())) + ")"


def report(result: Result) -> None:
    n = result.n
    print(f"\n=== N={n} ({result.shards} shard{'s' if result.shards > 1 else ''}) ===")
    observed = f"{f(result.observed_s, 1, ' s')} after the operator started ({result.observed}/{n} loops)"
    print(f"all loops observed (observedGeneration, lastEvaluation)  {observed}")
    print(
        f"evaluation lag p50 / p99                                 {f(result.lag_p50, 2, ' s')} / {f(result.lag_p99, 2, ' s')}"
    )
    print(f"    source: {result.lag_source}")
    print(
        f"breach -> Job, minus `for` ({FOR_S:g} s), p50 / p99        {p50_p99(result.breach_job)}  ({len(result.breach_job)}/{result.breaches} Jobs)"
    )
    print(
        f"Job Complete -> Deployment patched p50 / p99             {p50_p99(result.complete_patch)}  ({len(result.complete_patch)}/{result.breaches} rolled out)"
    )
    window, noop = result.window, result.noop_window
    if window is not None and noop is not None:
        print(
            f"idle window of {window.seconds:.0f} s, the operator's requests/s (its window minus the no-op's, WATCH left out):"
        )
        keys = sorted(
            {(r, s, v) for (r, s, v, _c) in (*window.api, *noop.api) if r in RESOURCES and v != "WATCH"}
        )
        print(f"    {'resource':<22}{'verb':<8}{'operator':>10}{'no-op':>10}{'own':>10}")
        for resource, sub, verb in keys:
            ours = sum(
                rate for (r, s, v, _c), rate in window.api.items() if (r, s, v) == (resource, sub, verb)
            )
            theirs = sum(
                rate for (r, s, v, _c), rate in noop.api.items() if (r, s, v) == (resource, sub, verb)
            )
            name = f"{resource}/{sub}" if sub else resource
            print(f"    {name:<22}{verb:<8}{ours:>10.2f}{theirs:>10.2f}{ours - theirs:>10.2f}")
        print(f"    {'total':<30}{window.rate():>10.2f}{noop.rate():>10.2f}{result.own():>10.2f}")
        gets = result.own("feedbackloops", "GET")
        print(
            f"    GETs of a loop per loop per tick ({TICK_SECONDS} s): {gets * float(TICK_SECONDS) / n:.2f}"
        )
        print(
            f"status writes per loop per 10 min                        {f(result.status_writes_per_loop_10min, 1)}"
        )
        per_metric = result.prom_qps * INTERVAL_S / n
        print(
            f"Prometheus queries/s                                     {f(result.prom_qps, 1)} ({per_metric:.2f} per metric per interval; no-op window {noop.prometheus_qps:.2f})"
        )
        print(
            f"CPU cores                                                {f(result.cpu_cores, 3)} (no-op {f(result.noop_cpu, 3)})"
        )
        ratio = result.rss_mb / result.noop_rss
        print(
            f"RSS                                                      {f(result.rss_mb, 0, ' MB')} (no-op {f(result.noop_rss, 0, ' MB')}, ratio {f(ratio, 2)})"
        )
    print(
        f"409s / 429s to the operator's requests during its run    {codes_text(result.conflicts)} / {codes_text(result.throttled)}"
    )
    print(f"    all 409s: {codes_text(result.all_409)}; all 429s: {codes_text(result.all_429)}")
    if result.shards > 1:
        print("per shard:")
        print(
            f"    {'shard':<8}{'observed':>10}{'lag p50/p99':>16}{'breach->Job-for':>20}{'Complete->patch':>20}{'CPU':>8}{'RSS MB':>8}"
        )
        for shard in range(result.shards):
            lag = result.lag_by_shard.get(shard, (NAN, NAN))
            print(
                f"    {shard:<8}{f(result.observed_by_shard.get(shard, NAN), 1, ' s'):>10}"
                f"{f(lag[0], 2) + ' / ' + f(lag[1], 2):>16}"
                f"{p50_p99(result.breach_job_by_shard.get(shard, [])):>20}"
                f"{p50_p99(result.complete_patch_by_shard.get(shard, [])):>20}"
                f"{f(result.cpu_by_shard.get(shard, NAN), 3):>8}{f(result.rss_by_shard.get(shard, NAN), 0):>8}"
            )


def issue_row(result: Result) -> str:
    raw = [value + FOR_S for value in result.breach_job]
    return (
        f"| {result.n:,} | {f(result.observed_s, 0, ' s')} | {p50_p99(raw)} | {f(result.own(), 0)} | "
        f"{f(result.own(verb='PATCH'), 1)} | {f(result.prom_qps, 0)} | {f(result.cpu_cores, 2)} | "
        f"{f(result.rss_mb, 0, ' MB')} ({f(result.noop_rss, 0, ' MB')}) |"
    )


def last_line(result: Result) -> str:
    def v(value: float, digits: int = 2) -> str:
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"

    fields = {
        "n": str(result.n),
        "observed_s": v(result.observed_s, 1),
        "lag_p50_s": v(result.lag_p50),
        "lag_p99_s": v(result.lag_p99),
        "breach_job_p50_s": v(quantile(result.breach_job, 0.5)),
        "breach_job_p99_s": v(quantile(result.breach_job, 0.99)),
        "complete_patch_p50_s": v(quantile(result.complete_patch, 0.5)),
        "complete_patch_p99_s": v(quantile(result.complete_patch, 0.99)),
        "api_rps": v(result.own(), 1),
        "patch_rps": v(result.own(verb="PATCH"), 1),
        "get_rps": v(result.own(verb="GET"), 1),
        "status_writes_per_loop_10min": v(result.status_writes_per_loop_10min, 1),
        "prom_qps": v(result.prom_qps, 1),
        "cpu_cores": v(result.cpu_cores, 3),
        "rss_mb": v(result.rss_mb, 0),
        "noop_rss_mb": v(result.noop_rss, 0),
        "rss_ratio": v(result.rss_mb / result.noop_rss),
        "conflicts_409": f"{sum(result.conflicts.values()):.0f}",
        "throttled_429": f"{sum(result.throttled.values()):.0f}",
    }
    return " ".join(f"{key}={value}" for key, value in fields.items())


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--n", default="100,1000,3000", help="comma-separated loop counts, one size after another"
    )
    parser.add_argument(
        "--shards", type=int, default=1, help="operator processes, loops labelled round-robin"
    )
    parser.add_argument(
        "--operator-src",
        type=Path,
        default=REPO / "operator",
        help="the directory holding the feedbackloop package to run (first on PYTHONPATH)",
    )
    parser.add_argument("--breaches", type=int, default=20, help="loops breached at once")
    parser.add_argument("--settle", type=float, default=30, help="seconds before each idle window")
    parser.add_argument("--window", type=float, default=60, help="seconds of each idle window")
    parser.add_argument("--patch-timeout", type=float, default=180, help="seconds to wait for the rollouts")
    parser.add_argument(
        "--work", type=Path, default=None, help="keep the cluster and logs here (default: a temp dir)"
    )
    parser.add_argument("--quick", action="store_true", help="N=50, 10 breaches, 10 s settle, 20 s windows")
    args = parser.parse_args()
    if args.quick:
        args.n, args.breaches, args.settle, args.window, args.patch_timeout = "50", 10, 10.0, 20.0, 120.0
    sizes = [int(part) for part in args.n.split(",") if part.strip()]
    if not sizes or min(sizes) < 1 or args.shards < 1:
        parser.error("--n needs positive sizes and --shards at least 1")
    source = args.operator_src.resolve()
    if not (source / "feedbackloop" / "__init__.py").exists():
        parser.error(f"--operator-src {source} has no feedbackloop package")
    print(f"operator under test: {operator_source(source)}")
    print(f"    imports feedbackloop from {imported_from(source)}")
    print(
        f"sizes {sizes}, {args.shards} shard(s), {args.breaches} breaches, settle {args.settle:g} s, "
        f"idle windows {args.window:g} s, FBL_TICK_SECONDS={TICK_SECONDS}, interval {INTERVAL_S:g}s, for {FOR_S:g}s"
    )

    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="fbl-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    nodes = max(2, math.ceil((max(sizes) + 2 * args.breaches) / PODS_PER_NODE) + 1)
    results: list[Result] = []
    try:
        log(f"starting the control plane with {nodes} kwok nodes in {work}")
        with harness.running_cluster(work / "cluster", nodes) as cluster:
            endpoints = cluster.endpoints
            assert endpoints is not None
            cluster.kubectl("apply", "-f", str(REPO / "crds" / "feedbackloop.yaml"))
            cluster.kubectl("wait", f"crd/{PLURAL}.{GROUP}", "--for=condition=Established", "--timeout=60s")
            store = ArtifactStore(
                s3_client(
                    endpoints.s3_endpoint_url,
                    harness.S3_REGION,
                    endpoints.s3_access_key,
                    endpoints.s3_secret_key,
                )
            )
            store.create_bucket(ARTIFACT_BUCKET)
            exporter = ModelExporter(endpoints)
            ctx = Context(args, cluster, endpoints, Kube(endpoints), store, exporter, work, source)
            try:
                for n in sizes:
                    result = run_size(ctx, n)
                    results.append(result)
                    report(result)
            finally:
                exporter.close()
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(
        "\n| N | all loops observed | breach → Job p50 / p99 | API requests/s idle | of which PATCH/s | Prometheus queries/s | CPU cores | RSS (no-op kopf operator on the same objects) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for result in results:
        print(issue_row(result))
    print(
        "(breach → Job here includes `for`, as in the issue; API figures are the operator's own, minus the no-op window)"
    )
    print(last_line(max(results, key=lambda r: r.n)))


if __name__ == "__main__":
    main()
