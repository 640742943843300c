"""The estimator: an allow-listed scikit-learn class behind a default preprocessing pipeline."""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping, Sequence, Set
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, is_classifier, is_regressor
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from feedbackloop_train.settings import TrainerError

MISSING = "__missing__"  # the category a missing categorical value becomes, in training and serving
# Only dotted sklearn paths, checked before anything is imported: an estimator name is user input.
ALLOWED_CLASS = re.compile(r"^sklearn(\.[A-Za-z_][A-Za-z0-9_]*)+$")
# Trees split on thresholds; scaling changes nothing for them, so their numbers pass through.
SCALE_FREE_MODULES = ("sklearn.ensemble", "sklearn.tree")


def load_estimator_class(dotted: str) -> type[BaseEstimator]:
    if not ALLOWED_CLASS.match(dotted):
        raise TrainerError(f"estimator {dotted!r} is not allowed: only sklearn.* classes")
    module_name, _, class_name = dotted.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise TrainerError(f"estimator module {module_name!r} does not exist") from None
    estimator = getattr(module, class_name, None)
    if not isinstance(estimator, type) or not issubclass(estimator, BaseEstimator):
        raise TrainerError(f"{dotted!r} is not a scikit-learn estimator")
    return estimator


def build_pipeline(
    dotted: str, params: dict[str, Any], task: str, frame: pd.DataFrame, features: list[str]
) -> Pipeline:
    estimator_class = load_estimator_class(dotted)
    try:
        estimator = estimator_class(**params)
    except TypeError as err:
        raise TrainerError(f"invalid params for {dotted}: {err}") from None
    if task == "classification" and not is_classifier(estimator):
        raise TrainerError(f"{dotted} is not a classifier, but the task is classification")
    if task == "regression" and not is_regressor(estimator):
        raise TrainerError(f"{dotted} is not a regressor, but the task is regression")
    numeric = [
        c
        for c in features
        if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
    ]
    categorical = [c for c in features if c not in numeric]
    scaled = not dotted.startswith(SCALE_FREE_MODULES)
    transformers: list[tuple[str, Any, list[str]]] = []
    if numeric:
        transformers.append(("numeric", StandardScaler() if scaled else "passthrough", numeric))
    if categorical:
        transformers.append(
            ("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical)
        )
    return Pipeline([("preprocess", ColumnTransformer(transformers)), ("model", estimator)])


def fit(pipeline: Pipeline, frame: pd.DataFrame, features: list[str], label: str) -> Pipeline:
    try:
        pipeline.fit(_categorical_as_text(frame[features], pipeline), frame[label])
    except ValueError as err:
        raise TrainerError(f"training failed: {str(err).splitlines()[0]}") from None
    return pipeline


def _categorical_as_text(frame: pd.DataFrame, pipeline: Pipeline) -> pd.DataFrame:
    """One-hot encoding needs one type per column: mixed values become pandas strings, not objects."""
    out = frame.copy(deep=False)  # copy-on-write: only the replaced columns are new
    for name, _, columns in pipeline.named_steps["preprocess"].transformers:
        if name == "categorical":
            for column in columns:
                values = out[column]
                if not isinstance(values.dtype, pd.StringDtype):
                    values = values.astype("string")
                out[column] = values.fillna(MISSING) if values.hasnans else values
    return out


def categorical_columns(model: Any) -> frozenset[str]:
    """The columns the default pipeline one-hot encodes (empty for a model without our preprocess step)."""
    steps = getattr(model, "named_steps", {})
    if "preprocess" not in steps:
        return frozenset()
    return frozenset(
        column
        for name, _, columns in steps["preprocess"].transformers
        if name == "categorical"
        for column in columns
    )


def frame_of(columns: Mapping[str, Sequence[Any]], numeric: Set[str], categorical: Set[str]) -> pd.DataFrame:
    """prepare(pd.DataFrame(columns)) built directly: numbers as float64, one-hot columns as pandas strings
    with missing values named. A request's rows skip the copy and conversion prepare() makes of a frame."""
    built: dict[str, Any] = {}
    for name, values in columns.items():
        if name in categorical:
            built[name] = pd.array([MISSING if v is None else str(v) for v in values], dtype="string")
        elif name in numeric:
            built[name] = np.array([np.nan if v is None else v for v in values], dtype=float)
        else:
            built[name] = values
    return pd.DataFrame(built, index=range(len(next(iter(columns.values()), []))))


def prepare(frame: pd.DataFrame, model: Any, features: list[str]) -> pd.DataFrame:
    """Rows as the model saw them in training; a model without our preprocess step gets them as given."""
    steps = getattr(model, "named_steps", {})
    if "preprocess" not in steps:
        return frame[features]
    return _categorical_as_text(frame[features], model)
