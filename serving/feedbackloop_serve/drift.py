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

    def codes(self, values: Sequence[Any]) -> np.ndarray[Any, Any]:
        """The bin of each value; -1 for a numeric value that is missing or not a number."""
        if self.edges is not None:
            numbers = np.array(
                [v if isinstance(v, int | float) and not isinstance(v, bool) else math.nan for v in values],
                dtype=float,
            )
            found = np.searchsorted(self.edges, numbers, side="left")
            found[np.isnan(numbers)] = -1
            return found
        assert self.categories is not None
        other = self.categories[OTHER]
        return np.array(
            [self.categories.get(MISSING if v is None else str(v), other) for v in values], dtype=np.int64
        )


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
        rows = rows[-self.window :]
        self.observe_columns({f.name: [row.get(f.name) for row in rows] for f in self.features}, len(rows))

    def observe_columns(self, columns: Mapping[str, Sequence[Any]], count: int) -> None:
        """`count` rows given as one sequence of values per feature; only the last `window` count."""
        count = min(count, self.window)
        if count == 0 or not self.features:
            return
        codes = np.column_stack(
            [
                feature.codes(list(columns.get(feature.name, [None] * count))[-count:])
                for feature in self.features
            ]
        )
        slots = (self._next + np.arange(count)) % self.window
        replaced = self._codes[slots]
        for index, counts in enumerate(self._counts):
            counts -= _tally(replaced[:, index], len(counts))
            counts += _tally(codes[:, index], len(counts))
        self._codes[slots] = codes
        self._next = int((self._next + count) % self.window)
        self._rows += count

    def psi(self) -> dict[str, float]:
        """PSI per feature over the window; a feature with too few values in it is left out."""
        result = {}
        for feature, counts in zip(self.features, self._counts, strict=True):
            total = int(counts.sum())
            if total >= min(MIN_VALUES, self.window):
                result[feature.name] = psi(feature.expected, counts / total)
        return result


def _tally(codes: np.ndarray[Any, Any], bins: int) -> np.ndarray[Any, Any]:
    """How many of the codes fall in each bin; -1 (no value) counts nowhere."""
    return np.bincount(codes[codes >= 0], minlength=bins)
