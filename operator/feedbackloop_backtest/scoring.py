"""Prequential scoring (test, then train: each row scored by the model serving when it arrived) and the two
baselines every loop is compared with: `never` (the initial model for ever) and `periodic` (a model trained
every P steps on the rows labelled in the last W steps, deployed without gates)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from feedbackloop.core.spec import Task, TrainerSpec
from feedbackloop_train import evaluate
from feedbackloop_train.model import build_pipeline, fit, prepare
from feedbackloop_train.settings import TrainerError


def primary_metric(task: Task) -> str:
    return evaluate.PRIMARY[task.value]


def per_row(task: Task, truth: np.ndarray[Any, Any], predicted: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Each row's contribution to the primary metric: 1.0/0.0 for correct, or the squared error; NaN for a
    row without a label, which no metric counts."""
    missing = np.asarray(pd.isna(truth), dtype=bool)
    if task is Task.REGRESSION:
        scores = (truth.astype(float) - predicted.astype(float)) ** 2
    else:
        scores = truth == predicted
    result = np.asarray(scores, dtype=float)
    result[missing] = math.nan
    return result


def aggregate(task: Task, scores: np.ndarray[Any, Any]) -> float | None:
    """The primary metric over rows: accuracy is the mean of correctness, RMSE the root of the mean squared
    error; None for no rows."""
    counted = scores[~np.isnan(scores)]
    if len(counted) == 0:
        return None
    mean = float(np.mean(counted))
    return math.sqrt(mean) if task is Task.REGRESSION else mean


def per_step(
    task: Task, scores: np.ndarray[Any, Any], steps: np.ndarray[Any, Any], count: int
) -> list[float | None]:
    """The primary metric of each step's rows (None for a step without rows)."""
    return [aggregate(task, scores[steps == step]) for step in range(count)]


def step_of(times: np.ndarray[Any, Any], start: float, step_seconds: float) -> np.ndarray[Any, Any]:
    """The step each time falls in: step k holds (start + k*step, start + (k+1)*step], and step 0 also
    holds `start` itself."""
    index = np.ceil((times - start) / step_seconds).astype(np.int64) - 1
    return np.maximum(index, 0)


def label_window(
    times: np.ndarray[Any, Any], now: float, window_seconds: float | None, delay_seconds: float
) -> np.ndarray[Any, Any]:
    """Rows whose label is known at `now` (time + delay <= now) and that arrived in the window before it."""
    known = times + delay_seconds <= now
    if window_seconds is None:
        return known
    return known & (times > now - window_seconds)


@dataclass
class BaselineResult:
    name: str
    scores: np.ndarray[Any, Any]  # per replayed row
    retrains: int = 0
    failures: list[str] = field(default_factory=list)


def _fit(trainer: TrainerSpec, rows: pd.DataFrame, features: list[str]) -> Any:
    pipeline = build_pipeline(
        trainer.estimator.class_, dict(trainer.estimator.params), trainer.task.value, rows, features
    )
    return fit(pipeline, rows, features, trainer.label)


def _predict(model: Any, rows: pd.DataFrame, features: list[str]) -> np.ndarray[Any, Any]:
    if rows.empty:
        return np.asarray([])
    return evaluate.predict(model, prepare(rows, model, features)).labels


def run_baselines(
    trainer: TrainerSpec,
    frame: pd.DataFrame,
    times: np.ndarray[Any, Any],
    features: list[str],
    start_index: int,
    step_seconds: float,
    steps: int,
    delay_seconds: float,
    every: int,
    window: int,
    initial: Any | None = None,
) -> tuple[BaselineResult, BaselineResult]:
    """`never` and `periodic` over the same rows the loop replays, with the loop's estimator. Both start from
    `initial`, the loop's own first version, so they differ from the loop only in when and on what they
    retrain; without it, from a model fitted on every row before the start."""
    label = trainer.label
    start = float(times[start_index])
    if initial is None:
        initial_rows = frame.iloc[:start_index]
        initial = _fit(trainer, initial_rows[initial_rows[label].notna()], features)
    replayed = frame.iloc[start_index:]
    replayed_times = times[start_index:]
    truth = replayed[label].to_numpy()
    never = BaselineResult("never", per_row(trainer.task, truth, _predict(initial, replayed, features)))
    row_steps = step_of(replayed_times, start, step_seconds)
    periodic = BaselineResult("periodic", np.zeros(len(replayed)))
    model = initial
    for step in range(steps):
        now = start + step * step_seconds
        if step > 0 and step % every == 0:
            chosen = label_window(times, now, window * step_seconds, delay_seconds)
            rows = frame[chosen & frame[label].notna().to_numpy()]
            try:
                model = _fit(trainer, rows, features)
                periodic.retrains += 1
            except TrainerError as err:
                periodic.failures.append(f"step {step}: {err}")
        mask = row_steps == step
        if mask.any():
            periodic.scores[mask] = per_row(
                trainer.task, truth[mask], _predict(model, replayed[mask], features)
            )
    return never, periodic
