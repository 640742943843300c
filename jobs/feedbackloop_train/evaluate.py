"""Holdout metrics for candidate and champion, the paired bootstrap of the primary metric's delta, McNemar."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import binomtest
from sklearn import metrics as skm

PRIMARY = {"classification": "accuracy", "regression": "rmse"}
BOOTSTRAP_SAMPLES = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Predictions:
    labels: np.ndarray[Any, Any]
    probabilities: np.ndarray[Any, Any] | None
    classes: np.ndarray[Any, Any] | None


# These classifiers' predict() is the argmax of predict_proba(), so one pass gives labels and probabilities.
ARGMAX_CLASSIFIERS = frozenset(
    {
        "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
        "sklearn.ensemble._forest.RandomForestClassifier",
        "sklearn.ensemble._forest.ExtraTreesClassifier",
        "sklearn.tree._classes.DecisionTreeClassifier",
        "sklearn.tree._classes.ExtraTreeClassifier",
        "sklearn.linear_model._logistic.LogisticRegression",
    }
)
# Rows whose top two probabilities are this close are re-predicted: rounding may have broken the tie.
TIE_TOLERANCE = 1e-9


def predict(model: Any, features: Any) -> Predictions:
    classes = getattr(model, "classes_", None)
    probabilities = None
    if hasattr(model, "predict_proba"):
        try:
            probabilities = np.asarray(model.predict_proba(features))
        except (AttributeError, ValueError):
            probabilities = None
    if probabilities is not None and classes is not None and _predicts_by_argmax(model):
        labels = _labels_from_probabilities(model, features, probabilities, np.asarray(classes))
    else:
        labels = np.asarray(model.predict(features))
    return Predictions(labels, probabilities, None if classes is None else np.asarray(classes))


def _predicts_by_argmax(model: Any) -> bool:
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    kind = type(final)
    return f"{kind.__module__}.{kind.__qualname__}" in ARGMAX_CLASSIFIERS


def _labels_from_probabilities(
    model: Any, features: Any, probabilities: np.ndarray[Any, Any], classes: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    labels: np.ndarray[Any, Any] = classes[np.argmax(probabilities, axis=1)]
    if probabilities.shape[1] < 2:
        return labels
    top_two = np.partition(probabilities, -2, axis=1)[:, -2:]
    near_ties = np.flatnonzero(top_two[:, 1] - top_two[:, 0] <= TIE_TOLERANCE)
    if len(near_ties):
        rows = features.iloc[near_ties] if hasattr(features, "iloc") else features[near_ties]
        labels[near_ties] = np.asarray(model.predict(rows))
    return labels


def score(task: str, truth: np.ndarray[Any, Any], predicted: Predictions) -> dict[str, float]:
    if task == "regression":
        y, p = truth.astype(float), predicted.labels.astype(float)
        return {
            "rmse": float(math.sqrt(skm.mean_squared_error(y, p))),
            "mae": float(skm.mean_absolute_error(y, p)),
            "r2": float(skm.r2_score(y, p)) if len(y) > 1 else 0.0,
        }
    result = {
        "accuracy": float(skm.accuracy_score(truth, predicted.labels)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(truth, predicted.labels)),
        "f1_macro": float(skm.f1_score(truth, predicted.labels, average="macro", zero_division=0)),
    }
    if predicted.probabilities is not None and predicted.classes is not None:
        labels = list(predicted.classes)
        # A holdout class the model never saw makes log loss undefined; it is then left out.
        with contextlib.suppress(ValueError):
            result["log_loss"] = float(skm.log_loss(truth, predicted.probabilities, labels=labels))
        if len(labels) == 2 and len(set(truth)) == 2:
            positive = predicted.probabilities[:, 1]
            result["roc_auc"] = float(skm.roc_auc_score(truth == labels[1], positive))
    return result


def better(task: str, challenger: dict[str, float], incumbent: dict[str, float]) -> bool:
    """Strictly better on the task's primary metric (accuracy up, rmse down); a tie keeps the incumbent."""
    primary = PRIMARY[task]
    a, b = challenger.get(primary), incumbent.get(primary)
    if a is None or b is None or not np.isfinite(a) or not np.isfinite(b):
        return False
    return a < b if task == "regression" else a > b


def _per_row(task: str, truth: np.ndarray[Any, Any], predicted: Predictions) -> np.ndarray[Any, Any]:
    """Per-row contribution to the primary metric: correctness, or squared error."""
    if task == "regression":
        return np.asarray((truth.astype(float) - predicted.labels.astype(float)) ** 2)
    return np.asarray(truth == predicted.labels, dtype=float)


def compare(
    task: str, truth: np.ndarray[Any, Any], candidate: Predictions, champion: Predictions, seed: int
) -> dict[str, dict[str, float]]:
    """Statistics of (candidate - champion) on the primary metric: delta, bootstrap interval, McNemar p."""
    primary = PRIMARY[task]
    a, b = _per_row(task, truth, candidate), _per_row(task, truth, champion)
    finish = np.sqrt if task == "regression" else (lambda x: x)
    delta = float(finish(a.mean()) - finish(b.mean()))
    rng = np.random.default_rng(seed)
    n, deltas = len(a), []
    chunk = max(1, min(BOOTSTRAP_SAMPLES, 20_000_000 // max(n, 1)))  # bounded memory for big holdouts
    for start in range(0, BOOTSTRAP_SAMPLES, chunk):
        index = rng.integers(0, n, size=(min(chunk, BOOTSTRAP_SAMPLES - start), n))
        deltas.append(finish(a[index].mean(axis=1)) - finish(b[index].mean(axis=1)))
    samples = np.concatenate(deltas)
    tail = (1 - CONFIDENCE) / 2
    stats = {
        "delta": delta,
        "ciLow": float(np.quantile(samples, tail)),
        "ciHigh": float(np.quantile(samples, 1 - tail)),
        "confidence": CONFIDENCE,
        "bootstrapSamples": float(BOOTSTRAP_SAMPLES),
    }
    if task == "classification":
        only_candidate = int(np.sum((a == 1) & (b == 0)))
        only_champion = int(np.sum((a == 0) & (b == 1)))
        discordant = only_candidate + only_champion
        stats["mcnemarPValue"] = (
            float(binomtest(only_candidate, discordant, 0.5).pvalue) if discordant else 1.0
        )
    return {primary: stats}
