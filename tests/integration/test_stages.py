"""Shadow and Split stages end to end (issue 19): the operator adds a real candidate beside the champion on
real server pods, Prometheus scrapes their counters, and the stage's verdict on live labels decides.

Each test trains a champion (v1, the base churn concept) and a candidate (v2) with the real trainer, serves v1
from a Deployment on the local pod runner, and asks the loop for a retrain whose Job kwok completes with v2's
digest. A client then sends requests and, 0.3 s later, their ground truth from the concept the test names."""

from __future__ import annotations

import json
import re
import statistics
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubernetes import client
from model_helpers import churn_frame, run_trainer
from pod_runner import PodRunner
from serving_pods import ServiceClient, create_secrets, pod_runner, ready_pods, server_deployment

import harness
from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.api import (
    API_VERSION,
    ENV_CANDIDATE_MODEL_URI,
    KIND,
    MODEL_VERSION_ANNOTATION,
    RETRAIN_REQUEST_ANNOTATION,
)
from feedbackloop.core import contract
from harness import wait_until
from loop_scenario import BUCKET, CREDENTIALS_SECRET, LOOP, PREFIX, trainer_report
from operator_process import OperatorProcess

SERVER = "churn-server"
RUNNER_TAINT = "feedbackloop.dev/pod-runner"  # keeps kwok's retrain pods off the node that runs real ones
ROWS_PER_REQUEST = 10


@pytest.fixture(scope="module")
def runner(
    endpoints: harness.Endpoints, core_v1: client.CoreV1Api, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PodRunner]:
    with pod_runner(endpoints, core_v1, tmp_path_factory.mktemp("stage-pods")) as running:
        taint = {"key": RUNNER_TAINT, "value": "true", "effect": "NoSchedule"}
        core_v1.patch_node(running.node_name, {"spec": {"taints": [taint]}})
        yield running


@dataclass
class Traffic:
    """Requests through the Service's ready pods and their labels 0.3 s later, from one concept."""

    service: ServiceClient
    flipped: bool
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (when, seconds)
    answered: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        seed = 100
        pending: list[dict[str, Any]] = []
        while not self._stop.is_set():
            seed += 1
            frame = churn_frame(ROWS_PER_REQUEST, seed=seed, flip=self.flipped)
            rows = [
                {"tenure": int(r.tenure), "monthly": float(r.monthly), "plan": r.plan, "region": r.region}
                for r in frame.itertuples()
            ]
            began = time.monotonic()
            _, body = self.service.post("/predict", {"rows": rows})
            self.latencies.append((time.time(), time.monotonic() - began))
            if pending:
                self.service.post("/feedback", {"feedback": pending})
            pending = []
            if body is not None:
                self.answered += len(body["predictions"])
                labels = frame["churned"].tolist()
                pending = [
                    {"id": item["id"], "label": int(label)}
                    for item, label in zip(body["predictions"], labels, strict=True)
                ]
            self._stop.wait(0.3)


def train(
    endpoints: harness.Endpoints, tmp: Path, store: ArtifactStore, uri: str, version: str, flip: bool
) -> str:
    """The real trainer writes `version` at the loop's `uri`; returns its model's sha256."""
    data = f"s3://{BUCKET}/stage-data/{uuid.uuid4().hex[:8]}/"
    bucket, prefix = contract.split_s3_uri(data)
    store.put_bytes(bucket, f"{prefix}part-0.csv", churn_frame(1500, flip=flip).to_csv(index=False).encode())
    code, message, stderr = run_trainer(
        endpoints, tmp, FBL_VERSION=version, FBL_ARTIFACT_URI=uri, FBL_TRAINING_DATA_URI=data
    )
    assert code == 0, message + stderr[-2000:]
    model = store.read_manifest(uri, version).file("model.joblib")
    assert model is not None
    return model.sha256


def loop_spec(namespace: str, v2_uri: str, store: ArtifactStore, rollout: dict[str, Any]) -> dict[str, Any]:
    accuracy = (
        'sum(increase(fbl_feedback_correct_total{namespace={{namespace}},model="churn-server"}[1m]))'
        ' / sum(increase(fbl_feedback_total{namespace={{namespace}},model="churn-server"}[1m]))'
    )
    return {
        "mode": "Auto",
        "target": {"deployment": SERVER, "container": "server"},
        "prometheus": {"timeout": "5s"},  # the first allowed URL: the harness's Prometheus
        "monitoring": {
            "interval": "10s",
            "labels": {"model": SERVER},
            "metrics": [{"name": "accuracy", "query": accuracy, "threshold": {"min": 0.0}}],
        },
        "retrain": {
            "trainer": {"label": "churned"},
            "data": {"training": f"s3://{BUCKET}/stage-data/"},
            "podAnnotations": trainer_report(store, v2_uri),
        },
        "artifacts": {"bucket": BUCKET, "prefix": PREFIX, "credentialsSecret": CREDENTIALS_SECRET},
        # Naming accuracy drops the implied "not worse than v1 offline" gate: the stage is the judge here.
        "validation": {"gates": [{"metric": "accuracy", "min": 0.5}]},
        "rollout": {
            "progressDeadline": "120s",
            "analysis": {"interval": "10s", "count": 1, "maxWait": "1m", "inconclusiveLimit": 1},
            **rollout,
            # The test's own pods: an earlier test's series (same model and versions) may still be in range.
            "stage": {**rollout["stage"], "labels": {"model": SERVER, "namespace": namespace}},
        },
    }


@dataclass
class Stage:
    cluster: harness.Cluster
    namespace: str
    traffic: Traffic
    operator: OperatorProcess

    def loop(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(
            self.cluster.kubectl("get", KIND.lower(), LOOP, "-n", self.namespace, "-o", "json").stdout
        )
        return loaded

    def env(self) -> dict[str, str]:
        out = self.cluster.kubectl("get", "deployment", SERVER, "-n", self.namespace, "-o", "json").stdout
        container = json.loads(out)["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value", "") for e in container["env"]}

    def events(self) -> list[str]:
        out = self.cluster.kubectl("get", "events", "-n", self.namespace, "-o", "json").stdout
        return [e["reason"] for e in json.loads(out)["items"]]

    def history(self, version: str) -> dict[str, Any]:
        entries = self.loop().get("status", {}).get("history", [])
        return next((e for e in entries if e["version"] == version), {})

    def stages_finished(self, verdict: str) -> str | None:
        body: str = urllib.request.urlopen(self.operator.metrics_url, timeout=5).read().decode()  # noqa: S310
        for line in body.splitlines():
            if line.startswith("feedbackloop_stages_finished_total{") and f'verdict="{verdict}"' in line:
                return line.rsplit(" ", 1)[1]
        return None


@pytest.fixture
def stage(
    cluster: harness.Cluster,
    endpoints: harness.Endpoints,
    core_v1: client.CoreV1Api,
    namespace: str,
    crd: dict[str, Any],
    store: ArtifactStore,
    runner: PodRunner,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> Iterator[Callable[..., Stage]]:
    running: list[Traffic] = []

    def start(candidate_flipped: bool, labels_flipped: bool, rollout: dict[str, Any]) -> Stage:
        v1_uri = contract.version_uri(BUCKET, PREFIX, namespace, LOOP, "v1")
        v2_uri = contract.version_uri(BUCKET, PREFIX, namespace, LOOP, "v2")
        v1_sha = train(endpoints, tmp_path, store, v1_uri, "v1", flip=False)
        train(endpoints, tmp_path, store, v2_uri, "v2", flip=candidate_flipped)
        create_secrets(core_v1, namespace, endpoints)
        cluster.kubectl(
            "create", "secret", "generic", CREDENTIALS_SECRET, "-n", namespace,
            "--from-literal=AWS_ACCESS_KEY_ID=trainer", "--from-literal=AWS_SECRET_ACCESS_KEY=trainer-secret",
        )  # fmt: skip
        body = server_deployment(SERVER, runner.node_name, 1, v1_uri, v1_sha, endpoints)
        template = body["spec"]["template"]
        template["metadata"]["annotations"][MODEL_VERSION_ANNOTATION] = "v1"
        template["spec"]["tolerations"] = [
            {"key": RUNNER_TAINT, "operator": "Exists", "effect": "NoSchedule"}
        ]
        client.AppsV1Api(core_v1.api_client).create_namespaced_deployment(namespace, body)
        ready = wait_until(lambda: ready_pods(core_v1, namespace, SERVER), lambda p: len(p) == 1, 120, 1)
        assert len(ready) == 1, ready
        traffic = Traffic(ServiceClient(core_v1, namespace, SERVER), flipped=labels_flipped).start()
        running.append(traffic)
        operator = start_operator()
        loop = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": LOOP, "annotations": {RETRAIN_REQUEST_ANNOTATION: "stage"}},
            "spec": loop_spec(namespace, v2_uri, store, rollout),
        }
        applied = cluster.kubectl(
            "apply", "-n", namespace, "-f", "-", input_text=json.dumps(loop), check=False
        )
        assert applied.returncode == 0, applied.stderr
        return Stage(cluster, namespace, traffic, operator)

    yield start
    for traffic in running:
        traffic.stop()
    client.AppsV1Api(core_v1.api_client).delete_collection_namespaced_deployment(namespace)


def wait_history(
    stage: Stage, done: Callable[[dict[str, Any]], bool], timeout: float = 240
) -> dict[str, Any]:
    entry: dict[str, Any] = wait_until(lambda: stage.history("v2"), done, timeout=timeout, interval=1)
    assert done(entry), json.dumps(stage.loop().get("status", {}), indent=1)[-4000:]
    return entry


def assert_champion_answered_throughout(stage: Stage, staged_from: float) -> None:
    """No request failed, and the champion's answers did not slow beyond 3x (+50 ms) during the stage."""
    assert stage.traffic.service.errors == []
    before = [seconds for when, seconds in stage.traffic.latencies if when < staged_from]
    during = [seconds for when, seconds in stage.traffic.latencies if when >= staged_from]
    assert len(before) >= 5 and len(during) >= 5, (len(before), len(during))
    assert statistics.median(during) <= 3 * statistics.median(before) + 0.05, (
        statistics.median(before),
        statistics.median(during),
    )


def judged(summary: str) -> tuple[tuple[float, int], tuple[float, int]]:
    """(accuracy, labels) of the candidate and of the champion, from a stage's verdict line."""
    found = re.search(
        r"accuracy ([0-9.]+) \(candidate, (\d+) labels\) vs ([0-9.]+) \(v1, (\d+) labels\)", summary
    )
    assert found is not None, summary
    return (float(found[1]), int(found[2])), (float(found[3]), int(found[4]))


MIN_SAMPLES = 150
SHADOW = {"minSamples": MIN_SAMPLES, "maxDuration": "4m", "interval": "10s", "significance": 0.05}


def test_a_truly_better_candidate_wins_its_shadow_stage_and_is_promoted(stage: Callable[..., Stage]) -> None:
    # The world drifted to the flipped concept: v2 learned it, v1 did not.
    running = stage(
        candidate_flipped=True, labels_flipped=True, rollout={"strategy": "Shadow", "stage": SHADOW}
    )
    staged = wait_until(lambda: running.env().get(ENV_CANDIDATE_MODEL_URI), bool, 90, 1)
    assert staged, running.loop().get("status")
    staged_from = time.time()
    entry = wait_history(running, lambda e: e.get("outcome") == "RolledOut")
    assert entry["stage"].startswith("Shadow Win: accuracy"), entry
    candidate, champion = judged(entry["stage"])
    assert candidate[1] >= MIN_SAMPLES and champion[1] == candidate[1]  # paired: the same labels
    assert candidate[0] > 0.8 > 0.3 > champion[0], entry["stage"]
    status = running.loop()["status"]
    assert status["currentModel"]["version"] == "v2"
    assert ENV_CANDIDATE_MODEL_URI not in running.env()
    assert {"StageStarted", "StageWon"} <= set(running.events())
    assert running.stages_finished("Win") == "1.0"
    assert_champion_answered_throughout(running, staged_from)


def test_a_truly_worse_candidate_loses_and_never_answers_a_request(stage: Callable[..., Stage]) -> None:
    # v2 learned inverted labels (a buggy labeller); the world did not change: fresh labels refuse it.
    running = stage(
        candidate_flipped=True, labels_flipped=False, rollout={"strategy": "Shadow", "stage": SHADOW}
    )
    assert wait_until(lambda: running.env().get(ENV_CANDIDATE_MODEL_URI), bool, 90, 1)
    staged_from = time.time()
    entry = wait_history(running, lambda e: e.get("outcome") == "Rejected")
    assert (entry["reason"], entry["stage"].split(":")[0]) == ("StageLost", "Shadow Lose"), entry
    candidate, champion = judged(entry["stage"])
    assert candidate[1] >= MIN_SAMPLES
    assert champion[0] > 0.8 > 0.3 > candidate[0], entry["stage"]
    status = running.loop()["status"]
    assert status["currentModel"]["version"] == "v1"
    assert "v2" in status["rejectedVersions"]
    rolled_out = next(c for c in status["conditions"] if c["type"] == "RolledOut")
    assert rolled_out["reason"] == "StageLost"
    assert ENV_CANDIDATE_MODEL_URI not in running.env()
    assert running.stages_finished("Lose") == "1.0"
    assert_champion_answered_throughout(running, staged_from)


def test_an_equal_candidate_is_inconclusive_at_max_duration_and_rejected(stage: Callable[..., Stage]) -> None:
    # v2 trained on the same concept and data: the two models agree, so no test can tell them apart.
    equal = {**SHADOW, "minSamples": 1_000_000, "maxDuration": "1m"}
    running = stage(
        candidate_flipped=False, labels_flipped=False, rollout={"strategy": "Shadow", "stage": equal}
    )
    entry = wait_history(running, lambda e: e.get("outcome") == "Rejected")
    assert entry["reason"] == "StageInconclusive", entry
    assert "Shadow Inconclusive" in entry["stage"]
    assert "p=1 " in entry["stage"], entry["stage"]
    assert running.loop()["status"]["currentModel"]["version"] == "v1"
    assert ENV_CANDIDATE_MODEL_URI not in running.env()


def test_a_split_answers_its_weight_of_requests_and_is_judged_on_them(stage: Callable[..., Stage]) -> None:
    split = {"minSamples": 100, "maxDuration": "4m", "interval": "10s", "weight": 0.2}
    running = stage(
        candidate_flipped=True, labels_flipped=True, rollout={"strategy": "Split", "stage": split}
    )
    entry = wait_history(running, lambda e: e.get("outcome") == "RolledOut")
    assert entry["stage"].startswith("Split Win: accuracy"), entry
    assert "TwoProportionZ" in entry["stage"]
    found = re.search(r"the candidate answered (\d+) of (\d+) requests", entry["stage"])
    assert found is not None, entry["stage"]
    candidate, total = int(found[1]), int(found[2])
    # Rows, not requests, are counted: each request of 10 rows goes to one model, so the bound is per request.
    requests, share = total / ROWS_PER_REQUEST, candidate / total
    assert requests >= 50, entry["stage"]
    assert abs(share - 0.2) <= 4 * np.sqrt(0.2 * 0.8 / requests), (candidate, total, share)
    assert running.loop()["status"]["currentModel"]["version"] == "v2"
    assert running.traffic.service.errors == []
