#!/usr/bin/env python3
"""The whole loop on one machine: drift degrades a served model, the operator retrains, validates, rolls out.

`make demo` runs this; tests/e2e/test_loop.py runs the same scenario, shorter. Everything is real except the
node: the control plane, Prometheus (discovering pods through the API server) and the S3 server are the test
harness's; pods bound to the node "local" are host processes started by tests/cluster/pod_runner.py; the
operator, the model server (feedbackloop-serve) and the trainer (feedbackloop-train) are this repository's.

Act 1. Model v1 is trained on the initial concept and served. Traffic and delayed ground truth flow. At a
known time the world drifts (seeded): monthly prices rise from N(60, 15) to N(85, 8), and price-sensitive
customers (monthly > 80 and tenure < 48) now churn. v1's accuracy falls below the threshold; after `for` the
operator launches a retrain Job (the real trainer on training data plus recent feedback), the gates pass, and
v2 goes through a Shadow stage: served beside v1, scoring every request without answering, judged on the same
live labels (McNemar). It wins, rolls out, analysis passes, and accuracy recovers.

Act 2. A buggy labeller inverts every label for longer than the feedback window; a retrain is requested by
hand, then the labeller is fixed. The candidate v3 learned the inverted labels and passes its offline gates
(its holdout comes from the same feedback: the gates' blind spot). Its Shadow stage, on fresh labels, refuses
it before any user is served by it; the Deployment keeps v2.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from kubernetes import client, config

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "tests" / "cluster"))

from pod_runner import PodRunner  # noqa: E402

import harness  # noqa: E402
from feedbackloop.adapters.artifacts import ArtifactStore, s3_client  # noqa: E402
from feedbackloop.api import (  # noqa: E402
    API_VERSION,
    CRD_NAME,
    ENV_MODEL_SHA256,
    ENV_MODEL_URI,
    GROUP,
    MODEL_VERSION_ANNOTATION,
    PLURAL,
    RETRAIN_REQUEST_ANNOTATION,
    VERSION,
)
from feedbackloop.core import contract  # noqa: E402
from feedbackloop.core.observations import ArtifactCheck  # noqa: E402
from operator_process import OperatorProcess  # noqa: E402

NAMESPACE, LOOP, MODEL, NODE = "demo", "churn", "churn", "local"
MODELS_BUCKET, DATA_BUCKET, PREFIX = "models", "data", "loops/"
CREDENTIALS_SECRET = "feedbackloop-s3-credentials"  # its prefix opts it in to loops
THRESHOLD = 0.8
FEATURES = ["tenure", "monthly", "plan", "region"]


@dataclass(frozen=True)
class Plan:
    """The compressed intervals of one run."""

    seed: int = 7
    rows_per_second: float = 40.0
    label_delay_s: float = 2.0
    before_drift_s: float = 75.0
    after_rollout_s: float = 30.0
    # Longer than feedbackWindow: the poisoned candidate trains and is gated on inverted feedback only.
    poison_s: float = 55.0
    act_timeout_s: float = 360.0
    training_rows: int = 1500
    replicas: int = 2


DEMO = Plan()
E2E = Plan(before_drift_s=60.0, after_rollout_s=20.0)


# ---------------------------------------------------------------- the world
class World:
    """Synthetic churn customers; `drifted` and `poisoned` switch the concept and the labels (seeded)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.drifted = False
        self.poisoned = False
        self._lock = threading.Lock()

    def sample(self, n: int, drifted: bool | None = None) -> tuple[pd.DataFrame, np.ndarray[Any, Any]]:
        with self._lock:
            drift = self.drifted if drifted is None else drifted
            tenure = self.rng.integers(1, 72, n).astype(float)
            monthly = (self.rng.normal(85, 8, n) if drift else self.rng.normal(60, 15, n)).round(2)
            plan = self.rng.choice(["basic", "pro", "max"], n)
            region = self.rng.choice(["north", "south"], n)
            churn = ((tenure < 24) & (plan == "basic")) | (monthly > 95)
            if drift:
                churn |= (monthly > 80) & (tenure < 48)
            noise = self.rng.random(n) < 0.03
            labels = (churn ^ noise).astype(int)
            if self.poisoned and drifted is None:
                labels = 1 - labels  # a buggy labeller: every label inverted
        frame = pd.DataFrame({"tenure": tenure, "monthly": monthly, "plan": plan, "region": region})
        return frame, labels


# ---------------------------------------------------------------- traffic
@dataclass
class Served:
    at: float
    version: str
    correct: bool
    drifted: bool
    poisoned: bool


class Traffic(threading.Thread):
    """Predictions spread over the ready server pods in turn, as a Service would; each label, after a delay,
    to a ready pod chosen at random, usually not the one that predicted."""

    def __init__(self, core: client.CoreV1Api, world: World, plan: Plan, started: float) -> None:
        super().__init__(daemon=True, name="traffic")
        self.core, self.world, self.plan, self.started = core, world, plan, started
        self.served: list[Served] = []
        self.errors = 0
        self.labels_sent = 0
        self.labels_joined = 0
        self.labels_refused = 0
        self.pods_seen: set[str] = set()
        self._stopping = threading.Event()
        self._pending: deque[tuple[float, str, int]] = deque()
        self._pods: list[str] = []
        self._choice = np.random.default_rng(plan.seed + 1)
        self._http = httpx.Client(timeout=5)

    def stop(self) -> None:
        self._stopping.set()
        self.join(10)
        self._http.close()

    def _ready_pods(self) -> list[str]:
        """Endpoints as a Service has them: ready pods, none being deleted."""
        pods = self.core.list_namespaced_pod(NAMESPACE, label_selector="app=churn").items
        return [
            p.status.pod_ip
            for p in pods
            if p.status.pod_ip
            and p.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]

    def ready_replicas(self) -> int:
        return len(self._ready_pods())

    def run(self) -> None:
        tick, per_tick, turn, pods, refreshed = 0.25, 0.0, 0, [], 0.0
        while not self._stopping.wait(tick):
            now = time.monotonic()
            try:
                if now - refreshed > 0.5:
                    pods, refreshed = self._ready_pods(), now
                    self._pods = pods
                    self.pods_seen.update(pods)
                self._send_due_labels(now)
                per_tick += self.plan.rows_per_second * tick
                if not pods or per_tick < 1:
                    continue
                count, per_tick = int(per_tick), per_tick - int(per_tick)
                ip = pods[turn % len(pods)]
                turn += 1
                frame, labels = self.world.sample(count)
                rows = frame.to_dict(orient="records")
                answer = self._http.post(f"http://{ip}:8080/predict", json={"rows": rows})
                if answer.status_code != 200:
                    self.errors += 1
                    continue
                body = answer.json()
                for prediction, label in zip(body["predictions"], labels, strict=True):
                    self.served.append(
                        Served(
                            now - self.started,
                            body["model_version"],
                            prediction["prediction"] == int(label),
                            self.world.drifted,
                            self.world.poisoned,
                        )
                    )
                    self._pending.append((now + self.plan.label_delay_s, prediction["id"], int(label)))
            except (httpx.HTTPError, client.ApiException):
                self.errors += 1

    def _send_due_labels(self, now: float) -> None:
        items = []
        while self._pending and self._pending[0][0] <= now:
            _, prediction_id, label = self._pending.popleft()
            items.append({"id": prediction_id, "label": label})
        if not items or not self._pods:
            return
        ip = self._pods[int(self._choice.integers(len(self._pods)))]
        self.labels_sent += len(items)
        try:
            answer = self._http.post(f"http://{ip}:8080/feedback", json={"feedback": items})
        except httpx.HTTPError:
            self.errors += 1
            return
        if answer.status_code != 200:
            self.errors += 1
            return
        body = answer.json()
        self.labels_joined += body["accepted"]
        self.labels_refused += len(items) - body["accepted"]

    def accuracy(
        self, version: str, drifted: bool, since: float = 0.0, until: float = math.inf
    ) -> float | None:
        rows = [
            s.correct
            for s in list(self.served)
            if s.version == version and s.drifted == drifted and not s.poisoned and since <= s.at <= until
        ]
        return sum(rows) / len(rows) if len(rows) >= 20 else None


# ---------------------------------------------------------------- the cluster side
def deployment(uri: str, sha256: str, endpoints: harness.Endpoints, plan: Plan) -> dict[str, Any]:
    def secret(name: str, source: str = CREDENTIALS_SECRET) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"secretKeyRef": {"name": source, "key": name}}}

    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "churn-server", "namespace": NAMESPACE},
        "spec": {
            "replicas": plan.replicas,
            "selector": {"matchLabels": {"app": "churn"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": {"app": "churn"},
                    "annotations": {
                        MODEL_VERSION_ANNOTATION: "v1",
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": "8080",
                    },
                },
                "spec": {
                    "terminationGracePeriodSeconds": 15,
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": "server",
                            "image": "feedbackloop-operator:0.1.0",
                            "command": ["feedbackloop-serve"],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "env": [
                                {"name": ENV_MODEL_URI, "value": uri},
                                {"name": ENV_MODEL_SHA256, "value": sha256},
                                {"name": "MODEL_NAME", "value": MODEL},
                                {"name": "FEEDBACK_URI", "value": f"s3://{DATA_BUCKET}/feedback/"},
                                {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                                {
                                    "name": "POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                },
                                {"name": "PORT", "value": "8080"},
                                {"name": "AWS_ENDPOINT_URL_S3", "value": endpoints.s3_endpoint_url},
                                {"name": "AWS_DEFAULT_REGION", "value": harness.S3_REGION},
                                secret("AWS_ACCESS_KEY_ID"),
                                secret("AWS_SECRET_ACCESS_KEY"),
                                secret("FBL_REDIS_URL", "prediction-store"),
                                secret("FBL_PREDICTION_ID_KEYS", "prediction-store"),
                                {"name": "FBL_FEEDBACK_FLUSH_SECONDS", "value": "5"},
                                {"name": "FBL_DRIFT_WINDOW", "value": "300"},
                            ],
                            "readinessProbe": {
                                "httpGet": {"path": "/readyz", "port": "http"},
                                "periodSeconds": 1,
                            },
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz", "port": "http"},
                                "periodSeconds": 10,
                            },
                            # Endpoints drop a terminating pod while it still serves; then it drains.
                            "lifecycle": {"preStop": {"sleep": {"seconds": 2}}},
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                                "runAsUser": 10001,
                            },
                        }
                    ],
                },
            },
        },
    }


def loop_spec(endpoints: harness.Endpoints) -> dict[str, Any]:
    scoped = "{model={{model}},model_version={{model_version}}}"
    return {
        "apiVersion": API_VERSION,
        "kind": "FeedbackLoop",
        "metadata": {"name": LOOP, "namespace": NAMESPACE},
        "spec": {
            "mode": "Auto",
            "target": {"deployment": "churn-server", "container": "server"},
            "prometheus": {"url": endpoints.prometheus_url, "timeout": "5s"},
            "monitoring": {
                "interval": "10s",
                "noData": "Hold",
                "labels": {"model": MODEL},
                "metrics": [
                    {
                        "name": "accuracy",
                        "query": f"sum(increase(fbl_feedback_correct_total{scoped}[1m]))"
                        f" / sum(increase(fbl_feedback_total{scoped}[1m]))",
                        "samplesQuery": f"sum(increase(fbl_feedback_total{scoped}[1m]))",
                        "minSamples": 100,
                        "threshold": {"min": THRESHOLD},
                        "for": "20s",
                        "action": "Retrain",
                    },
                    {
                        "name": "drift_psi",
                        "query": f"max(fbl_feature_drift_psi{scoped})",
                        "threshold": {"max": 0.25},
                        "for": "10s",
                        "action": "Alert",
                    },
                ],
            },
            "retrain": {
                "cooldown": "10m",
                "backoffLimit": 0,
                "activeDeadlineSeconds": 300,
                "trainer": {
                    "estimator": {
                        "class": "sklearn.ensemble.HistGradientBoostingClassifier",
                        "params": {"max_iter": 100},
                    },
                    "label": "churned",
                },
                "data": {
                    "training": f"s3://{DATA_BUCKET}/train/",
                    "feedback": f"s3://{DATA_BUCKET}/feedback/",
                    "feedbackWindow": "45s",
                    # Random, not Recent: the newest rows are the drifted ones, and training needs them most.
                    "holdoutStrategy": "Random",
                    "holdoutFraction": 0.25,
                },
            },
            "artifacts": {"bucket": MODELS_BUCKET, "prefix": PREFIX, "credentialsSecret": CREDENTIALS_SECRET},
            "validation": {
                "gates": [
                    {"metric": "accuracy", "min": THRESHOLD},
                    {"metric": "accuracy", "minDeltaVsCurrent": 0.0},
                ]
            },
            "rollout": {
                # Judged beside the champion on live labels before any user is served by it.
                "strategy": "Shadow",
                "stage": {"minSamples": 150, "maxDuration": "3m", "interval": "10s", "significance": 0.01},
                "progressDeadline": "2m",
                "analysis": {
                    "interval": "10s",
                    "count": 3,
                    "failureLimit": 1,
                    "inconclusiveLimit": 2,
                    "metrics": ["accuracy"],
                },
                "rollbackOnFailure": True,
            },
        },
    }


def train_v1(endpoints: harness.Endpoints, store: ArtifactStore, world: World, plan: Plan, work: Path) -> str:
    frame, labels = world.sample(plan.training_rows, drifted=False)
    frame["churned"] = labels
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    store.put_bytes(DATA_BUCKET, "train/initial.parquet", buffer.getvalue())
    uri = contract.version_uri(MODELS_BUCKET, PREFIX, NAMESPACE, LOOP, "v1")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FBL_", "AWS_"))},
        "AWS_ENDPOINT_URL_S3": endpoints.s3_endpoint_url,
        "AWS_ACCESS_KEY_ID": endpoints.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": endpoints.s3_secret_key,
        "AWS_DEFAULT_REGION": harness.S3_REGION,
        "FBL_TERMINATION_MESSAGE_PATH": str(work / "v1-termination"),
        "FBL_LOOP_NAME": LOOP,
        "FBL_LOOP_NAMESPACE": NAMESPACE,
        "FBL_VERSION": "v1",
        "FBL_ARTIFACT_URI": uri,
        "FBL_TRAINING_DATA_URI": f"s3://{DATA_BUCKET}/train/",
        "FBL_LABEL_COLUMN": "churned",
        "FBL_ESTIMATOR_CLASS": "sklearn.ensemble.HistGradientBoostingClassifier",
        "FBL_ESTIMATOR_PARAMS": json.dumps({"max_iter": 100}),
    }
    done = subprocess.run(
        [sys.executable, "-m", "feedbackloop_train"], env=env, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(f"training v1 failed: {done.stderr[-2000:]}")
    model = store.read_manifest(uri, "v1").file(contract.MODEL_FILE)
    assert model is not None
    return model.sha256


# ---------------------------------------------------------------- watching
@dataclass
class Timeline:
    started: float
    say: Callable[[str], None]
    marks: list[tuple[float, str]] = field(default_factory=list)
    accuracy: list[tuple[float, str, float]] = field(default_factory=list)
    seen: dict[str, Any] = field(default_factory=dict)

    def now(self) -> float:
        return time.monotonic() - self.started

    def mark(self, label: str) -> None:
        self.marks.append((self.now(), label))
        self.say(f"[{self.now():6.1f}s] ** {label}")

    def line(self, text: str) -> None:
        self.say(f"[{self.now():6.1f}s] {text}")


class Watcher(threading.Thread):
    """Polls the loop, its Jobs and Prometheus; prints what changed, keeps accuracy samples for the plot."""

    def __init__(self, api: client.ApiClient, prometheus_url: str, timeline: Timeline) -> None:
        super().__init__(daemon=True, name="watcher")
        self.custom, self.batch = client.CustomObjectsApi(api), client.BatchV1Api(api)
        self.prometheus = httpx.Client(base_url=prometheus_url, timeout=5)
        self.timeline = timeline
        self.loop: dict[str, Any] = {}
        self._stopping = threading.Event()
        self._last_metrics = 0.0
        self._conditions: dict[str, tuple[str, str]] = {}
        self._jobs: dict[str, str] = {}
        self._stages: dict[str, str] = {}

    def stop(self) -> None:
        self._stopping.set()
        self.join(10)
        self.prometheus.close()

    def run(self) -> None:
        while not self._stopping.wait(1.0):
            try:
                self._poll()
            except Exception as err:  # a watcher hiccup must not end the demo
                self.timeline.line(f"(watcher: {type(err).__name__}: {err})")

    def _poll(self) -> None:
        self.loop = self.custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, LOOP)
        status = self.loop.get("status", {})
        for condition in status.get("conditions", []):
            key = (condition["status"], condition.get("reason", ""))
            if self._conditions.get(condition["type"]) != key:
                self._conditions[condition["type"]] = key
                self.timeline.line(
                    f"{condition['type']}={condition['status']} {condition.get('reason', '')}: "
                    f"{condition.get('message', '')[:140]}"
                )
        self._follow_stage(status)
        for job in self.batch.list_namespaced_job(NAMESPACE).items:
            state = "Complete" if job.status.succeeded else "Failed" if job.status.failed else "Running"
            if self._jobs.get(job.metadata.name) != state:
                self._jobs[job.metadata.name] = state
                self.timeline.line(f"Job {job.metadata.name}: {state}")
        now = self.timeline.now()
        if now - self._last_metrics >= 5:
            self._last_metrics = now
            self._sample(status)

    def _follow_stage(self, status: dict[str, Any]) -> None:
        """The stage's counts as the operator reads them, and its start and verdict as timeline marks."""
        rollout = status.get("rollout") or {}
        stage, version = rollout.get("stage") or {}, rollout.get("version", "?")
        if not stage:
            return
        key = f"{version}:{stage.get('strategy')}"
        if key not in self._stages:
            self._stages[key] = ""
            self.timeline.mark(f"{version}: {stage.get('strategy')} stage beside {stage.get('champion')}")
        if stage.get("verdict") and self._stages[key] != "judged":
            self._stages[key] = "judged"
            self.timeline.mark(f"{version} stage: {stage['verdict']}")
            self.timeline.line(f"{version} stage verdict: {stage.get('message', '')}")
        elif stage.get("readAt") and self._stages[key] != stage["readAt"] and not stage.get("verdict"):
            self._stages[key] = stage["readAt"]
            self.timeline.line(
                f"{version} stage so far: {stage.get('candidateLabels', 0)} labels each; accuracy "
                f"{stage.get('candidateValue', float('nan')):.3f} ({version}) vs "
                f"{stage.get('championValue', float('nan')):.3f} ({stage.get('champion')}), "
                f"{stage.get('test')} p={stage.get('pValue', float('nan')):.3g} (not yet a verdict)"
            )

    def _sample(self, status: dict[str, Any]) -> None:
        query = (
            f'sum by (model_version) (increase(fbl_feedback_correct_total{{model="{MODEL}"}}[30s]))'
            f' / sum by (model_version) (increase(fbl_feedback_total{{model="{MODEL}"}}[30s]))'
        )
        result = self.prometheus.get("/api/v1/query", params={"query": query}).json()["data"]["result"]
        parts = []
        for series in result:
            value = float(series["value"][1])
            if math.isfinite(value):
                version = series["metric"].get("model_version", "?")
                self.timeline.accuracy.append((self.timeline.now(), version, value))
                parts.append(f"{version} {value:.3f}")
        evaluated = {m["name"]: m for m in status.get("lastEvaluation", {}).get("metrics", [])}
        loop_view = ", ".join(
            f"{name} {m.get('value', float('nan')):.3f} {m.get('verdict', '')}"
            for name, m in evaluated.items()
            if isinstance(m.get("value"), int | float)
        )
        current = status.get("currentModel", {}).get("version", "-")
        shown = " | ".join(parts) or "no data"
        self.timeline.line(f"accuracy (30s) {shown}; loop sees {loop_view or '-'}; serving {current}")


def wait_for(what: str, probe: Callable[[], Any], timeout: float, timeline: Timeline) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(1)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


# ---------------------------------------------------------------- outputs
def plot(timeline: Timeline, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 5), layout="constrained")
    axes = figure.add_subplot()
    by_version: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for at, version, value in timeline.accuracy:
        by_version[version].append((at, value))
    for version, points in sorted(by_version.items()):
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=version)
    axes.axhline(THRESHOLD, color="grey", linestyle="--", linewidth=1, label=f"threshold {THRESHOLD}")
    for index, (at, label) in enumerate(timeline.marks):
        axes.axvline(at, color="tab:red" if "reject" in label else "tab:gray", linestyle=":", linewidth=1)
        axes.text(at, 0.02 + 0.07 * (index % 4), label, rotation=90, fontsize=7, va="bottom", ha="right")
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("seconds since start")
    axes.set_ylabel("accuracy from ground truth (30s window)")
    axes.set_title("FeedbackLoop 'churn': accuracy by model version")
    figure.legend(loc="outside right upper")
    figure.savefig(path, dpi=110)


def save_reports(store: ArtifactStore, versions: list[str], out: Path) -> dict[str, str]:
    paths = {}
    for version in versions:
        uri = contract.version_uri(MODELS_BUCKET, PREFIX, NAMESPACE, LOOP, version)
        try:
            manifest = store.read_manifest(uri, version)
        except Exception as err:  # a version that never completed has no report
            print(f"no report for {version}: {err}", file=sys.stderr)
            continue
        target = out / "reports" / version
        target.mkdir(parents=True, exist_ok=True)
        bucket, prefix = contract.split_s3_uri(uri)
        for entry in manifest.files:
            if entry.name != contract.MODEL_FILE:
                store.download_verified(bucket, prefix + entry.name, entry.sha256, target / entry.name)
        paths[version] = str(target / "report.html")
    return paths


def seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    elapsed = _timestamp(end) - _timestamp(start)
    return round(elapsed.total_seconds(), 1)


def _timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# ---------------------------------------------------------------- the run
@dataclass
class Result:
    summary: dict[str, Any]
    loop: dict[str, Any]
    jobs: list[dict[str, Any]]
    events: list[dict[str, Any]]
    deployment_version: str
    v2_check: str
    reports: dict[str, str]


@contextmanager
def _running(*stoppers: Callable[[], None]) -> Iterator[None]:
    try:
        yield
    finally:
        for stop in stoppers:
            try:
                stop()
            except Exception as err:  # keep stopping the rest
                print(f"(cleanup: {type(err).__name__}: {err})", file=sys.stderr)


def run(plan: Plan, out: Path, say: Callable[[str], None] = print) -> Result:
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fbl-demo-"))
    timeline = Timeline(time.monotonic(), say)
    timeline.line(f"starting the control plane, Prometheus and S3 in {work}")
    with harness.running_cluster(work / "cluster", 0) as cluster:
        endpoints = cluster.endpoints
        assert endpoints is not None
        runner = PodRunner(endpoints.kubeconfig, NODE, work / "pods")
        runner.start()
        operator: OperatorProcess | None = None
        with _running(runner.stop):
            api = config.new_client_from_config(config_file=str(endpoints.kubeconfig))
            core = client.CoreV1Api(api)
            cluster.kubectl("apply", "-f", str(REPO / "crds" / "feedbackloop.yaml"))
            cluster.kubectl("wait", f"crd/{CRD_NAME}", "--for=condition=Established", "--timeout=60s")
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
            core.create_namespaced_secret(
                NAMESPACE,
                client.V1Secret(
                    metadata=client.V1ObjectMeta(name=CREDENTIALS_SECRET),
                    string_data={
                        "AWS_ACCESS_KEY_ID": endpoints.s3_access_key,
                        "AWS_SECRET_ACCESS_KEY": endpoints.s3_secret_key,
                    },
                ),
            )
            # The replicas share one prediction store and one key to sign prediction ids with.
            id_key = base64.b64encode(secrets.token_bytes(32)).decode()
            core.create_namespaced_secret(
                NAMESPACE,
                client.V1Secret(
                    metadata=client.V1ObjectMeta(name="prediction-store"),
                    string_data={
                        "FBL_REDIS_URL": endpoints.redis_url,
                        "FBL_PREDICTION_ID_KEYS": f"demo:{id_key}",
                    },
                ),
            )
            store = ArtifactStore(
                s3_client(
                    endpoints.s3_endpoint_url,
                    harness.S3_REGION,
                    endpoints.s3_access_key,
                    endpoints.s3_secret_key,
                )
            )
            for bucket in (MODELS_BUCKET, DATA_BUCKET):
                store.create_bucket(bucket)

            world = World(plan.seed)
            sha256 = train_v1(endpoints, store, world, plan, work)
            v1_uri = contract.version_uri(MODELS_BUCKET, PREFIX, NAMESPACE, LOOP, "v1")
            timeline.mark("v1 trained on the initial concept")
            client.AppsV1Api(api).create_namespaced_deployment(
                NAMESPACE, deployment(v1_uri, sha256, endpoints, plan)
            )
            operator = OperatorProcess(
                endpoints,
                work / "operator.log",
                [NAMESPACE],
                FBL_TICK_SECONDS="2",
                FBL_MAX_CONCURRENT_RETRAINS="1",
                FBL_PROMETHEUS_URLS=endpoints.prometheus_url,
                FBL_ARTIFACT_BUCKETS=MODELS_BUCKET,
            ).start()
            client.CustomObjectsApi(api).create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, loop_spec(endpoints)
            )
            timeline.line("FeedbackLoop churn applied (Auto); waiting for the server to be ready")
            traffic = Traffic(core, world, plan, timeline.started)
            watcher = Watcher(api, endpoints.prometheus_url, timeline)
            with _running(traffic.stop, watcher.stop, operator.stop):
                traffic.start()
                watcher.start()
                wait_for("a ready server pod", traffic._ready_pods, 120, timeline)
                timeline.mark("v1 serving, traffic on")
                time.sleep(plan.before_drift_s)

                world.drifted = True
                drift_at = timeline.now()
                timeline.mark("concept drift: prices rise, price-sensitive customers churn")

                def status() -> dict[str, Any]:
                    return dict(watcher.loop.get("status", {}))

                breach = wait_for(
                    "the accuracy breach",
                    lambda: next(
                        (
                            m.get("breachingSince")
                            for m in status().get("lastEvaluation", {}).get("metrics", [])
                            if m["name"] == "accuracy" and m.get("breachingSince")
                        ),
                        None,
                    ),
                    plan.act_timeout_s,
                    timeline,
                )
                timeline.mark("accuracy below threshold")
                wait_for(
                    "a retrain Job",
                    lambda: status().get("retrainCount", 0) >= 1,
                    plan.act_timeout_s,
                    timeline,
                )
                timeline.mark("retrain Job v2")
                wait_for(
                    "v2 serving and analysed",
                    lambda: (
                        status().get("currentModel", {}).get("version") == "v2"
                        or "v2" in status().get("rejectedVersions", [])
                    ),
                    plan.act_timeout_s,
                    timeline,
                )
                rolled_at = timeline.now()
                timeline.mark(
                    "v2 rolled out, analysis passed"
                    if "v2" not in status().get("rejectedVersions", [])
                    else "v2 rejected"
                )
                time.sleep(plan.after_rollout_s)

                # Act 2: a buggy labeller inverts every label; a retrain is asked for; the labeller is fixed.
                world.poisoned = True
                timeline.mark("labeller broken: every label inverted")
                time.sleep(plan.poison_s)
                client.CustomObjectsApi(api).patch_namespaced_custom_object(
                    GROUP, VERSION, NAMESPACE, PLURAL, LOOP,
                    {"metadata": {"annotations": {RETRAIN_REQUEST_ANNOTATION: "poisoned-1"}}},
                )  # fmt: skip
                timeline.mark("manual retrain requested")
                wait_for(
                    "the retrain Job v3",
                    lambda: status().get("retrainCount", 0) >= 2,
                    plan.act_timeout_s,
                    timeline,
                )
                world.poisoned = False
                timeline.mark("labeller fixed")
                verdict = wait_for(
                    "the poisoned candidate's verdict",
                    lambda: next(
                        (
                            h
                            for h in status().get("history", [])
                            if h["version"] == "v3"
                            and h.get("outcome") not in (None, "Retrained", "Staging", "RollingOut")
                        ),
                        None,
                    ),
                    plan.act_timeout_s,
                    timeline,
                )
                timeline.mark(
                    f"v3 {verdict['outcome'].lower()}: {verdict.get('reason') or verdict.get('message', '')}"
                )
                time.sleep(3)

            loop = client.CustomObjectsApi(api).get_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, LOOP
            )
            jobs = [
                api.sanitize_for_serialization(j)
                for j in client.BatchV1Api(api).list_namespaced_job(NAMESPACE).items
            ]
            events = [
                api.sanitize_for_serialization(e)
                for e in core.list_namespaced_event(NAMESPACE).items
                if e.involved_object.kind == "FeedbackLoop"
            ]
            served = client.AppsV1Api(api).read_namespaced_deployment("churn-server", NAMESPACE)
            deployment_version = served.spec.template.metadata.annotations.get(MODEL_VERSION_ANNOTATION, "")
            v2_check = store.verify_version(
                contract.version_uri(MODELS_BUCKET, PREFIX, NAMESPACE, LOOP, "v2"), "v2"
            ).check.value
            reports = save_reports(store, ["v1", "v2", "v3"], out)

    final: dict[str, Any] = loop.get("status", {})
    history = {h["version"]: h for h in final.get("history", [])}
    v2 = history.get("v2", {})
    before = traffic.accuracy("v1", drifted=False)
    after_drift = traffic.accuracy("v1", drifted=True, since=drift_at)
    after_rollout = traffic.accuracy("v2", drifted=True, since=rolled_at)
    rejected = list(final.get("rejectedVersions", []))
    v3 = history.get("v3", {})
    closed = bool(
        final.get("currentModel", {}).get("version") == "v2"
        and deployment_version == "v2"
        and v3.get("outcome") == "Rejected"
        and not v3.get("rolloutStartedAt")
        and after_rollout is not None
        and after_drift is not None
        and after_rollout > THRESHOLD
        and after_rollout > after_drift
        and "v3" in rejected
        and v2_check == ArtifactCheck.VERIFIED.value
        and traffic.errors == 0
        and traffic.labels_refused == 0
        and traffic.labels_joined == traffic.labels_sent > 0
    )
    summary = {
        "retrains": len(jobs),
        "rejected_versions": rejected,
        "accuracy_before_drift": _round(before),
        "accuracy_after_drift_v1": _round(after_drift),
        "accuracy_after_rollout": _round(after_rollout),
        "loop_closed": closed,
        "breach_to_job_s": seconds_between(breach, v2.get("startedAt")),
        "job_to_rollout_s": seconds_between(v2.get("startedAt"), v2.get("rolloutStartedAt")),
        "rollout_to_analysis_passed_s": seconds_between(v2.get("rolloutStartedAt"), v2.get("finishedAt")),
        "v2_stage": v2.get("stage"),
        "v3_rejected_by": v3.get("reason"),
        "v3_stage": v3.get("stage"),
        "traffic_errors": traffic.errors,
        "replicas": plan.replicas,
        "server_pods_used": len(traffic.pods_seen),
        "labels_sent": traffic.labels_sent,
        "labels_joined": traffic.labels_joined,
        "unmatched_labels": traffic.labels_refused,
        "wall_s": round(timeline.now(), 1),
    }
    plot(timeline, out / "timeline.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "status.json").write_text(json.dumps(final, indent=2) + "\n")
    return Result(summary, loop, jobs, events, deployment_version, v2_check, reports)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def print_summary(result: Result, out: Path) -> None:
    status = result.loop.get("status", {})
    print("\nversion  outcome      trigger   gates   analysis  reason")
    for entry in status.get("history", []):
        print(
            f"{entry['version']:<8} {entry.get('outcome', ''):<12} {entry.get('trigger', ''):<9} "
            f"{entry.get('gates', '')!s:<7} {entry.get('analysis', '')!s:<9} {entry.get('message', '')[:90]}"
        )
    for entry in status.get("history", []):
        if entry.get("stage"):
            print(f"\n{entry['version']} stage: {entry['stage']}")
    candidate = status.get("candidateModel", {})
    if candidate.get("version") == "v3":
        print("\nwhy v3 was rejected (status.candidateModel.gates):")
        for gate in candidate.get("gates", []):
            print(f"  {gate}")
    print("\nsummary:", json.dumps(result.summary, indent=2))
    print(f"\ntimeline plot: {out / 'timeline.png'}")
    for version, path in result.reports.items():
        print(f"error analysis {version}: {path}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO / "demo-out")
    parser.add_argument("--short", action="store_true", help="the e2e test's shorter intervals")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        result = run(E2E if args.short else DEMO, args.out)
    except KeyboardInterrupt:
        print("interrupted: everything started has been stopped", file=sys.stderr)
        return 130
    print_summary(result, args.out)
    if not result.summary["loop_closed"]:
        print("the loop did NOT close; see demo-out/status.json", file=sys.stderr)
        return 1
    print("the loop closed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
