"""The retrain Job's trainer (`python -m feedbackloop_train`) against the real S3 server."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from model_helpers import (
    churn_frame,
    job_environment,
    put_csv,
    put_parquet,
    regression_env,
    run_trainer,
    train_champion,
    version_env,
)

import harness
from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.core import contract
from feedbackloop.core.observations import ArtifactCheck


def test_classification_writes_a_complete_verified_version(
    endpoints: harness.Endpoints, s3: Any, bucket: str, tmp_path: Path
) -> None:
    frame = churn_frame(3000)
    put_csv(s3, bucket, "data/train/part-0.csv", frame.iloc[:1500])
    put_parquet(s3, bucket, "data/train/part-1.parquet", frame.iloc[1500:])
    code, message, stderr = run_trainer(endpoints, tmp_path, **version_env(bucket, "v1"))
    assert code == 0, message + stderr[-2000:]

    store = ArtifactStore(s3)
    uri = f"s3://{bucket}/models/ml/churn/v1/"
    manifest = store.read_manifest(uri, "v1")
    # The termination message vouches for exactly these manifest bytes: the operator accepts no other.
    written = s3.get_object(Bucket=bucket, Key="models/ml/churn/v1/manifest.json")["Body"].read()
    assert json.loads(message) == {"manifestSha256": hashlib.sha256(written).hexdigest()}
    names = {f.name for f in manifest.files}
    assert {"model.joblib", "metrics.json", "report.json", "report.html", "reference.json"} <= names
    assert {"confusion_matrix.png", "worst_slices.png"} <= names
    for entry in manifest.files:  # the manifest's digests are the bytes in S3
        body = s3.get_object(Bucket=bucket, Key=f"models/ml/churn/v1/{entry.name}")["Body"].read()
        assert (hashlib.sha256(body).hexdigest(), len(body)) == (entry.sha256, entry.size)
    assert manifest.raw["data"]["rows"]["training"] == 3000
    assert manifest.raw["libraries"]["scikit-learn"]
    assert store.verify_version(uri, "v1").check is ArtifactCheck.VERIFIED

    metrics = json.loads(s3.get_object(Bucket=bucket, Key="models/ml/churn/v1/metrics.json")["Body"].read())
    assert metrics["current"] is None
    assert set(metrics["candidate"]) == {"accuracy", "balanced_accuracy", "f1_macro", "log_loss", "roc_auc"}
    assert metrics["candidate"]["accuracy"] > 0.85  # the concept is learnable
    report = json.loads(s3.get_object(Bucket=bucket, Key="models/ml/churn/v1/report.json")["Body"].read())
    assert set(report["candidate"]["perClass"]) == {"0", "1"}
    assert report["candidate"]["confusionMatrix"]["labels"] == ["0", "1"]
    assert report["candidate"]["worstSlices"]
    reference = json.loads(
        s3.get_object(Bucket=bucket, Key="models/ml/churn/v1/reference.json")["Body"].read()
    )
    assert reference["features"]["plan"]["type"] == "categorical"
    assert abs(sum(reference["features"]["tenure"]["proportions"]) - 1) < 1e-9
    html = s3.get_object(Bucket=bucket, Key="models/ml/churn/v1/report.html")["Body"].read().decode()
    assert "Worst slices" in html and "data:image/png;base64," in html

    # A retried pod finds the version complete and leaves it exactly as it is.
    before = s3.get_object(Bucket=bucket, Key="models/ml/churn/v1/manifest.json")["Body"].read()
    retried = run_trainer(endpoints, tmp_path, **version_env(bucket, "v1"))
    assert retried[:2] == (0, contract.success_message(hashlib.sha256(before).hexdigest()))
    assert s3.get_object(Bucket=bucket, Key="models/ml/churn/v1/manifest.json")["Body"].read() == before

    model_sha = manifest.file("model.joblib").sha256  # type: ignore[union-attr]
    path = store.download_verified(
        bucket, "models/ml/churn/v1/model.joblib", model_sha, tmp_path / "m.joblib"
    )
    predictions = joblib.load(path).predict(frame.drop(columns=["churned"]).iloc[:5])
    assert len(predictions) == 5


def test_regression_on_parquet(endpoints: harness.Endpoints, s3: Any, bucket: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, 2))
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "kind": rng.choice(["x", "y"], 2000)})
    frame["target"] = (
        3 * frame["a"] - 2 * frame["b"] + (frame["kind"] == "x") * 1.5 + rng.normal(0, 0.1, 2000)
    )
    put_parquet(s3, bucket, "data/train/all.parquet", frame)
    env = regression_env(bucket)
    code, message, stderr = run_trainer(endpoints, tmp_path, **env)
    assert code == 0, message + stderr[-2000:]
    metrics = json.loads(s3.get_object(Bucket=bucket, Key="models/ml/churn/v1/metrics.json")["Body"].read())
    assert set(metrics["candidate"]) == {"rmse", "mae", "r2"}
    assert metrics["candidate"]["r2"] > 0.95
    assert metrics["primaryMetric"] == "rmse"


def test_champion_and_challenger_on_the_same_holdout_with_feedback(
    endpoints: harness.Endpoints, s3: Any, bucket: str, tmp_path: Path
) -> None:
    store = ArtifactStore(s3)
    v1, sha = train_champion(endpoints, store, bucket, tmp_path, rows=2000)

    # The concept drifted: the feedback holds the flipped concept, and the holdout is the most recent rows.
    drifted = churn_frame(2000, seed=11, flip=True).rename(columns={"churned": "fbl_label"})
    drifted["fbl_labelled_at"] = pd.date_range("2026-11-01", periods=len(drifted), freq="min", tz="UTC")
    drifted["fbl_prediction"] = 0
    put_parquet(s3, bucket, "data/feedback/batch-0.parquet", drifted)
    env = version_env(
        bucket, "v2", FBL_FEEDBACK_DATA_URI=f"s3://{bucket}/data/feedback/", FBL_HOLDOUT_STRATEGY="Recent",
        FBL_HOLDOUT_FRACTION="0.25", FBL_CURRENT_MODEL_URI=v1, FBL_CURRENT_MODEL_SHA256=sha,
        FBL_CURRENT_MODEL_VERSION="v1",
    )  # fmt: skip
    code, message, stderr = run_trainer(endpoints, tmp_path, **env)
    assert code == 0, message + stderr[-2000:]

    metrics = json.loads(s3.get_object(Bucket=bucket, Key="models/ml/churn/v2/metrics.json")["Body"].read())
    assert metrics["currentVersion"] == "v1"
    assert metrics["holdout"]["strategy"] == "Recent"
    # On recent (drifted) rows the retrained model beats the champion, and the statistics say so.
    assert metrics["candidate"]["accuracy"] > metrics["current"]["accuracy"]
    stats = metrics["comparison"]["accuracy"]
    assert stats["ciLow"] <= stats["delta"] <= stats["ciHigh"]
    assert stats["ciLow"] > 0
    assert stats["mcnemarPValue"] < 0.05
    manifest = store.read_manifest(f"s3://{bucket}/models/ml/churn/v2/", "v2")
    assert manifest.raw["data"]["rows"]["feedback"] == 2000


class _Tripwire:
    """Unpickling this creates a file: proof that a byte-changed champion was (or was not) loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (Path(self.path),))


def test_a_corrupted_champion_is_refused_before_unpickling(
    endpoints: harness.Endpoints, s3: Any, bucket: str, tmp_path: Path
) -> None:
    store = ArtifactStore(s3)
    v1, sha = train_champion(endpoints, store, bucket, tmp_path, rows=1000)
    tripwire = tmp_path / "unpickled"
    s3.put_object(
        Bucket=bucket, Key="models/ml/churn/v1/model.joblib", Body=pickle.dumps(_Tripwire(str(tripwire)))
    )

    env = version_env(bucket, "v2", FBL_CURRENT_MODEL_URI=v1, FBL_CURRENT_MODEL_SHA256=sha)
    code, message, _ = run_trainer(endpoints, tmp_path, **env)
    assert code == 1
    assert "refused before loading" in message
    assert "sha256" in message
    assert not tripwire.exists()
    assert (
        store.verify_version(f"s3://{bucket}/models/ml/churn/v2/", "v2").check
        is ArtifactCheck.MANIFEST_MISSING
    )


def as_feedback(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.rename(columns={"churned": "fbl_label"})


FEEDBACK = {"FBL_FEEDBACK_DATA_URI": "feedback"}
RIDGE = {
    "FBL_TASK": "regression",
    "FBL_ESTIMATOR_CLASS": "sklearn.linear_model.Ridge",
    "FBL_ESTIMATOR_PARAMS": "{}",
}
TRAIN = "data/train/a.csv"
FEEDBACK_FILE = "data/feedback/b.csv"
BAD_DATA = [
    (
        "missing-label",
        {TRAIN: churn_frame(100).drop(columns=["churned"])},
        {},
        "label column 'churned' not found",
    ),
    ("empty", {TRAIN: churn_frame(0)}, {}, "no rows under"),
    ("no-files", {}, {}, "no CSV or Parquet data under"),
    (
        "non-numeric",
        {TRAIN: churn_frame(200), FEEDBACK_FILE: as_feedback(churn_frame(20)).assign(tenure="soon")},
        FEEDBACK,
        "column 'tenure' must be numeric but holds 'soon'",
    ),
    (
        "unknown-columns",
        {TRAIN: churn_frame(200), FEEDBACK_FILE: as_feedback(churn_frame(20)).assign(shoe_size=42)},
        FEEDBACK,
        "unknown columns: shoe_size",
    ),
    (
        "regression-label",
        {TRAIN: churn_frame(100).assign(churned="yes")},
        RIDGE,
        "must be numeric for regression",
    ),
    (
        "bad-params",
        {TRAIN: churn_frame(100)},
        {"FBL_ESTIMATOR_PARAMS": '{"max_depht": 3}'},
        "invalid params for sklearn.ensemble.HistGradientBoostingClassifier",
    ),
    (
        "not-sklearn",
        {TRAIN: churn_frame(100)},
        {"FBL_ESTIMATOR_CLASS": "os.system"},
        "only sklearn.* classes",
    ),
]


@pytest.mark.parametrize(
    ("objects", "env", "fragment"), [case[1:] for case in BAD_DATA], ids=[c[0] for c in BAD_DATA]
)
def test_bad_input_fails_with_a_clear_reason(
    endpoints: harness.Endpoints,
    s3: Any,
    bucket: str,
    tmp_path: Path,
    objects: dict[str, pd.DataFrame],
    env: dict[str, str],
    fragment: str,
) -> None:
    for key, frame in objects.items():
        put_csv(s3, bucket, key, frame)
    if env.get("FBL_FEEDBACK_DATA_URI") == "feedback":
        env = {**env, "FBL_FEEDBACK_DATA_URI": f"s3://{bucket}/data/feedback/"}
    code, message, _ = run_trainer(endpoints, tmp_path, **version_env(bucket, "v1", **env))
    assert code == 1
    assert fragment in message
    assert "\n" not in message


def test_an_unreadable_object_is_named(
    endpoints: harness.Endpoints, s3: Any, bucket: str, tmp_path: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="data/train/broken.parquet", Body=b"this is not parquet")
    code, message, _ = run_trainer(endpoints, tmp_path, **version_env(bucket, "v1"))
    assert code == 1
    assert f"cannot read s3://{bucket}/data/train/broken.parquet" in message


def test_wrong_credentials_are_access_denied(
    endpoints: harness.Endpoints, s3: Any, bucket: str, tmp_path: Path
) -> None:
    put_csv(s3, bucket, "data/train/a.csv", churn_frame(100))
    code, message, _ = run_trainer(endpoints, tmp_path, secret_key="wrong", **version_env(bucket, "v1"))
    assert code == 1
    assert "access denied" in message


def test_a_killed_run_leaves_no_version(
    endpoints: harness.Endpoints, s3: Any, bucket: str, tmp_path: Path
) -> None:
    put_csv(s3, bucket, "data/train/a.csv", churn_frame(500))
    code, _, _ = run_trainer(
        endpoints, tmp_path, FBL_FAILPOINT="crash-before-manifest", **version_env(bucket, "v1")
    )
    assert code == 137
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="models/ml/churn/v1/")["Contents"]}
    assert "models/ml/churn/v1/model.joblib" in keys  # the files were written...
    assert "models/ml/churn/v1/manifest.json" not in keys  # ...but without a manifest it is no version
    result = ArtifactStore(s3).verify_version(f"s3://{bucket}/models/ml/churn/v1/", "v1")
    assert result.check is ArtifactCheck.MANIFEST_MISSING


def test_console_script_reaches_the_same_code(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("feedbackloop-train")
    termination = tmp_path / "termination-log"
    env = {"PATH": os.environ["PATH"], "FBL_TERMINATION_MESSAGE_PATH": str(termination)}
    done = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert termination.read_text() == f"{contract.ENV_ARTIFACT_URI} is not set\n"


def test_a_bring_your_own_trainer_honouring_the_contract_is_accepted(
    endpoints: harness.Endpoints, s3: Any, bucket: str
) -> None:
    env = {**job_environment(endpoints), **version_env(bucket, "v5")}
    script = Path(__file__).with_name("byo") / "minimal_trainer.py"
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = ArtifactStore(s3).verify_version(f"s3://{bucket}/models/ml/churn/v5/", "v5")
    assert result.check is ArtifactCheck.VERIFIED
    assert result.metrics["candidate"] == {"accuracy": 0.9}
