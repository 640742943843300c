"""The reference server's side of Shadow and Split stages (issue 19): a candidate beside the champion,
verified like it, paired with it on the same labels (shadow) or answering a stable share of requests
(split)."""

from __future__ import annotations

import math
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from feedbackloop_serve.loader import load_model
from model_helpers import churn_frame, copy_version, regression_env, run_trainer, version_env
from serve_process import ServerProcess

import harness
from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop_train import evaluate
from feedbackloop_train.model import prepare

Version = tuple[str, str]  # its URI and its model's sha256


@pytest.fixture(scope="module")
def trained(
    endpoints: harness.Endpoints, store: ArtifactStore, s3: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Version, Version]:
    """v1 on the base churn concept and v2 on the inverted one: two models that disagree on most rows."""
    bucket = f"stages-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    tmp = tmp_path_factory.mktemp("stages")
    store.put_bytes(bucket, "data/train/part-0.csv", churn_frame(2000).to_csv(index=False).encode())
    store.put_bytes(
        bucket, "data/flipped/part-0.csv", churn_frame(2000, flip=True).to_csv(index=False).encode()
    )
    versions = []
    for version, data in (("v1", "train"), ("v2", "flipped")):
        env = version_env(bucket, version, FBL_TRAINING_DATA_URI=f"s3://{bucket}/data/{data}/")
        code, message, stderr = run_trainer(endpoints, tmp, **env)
        assert code == 0, message + stderr[-2000:]
        uri = f"s3://{bucket}/models/ml/churn/{version}/"
        model = store.read_manifest(uri, version).file("model.joblib")
        assert model is not None
        versions.append((uri, model.sha256))
    return versions[0], versions[1]


@pytest.fixture
def models(trained: tuple[Version, Version], store: ArtifactStore, bucket: str) -> tuple[Version, Version]:
    champion, candidate = trained
    return copy_version(store, champion, bucket), copy_version(store, candidate, bucket)


@pytest.fixture
def serve(endpoints: harness.Endpoints, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(champion: Version, **env: str) -> ServerProcess:
        log = tmp_path / f"server-{len(started)}.log"
        uri, sha256 = champion
        server = ServerProcess(
            endpoints, log, None, MODEL_URI=uri, MODEL_SHA256=sha256, MODEL_NAME="churn", **env
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def rows_of(frame: Any) -> list[dict[str, Any]]:
    return [
        {"tenure": int(r.tenure), "monthly": float(r.monthly), "plan": r.plan, "region": r.region}
        for r in frame.itertuples()
    ]


def candidate_env(candidate: Version, mode: str, **env: str) -> dict[str, str]:
    uri, sha256 = candidate
    return {"CANDIDATE_MODEL_URI": uri, "CANDIDATE_MODEL_SHA256": sha256, "CANDIDATE_MODE": mode, **env}


def wait_candidate_loaded(server: ServerProcess) -> dict[str, Any]:
    server.wait_ready()
    ready: dict[str, Any] = harness.wait_until(
        lambda: server.readyz().json(), lambda r: r.get("candidate", {}).get("status") == "loaded", timeout=60
    )
    assert ready["candidate"]["status"] == "loaded", f"{ready}\n{server.log()}"
    return ready


def local_predictions(store: ArtifactStore, version: Version, frame: Any) -> list[Any]:
    """What the version predicts for the rows, computed here from its verified bytes."""
    uri, sha256 = version
    with tempfile.TemporaryDirectory() as workdir:
        model = load_model(store, uri, sha256, Path(workdir), "churn")
    features = frame[model.features]
    labels: list[Any] = evaluate.predict(
        model.estimator, prepare(features, model.estimator, model.features)
    ).labels.tolist()
    return labels


def test_shadow_answers_with_the_champion_and_pairs_each_label_with_both_predictions(
    models: tuple[Version, Version], serve: Callable[..., ServerProcess], store: ArtifactStore
) -> None:
    champion, candidate = models
    server = serve(champion, **candidate_env(candidate, "shadow"))
    ready = wait_candidate_loaded(server)
    assert ready["candidate"] == {"status": "loaded", "model_version": "v2", "mode": "shadow"}
    assert server.metric("fbl_candidate_info", model="churn", model_version="v2", mode="shadow") == 1.0

    frame = churn_frame(300, seed=23)
    answers = [server.predict(rows_of(frame.iloc[i : i + 30])).json() for i in range(0, 300, 30)]
    assert {answer["model_version"] for answer in answers} == {"v1"}  # the candidate never answers
    predictions = [p for answer in answers for p in answer["predictions"]]
    shadowed = harness.wait_until(
        lambda: server.metric("fbl_shadow_predictions_total", model="churn", model_version="v2"),
        lambda value: value == 300.0,
        timeout=30,
    )
    assert shadowed == 300.0
    assert server.metric("fbl_predictions_total", model_version="v1", role="champion") == 300.0
    # Never served, so never in the usual metrics a loop's accuracy query reads.
    assert server.metric("fbl_predictions_total", role="candidate") is None

    truth = frame["churned"].tolist()
    response = server.feedback([{"id": p["id"], "label": t} for p, t in zip(predictions, truth, strict=True)])
    assert response.json()["accepted"] == 300

    champion_right = [p["prediction"] == t for p, t in zip(predictions, truth, strict=True)]
    candidate_right = [p == t for p, t in zip(local_predictions(store, candidate, frame), truth, strict=True)]
    expected = {
        "both": sum(a and b for a, b in zip(champion_right, candidate_right, strict=True)),
        "champion_only": sum(a and not b for a, b in zip(champion_right, candidate_right, strict=True)),
        "candidate_only": sum(b and not a for a, b in zip(champion_right, candidate_right, strict=True)),
        "neither": sum(not a and not b for a, b in zip(champion_right, candidate_right, strict=True)),
    }
    assert expected["champion_only"] > 100  # the inverted concept is wrong where v1 is right
    pair = {"model": "churn", "model_version": "v2", "champion_version": "v1"}
    measured = {o: server.metric("fbl_shadow_feedback_total", **pair, outcome=o) or 0.0 for o in expected}
    assert measured == {o: float(n) for o, n in expected.items()}
    assert server.metric("fbl_feedback_total", role="candidate") is None
    assert server.metric("fbl_feedback_correct_total", model_version="v1", role="champion") == float(
        sum(champion_right)
    )
    assert server.metric("fbl_shadow_unscored_total", model="churn", reason="late") is None


def test_a_candidate_whose_sha256_does_not_verify_is_never_loaded_and_the_champion_serves(
    models: tuple[Version, Version], serve: Callable[..., ServerProcess]
) -> None:
    champion, (candidate_uri, _) = models
    server = serve(champion, **candidate_env((candidate_uri, "0" * 64), "shadow"))
    server.wait_ready()
    ready = harness.wait_until(
        lambda: server.readyz().json(), lambda r: "does not match" in r["candidate"].get("reason", ""), 30
    )
    assert ready["status"] == "ready"
    assert ready["candidate"]["status"] == "not loaded"
    assert "does not match the manifest's model.joblib" in ready["candidate"]["reason"]
    answer = server.predict(rows_of(churn_frame(20, seed=3)))
    assert answer.status_code == 200
    assert answer.json()["model_version"] == "v1"
    assert server.metric("fbl_candidate_info", model="churn") is None
    assert server.metric("fbl_shadow_predictions_total", model="churn") is None


def test_a_split_answers_a_stable_share_by_request_key_and_labels_join_the_model_that_answered(
    models: tuple[Version, Version], serve: Callable[..., ServerProcess]
) -> None:
    champion, candidate = models
    server = serve(
        champion, **candidate_env(candidate, "split", CANDIDATE_WEIGHT="0.2", CANDIDATE_REQUEST_KEY="X-User")
    )
    wait_candidate_loaded(server)
    rows = rows_of(churn_frame(1, seed=5))
    answered: dict[str, str] = {}
    ids: dict[str, list[str]] = {"v1": [], "v2": []}
    for user in range(1000):
        answer = server.http.post("/predict", json={"rows": rows}, headers={"X-User": f"user-{user}"}).json()
        answered[f"user-{user}"] = answer["model_version"]
        ids[answer["model_version"]].append(answer["predictions"][0]["id"])
    share = len(ids["v2"]) / 1000
    bound = 4 * math.sqrt(0.2 * 0.8 / 1000)  # 4 standard deviations of a binomial share
    assert abs(share - 0.2) < bound, share
    # One user, one model: the same key is answered by the same version again.
    for key in list(answered)[:50]:
        again = server.http.post("/predict", json={"rows": rows}, headers={"X-User": key}).json()
        assert again["model_version"] == answered[key]
    assert server.metric("fbl_predictions_total", model_version="v2", role="candidate") == float(
        len(ids["v2"]) + sum(v == "v2" for v in list(answered.values())[:50])
    )

    feedback = [{"id": i, "label": 1} for version in ids.values() for i in version]
    assert server.feedback(feedback).json()["accepted"] == 1000
    assert server.metric("fbl_feedback_total", model_version="v2", role="candidate") == float(len(ids["v2"]))
    assert server.metric("fbl_feedback_total", model_version="v1", role="champion") == float(len(ids["v1"]))
    assert server.metric("fbl_shadow_feedback_total") is None  # a split has no pairs


def test_a_regression_shadow_exports_the_sums_of_a_paired_test(
    endpoints: harness.Endpoints,
    store: ArtifactStore,
    bucket: str,
    tmp_path: Path,
    serve: Callable[..., ServerProcess],
) -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"a": rng.normal(size=400), "kind": rng.choice(["x", "y"], 400)})
    frame["target"] = 3 * frame["a"] + (frame["kind"] == "x") * 1.5
    versions = []
    for version, scale in (("v1", 1.0), ("v2", 0.5)):  # v2 learns half the slope: worse on the real target
        data = frame.assign(target=frame["target"] * scale)
        store.put_bytes(bucket, f"data/{version}/all.csv", data.to_csv(index=False).encode())
        env = regression_env(bucket, version) | {"FBL_TRAINING_DATA_URI": f"s3://{bucket}/data/{version}/"}
        code, message, stderr = run_trainer(endpoints, tmp_path, **env)
        assert code == 0, message + stderr[-2000:]
        uri = f"s3://{bucket}/models/ml/churn/{version}/"
        model = store.read_manifest(uri, version).file("model.joblib")
        assert model is not None
        versions.append((uri, model.sha256))
    server = serve(versions[0], **candidate_env(versions[1], "shadow"))
    wait_candidate_loaded(server)

    traffic = frame.iloc[:60]
    rows = [{"a": float(r.a), "kind": r.kind} for r in traffic.itertuples()]
    answer = server.predict(rows).json()
    assert answer["model_version"] == "v1"
    shadowed = harness.wait_until(
        lambda: server.metric("fbl_shadow_predictions_total", model_version="v2"), lambda v: v == 60.0, 30
    )
    assert shadowed == 60.0
    truth = traffic["target"].tolist()
    labels = [{"id": p["id"], "label": t} for p, t in zip(answer["predictions"], truth, strict=True)]
    assert server.feedback(labels).json()["accepted"] == 60

    champion = np.array([p["prediction"] for p in answer["predictions"]])
    candidate = np.array(local_predictions(store, versions[1], traffic))
    champion_sq, candidate_sq = (champion - truth) ** 2, (candidate - truth) ** 2
    pair = {"model": "churn", "model_version": "v2", "champion_version": "v1"}
    assert server.metric("fbl_shadow_feedback_total", **pair, outcome="paired") == 60.0
    sums = {
        role: server.metric("fbl_shadow_squared_error_total", **pair, role=role) or math.nan
        for role in ("champion", "candidate")
    }
    assert sums["champion"] == pytest.approx(champion_sq.sum(), rel=1e-9)
    assert sums["candidate"] == pytest.approx(candidate_sq.sum(), rel=1e-9)
    assert sums["candidate"] > 10 * sums["champion"]
    assert server.metric("fbl_shadow_squared_error_difference_squared_total", **pair) == pytest.approx(
        ((candidate_sq - champion_sq) ** 2).sum(), rel=1e-9
    )
