"""The labelled history: read from a Parquet or CSV file (or every such file under an s3:// prefix), checked,
and split at the replay's start. Every refusal names the file, column or flag at fault."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from feedbackloop_backtest.errors import BacktestError

DEFAULT_WARMUP_FRACTION = 0.02  # --start defaults to just after the first 2 % of the rows


@dataclass(frozen=True)
class History:
    frame: pd.DataFrame  # sorted by time; the time column removed
    times: np.ndarray  # seconds since the epoch (float64), one per row, non-decreasing
    label: str
    features: list[str]
    start_index: int  # the first replayed row; rows before it train the initial model

    @property
    def start_time(self) -> float:
        return float(self.times[self.start_index])


def read_table(source: str) -> pd.DataFrame:
    """A local .parquet/.pq/.csv file, or every such object under an s3:// prefix (AWS_* environment)."""
    if source.startswith("s3://"):
        return _read_s3(source)
    path = Path(source)
    if not path.is_file():
        raise BacktestError(f"--data {source}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix == ".csv":
            return pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise BacktestError(f"--data {source}: cannot read it: {str(err).splitlines()[0]}") from None
    raise BacktestError(f"--data {source}: not a .parquet, .pq or .csv file")


def _read_s3(uri: str) -> pd.DataFrame:
    # The trainer's own reader: the artifact adapter (the one module allowed boto3) and the same error text.
    from feedbackloop.adapters.artifacts import ArtifactStore, s3_client
    from feedbackloop_train.data import read_prefix
    from feedbackloop_train.settings import TrainerError

    try:
        return read_prefix(ArtifactStore(s3_client()), uri if uri.endswith("/") else uri + "/")
    except TrainerError as err:
        raise BacktestError(f"--data {uri}: {err}") from None


def to_seconds(values: pd.Series, column: str) -> np.ndarray:
    """Epoch seconds of a timestamp column: datetimes (naive ones are UTC), or numbers of seconds."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        seconds = values.to_numpy(dtype=float)
    else:
        try:
            stamps = pd.to_datetime(values, utc=True)
        except (ValueError, TypeError) as err:
            raise BacktestError(
                f"--time-column {column}: not timestamps ({str(err).splitlines()[0]})"
            ) from None
        if stamps.isna().any():
            raise BacktestError(f"--time-column {column}: {int(stamps.isna().sum())} rows have no timestamp")
        seconds = _seconds(stamps)
    if np.isnan(seconds).any():
        raise BacktestError(f"--time-column {column}: {int(np.isnan(seconds).sum())} rows have no timestamp")
    return np.asarray(seconds, dtype=float)


def _seconds(stamps: pd.Series) -> np.ndarray:
    return np.asarray((stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds(), dtype=float)


def prepare_history(
    data: pd.DataFrame,
    source: str,
    time_column: str,
    label: str,
    start: float | None,
    warmup_fraction: float = DEFAULT_WARMUP_FRACTION,
) -> History:
    """Checks, in the order a person would fix them: the time column, the label column, rows, order, start."""
    columns = ", ".join(map(str, data.columns))
    if time_column not in data.columns:
        raise BacktestError(f"--time-column {time_column}: no such column in {source} (columns: {columns})")
    if label not in data.columns:
        raise BacktestError(
            f"spec.retrain.trainer.label {label}: no such column in {source} (columns: {columns})"
        )
    if data.empty:
        raise BacktestError(f"--data {source}: the history has no rows")
    times = to_seconds(data[time_column], time_column)
    if len(times) > 1 and bool(np.any(np.diff(times) < 0)):
        first = int(np.argmax(np.diff(times) < 0)) + 1
        raise BacktestError(
            f"--time-column {time_column}: the history is not sorted by time (row {first} is earlier than "
            f"row {first - 1}); sort it first"
        )
    if data[label].isna().all():
        raise BacktestError(f"column {label}: no row has a label")
    features = [str(c) for c in data.columns if c not in (time_column, label)]
    if not features:
        raise BacktestError(f"--data {source}: no feature columns besides {time_column} and {label}")
    frame = data.drop(columns=[time_column]).reset_index(drop=True)
    if start is None:
        index = max(1, int(np.ceil(len(frame) * warmup_fraction)))
    else:
        index = int(np.searchsorted(times, start, side="left"))
    if index < 2:
        raise BacktestError("--start: fewer than 2 rows come before it to train the initial model")
    if index >= len(frame):
        raise BacktestError("--start: no row comes at or after it: nothing to replay")
    return History(frame=frame, times=times, label=label, features=features, start_index=index)
