"""The simulated cluster around the loop: the artifact store and data prefixes, the retrain Jobs (the real
trainer, in-process), and the Deployment (the reference server's loader and prediction path).

Every byte crosses the real ArtifactStore over an in-memory S3 client, so versions carry a manifest with
each file's sha256, the operator verifies them as always, and the server loads a model only once its digest
matches. Only the transport is simulated.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from feedbackloop_serve.loader import ModelRefusedError, StoreUnavailableError, load_model
from feedbackloop_serve.served import LoadedModel

from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.core import contract
from feedbackloop.core.observations import ArtifactCheck, JobObservation, JobState
from feedbackloop.core.spec import FeedbackLoopSpec
from feedbackloop.core.status import ModelRef
from feedbackloop_backtest.errors import BacktestError
from feedbackloop_backtest.s3memory import MemoryS3Client
from feedbackloop_train import evaluate
from feedbackloop_train.main import train
from feedbackloop_train.model import prepare
from feedbackloop_train.settings import TrainerError, load_settings

INITIAL_TRAINING_KEY = "backtest-before-start.parquet"
HOLDOUT_KEY = "backtest-holdout.parquet"


@dataclass(frozen=True)
class TrainerRun:
    """What a retrain Job's pod would have reported, and what the backtest logs of it."""

    job: JobObservation
    version: str
    rows: Mapping[str, int]
    candidate: Mapping[str, float]
    current: Mapping[str, float]
    reused: str | None = None  # the earlier version the trainer chose over its fresh model (retrain.reuse)


def job_env(manifest: Mapping[str, Any]) -> dict[str, str]:
    """The literal env of the Job's trainer container (Secret and downward-API references have no value)."""
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: str(item["value"]) for item in container.get("env", []) if "value" in item}


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


class World:
    def __init__(self, spec: FeedbackLoopSpec, workdir: Path) -> None:
        self.spec = spec
        self.client = MemoryS3Client()
        self.store = ArtifactStore(self.client)
        self.workdir = workdir
        retrain = spec.retrain_spec()
        self.training_uri = retrain.data.training
        self.feedback_uri = retrain.data.feedback
        self.holdout_uri = retrain.data.holdout
        for uri in (self.training_uri, self.feedback_uri, self.holdout_uri):
            if uri:
                self.client.create_bucket(contract.split_s3_uri(uri)[0])
        self.client.create_bucket(spec.artifacts_spec().bucket)
        self._staged_batches = 0

    # ---- data the trainer reads
    def put(self, uri: str, name: str, frame: pd.DataFrame) -> None:
        bucket, prefix = contract.split_s3_uri(contract.version_root_uri(uri))
        self.store.put_bytes(bucket, prefix + name, parquet_bytes(frame))

    def stage_training(self, frame: pd.DataFrame) -> None:
        self.put(self.training_uri, INITIAL_TRAINING_KEY, frame)

    def stage_holdout(self, frame: pd.DataFrame) -> None:
        if self.holdout_uri is None:
            raise BacktestError("--holdout: the spec names no spec.retrain.data.holdout to hold it")
        self.put(self.holdout_uri, HOLDOUT_KEY, frame)

    def stage_feedback(self, frame: pd.DataFrame) -> None:
        """Labelled rows since the last batch, as the server's writer would have flushed them; without a
        spec.retrain.data.feedback prefix they join the training prefix."""
        if frame.empty:
            return
        self._staged_batches += 1
        name = f"backtest-feedback-{self._staged_batches:08d}.parquet"
        if self.feedback_uri is not None:
            self.put(self.feedback_uri, name, frame)
        else:
            label = self.spec.retrain_spec().trainer.label
            renamed = frame.rename(columns={contract.FEEDBACK_LABEL: label})
            kept = [c for c in renamed.columns if not c.startswith(contract.FEEDBACK_COLUMN_PREFIX)]
            self.put(self.training_uri, name, renamed[kept])

    # ---- the retrain Job
    def run_trainer(self, env: dict[str, str]) -> TrainerRun:
        """feedbackloop_train.main's work, in-process: settings from the Job's env, train, write the version
        (manifest last), and the termination message the operator reads."""
        version = env.get(contract.ENV_VERSION, "")
        name = env.get(contract.ENV_JOB_NAME, "")
        try:
            settings = load_settings(env)
            with tempfile.TemporaryDirectory(prefix="fbl-train-", dir=self.workdir) as workdir:
                manifest = train(settings, self.store, Path(workdir))
        except TrainerError as err:
            return TrainerRun(JobObservation(name, JobState.FAILED, str(err)), version, {}, {}, {})
        digest = contract.sha256_hex(contract.manifest_bytes(manifest))
        metrics_uri = contract.version_root_uri(settings.artifact_uri)
        verified = self.store.verify_version(metrics_uri, version)
        metrics = verified.metrics if verified.check is ArtifactCheck.VERIFIED else {}
        return TrainerRun(
            JobObservation(name, JobState.SUCCEEDED, contract.success_message(digest)),
            version,
            dict(manifest.get("data", {}).get("rows", {})),
            contract.numeric_metrics(metrics.get("candidate")),
            contract.numeric_metrics(metrics.get("current")),
            _reused(metrics.get(contract.METRICS_REUSED_VERSION)),
        )

    # ---- the Deployment
    def load(self, model: ModelRef, name: str) -> LoadedModel:
        """The reference server's load: manifest, then every byte to unpickle checked against its sha256."""
        if model.sha256 is None:
            raise BacktestError(f"model {model.version} has no sha256 to verify")
        with tempfile.TemporaryDirectory(prefix="fbl-serve-", dir=self.workdir) as workdir:
            try:
                return load_model(self.store, model.uri, model.sha256, Path(workdir), name)
            except (ModelRefusedError, StoreUnavailableError) as err:
                raise BacktestError(f"the server refused {model.version}: {err}") from None


def _reused(value: Any) -> str | None:
    return value if isinstance(value, str) and contract.is_version_name(value) else None


def predict(model: LoadedModel, frame: pd.DataFrame) -> np.ndarray[Any, Any]:
    """The server's scoring of rows: the model's features, prepared as in training, then evaluate.predict."""
    if frame.empty:
        return np.asarray([])
    return evaluate.predict(model.estimator, prepare(frame, model.estimator, model.features)).labels
