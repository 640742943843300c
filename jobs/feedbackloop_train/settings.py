"""The FBL_* environment a retrain Job receives (docs/retrain-job-contract.md), parsed and checked once."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from feedbackloop.core import contract


class TrainerError(Exception):
    """A failure with a one-line reason for the termination message."""


@dataclass(frozen=True)
class TrainSettings:
    loop: str
    namespace: str
    version: str
    job: str
    artifact_uri: str
    training_uri: str
    feedback_uri: str | None
    feedback_since: datetime | None
    data_since: datetime | None  # a since-breach retrain: the rows labelled since then, at least min_rows
    min_rows: int
    wider_rows: int  # a since-breach retrain's second candidate on the newest wider_rows rows; 0: none
    holdout_uri: str | None
    holdout_fraction: float
    holdout_strategy: str
    seed: int
    label: str
    task: str
    estimator_class: str
    estimator_params: dict[str, Any]
    current_uri: str | None
    current_sha256: str | None
    current_version: str | None
    termination_message_path: str
    s3_endpoint_url: str | None
    s3_region: str
    # A breach retrain under retrain.reuse: earlier versions to score beside the new model (newest first).
    reuse: tuple[contract.ReusableVersion, ...] = ()


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise TrainerError(f"{name} is not set")
    return value


def _uri(env: Mapping[str, str], name: str, required: bool = False) -> str | None:
    value = _required(env, name) if required else env.get(name) or None
    if value is not None:
        try:
            contract.split_s3_uri(value)
        except ValueError:
            raise TrainerError(f"{name}={value!r} is not an s3://bucket/prefix URI") from None
    return value


def _time(env: Mapping[str, str], name: str) -> datetime | None:
    text = env.get(name)
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        raise TrainerError(f"{name}={text!r} is not an RFC 3339 time") from None


def _row_count(env: Mapping[str, str], name: str) -> int:
    """A count of rows from the env: 0 when unset."""
    try:
        count = int(env.get(name) or "0")
    except ValueError:
        raise TrainerError(f"{name}={env.get(name)!r} is not a number") from None
    if count < 0:
        raise TrainerError(f"{name}={count} must not be negative")
    return count


def load_settings(env: Mapping[str, str] | None = None) -> TrainSettings:
    env = os.environ if env is None else env
    try:
        params = json.loads(env.get(contract.ENV_ESTIMATOR_PARAMS) or "{}")
    except json.JSONDecodeError as err:
        raise TrainerError(f"{contract.ENV_ESTIMATOR_PARAMS} is not JSON: {err}") from None
    if not isinstance(params, dict):
        raise TrainerError(f"{contract.ENV_ESTIMATOR_PARAMS} must be a JSON object")
    try:
        fraction = float(env.get(contract.ENV_HOLDOUT_FRACTION) or "0.2")
        seed = int(env.get(contract.ENV_SEED) or "0")
    except ValueError as err:
        raise TrainerError(f"holdout fraction or seed is not a number: {err}") from None
    if not 0 < fraction < 1:
        raise TrainerError(f"{contract.ENV_HOLDOUT_FRACTION}={fraction} must be between 0 and 1")
    strategy = env.get(contract.ENV_HOLDOUT_STRATEGY) or "Random"
    if strategy not in ("Random", "Recent"):
        raise TrainerError(f"{contract.ENV_HOLDOUT_STRATEGY}={strategy!r} must be Random or Recent")
    task = env.get(contract.ENV_TASK) or "classification"
    if task not in ("classification", "regression"):
        raise TrainerError(f"{contract.ENV_TASK}={task!r} must be classification or regression")
    since_text = env.get(contract.ENV_FEEDBACK_SINCE)
    try:
        since = datetime.fromisoformat(since_text.replace("Z", "+00:00")) if since_text else None
    except ValueError:
        raise TrainerError(f"{contract.ENV_FEEDBACK_SINCE}={since_text!r} is not an RFC 3339 time") from None
    data_since = _time(env, contract.ENV_DATA_SINCE)
    min_rows = _row_count(env, contract.ENV_MIN_ROWS)
    wider_rows = _row_count(env, contract.ENV_WIDER_ROWS)
    current_uri = _uri(env, contract.ENV_CURRENT_MODEL_URI)
    current_sha = env.get(contract.ENV_CURRENT_MODEL_SHA256) or None
    if current_uri and not current_sha:
        raise TrainerError(
            f"{contract.ENV_CURRENT_MODEL_URI} is set without {contract.ENV_CURRENT_MODEL_SHA256}"
        )
    reuse = _reuse(env)
    artifact_uri = _uri(env, contract.ENV_ARTIFACT_URI, required=True)
    training_uri = _uri(env, contract.ENV_TRAINING_DATA_URI, required=True)
    assert artifact_uri is not None
    assert training_uri is not None
    return TrainSettings(
        loop=env.get(contract.ENV_LOOP_NAME, ""),
        namespace=env.get(contract.ENV_LOOP_NAMESPACE, ""),
        version=_required(env, contract.ENV_VERSION),
        job=env.get(contract.ENV_JOB_NAME, ""),
        artifact_uri=artifact_uri if artifact_uri.endswith("/") else artifact_uri + "/",
        training_uri=training_uri,
        feedback_uri=_uri(env, contract.ENV_FEEDBACK_DATA_URI),
        feedback_since=since,
        data_since=data_since,
        min_rows=min_rows,
        wider_rows=wider_rows,
        holdout_uri=_uri(env, contract.ENV_HOLDOUT_DATA_URI),
        holdout_fraction=fraction,
        holdout_strategy=strategy,
        seed=seed,
        label=_required(env, contract.ENV_LABEL_COLUMN),
        task=task,
        estimator_class=env.get(contract.ENV_ESTIMATOR_CLASS)
        or "sklearn.ensemble.HistGradientBoostingClassifier",
        estimator_params=params,
        current_uri=current_uri,
        current_sha256=current_sha,
        current_version=env.get(contract.ENV_CURRENT_MODEL_VERSION) or None,
        termination_message_path=env.get(contract.ENV_TERMINATION_MESSAGE_PATH)
        or contract.TERMINATION_MESSAGE_PATH,
        s3_endpoint_url=env.get(contract.ENV_S3_ENDPOINT) or None,
        s3_region=env.get(contract.ENV_S3_REGION) or "us-east-1",
        reuse=tuple(v for v in reuse if v.version != env.get(contract.ENV_VERSION, "").strip()),
    )


def _reuse(env: Mapping[str, str]) -> tuple[contract.ReusableVersion, ...]:
    text = env.get(contract.ENV_REUSE_VERSIONS)
    if not text:
        return ()
    try:
        return contract.parse_reuse_env(text)
    except ValueError as err:
        raise TrainerError(f"{contract.ENV_REUSE_VERSIONS} {err}") from None
