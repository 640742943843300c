"""PSI of a sliding window of live inputs against the training distribution in reference.json. Pure: no I/O.

Bins follow docs/retrain-job-contract.md: numeric (-inf, e0], (e0, e1], ... (e_last, +inf) over the reference
edges, missing values left out; categorical values by name, anything else in `__other__`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

OTHER = "__other__"
MISSING = "__missing__"
# An empty bin on either side would make PSI infinite; both shares are floored at this.
SHARE_FLOOR = 1e-4
# Below this many values in the window a PSI is mostly noise, so none is reported.
MIN_VALUES = 50


@dataclass(frozen=True)
class _Feature:
    name: str
    edges: np.ndarray[Any, Any] | None  # numeric
    categories: dict[str, int] | None  # categorical: value -> bin
    expected: np.ndarray[Any, Any]

    def code(self, value: Any) -> int:
        """The bin of one value; -1 for a numeric value that is missing or not a number."""
        if self.edges is not None:
            if value is None or isinstance(value, bool) or not isinstance(value, int | float):
                return -1
            if math.isnan(value):
                return -1
            return int(np.searchsorted(self.edges, value, side="left"))
        assert self.categories is not None
        text = MISSING if value is None else str(value)
        return self.categories.get(text, self.categories[OTHER])


def _feature(name: str, spec: Mapping[str, Any]) -> _Feature | None:
    if spec.get("type") == "numeric":
        edges = np.asarray(spec.get("edges", []), dtype=float)
        expected = np.asarray(spec.get("proportions", []), dtype=float)
        if len(expected) != len(edges) + 1:
            return None
        return _Feature(name, edges, None, expected)
    if spec.get("type") == "categorical":
        shares = {str(k): float(v) for k, v in dict(spec.get("proportions", {})).items()}
        shares.setdefault(OTHER, 0.0)
        categories = {value: index for index, value in enumerate(shares)}
        return _Feature(name, None, categories, np.asarray(list(shares.values()), dtype=float))
    return None


def psi(expected: np.ndarray[Any, Any], actual: np.ndarray[Any, Any]) -> float:
    """Population stability index of two share vectors over the same bins."""
    e = np.maximum(expected, SHARE_FLOOR)
    a = np.maximum(actual, SHARE_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


class DriftWindow:
    """The bins of the last `window` rows per feature, kept as running counts so that PSI costs O(bins)."""

    def __init__(self, reference: Mapping[str, Any], window: int) -> None:
        if window < 1:
            raise ValueError("the drift window must hold at least one row")
        specs = reference.get("features", {}) if isinstance(reference, Mapping) else {}
        features = [_feature(name, spec) for name, spec in specs.items() if isinstance(spec, Mapping)]
        self.features = [f for f in features if f is not None]
        self.window = window
        self._codes = np.full((window, len(self.features)), -1, dtype=np.int32)
        self._counts = [np.zeros(len(f.expected), dtype=np.int64) for f in self.features]
        self._next = 0
        self._rows = 0

    def observe(self, rows: Sequence[Mapping[str, Any]]) -> None:
        for row in rows[-self.window :]:
            slot = self._next
            for index, feature in enumerate(self.features):
                old = self._codes[slot, index]
                if self._rows >= self.window and old >= 0:
                    self._counts[index][old] -= 1
                new = feature.code(row.get(feature.name))
                self._codes[slot, index] = new
                if new >= 0:
                    self._counts[index][new] += 1
            self._next = (slot + 1) % self.window
            self._rows += 1

    def psi(self) -> dict[str, float]:
        """PSI per feature over the window; a feature with too few values in it is left out."""
        result = {}
        for feature, counts in zip(self.features, self._counts, strict=True):
            total = int(counts.sum())
            if total >= min(MIN_VALUES, self.window):
                result[feature.name] = psi(feature.expected, counts / total)
        return result
