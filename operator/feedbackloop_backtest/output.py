"""What a backtest leaves in --output: summary.json, decisions.jsonl and timeline.png."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from feedbackloop_backtest.scoring import aggregate, per_step


def write_decisions(path: Path, decisions: Sequence[Mapping[str, Any]]) -> None:
    """One JSON object per line, keys sorted: the same replay writes the same bytes."""
    with path.open("w") as out:
        for line in decisions:
            out.write(json.dumps(line, sort_keys=True, separators=(",", ":")) + "\n")


def write_summary(path: Path, summary: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def figures(task: Any, scores: Any, steps_of_rows: Any, steps: int) -> dict[str, Any]:
    return {"overall": aggregate(task, scores), "per_step": per_step(task, scores, steps_of_rows, steps)}


def write_timeline(
    path: Path,
    metric: str,
    series: Mapping[str, Sequence[float | None]],
    markers: Sequence[tuple[int, str, str]],
    step_label: str,
) -> None:
    """The primary metric per step for the loop and each baseline; retrains, rejections and rollbacks
    marked on the loop's line."""
    figure = Figure(figsize=(10, 4.5), layout="constrained")
    axes = figure.add_subplot()
    styles = {"loop": ("tab:blue", 2.0), "never": ("tab:gray", 1.2), "periodic": ("tab:orange", 1.2)}
    for name, values in series.items():
        color, width = styles.get(name, ("tab:green", 1.2))
        points = [(i, v) for i, v in enumerate(values) if v is not None]
        axes.plot([i for i, _ in points], [v for _, v in points], label=name, color=color, linewidth=width)
    kinds = {
        "retrain": ("tab:green", "^", "retrain started"),
        "rejected": ("tab:red", "x", "candidate rejected"),
        "rollback": ("tab:purple", "v", "rollback"),
    }
    loop = series.get("loop", [])
    for kind, (color, marker, label) in kinds.items():
        chosen = [step for step, k, _ in markers if k == kind and step < len(loop)]
        if not chosen:
            continue
        for step in chosen:
            axes.axvline(step, color=color, alpha=0.25, linewidth=1)
        ys = [value if (value := loop[s]) is not None else 0.0 for s in chosen]
        axes.scatter(chosen, ys, color=color, marker=marker, s=60, zorder=3, label=label)
    axes.set_xlabel(f"step ({step_label} each)")
    axes.set_ylabel(metric)
    axes.set_title(f"Backtest: {metric} per step, loop and baselines")
    axes.legend(loc="best", fontsize="small")
    figure.savefig(path, format="png", dpi=100)
