"""The model being served, as plain values: what the loader verified and loaded, and what scoring needs."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from feedbackloop_serve.rows import NUMERIC
from feedbackloop_train import evaluate
from feedbackloop_train.model import categorical_columns, frame_of


@dataclass(frozen=True)
class LoadedModel:
    uri: str
    version: str
    sha256: str
    name: str
    estimator: Any
    features: list[str]
    feature_types: dict[str, str]
    task: str
    classes: list[Any] | None
    reference: dict[str, Any] | None

    @cached_property
    def numeric(self) -> frozenset[str]:
        return frozenset(name for name, kind in self.feature_types.items() if kind == NUMERIC)

    @cached_property
    def categorical(self) -> frozenset[str]:
        return categorical_columns(self.estimator)

    @cached_property
    def nullable(self) -> frozenset[str]:
        """The numeric features the model scores when missing (a pipeline without an imputer cannot take NaN;
        a missing categorical value is a category of its own). Found by scoring probe rows once, at load."""
        numeric = [name for name in self.features if name in self.numeric]
        base: dict[str, Any] = {name: 0.0 if name in self.numeric else "0" for name in self.features}
        if not numeric or not self._scores([base]):
            return frozenset(
                numeric
            )  # nothing to learn: the model's own reason answers a row it cannot score
        if self._scores([{**base, name: None} for name in numeric]):
            return frozenset(numeric)
        return frozenset(name for name in numeric if self._scores([{**base, name: None}]))

    def _scores(self, rows: list[dict[str, Any]]) -> bool:
        columns = {name: [row[name] for row in rows] for name in self.features}
        try:
            evaluate.predict(self.estimator, frame_of(columns, self.numeric, self.categorical))
        except Exception:  # any failure means "cannot score this", which is the question
            return False
        return True
