"""reference.json: each feature's training distribution, for PSI drift at serving time."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

NUMERIC_BINS = 10
# Shares and quantile edges are stable well before this many rows; larger data is sampled (seeded).
SAMPLE_ROWS = 100_000
TOP_CATEGORIES = 50
OTHER = "__other__"


def quantile_bins(
    numbers: np.ndarray[Any, Any], bins: int
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Inner quantile edges e0 < e1 < ... and each number's bin: (-inf, e0], (e0, e1], ... (e_last, +inf).

    The open ends catch values never seen in training; tied quantiles collapse into one edge.
    """
    inner = np.unique(np.quantile(numbers, np.linspace(0, 1, bins + 1)[1:-1]))
    return inner, np.searchsorted(inner, numbers, side="left")


def build_reference(frame: pd.DataFrame, features: list[str], seed: int = 0) -> dict[str, Any]:
    """Numeric features: quantile bin edges and the share of rows per bin. Categorical: value shares."""
    result: dict[str, Any] = {"schemaVersion": 1, "rows": len(frame), "features": {}}
    if len(frame) > SAMPLE_ROWS:
        frame = frame.sample(n=SAMPLE_ROWS, random_state=seed)
        result["sampledRows"] = SAMPLE_ROWS
    for column in features:
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            numbers = values.dropna().to_numpy(dtype=float)
            if len(numbers) == 0:
                continue
            inner, codes = quantile_bins(numbers, NUMERIC_BINS)
            counts = np.bincount(codes, minlength=len(inner) + 1)
            result["features"][column] = {
                "type": "numeric",
                "edges": [float(edge) for edge in inner],
                "proportions": [float(c) / len(numbers) for c in counts],
                "missing": float(values.isna().mean()),
            }
        else:
            shares = values.astype("string").fillna("__missing__").value_counts(normalize=True)
            top = shares.iloc[:TOP_CATEGORIES]
            proportions = {str(k): float(v) for k, v in top.items()}
            if len(shares) > TOP_CATEGORIES:
                proportions[OTHER] = float(shares.iloc[TOP_CATEGORIES:].sum())
            result["features"][column] = {"type": "categorical", "proportions": proportions}
    return result
