"""The reference model server (`python -m feedbackloop_serve`) against the real S3 server and Prometheus."""

from __future__ import annotations

import io
import pickle
import secrets
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd
import pyarrow.parquet as pq
import pytest
from feedbackloop_serve.ids import IdSigner
from model_helpers import (
    churn_frame,
    copy_version,
    run_trainer,
    train_champion,
    train_regressor,
    version_env,
)
from prometheus_api_client import PrometheusConnect
from serve_process import ServerProcess, TcpProxy

import harness
from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.core import contract

FEATURES = ["tenure", "monthly", "plan", "region"]
TARGETS_LOCK = threading.Lock()


@pytest.fixture(scope="module")
def trained(
    endpoints: harness.Endpoints, store: ArtifactStore, s3: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    """v1, trained once for the module: training is most of a test's set-up time otherwise."""
    bucket = f"champion-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    return train_champion(endpoints, store, bucket, tmp_path_factory.mktemp("champion"), rows=3000)


@pytest.fixture
def champion(trained: tuple[str, str], store: ArtifactStore, bucket: str) -> tuple[str, str]:
    """The module's v1, copied into this test's bucket."""
    return copy_version(store, trained, bucket)


@pytest.fixture
def serve(endpoints: harness.Endpoints, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(uri: str, sha256: str, s3_endpoint: str | None = None, **env: str) -> ServerProcess:
        log = tmp_path / f"server-{len(started)}.log"
        server = ServerProcess(endpoints, log, s3_endpoint, MODEL_URI=uri, MODEL_SHA256=sha256, **env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def rows_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {"tenure": int(r.tenure), "monthly": float(r.monthly), "plan": r.plan, "region": r.region}
        for r in frame.itertuples()
    ]


def test_a_verified_model_serves_predictions_and_joins_feedback(
    champion: tuple[str, str], serve: Callable[..., ServerProcess]
) -> None:
    uri, sha256 = champion
    server = serve(uri, sha256, MODEL_NAME="churn")
    server.wait_ready()
    assert server.readyz().json() == {"status": "ready", "model": "churn", "model_version": "v1"}
    assert server.metric("fbl_model_info", model="churn", version="v1", sha256=sha256) == 1.0

    frame = churn_frame(30, seed=11)
    single = server.http.post("/predict", json={"row": rows_of(frame)[0]})
    assert single.status_code == 200, single.text
    assert single.json()["model_version"] == "v1"
    [one] = single.json()["predictions"]
    assert one["prediction"] in (0, 1)
    assert set(one["probabilities"]) == {"0", "1"}
    assert sum(one["probabilities"].values()) == pytest.approx(1.0)

    batch = server.predict(rows_of(frame))
    assert batch.status_code == 200, batch.text
    predictions = batch.json()["predictions"]
    assert len(predictions) == 30
    assert len({p["id"] for p in predictions} | {one["id"]}) == 31
    assert server.metric("fbl_predictions_total", model="churn", model_version="v1") == 31.0

    truth = frame["churned"].tolist()
    labels = [{"id": p["id"], "label": label} for p, label in zip(predictions, truth, strict=True)]
    response = server.feedback(labels)
    assert response.status_code == 200
    assert response.json()["accepted"] == 30
    correct = sum(p["prediction"] == label for p, label in zip(predictions, truth, strict=True))
    assert server.metric("fbl_feedback_total", model="churn", model_version="v1") == 30.0
    assert server.metric("fbl_feedback_correct_total", model="churn", model_version="v1") == float(correct)

    # A label joins its prediction once; a refused id is an error of that item only, counted by reason.
    again = server.feedback([labels[0], {"id": "no-such-id", "label": 1}, {"id": one["id"], "label": 0}])
    assert again.status_code == 200
    results = again.json()["results"]
    assert [(r["status"], r.get("reason")) for r in results] == [
        ("error", "duplicate"),
        ("error", "malformed"),
        ("accepted", None),
    ]
    assert results[0]["error"] == "a label for this prediction id was already accepted"
    assert server.metric("fbl_feedback_refused_total", model="churn", reason="duplicate") == 1.0
    assert server.metric("fbl_feedback_refused_total", model="churn", reason="malformed") == 1.0
    assert server.metric("fbl_feedback_total", model="churn", model_version="v1") == 31.0


def test_a_sha256_mismatch_never_becomes_ready(
    champion: tuple[str, str], serve: Callable[..., ServerProcess]
) -> None:
    server = serve(champion[0], "0" * 64)
    reason = harness.wait_until(server.readyz, lambda r: "does not match" in r.text, timeout=30)
    assert reason.status_code == 503
    assert "MODEL_SHA256 000000000000" in reason.json()["reason"]
    assert server.predict([{}]).status_code == 503
    assert server.metric("fbl_model_ready") == 0.0
    assert server.log().count("not ready: MODEL_SHA256") == 1  # logged once, however often it retries


def test_a_tampered_model_is_refused_before_unpickling(
    champion: tuple[str, str], store: ArtifactStore, serve: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    uri, sha256 = champion
    bucket, prefix = contract.split_s3_uri(uri)
    witness = tmp_path / "unpickled"
    # A pickle that would create the witness file if anything loaded it.
    payload = pickle.dumps(_CreateFile(str(witness)))
    store.put_bytes(bucket, prefix + contract.MODEL_FILE, payload)
    server = serve(uri, sha256)
    reason = harness.wait_until(server.readyz, lambda r: "refused before loading" in r.text, timeout=30)
    assert reason.status_code == 503, reason.text
    assert "sha256" in reason.json()["reason"]
    assert not witness.exists()


class _CreateFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def test_a_version_without_a_manifest_never_becomes_ready(
    champion: tuple[str, str], s3: Any, serve: Callable[..., ServerProcess]
) -> None:
    uri, sha256 = champion
    bucket, prefix = contract.split_s3_uri(uri)
    s3.delete_object(Bucket=bucket, Key=prefix + contract.MANIFEST_FILE)
    server = serve(uri, sha256)
    reason = harness.wait_until(server.readyz, lambda r: "manifest.json is missing" in r.text, timeout=30)
    assert reason.status_code == 503, reason.text


@pytest.mark.parametrize(
    ("body", "loc", "message"),
    [
        (
            {"rows": [{"tenure": 3, "monthly": 50.0, "plan": "pro"}]},
            ["body", "rows", 0, "region"],
            "Field required",
        ),
        (
            {"rows": [{"tenure": 3, "monthly": 50.0, "plan": "pro", "region": "north", "age": 40}]},
            ["body", "rows", 0, "age"],
            "Extra inputs are not permitted",
        ),
        (
            {"row": {"tenure": "three", "monthly": 50.0, "plan": "pro", "region": "north"}},
            ["body", "row", "tenure"],
            "Input should be a valid number",
        ),
        (
            {"row": {"tenure": True, "monthly": 50.0, "plan": "pro", "region": "north"}},
            ["body", "row", "tenure"],
            "Input should be a valid number",
        ),
        (
            {"row": {"tenure": 3, "monthly": 50.0, "plan": ["pro"], "region": "north"}},
            ["body", "row", "plan"],
            "Input should be a string of at most 1024 characters or a finite number",
        ),
        (
            {"row": {"tenure": 3, "monthly": 50.0, "plan": True, "region": "north"}},
            ["body", "row", "plan"],
            "Input should be a string of at most 1024 characters or a finite number",
        ),
        (
            {"row": {"tenure": 10**400, "monthly": 50.0, "plan": "pro", "region": "north"}},
            ["body", "row", "tenure"],
            "Input should be a valid number",
        ),
        ({"rows": []}, ["body", "rows"], "List should have at least 1 item after validation, not 0"),
        (
            {"rows": ["a row"]},
            ["body", "rows", 0],
            "Input should be an object",
        ),
        ([1, 2], ["body"], "Input should be an object"),
        ({"row": {}, "rows": []}, ["body"], "Value error, give exactly one of 'row' or 'rows'"),
    ],
    ids=[
        "missing",
        "extra",
        "string-for-number",
        "bool-for-number",
        "list-for-category",
        "bool-for-category",
        "too-big-for-float64",
        "empty",
        "not-object",
        "not-a-body",
        "both",
    ],
)
def test_bad_rows_get_422_naming_the_field(
    champion: tuple[str, str], serve: Callable[..., ServerProcess], body: Any, loc: list[Any], message: str
) -> None:
    server = serve(*champion)
    server.wait_ready()
    response = server.http.post("/predict", json=body)
    assert response.status_code == 422
    assert {"loc": loc, "msg": message} in [
        {"loc": d["loc"], "msg": d["msg"]} for d in response.json()["detail"]
    ]
    # The server is unharmed.
    assert server.predict(rows_of(churn_frame(2))).status_code == 200


def test_malformed_json_and_feedback_get_422(
    champion: tuple[str, str], serve: Callable[..., ServerProcess]
) -> None:
    server = serve(*champion)
    server.wait_ready()
    broken = server.http.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 422
    assert broken.json()["detail"][0]["loc"][0] == "body"
    assert broken.json()["detail"][0]["type"] == "json_invalid"
    no_label = server.http.post("/feedback", json={"feedback": [{"id": "x"}]})
    assert no_label.status_code == 422
    assert no_label.json()["detail"][0]["loc"] == ["body", "feedback", 0, "label"]
    prediction = server.predict(rows_of(churn_frame(1))).json()["predictions"][0]
    for label, message in [
        ("yes", "Input should be a valid integer"),
        (7, "Value error, the label must be one of the model's classes: 0, 1"),
        (10**19, "Value error, the label must be one of the model's classes: 0, 1"),
        (True, "Input should be a valid integer"),
    ]:
        refused = server.feedback([{"id": prediction["id"], "label": label}])
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"][0] == {
            "loc": ["body", "feedback", 0, "label"],
            "msg": message,
            "type": refused.json()["detail"][0]["type"],
        }
    # The prediction is kept, so the corrected label still joins.
    assert server.feedback([{"id": prediction["id"], "label": 1}]).json()["accepted"] == 1


def read_feedback(store: ArtifactStore, bucket: str, prefix: str) -> pd.DataFrame:
    keys = store.list_keys(bucket, prefix)
    frames = [pq.read_table(io.BytesIO(store.get_bytes(bucket, key))).to_pandas() for key in sorted(keys)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def test_feedback_lands_in_s3_in_the_trainers_schema_and_nothing_is_lost_on_stop(
    endpoints: harness.Endpoints,
    champion: tuple[str, str],
    store: ArtifactStore,
    bucket: str,
    serve: Callable[..., ServerProcess],
    tmp_path: Path,
) -> None:
    uri, sha256 = champion
    server = serve(
        uri,
        sha256,
        FEEDBACK_URI=f"s3://{bucket}/feedback/",
        FBL_FEEDBACK_FLUSH_ROWS="10",
        FBL_FEEDBACK_FLUSH_SECONDS="3600",  # only size and SIGTERM flush in this test
    )
    server.wait_ready()
    frame = churn_frame(30, seed=21)
    predictions = server.predict(rows_of(frame)).json()["predictions"]
    items = [{"id": p["id"], "label": int(y)} for p, y in zip(predictions, frame["churned"], strict=True)]
    assert server.feedback(items[:25]).json()["accepted"] == 25
    # Past FBL_FEEDBACK_FLUSH_ROWS, full batches of 10 are written; the 5 left wait for size, time or stop.
    flushed = harness.wait_until(
        lambda: len(read_feedback(store, bucket, "feedback/")), lambda n: n >= 20, 15
    )
    assert flushed == 20
    assert len(store.list_keys(bucket, "feedback/")) == 2
    assert server.feedback(items[25:28]).json()["accepted"] == 3
    time.sleep(2)
    assert len(read_feedback(store, bucket, "feedback/")) == 20  # 8 rows: below the size, before the time
    assert server.metric("fbl_feedback_buffered_rows") == 8.0
    assert server.stop() == -signal.SIGTERM  # uvicorn re-raises SIGTERM once its graceful stop has flushed

    rows = read_feedback(store, bucket, "feedback/")
    assert len(rows) == 28
    assert sorted(rows["fbl_prediction_id"]) == sorted(p["id"] for p in predictions[:28])
    assert list(rows.columns[:4]) == FEATURES
    assert {"fbl_label", "fbl_labelled_at", "fbl_prediction", "fbl_model_version", "fbl_predicted_at"} <= set(
        rows
    )
    by_id = rows.set_index("fbl_prediction_id")
    first = predictions[0]["id"]
    assert by_id.loc[first, "tenure"] == frame.iloc[0]["tenure"]
    assert by_id.loc[first, "plan"] == frame.iloc[0]["plan"]
    assert by_id.loc[first, "fbl_label"] == frame.iloc[0]["churned"]
    assert set(rows["fbl_model_version"]) == {"v1"}
    assert str(rows["fbl_labelled_at"].dtype).startswith("datetime64")

    # The trainer reads the sink's output as feedback.
    code, message, stderr = run_trainer(
        endpoints, tmp_path, **version_env(bucket, "v2", FBL_FEEDBACK_DATA_URI=f"s3://{bucket}/feedback/")
    )
    assert code == 0, message or stderr
    manifest = store.read_manifest(f"s3://{bucket}/models/ml/churn/v2/", "v2")
    assert manifest.raw["data"]["rows"]["feedback"] == 28


def test_an_s3_outage_delays_writing_and_the_bound_refuses_new_labels_without_losing_any(
    endpoints: harness.Endpoints,
    champion: tuple[str, str],
    store: ArtifactStore,
    bucket: str,
    serve: Callable[..., ServerProcess],
) -> None:
    target = urlparse(endpoints.s3_endpoint_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 80)
    try:
        server = serve(
            *champion,
            s3_endpoint=proxy.url,
            FEEDBACK_URI=f"s3://{bucket}/feedback/",
            FBL_FEEDBACK_FLUSH_ROWS="1000",
            FBL_FEEDBACK_FLUSH_SECONDS="1",
            FBL_FEEDBACK_BUFFER_ROWS="30",
        )
        server.wait_ready()
        proxy.cut()
        frame = churn_frame(40, seed=31)
        predictions = server.predict(rows_of(frame)).json()["predictions"]
        items = [{"id": p["id"], "label": int(y)} for p, y in zip(predictions, frame["churned"], strict=True)]
        assert server.feedback(items[:20]).json()["accepted"] == 20
        failures = harness.wait_until(lambda: server.metric("fbl_feedback_flush_failures_total"), bool, 30)
        assert failures and failures >= 1
        assert read_feedback(store, bucket, "feedback/").empty
        # 40 labels against a bound of 30: the last 10 are refused (retryable); nothing acknowledged is lost.
        answer = server.feedback(items[20:]).json()
        assert answer["accepted"] == 10
        assert [r.get("reason") for r in answer["results"][10:]] == ["full"] * 10
        assert server.metric("fbl_feedback_refused_total", reason="full") == 10.0
        assert (
            harness.wait_until(lambda: server.metric("fbl_feedback_buffered_rows"), lambda v: v == 30, 10)
            == 30
        )

        proxy.restore()
        rows = harness.wait_until(
            lambda: read_feedback(store, bucket, "feedback/"), lambda f: len(f) >= 30, 60
        )
        assert len(rows) == 30
        assert set(rows["fbl_prediction_id"]) == {p["id"] for p in predictions[:30]}
        # The refused labels join once there is room again.
        assert server.feedback(items[30:]).json()["accepted"] == 10
        assert (
            harness.wait_until(lambda: server.metric("fbl_feedback_buffered_rows"), lambda v: v == 0, 10) == 0
        )
    finally:
        proxy.close()


def test_prometheus_accuracy_equals_the_feedback_sent(
    endpoints: harness.Endpoints,
    prometheus: PrometheusConnect,
    champion: tuple[str, str],
    serve: Callable[..., ServerProcess],
) -> None:
    name = f"acc-{time.monotonic_ns() % 10**8}"
    server = serve(*champion, MODEL_NAME=name)
    server.wait_ready()
    server.register_with(endpoints.prometheus_targets_file, TARGETS_LOCK)
    predictions = server.predict(rows_of(churn_frame(40, seed=41))).json()["predictions"]
    # 30 labels agree with the prediction and 10 contradict it: accuracy 0.75 exactly.
    items = [
        {"id": p["id"], "label": p["prediction"] if i < 30 else 1 - p["prediction"]}
        for i, p in enumerate(predictions)
    ]
    assert server.feedback(items).json()["accepted"] == 40

    query = f'sum(fbl_feedback_correct_total{{model="{name}"}}) / sum(fbl_feedback_total{{model="{name}"}})'
    result = harness.wait_until(
        lambda: prometheus.custom_query(query), lambda r: bool(r) and float(r[0]["value"][1]) == 0.75, 30
    )
    assert result and float(result[0]["value"][1]) == 0.75
    latency = prometheus.custom_query(f'sum(fbl_prediction_latency_seconds_count{{model="{name}"}})')
    assert float(latency[0]["value"][1]) == 1.0


def test_psi_rises_when_the_inputs_shift(
    champion: tuple[str, str], serve: Callable[..., ServerProcess]
) -> None:
    server = serve(*champion, MODEL_NAME="churn", FBL_DRIFT_WINDOW="300")
    server.wait_ready()
    assert server.metric("fbl_feature_drift_psi", feature="tenure") is None  # no inputs yet, no PSI

    server.predict(rows_of(churn_frame(300, seed=51)))
    calm = {
        f: server.metric("fbl_feature_drift_psi", model="churn", model_version="v1", feature=f)
        for f in FEATURES
    }
    assert all(value is not None and value < 0.1 for value in calm.values()), calm

    shifted = churn_frame(300, seed=52)
    shifted["tenure"] = shifted["tenure"] + 60  # beyond anything seen in training
    shifted["plan"] = "max"
    server.predict(rows_of(shifted))
    drifted = {f: server.metric("fbl_feature_drift_psi", model="churn", feature=f) for f in FEATURES}
    assert drifted["tenure"] is not None and drifted["tenure"] > 1.0, drifted
    assert drifted["plan"] is not None and drifted["plan"] > 0.5, drifted
    assert drifted["monthly"] is not None and drifted["monthly"] < 0.1, (
        drifted
    )  # unchanged feature stays calm


def test_settings_errors_stop_the_server_with_the_variable_named(
    endpoints: harness.Endpoints, tmp_path: Path
) -> None:
    server = ServerProcess(endpoints, tmp_path / "bad.log", MODEL_URI="s3://b/m/v1/", MODEL_SHA256="abc")
    with pytest.raises(RuntimeError, match="server exited with 2"):
        server.start()
    assert "MODEL_SHA256 must be 64 hex characters" in server.log()


def test_a_regressor_reports_error_sums_and_null_features_get_the_models_reason(
    endpoints: harness.Endpoints,
    store: ArtifactStore,
    bucket: str,
    serve: Callable[..., ServerProcess],
    tmp_path: Path,
) -> None:
    uri, sha256 = train_regressor(endpoints, store, bucket, tmp_path)
    server = serve(uri, sha256, MODEL_NAME="reg")
    server.wait_ready()

    response = server.predict([{"a": 1.0, "kind": "x"}, {"a": -1.0, "kind": "y"}])
    assert response.status_code == 200, response.text
    first, second = response.json()["predictions"]
    assert "probabilities" not in first
    assert first["prediction"] == pytest.approx(4.5, abs=0.1)
    server.feedback([{"id": first["id"], "label": 5.0}, {"id": second["id"], "label": -3.0}])
    errors = [5.0 - first["prediction"], -3.0 - second["prediction"]]
    assert server.metric("fbl_feedback_abs_error_total", model="reg") == pytest.approx(sum(map(abs, errors)))
    assert server.metric("fbl_feedback_squared_error_total", model="reg") == pytest.approx(
        sum(e * e for e in errors)
    )

    # Ridge cannot take a missing number: the load-time probe found that, so the schema and the 422 say so.
    missing = server.predict([{"a": None, "kind": "x"}])
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "rows", 0, "a"]
    row_schema = server.http.get("/openapi.json").json()["components"]["schemas"]["Row"]
    assert row_schema["properties"]["a"]["type"] == "number"  # not nullable
    assert server.predict([{"a": 0.0, "kind": None}]).status_code == 200  # a missing category is a category
    # 3 * 1.7e308 is inf: a 422 naming the row, not a 200 whose prediction JSON turns into null.
    beyond = server.predict([{"a": 0.0, "kind": "x"}, {"a": sys.float_info.max, "kind": "x"}])
    assert beyond.status_code == 422
    assert [e["loc"] for e in beyond.json()["detail"]] == [["body", "rows", 1]]


def test_a_label_after_the_ttl_is_unmatched(
    champion: tuple[str, str], serve: Callable[..., ServerProcess]
) -> None:
    server = serve(*champion, MODEL_NAME="ttl", FBL_PREDICTION_TTL_SECONDS="1")
    server.wait_ready()
    [prediction] = server.predict(rows_of(churn_frame(1))).json()["predictions"]
    time.sleep(1.5)
    answer = server.feedback([{"id": prediction["id"], "label": 1}]).json()
    assert answer["results"][0]["error"] == "expired prediction id"
    assert server.metric("fbl_feedback_refused_total", model="ttl", reason="expired") == 1.0
    assert server.metric("fbl_feedback_total", model="ttl", model_version="v1") is None


def test_a_verified_model_that_cannot_be_loaded_keeps_the_server_unready(
    store: ArtifactStore, bucket: str, serve: Callable[..., ServerProcess]
) -> None:
    # Digest-correct bytes whose unpickling fails (int("not a number")), as a library mismatch would.
    broken = pickle.dumps(_IntOf("not a number"))
    uri = f"s3://{bucket}/models/ml/churn/v1/"
    manifest = store.write_version(
        uri, "v1", {"model.joblib": broken, "metrics.json": b"{}"}, {"features": FEATURES, "label": "churned"}
    )
    server = serve(uri, manifest["files"]["model.joblib"]["sha256"])
    reason = harness.wait_until(server.readyz, lambda r: "cannot load model.joblib" in r.text, timeout=30)
    assert reason.status_code == 503
    assert "ValueError" in reason.json()["reason"]
    assert server.http.get("/healthz").status_code == 200


class _IntOf:
    def __init__(self, text: str) -> None:
        self.text = text

    def __reduce__(self) -> tuple[Any, ...]:
        return (int, (self.text,))


def test_forged_and_tampered_ids_are_refused_before_any_lookup_and_counted(
    champion: tuple[str, str], serve: Callable[..., ServerProcess]
) -> None:
    server = serve(*champion, MODEL_NAME="ids")
    server.wait_ready()
    [prediction] = server.predict(rows_of(churn_frame(1))).json()["predictions"]
    kid, payload, tag = prediction["id"].split(".")
    flipped = ("B" if payload[0] == "A" else "A") + payload[1:]  # the first character is all payload bits
    forged = IdSigner({kid: secrets.token_bytes(32)}, ttl_ms=3_600_000).issue(int(time.time() * 1000))
    answer = server.feedback(
        [
            {"id": f"{kid}.{flipped}.{tag}", "label": 1},
            {"id": forged, "label": 1},
            {"id": prediction["id"], "label": 1},
        ]
    ).json()
    assert [r.get("reason") for r in answer["results"]] == ["bad_signature", "bad_signature", None]
    assert server.metric("fbl_feedback_refused_total", model="ids", reason="bad_signature") == 2.0
    assert server.metric("fbl_feedback_total", model="ids", model_version="v1") == 1.0


def test_healthz_answers_while_a_large_batch_is_scored(
    champion: tuple[str, str], serve: Callable[..., ServerProcess]
) -> None:
    server = serve(*champion)
    server.wait_ready()
    rows = rows_of(churn_frame(2000, seed=61)) * 5  # 10,000 rows
    scoring = threading.Thread(target=lambda: server.predict(rows))
    answered_while_scoring = 0
    scoring.start()
    while scoring.is_alive():
        if server.http.get("/healthz").status_code == 200 and scoring.is_alive():
            answered_while_scoring += 1
        time.sleep(0.01)
    assert answered_while_scoring >= 3  # the event loop kept answering: scoring ran in the pool


def test_the_openapi_schema_documents_the_loaded_models_fields(
    champion: tuple[str, str], serve: Callable[..., ServerProcess]
) -> None:
    server = serve(*champion)
    server.wait_ready()
    document = server.http.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert list(schemas["Row"]["properties"]) == FEATURES
    assert schemas["Row"]["additionalProperties"] is False
    assert schemas["FeedbackItem"]["properties"]["label"]["enum"] == [0, 1]
    for path, model in (("/predict", "PredictRequest"), ("/feedback", "FeedbackRequest")):
        operation = document["paths"][path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(model)
        assert {"200", "422", "503"} <= set(operation["responses"])
    assert server.http.get("/metrics").headers["content-type"].startswith("text/plain")


def test_a_label_too_big_for_the_schema_is_refused_and_later_labels_still_reach_s3(
    champion: tuple[str, str], store: ArtifactStore, bucket: str, serve: Callable[..., ServerProcess]
) -> None:
    """The outside finding: label 1e19 for int classes was accepted, then every flush failed for ever."""
    server = serve(
        *champion, MODEL_NAME="big", FEEDBACK_URI=f"s3://{bucket}/feedback/", FBL_FEEDBACK_FLUSH_SECONDS="1"
    )
    server.wait_ready()
    predictions = server.predict(rows_of(churn_frame(7, seed=71))).json()["predictions"]
    refused = server.http.post("/feedback", json={"id": predictions[0]["id"], "label": 1e19})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "label"]
    answer = server.feedback([{"id": p["id"], "label": 1} for p in predictions[1:]])
    assert answer.json()["accepted"] == 6
    rows = harness.wait_until(lambda: read_feedback(store, bucket, "feedback/"), lambda f: len(f) == 6, 30)
    assert sorted(rows["fbl_prediction_id"]) == sorted(p["id"] for p in predictions[1:])
    assert server.metric("fbl_feedback_total", model="big", model_version="v1") == 6.0
    assert server.metric("fbl_feedback_flushed_rows_total") == 6.0
    assert server.metric("fbl_feedback_flush_failures_total") == 0.0
    # The refused label left its prediction waiting: the right one still joins.
    assert server.feedback([{"id": predictions[0]["id"], "label": 0}]).json()["accepted"] == 1


def test_a_bearer_token_guards_predict_and_feedback_and_rotates_without_a_restart(
    champion: tuple[str, str], serve: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token-0123456789\n")
    server = serve(*champion, MODEL_NAME="auth", FBL_SERVE_TOKEN_FILE=str(token_file))
    server.wait_ready()
    body = {"row": rows_of(churn_frame(1))[0]}

    def predict(token: str | None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return server.http.post("/predict", json=body, headers=headers)

    assert predict(None).status_code == 401
    assert predict(None).headers["www-authenticate"] == "Bearer"
    assert predict("wrong-token-0123456789").status_code == 401
    assert server.http.post("/feedback", json={"id": "x", "label": 1}).status_code == 401
    assert predict("first-token-0123456789").status_code == 200
    for open_path in ("/healthz", "/readyz", "/metrics"):
        assert server.http.get(open_path).status_code == 200
    assert server.metric("fbl_unauthorized_requests_total", path="/predict") == 3.0
    assert server.metric("fbl_unauthorized_requests_total", path="/feedback") == 1.0
    # The Secret rotates: the kubelet swaps the file; the next request is checked against the new token.
    rotated = tmp_path / "token.new"
    rotated.write_text("second-token-0123456789")
    rotated.replace(token_file)
    assert predict("second-token-0123456789").status_code == 200
    assert predict("first-token-0123456789").status_code == 401
    assert "first-token" not in server.log() and "second-token" not in server.log()


def test_a_body_over_the_limit_gets_413_and_a_batch_over_10000_gets_422(
    champion: tuple[str, str], serve: Callable[..., ServerProcess]
) -> None:
    server = serve(*champion, MODEL_NAME="limits", FBL_MAX_BODY_BYTES="4096")
    server.wait_ready()
    rows = rows_of(churn_frame(120, seed=3))  # about 8 KB of JSON
    too_large = server.predict(rows)
    assert too_large.status_code == 413
    assert too_large.json()["detail"] == "the body is larger than 4096 bytes"
    chunked = server.http.post("/predict", content=iter([b'{"rows": [', b" " * 5000, b"]}"]))  # no length
    assert chunked.status_code == 413
    assert server.predict(rows[:10]).status_code == 200
    assert server.metric("fbl_predictions_total", model="limits", model_version="v1") == 10.0

    roomy = serve(*champion, MODEL_NAME="batch")
    roomy.wait_ready()
    over = roomy.feedback([{"id": "x", "label": 1}] * 10_001)
    assert over.status_code == 422
    assert over.json()["detail"][0]["loc"] == ["body", "feedback"]
