"""Error analysis: per-class metrics, confusion matrix and the worst data slices, as JSON, HTML and PNG."""

from __future__ import annotations

import base64
import html
import io
import itertools
import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from feedbackloop_train.reference import quantile_bins

QUANTILE_BINS = 4
WORST_SLICES = 10
MIN_SUPPORT_FRACTION = 0.01
MIN_SUPPORT_ROWS = 20


def _slice_metric(task: str, truth: pd.Series, predicted: pd.Series) -> float:
    if task == "regression":
        return float(math.sqrt(float(np.mean((truth.astype(float) - predicted.astype(float)) ** 2))))
    return float(np.mean(truth.to_numpy() == predicted.to_numpy()))


def slices(
    task: str, frame: pd.DataFrame, features: list[str], truth: pd.Series, predicted: pd.Series
) -> list[dict[str, Any]]:
    """Every categorical value and every numeric quantile bin, with support, metric and delta from overall."""
    if task == "regression":
        per_row = (truth.to_numpy(dtype=float) - predicted.to_numpy(dtype=float)) ** 2
    else:
        per_row = (truth.to_numpy() == predicted.to_numpy()).astype(float)
    overall = _slice_metric(task, truth, predicted)
    found = []
    for column in features:
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            numbers = values.to_numpy(dtype=float, na_value=np.nan)
            present = ~np.isnan(numbers)
            if not present.any():
                continue
            edges, binned = quantile_bins(numbers[present], QUANTILE_BINS)
            codes = np.full(len(numbers), -1, dtype=np.int64)
            codes[present] = binned
            names = _bin_names(edges)
        else:
            codes, uniques = pd.factorize(values.astype("string").fillna("__missing__"), sort=True)
            names = [str(u) for u in uniques]
        valid = codes >= 0
        # Per-slice sums by bincount: one pass per column instead of one boolean mask per slice.
        support = np.bincount(codes[valid], minlength=len(names))
        if np.count_nonzero(support) < 2:
            continue  # one slice holding every row says nothing about where the model fails
        totals = np.bincount(codes[valid], weights=per_row[valid], minlength=len(names))
        for code, name in enumerate(names):
            if support[code] == 0:
                continue
            mean = totals[code] / support[code]
            metric = float(math.sqrt(mean)) if task == "regression" else float(mean)
            found.append(
                {
                    "feature": column,
                    "value": name,
                    "support": int(support[code]),
                    "metric": metric,
                    "delta": metric - overall,
                }
            )
    return found


def _bin_names(edges: np.ndarray[Any, Any]) -> list[str]:
    text = [f"{edge:.4g}" for edge in edges]
    middle = [f"({low}, {high}]" for low, high in itertools.pairwise(text)]
    return [f"<= {text[0]}", *middle, f"> {text[-1]}"]


def worst(task: str, found: list[dict[str, Any]], rows: int) -> list[dict[str, Any]]:
    minimum = max(MIN_SUPPORT_ROWS, int(rows * MIN_SUPPORT_FRACTION))
    # For accuracy lower is worse; for RMSE higher is worse. A slice better than overall is not a weakness.
    sign = 1 if task == "regression" else -1
    eligible = [s for s in found if s["support"] >= minimum and sign * s["delta"] > 0]
    return sorted(eligible, key=lambda s: sign * s["delta"], reverse=True)[:WORST_SLICES]


def analyse(
    task: str, frame: pd.DataFrame, features: list[str], truth: pd.Series, predicted: np.ndarray[Any, Any]
) -> dict[str, Any]:
    prediction = pd.Series(predicted, index=truth.index)
    result: dict[str, Any] = {}
    if task == "classification":
        result.update(_per_class(truth.astype(str), prediction.astype(str)))
    found = slices(task, frame, features, truth, prediction)
    result["overall"] = _slice_metric(task, truth, prediction)
    result["metric"] = "rmse" if task == "regression" else "accuracy"
    result["slices"] = len(found)
    result["worstSlices"] = worst(task, found, len(frame))
    return result


def _per_class(truth: pd.Series, predicted: pd.Series) -> dict[str, Any]:
    """Per-class precision, recall, f1 and the confusion matrix, counted once with bincount on label codes."""
    labels = sorted(set(truth.unique()) | set(predicted.unique()))
    n = len(labels)
    true_codes = pd.Categorical(truth, categories=labels).codes.astype(np.int64)
    predicted_codes = pd.Categorical(predicted, categories=labels).codes.astype(np.int64)
    matrix = np.bincount(true_codes * n + predicted_codes, minlength=n * n).reshape(n, n)
    hits, actual, chosen = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    per_class = {}
    for index, label in enumerate(labels):
        precision = hits[index] / chosen[index] if chosen[index] else 0.0
        recall = hits[index] / actual[index] if actual[index] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1-score": float(f1),
            "support": float(actual[index]),
        }
    return {"perClass": per_class, "confusionMatrix": {"labels": labels, "matrix": matrix.tolist()}}


def _figure(width: float, height: float) -> tuple[Figure, Any]:
    # A bare Figure keeps no pyplot state; constrained layout fits the labels in a single draw.
    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.add_subplot()


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def plots(candidate: dict[str, Any], metrics: dict[str, Any]) -> dict[str, bytes]:
    images = {}
    if "confusionMatrix" in candidate:
        matrix = np.array(candidate["confusionMatrix"]["matrix"])
        labels = candidate["confusionMatrix"]["labels"]
        figure, axes = _figure(4, 4)
        axes.imshow(matrix, cmap="Blues")
        axes.set_xticks(range(len(labels)), labels, rotation=45)
        axes.set_yticks(range(len(labels)), labels)
        axes.set_xlabel("predicted")
        axes.set_ylabel("actual")
        for (i, j), value in np.ndenumerate(matrix):
            axes.text(j, i, str(value), ha="center", va="center")
        axes.set_title("Confusion matrix (candidate)")
        images["confusion_matrix.png"] = _png(figure)
    worst_slices = candidate.get("worstSlices", [])
    if worst_slices:
        figure, axes = _figure(6, 0.4 * len(worst_slices) + 1)
        names = [f"{s['feature']}={s['value']}" for s in worst_slices]
        axes.barh(names[::-1], [s["delta"] for s in worst_slices][::-1], color="tab:red")
        axes.set_xlabel(f"{candidate['metric']} delta from overall")
        axes.set_title("Worst slices (candidate)")
        images["worst_slices.png"] = _png(figure)
    current = metrics.get("current") or {}
    shared = [name for name in metrics.get("candidate", {}) if name in current]
    if shared:
        figure, axes = _figure(6, 3)
        positions = np.arange(len(shared))
        axes.bar(positions - 0.2, [metrics["candidate"][n] for n in shared], 0.4, label="candidate")
        axes.bar(positions + 0.2, [current[n] for n in shared], 0.4, label="current")
        axes.set_xticks(positions, shared, rotation=30)
        axes.legend()
        axes.set_title("Candidate vs current model, same holdout")
        images["candidate_vs_current.png"] = _png(figure)
    return images


def render_html(
    version: str, metrics: dict[str, Any], report: dict[str, Any], images: dict[str, bytes]
) -> bytes:
    def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in columns) + "</tr>"
            for row in rows
        )
        return f"<table><tr>{head}</tr>{body}</table>"

    metric_rows = [
        {"metric": name, "candidate": value, "current": (metrics.get("current") or {}).get(name)}
        for name, value in metrics.get("candidate", {}).items()
    ]
    parts = [
        f"<h1>Model {html.escape(version)}: error analysis</h1>",
        "<h2>Holdout metrics</h2>",
        table(metric_rows, ["metric", "candidate", "current"]),
        "<h2>Worst slices of the candidate</h2>",
        table(report["candidate"].get("worstSlices", []), ["feature", "value", "support", "metric", "delta"]),
    ]
    for name, data in images.items():
        encoded = base64.b64encode(data).decode()
        title = html.escape(name)
        parts.append(f'<h2>{title}</h2><img alt="{title}" src="data:image/png;base64,{encoded}">')
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px}"
    )
    head = f"<meta charset='utf-8'><title>model {html.escape(version)}</title><style>{style}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{''.join(parts)}</body></html>".encode()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
