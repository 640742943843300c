"""Several model server replicas on the pod runner, reached as a Service reaches them: every label joins on
whichever replica it arrives at, once; a killed replica loses nothing it acknowledged; a rollout under load
drops no request. Counters are read from the real Prometheus, rows from the real S3 server."""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from kubernetes import client
from model_helpers import churn_frame, copy_version, train_champion
from pod_runner import PodRunner
from prometheus_api_client import PrometheusConnect
from serving_pods import (
    Prediction,
    ServiceClient,
    create_secrets,
    kill_server_process,
    pod_runner,
    ready_pods,
    server_deployment,
)

import harness
from feedbackloop.adapters.artifacts import ArtifactStore
from harness import wait_until

ROWS_PER_REQUEST = 5


@pytest.fixture(scope="module")
def runner(
    endpoints: harness.Endpoints, core_v1: client.CoreV1Api, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PodRunner]:
    with pod_runner(endpoints, core_v1, tmp_path_factory.mktemp("pods")) as running:
        yield running


@pytest.fixture(scope="module")
def trained(
    endpoints: harness.Endpoints, store: ArtifactStore, s3: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    """v1, trained once for the module and copied into each test's bucket."""
    bucket = f"champion-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    return train_champion(endpoints, store, bucket, tmp_path_factory.mktemp("champion"), rows=2000)


@pytest.fixture
def apps_v1(api_client: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(api_client)


def rows_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {"tenure": float(r.tenure), "monthly": float(r.monthly), "plan": r.plan, "region": r.region}
        for r in frame.itertuples()
    ]


def deploy(
    replicas: int,
    name: str,
    runner: PodRunner,
    core_v1: client.CoreV1Api,
    apps_v1: client.AppsV1Api,
    namespace: str,
    endpoints: harness.Endpoints,
    champion: tuple[str, str],
    bucket: str,
    **env: str,
) -> None:
    create_secrets(core_v1, namespace, endpoints)
    body = server_deployment(
        name, runner.node_name, replicas, *champion, endpoints, FEEDBACK_URI=f"s3://{bucket}/feedback/", **env
    )
    apps_v1.create_namespaced_deployment(namespace, body)
    ready = wait_until(lambda: ready_pods(core_v1, namespace, name), lambda p: len(p) == replicas, 120, 1)
    assert len(ready) == replicas, ready


def predict_spread(service: ServiceClient, frame: pd.DataFrame) -> list[Prediction]:
    rows, truth = rows_of(frame), frame["churned"].tolist()
    made: list[Prediction] = []
    for start in range(0, len(rows), ROWS_PER_REQUEST):
        pod, body = service.post("/predict", {"rows": rows[start : start + ROWS_PER_REQUEST]})
        assert body is not None, service.errors
        for offset, item in enumerate(body["predictions"]):
            made.append(Prediction(item["id"], item["prediction"], int(truth[start + offset]), pod))
    return made


def send_labels_elsewhere(
    service: ServiceClient, predictions: list[Prediction], pods: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Each label to the replica after the one that predicted it."""
    names = [name for name, _ in pods]
    results: list[dict[str, Any]] = []
    for name, ip in pods:
        mine = [p for p in predictions if names[(names.index(p.pod) + 1) % len(names)] == name]
        if not mine:
            continue
        items = [{"id": p.id, "label": p.label} for p in mine]
        answer = service.http.post(f"http://{ip}:8080/feedback", json={"feedback": items})
        assert answer.status_code == 200, answer.text
        results += answer.json()["results"]
    return results


def read_feedback(store: ArtifactStore, bucket: str) -> pd.DataFrame:
    keys = store.list_keys(bucket, "feedback/")
    frames = [pq.read_table(io.BytesIO(store.get_bytes(bucket, key))).to_pandas() for key in keys]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"fbl_prediction_id": []})


def scraped_sum(prometheus: PrometheusConnect, selector: str, expected: float) -> float | None:
    """sum(selector) across the replicas, once Prometheus has scraped it to the expected value."""

    def current() -> float | None:
        result = prometheus.custom_query(f"sum({selector})")
        return float(result[0]["value"][1]) if result else None

    value: float | None = wait_until(current, lambda v: v == expected, 30, 1)
    return value


@pytest.mark.parametrize("replicas", [2, 3])
def test_every_label_joins_once_on_a_replica_other_than_the_one_that_predicted(
    replicas: int,
    runner: PodRunner,
    core_v1: client.CoreV1Api,
    apps_v1: client.AppsV1Api,
    namespace: str,
    endpoints: harness.Endpoints,
    store: ArtifactStore,
    bucket: str,
    prometheus: PrometheusConnect,
    trained: tuple[str, str],
) -> None:
    name = f"join{replicas}-{time.monotonic_ns() % 10**6}"
    champion = copy_version(store, trained, bucket)
    deploy(
        replicas,
        name,
        runner,
        core_v1,
        apps_v1,
        namespace,
        endpoints,
        champion,
        bucket,
        FBL_FEEDBACK_FLUSH_SECONDS="1",
    )
    service = ServiceClient(core_v1, namespace, name)
    predictions = predict_spread(service, churn_frame(30 * replicas * ROWS_PER_REQUEST, seed=replicas))
    pods = ready_pods(core_v1, namespace, name)
    assert {p.pod for p in predictions} == {name for name, _ in pods}  # round-robin reached every replica

    results = send_labels_elsewhere(service, predictions, pods)
    assert [r["status"] for r in results] == ["accepted"] * len(predictions), results[:3]
    # A replayed label, to yet another replica, is refused as a duplicate and not counted again.
    replayed = service.http.post(
        f"http://{pods[-1][1]}:8080/feedback",
        json={"feedback": [{"id": p.id, "label": p.label} for p in predictions[:7]]},
    ).json()
    assert replayed["accepted"] == 0
    assert {r["reason"] for r in replayed["results"]} == {"duplicate"}

    labelled = len(predictions)
    correct = sum(p.prediction == p.label for p in predictions)
    model = f'model="{name}"'
    assert scraped_sum(prometheus, f"fbl_feedback_total{{{model}}}", labelled) == labelled
    assert scraped_sum(prometheus, f"fbl_feedback_correct_total{{{model}}}", correct) == correct
    assert scraped_sum(prometheus, f'fbl_feedback_refused_total{{{model},reason="duplicate"}}', 7) == 7
    assert scraped_sum(prometheus, f"fbl_predictions_total{{{model}}}", labelled) == labelled

    rows = wait_until(lambda: read_feedback(store, bucket), lambda f: len(f) >= labelled, 30, 1)
    assert len(rows) == labelled
    assert sorted(rows["fbl_prediction_id"]) == sorted(p.id for p in predictions)  # each labelled row once
    by_id = rows.set_index("fbl_prediction_id")
    assert all(by_id.loc[p.id, "fbl_label"] == p.label for p in predictions)


def test_a_replica_killed_mid_stream_loses_nothing_it_acknowledged(
    runner: PodRunner,
    core_v1: client.CoreV1Api,
    apps_v1: client.AppsV1Api,
    namespace: str,
    endpoints: harness.Endpoints,
    store: ArtifactStore,
    bucket: str,
    trained: tuple[str, str],
) -> None:
    name = f"kill-{time.monotonic_ns() % 10**6}"
    champion = copy_version(store, trained, bucket)
    deploy(
        2, name, runner, core_v1, apps_v1, namespace, endpoints, champion, bucket,
        FBL_FEEDBACK_FLUSH_SECONDS="2", FBL_FEEDBACK_CLAIM_IDLE_SECONDS="3",
    )  # fmt: skip
    service = ServiceClient(core_v1, namespace, name)
    predictions = predict_spread(service, churn_frame(300, seed=5))
    (victim, victim_ip), (survivor, survivor_ip) = ready_pods(core_v1, namespace, name)
    # The victim acknowledges labels for half of everything, then dies before its writer's next pass.
    first, rest = predictions[::2], predictions[1::2]
    answer = service.http.post(
        f"http://{victim_ip}:8080/feedback",
        json={"feedback": [{"id": p.id, "label": p.label} for p in first]},
    )
    assert answer.json()["accepted"] == len(first)
    kill_server_process(victim)

    # Its predictions still join elsewhere: they live in the shared store, not in the dead process.
    answer = service.http.post(
        f"http://{survivor_ip}:8080/feedback",
        json={"feedback": [{"id": p.id, "label": p.label} for p in rest]},
    )
    assert answer.json()["accepted"] == len(rest)
    assert {p.pod for p in rest} == {victim, survivor}

    rows = wait_until(lambda: read_feedback(store, bucket), lambda f: len(f) >= len(predictions), 60, 1)
    assert sorted(rows["fbl_prediction_id"]) == sorted(p.id for p in predictions)


def test_a_rollout_under_load_drops_no_request(
    runner: PodRunner,
    core_v1: client.CoreV1Api,
    apps_v1: client.AppsV1Api,
    namespace: str,
    endpoints: harness.Endpoints,
    store: ArtifactStore,
    bucket: str,
    trained: tuple[str, str],
) -> None:
    name = f"roll-{time.monotonic_ns() % 10**6}"
    champion = copy_version(store, trained, bucket)
    deploy(2, name, runner, core_v1, apps_v1, namespace, endpoints, champion, bucket, FBL_DRAIN_SECONDS="2")
    service = ServiceClient(core_v1, namespace, name)
    stop = threading.Event()
    sent: list[int] = []
    joined: list[int] = []
    rng = np.random.default_rng(9)

    def traffic() -> None:
        pending: list[Prediction] = []
        while not stop.is_set():
            frame = churn_frame(ROWS_PER_REQUEST, seed=int(rng.integers(1 << 30)))
            pending += predict_spread(service, frame) if not service.errors else []
            if len(pending) >= 20:
                _, body = service.post(
                    "/feedback", {"feedback": [{"id": p.id, "label": p.label} for p in pending]}
                )
                sent.append(len(pending))
                joined.append(body["accepted"] if body else 0)
                pending = []
            time.sleep(0.05)

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    time.sleep(2)
    apps_v1.patch_namespaced_deployment(
        name, namespace, {"spec": {"template": {"metadata": {"annotations": {"rollout": "2"}}}}}
    )
    old = {pod for pod, _ in ready_pods(core_v1, namespace, name)}

    def rolled() -> bool:
        pods = {pod for pod, _ in ready_pods(core_v1, namespace, name)}
        remaining = core_v1.list_namespaced_pod(namespace, label_selector=f"app={name}").items
        return len(pods) == 2 and not pods & old and len(remaining) == 2

    assert wait_until(rolled, bool, 120, 1), "the rollout did not complete"
    time.sleep(2)
    stop.set()
    worker.join(30)
    assert service.errors == []
    assert sum(joined) == sum(sent) > 100
    assert len(service.pods_used) >= 4  # both old pods, then both new ones
