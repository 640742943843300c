"""Training data, a retrain pod's environment, a trained champion: shared by trainer and server tests."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import harness
from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.core import contract

RNG_SEED = 7


def churn_frame(rows: int, seed: int = RNG_SEED, flip: bool = False) -> pd.DataFrame:
    """A learnable churn concept: short tenure on the basic plan churns. `flip` inverts it (drift)."""
    rng = np.random.default_rng(seed)
    tenure = rng.integers(1, 72, rows)
    monthly = rng.normal(60, 15, rows).round(2)
    plan = rng.choice(["basic", "pro", "max"], rows)
    region = rng.choice(["north", "south"], rows)
    risk = (tenure < 24).astype(int) + (plan == "basic").astype(int) + (monthly > 70).astype(int)
    churned = ((risk >= 2) ^ flip) ^ (rng.random(rows) < 0.05)
    return pd.DataFrame(
        {"tenure": tenure, "monthly": monthly, "plan": plan, "region": region, "churned": churned.astype(int)}
    )


def put_csv(s3: Any, bucket: str, key: str, frame: pd.DataFrame) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=frame.to_csv(index=False).encode())


def put_parquet(s3: Any, bucket: str, key: str, frame: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())


def job_environment(endpoints: harness.Endpoints, secret_key: str | None = None) -> dict[str, str]:
    """A retrain pod's environment: none of this shell's FBL_*/AWS_*, the store's endpoint and keys."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FBL_", "AWS_"))},
        "AWS_ENDPOINT_URL_S3": endpoints.s3_endpoint_url,
        "AWS_ACCESS_KEY_ID": endpoints.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key or endpoints.s3_secret_key,
        "AWS_DEFAULT_REGION": harness.S3_REGION,
    }


def run_trainer(
    endpoints: harness.Endpoints, tmp_path: Path, secret_key: str | None = None, **env: str
) -> tuple[int, str, str]:
    termination = tmp_path / f"termination-{uuid.uuid4().hex[:6]}"
    full_env = {
        **job_environment(endpoints, secret_key),
        "FBL_TERMINATION_MESSAGE_PATH": str(termination),
        "FBL_LOOP_NAME": "churn",
        "FBL_LOOP_NAMESPACE": "ml",
        "FBL_JOB_NAME": "churn-retrain-1",
        "FBL_LABEL_COLUMN": "churned",
        "FBL_ESTIMATOR_CLASS": "sklearn.ensemble.HistGradientBoostingClassifier",
        "FBL_ESTIMATOR_PARAMS": json.dumps({"max_iter": 50}),
        **env,
    }
    done = subprocess.run(
        [sys.executable, "-m", "feedbackloop_train"],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    message = termination.read_text().strip() if termination.exists() else ""
    return done.returncode, message, done.stderr


def version_env(bucket: str, version: str, **env: str) -> dict[str, str]:
    return {
        "FBL_VERSION": version,
        "FBL_ARTIFACT_URI": f"s3://{bucket}/models/ml/churn/{version}/",
        "FBL_TRAINING_DATA_URI": f"s3://{bucket}/data/train/",
        **env,
    }


def train_champion(
    endpoints: harness.Endpoints, store: ArtifactStore, bucket: str, tmp_path: Path, rows: int
) -> tuple[str, str]:
    """Train v1 on the base concept; return its URI and model sha256, as a Deployment would carry them."""
    store.put_bytes(bucket, "data/train/part-0.csv", churn_frame(rows).to_csv(index=False).encode())
    assert run_trainer(endpoints, tmp_path, **version_env(bucket, "v1"))[0] == 0
    uri = f"s3://{bucket}/models/ml/churn/v1/"
    model = store.read_manifest(uri, "v1").file("model.joblib")
    assert model is not None
    return uri, model.sha256


def regression_env(bucket: str, version: str = "v1") -> dict[str, str]:
    """A Ridge regressor on the `target` column, as both the trainer and the server tests train one."""
    return version_env(
        bucket, version, FBL_TASK="regression", FBL_LABEL_COLUMN="target",
        FBL_ESTIMATOR_CLASS="sklearn.linear_model.Ridge", FBL_ESTIMATOR_PARAMS="{}",
    )  # fmt: skip


def copy_version(store: ArtifactStore, source: tuple[str, str], bucket: str) -> tuple[str, str]:
    """The trained version at `source` (its URI and sha256) and the data it was trained on, copied byte for
    byte into `bucket` at the same keys: a test may tamper with its copy without retraining."""
    uri, sha256 = source
    from_bucket, prefix = contract.split_s3_uri(uri)
    for key in store.list_keys(from_bucket, ""):
        store.put_bytes(bucket, key, store.get_bytes(from_bucket, key))
    return f"s3://{bucket}/{prefix}", sha256


def train_regressor(
    endpoints: harness.Endpoints, store: ArtifactStore, bucket: str, tmp_path: Path
) -> tuple[str, str]:
    """A Ridge v1 on `target = 3a + 1.5 [kind == x]`; its URI and model sha256."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"a": rng.normal(size=500), "kind": rng.choice(["x", "y"], 500)})
    frame["target"] = 3 * frame["a"] + (frame["kind"] == "x") * 1.5
    store.put_bytes(bucket, "data/train/all.csv", frame.to_csv(index=False).encode())
    code, message, stderr = run_trainer(endpoints, tmp_path, **regression_env(bucket))
    assert code == 0, message + stderr[-2000:]
    uri = f"s3://{bucket}/models/ml/churn/v1/"
    model = store.read_manifest(uri, "v1").file("model.joblib")
    assert model is not None
    return uri, model.sha256
