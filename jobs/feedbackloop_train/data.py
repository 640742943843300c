"""Training, feedback and holdout rows from S3 prefixes: CSV and Parquet files read whole with pyarrow."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from feedbackloop.adapters.artifacts import (
    ArtifactAccessDeniedError,
    ArtifactNotFoundError,
    ArtifactStore,
    ArtifactStoreError,
)
from feedbackloop.core import contract
from feedbackloop_train.settings import TrainerError, TrainSettings

READABLE = (".csv", ".parquet", ".pq")


@dataclass(frozen=True)
class Dataset:
    train: pd.DataFrame
    holdout: pd.DataFrame
    label: str
    features: list[str]
    rows: dict[str, int]
    # A since-breach retrain's wider window (settings.wider_rows): the newest older rows its window left out.
    wider_extra: pd.DataFrame | None = None


def read_prefix(store: ArtifactStore, uri: str) -> pd.DataFrame:
    """Every CSV/Parquet object under an s3:// prefix, concatenated in key order."""
    bucket, prefix = contract.split_s3_uri(uri)
    try:
        keys = sorted(key for key in store.list_keys(bucket, prefix) if key.lower().endswith(READABLE))
        tables = [_read_table(bucket, key, store.get_bytes(bucket, key)) for key in keys]
    except ArtifactStoreError as err:
        raise TrainerError(_unreadable(uri, err)) from None
    if not tables:
        raise TrainerError(f"no CSV or Parquet data under {uri}")
    frames = [table.to_pandas() for table in tables]
    columns = set(frames[0].columns)
    for frame, key_index in zip(frames[1:], range(1, len(frames)), strict=True):
        if set(frame.columns) != columns:
            different = sorted(set(frame.columns) ^ columns)
            raise TrainerError(
                f"files under {uri} disagree on columns: {', '.join(different)} (file #{key_index + 1})"
            )
    data = pd.concat(frames, ignore_index=True)
    if data.empty:
        raise TrainerError(f"no rows under {uri}")
    return data


def _read_table(bucket: str, key: str, body: bytes) -> pa.Table:
    try:
        if key.lower().endswith(".csv"):
            return pacsv.read_csv(io.BytesIO(body))
        return pq.read_table(io.BytesIO(body))
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as err:
        raise TrainerError(f"cannot read s3://{bucket}/{key}: {str(err).splitlines()[0]}") from None


def _unreadable(uri: str, err: ArtifactStoreError) -> str:
    if not err.code:  # the store never answered
        return f"cannot reach the store for {uri}: {err}"
    if isinstance(err, ArtifactAccessDeniedError):
        return f"access denied reading {uri} ({err.code})"
    if isinstance(err, ArtifactNotFoundError) and err.missing_bucket:
        return f"bucket of {uri} does not exist"
    return f"cannot list or read {uri}: {err.code} {err}"


def _feedback_rows(data: pd.DataFrame, label: str, since: datetime | None, uri: str) -> pd.DataFrame:
    if contract.FEEDBACK_LABEL not in data.columns:
        raise TrainerError(f"feedback under {uri} has no {contract.FEEDBACK_LABEL} column")
    if since is not None and contract.FEEDBACK_LABELLED_AT in data.columns:
        times = pd.to_datetime(data[contract.FEEDBACK_LABELLED_AT], utc=True)
        data = data[times >= pd.Timestamp(since)]
    if contract.FEEDBACK_LABELLED_AT in data.columns:
        data = data.sort_values(contract.FEEDBACK_LABELLED_AT, kind="stable")
    if contract.FEEDBACK_PREDICTION_ID in data.columns:
        # The server writes a batch again after a crash between upload and acknowledgement: one row per id.
        data = data.drop_duplicates(contract.FEEDBACK_PREDICTION_ID, keep="last")
    renamed = data.rename(columns={contract.FEEDBACK_LABEL: label})
    return renamed[[c for c in renamed.columns if not c.startswith(contract.FEEDBACK_COLUMN_PREFIX)]]


def _labelled_since(data: pd.DataFrame, since: datetime) -> int:
    """Distinct labelled feedback rows labelled at or after `since` (all of them, without the column)."""
    if contract.FEEDBACK_LABEL in data.columns:
        data = data[data[contract.FEEDBACK_LABEL].notna()]
    if contract.FEEDBACK_PREDICTION_ID in data.columns:
        data = data.drop_duplicates(contract.FEEDBACK_PREDICTION_ID, keep="last")
    if contract.FEEDBACK_LABELLED_AT not in data.columns:
        return len(data)
    times = pd.to_datetime(data[contract.FEEDBACK_LABELLED_AT], utc=True)
    return int((times >= pd.Timestamp(since)).sum())


def _check_columns(frame: pd.DataFrame, expected: list[str], source: str) -> None:
    unknown = sorted(set(frame.columns) - set(expected))
    missing = sorted(set(expected) - set(frame.columns))
    if unknown:
        raise TrainerError(f"{source} has unknown columns: {', '.join(unknown)}")
    if missing:
        raise TrainerError(f"{source} lacks columns: {', '.join(missing)}")


def _check_types(frame: pd.DataFrame, reference: pd.DataFrame, label: str, task: str) -> None:
    if task == "regression" and not pd.api.types.is_numeric_dtype(frame[label]):
        raise TrainerError(
            f"label column {label!r} must be numeric for regression (found {frame[label].dtype})"
        )
    for column in reference.columns:
        if pd.api.types.is_numeric_dtype(reference[column]) and not pd.api.types.is_numeric_dtype(
            frame[column]
        ):
            bad = frame[column][pd.to_numeric(frame[column], errors="coerce").isna() & frame[column].notna()]
            sample = repr(bad.iloc[0]) if len(bad) else "?"
            raise TrainerError(f"column {column!r} must be numeric but holds {sample}")


def load_dataset(store: ArtifactStore, settings: TrainSettings) -> Dataset:
    training = read_prefix(store, settings.training_uri)
    label = settings.label
    if label not in training.columns:
        columns = ", ".join(map(str, training.columns))
        raise TrainerError(f"label column {label!r} not found in training data (columns: {columns})")
    expected = list(training.columns)
    _check_types(training, training, label, settings.task)
    parts = [training]
    rows = {"training": len(training)}
    wider_extra: pd.DataFrame | None = None
    recent: int | None = None  # labelled feedback rows since settings.data_since, the newest of the data
    if settings.feedback_uri:
        raw = read_prefix(store, settings.feedback_uri)
        if settings.data_since is not None:
            recent = _labelled_since(raw, settings.data_since)
        feedback = _feedback_rows(raw, label, settings.feedback_since, settings.feedback_uri)
        _check_columns(feedback, expected, f"feedback under {settings.feedback_uri}")
        _check_types(feedback, training, label, settings.task)
        parts.append(feedback[expected])
        rows["feedback"] = len(feedback)
    data = pd.concat(parts, ignore_index=True) if len(parts) > 1 else training
    # Row order is time order: training rows first, then feedback by labelled time (for the Recent holdout).
    unlabelled = data[label].isna()
    if unlabelled.any():
        data = data[~unlabelled].reset_index(drop=True)
    if recent is not None:
        # Since the breach began, or the newest min_rows rows when fewer have been labelled since: older
        # rows, from before the drift, would teach the concept the breach says is gone.
        keep = max(min(recent, len(data)), settings.min_rows)
        if keep < len(data):
            extra = min(max(settings.wider_rows - keep, 0), len(data) - keep)
            if extra:
                wider_extra = data.iloc[len(data) - keep - extra : len(data) - keep].reset_index(drop=True)
                rows["widerExtra"] = extra
            data = data.iloc[len(data) - keep :].reset_index(drop=True)
        rows["sinceBreach"] = min(recent, len(data))
    if settings.holdout_uri:
        holdout = read_prefix(store, settings.holdout_uri)
        _check_columns(holdout, expected, f"holdout under {settings.holdout_uri}")
        _check_types(holdout, training, label, settings.task)
        train = data
    elif settings.holdout_strategy == "Recent":
        cut = round(len(data) * (1 - settings.holdout_fraction))
        train, holdout = data.iloc[:cut], data.iloc[cut:]
    else:
        rng = np.random.default_rng(settings.seed)
        mask = rng.random(len(data)) < settings.holdout_fraction
        train, holdout = data[~mask], data[mask]
    # Only the holdout is re-indexed: copying the much larger training frame again buys nothing.
    holdout = holdout.reset_index(drop=True)
    if len(train) < 2 or len(holdout) < 1:
        raise TrainerError(f"too few rows to train and evaluate ({len(train)} train, {len(holdout)} holdout)")
    rows.update({"train": len(train), "holdout": len(holdout)})
    features = [c for c in expected if c != label]
    if not features:
        raise TrainerError("the data has no feature columns besides the label")
    return Dataset(
        train=train, holdout=holdout, label=label, features=features, rows=rows, wider_extra=wider_extra
    )
