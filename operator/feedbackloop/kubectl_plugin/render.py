"""Tables and text for the terminal, from FeedbackLoop bodies as the API server returns them. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from feedbackloop.api import ConditionStatus, ConditionType
from feedbackloop.core.status import (
    CandidateModel,
    Evaluation,
    FeedbackLoopStatus,
    HistoryEntry,
    ModelRef,
    StageState,
    ThresholdStatus,
    parse_status,
)

NONE = "<none>"
COLUMN_GAP = "   "
STATUS_HEADERS = (
    "NAME",
    "MODE",
    "MODEL VERSION",
    "CANDIDATE",
    "READY",
    "HEALTHY",
    "RETRAINING",
    "LAST EVALUATION",
)
HISTORY_HEADERS = (
    "VERSION",
    "TRIGGER",
    "OUTCOME",
    "REASON",
    "GATES",
    "ANALYSIS",
    "STARTED",
    "RETRAINED",
    "ROLLED OUT",
    "FINISHED",
)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    """Left-aligned columns, as `kubectl get` prints them."""
    widths = [max(len(str(row[index])) for row in (headers, *rows)) for index in range(len(headers))]
    lines = [
        indent
        + COLUMN_GAP.join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (headers, *rows)
    ]
    return "\n".join(lines)


def human_age(then: datetime | None, now: datetime) -> str:
    """Elapsed time the way kubectl shows AGE: 45s, 3m20s, 17m, 5h2m, 30h, 3d4h, 40d."""
    if then is None:
        return NONE
    seconds = max(0, int((now - then).total_seconds()))  # client and server clocks may differ a little
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    return f"{days}d" if days < 730 else f"{days // 365}y"


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def number(value: float | None) -> str:
    return NONE if value is None else f"{value:.4g}"


def threshold_text(threshold: ThresholdStatus) -> str:
    named = (
        ("min", threshold.min),
        ("clearMin", threshold.clear_min),
        ("clearMax", threshold.clear_max),
        ("max", threshold.max),
    )
    bounds = [f"{name} {number(bound)}" for name, bound in named]
    return ", ".join(bound for bound in bounds if not bound.endswith(NONE)) or NONE


def metrics_text(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{name}={number(value)}" for name, value in sorted(metrics.items())) or NONE


def one_line(text: str) -> str:
    return " ".join(text.split())


def condition_state(status: FeedbackLoopStatus, kind: ConditionType) -> str:
    """`True`, or the status with its reason when the condition is not True."""
    condition = status.condition(kind)
    if condition is None:
        return NONE
    return (
        condition.status
        if condition.status is ConditionStatus.TRUE
        else f"{condition.status} ({condition.reason})"
    )


def condition_reason(status: FeedbackLoopStatus, kind: ConditionType) -> str:
    condition = status.condition(kind)
    return condition.reason if condition is not None and condition.reason else NONE


def mode_text(spec: Mapping[str, Any]) -> str:
    mode = str(spec.get("mode") or NONE)
    return f"{mode} (suspended)" if spec.get("suspend") else mode


def candidate_text(candidate: CandidateModel | None) -> str:
    if candidate is None:
        return NONE
    return f"{candidate.version} ({candidate.validation})" if candidate.validation else candidate.version


# ---------------------------------------------------------------- status


def status_table(loops: Sequence[Mapping[str, Any]], now: datetime, with_namespace: bool) -> str:
    rows = []
    for body in sorted(loops, key=lambda b: (b["metadata"]["namespace"], b["metadata"]["name"])):
        status = parse_status(body.get("status"))
        evaluation = status.last_evaluation
        row = [
            body["metadata"]["name"],
            mode_text(body.get("spec") or {}),
            status.current_model.version if status.current_model else NONE,
            candidate_text(status.candidate_model),
            condition_state(status, ConditionType.READY),
            condition_state(status, ConditionType.HEALTHY),
            condition_reason(status, ConditionType.RETRAINING),
            human_age(evaluation.time, now) + " ago" if evaluation else NONE,
        ]
        rows.append([body["metadata"]["namespace"], *row] if with_namespace else row)
    headers = ("NAMESPACE", *STATUS_HEADERS) if with_namespace else STATUS_HEADERS
    return format_table(headers, rows)


# ---------------------------------------------------------------- history


def history_rows(history: Sequence[HistoryEntry], now: datetime) -> list[list[str]]:
    return [
        [
            entry.version,
            entry.trigger or NONE,
            entry.outcome,
            entry.reason or NONE,
            entry.gates or NONE,
            entry.analysis or NONE,
            human_age(entry.started_at, now),
            human_age(entry.retrained_at, now),
            human_age(entry.rolled_out_at, now),
            human_age(entry.finished_at, now),
        ]
        for entry in history
    ]


def history_table(history: Sequence[HistoryEntry], now: datetime) -> str:
    return format_table(HISTORY_HEADERS, history_rows(history, now))


# ---------------------------------------------------------------- describe


def _fields(pairs: Sequence[tuple[str, str]], indent: str = "") -> list[str]:
    width = max(len(label) for label, _ in pairs) + 2
    return [f"{indent}{(label + ':').ljust(width)}{value}" for label, value in pairs]


def _conditions(status: FeedbackLoopStatus, now: datetime) -> list[str]:
    if not status.conditions:
        return ["Conditions:  <none>"]
    rows = [
        [c.type, c.status, c.reason, human_age(c.last_transition_time, now), one_line(c.message)]
        for c in status.conditions
    ]
    return ["Conditions:", format_table(("TYPE", "STATUS", "REASON", "AGE", "MESSAGE"), rows, indent="  ")]


def _evaluation(evaluation: Evaluation | None, now: datetime) -> list[str]:
    if evaluation is None:
        return ["Last evaluation:  <none>"]
    rows = [
        [
            metric.name,
            number(metric.value),
            threshold_text(metric.threshold),
            number(metric.samples),
            metric.verdict,
            metric.reason,
            human_age(metric.breaching_since, now),
            one_line(metric.message),
        ]
        for metric in evaluation.metrics
    ]
    headers = ("METRIC", "VALUE", "THRESHOLD", "SAMPLES", "VERDICT", "REASON", "BREACHING FOR", "MESSAGE")
    return [
        f"Last evaluation:  {human_age(evaluation.time, now)} ago ({rfc3339(evaluation.time)})",
        format_table(headers, rows, indent="  "),
    ]


def _current_model(model: ModelRef | None, now: datetime) -> list[str]:
    if model is None:
        return ["Current model:  <none>"]
    deployed = f"{human_age(model.deployed_at, now)} ago" if model.deployed_at else NONE
    pairs = [
        ("Version", model.version),
        ("URI", model.uri),
        ("SHA256", model.sha256 or NONE),
        ("Deployed", deployed),
        ("Metrics", metrics_text(model.metrics)),
    ]
    return ["Current model:", *_fields(pairs, indent="  ")]


def _candidate_model(candidate: CandidateModel | None) -> list[str]:
    if candidate is None:
        return ["Candidate model:  <none>"]
    pairs = [
        ("Version", candidate.version),
        ("Job", candidate.job),
        ("Trigger", candidate.trigger),
        ("URI", candidate.uri),
        ("SHA256", candidate.sha256),
        ("Metrics", metrics_text(candidate.metrics)),
        ("Current metrics", metrics_text(candidate.current_metrics)),
        ("Validation", candidate.validation or "not finished"),
    ]
    lines = ["Candidate model:", *_fields(pairs, indent="  ")]
    if candidate.gates:
        rows = [
            [gate.metric, number(gate.value), gate.threshold, gate.verdict, gate.reason or NONE, gate.message]
            for gate in candidate.gates
        ]
        headers = ("METRIC", "VALUE", "THRESHOLD", "VERDICT", "REASON", "MESSAGE")
        lines += ["  Gates:", format_table(headers, rows, indent="    ")]
    else:
        lines.append("  Gates:  <none yet>")
    return lines


def _in_flight(status: FeedbackLoopStatus, now: datetime) -> list[str]:
    lines = []
    if status.active_retrain is not None:
        retrain = status.active_retrain
        lines.append(
            f"Active retrain:  {retrain.version} by Job {retrain.job} ({retrain.trigger}), "
            f"started {human_age(retrain.started_at, now)} ago"
        )
    if status.rollout is not None:
        rollout = status.rollout
        lines.append(
            f"Rollout:  {rollout.kind} of {rollout.version}, phase {rollout.phase}, "
            f"{len(rollout.measurements)} analysis measurements, "
            f"started {human_age(rollout.started_at, now)} ago"
        )
        if rollout.stage is not None:
            lines.extend(_stage(rollout.stage, rollout.version, now))
    if status.waiting_reason:
        lines.append(f"Waiting:  {one_line(status.waiting_reason)}")
    return lines


def _stage(stage: StageState, candidate: str, now: datetime) -> list[str]:
    """A Shadow or Split stage as it runs: labels so far, the current estimate, the time left."""

    def value(number: float | None) -> str:
        return NONE if number is None else f"{number:.4g}"

    if stage.live_since is None:
        clock = "waiting for the Deployment to serve both models"
    elif stage.verdict is not None:
        clock = f"verdict {stage.verdict}"
    elif stage.deadline is not None and stage.deadline > now:
        clock = f"{human_age(now, stage.deadline)} left at most"
    else:
        clock = "verdict due"
    lines = [
        f"  Stage:  {stage.strategy}, {candidate} beside {stage.champion}, {clock}",
        f"    Labels:  candidate {stage.candidate_labels}, champion {stage.champion_labels}",
        f"    Estimate:  candidate {value(stage.candidate_value)}, champion {value(stage.champion_value)} "
        f"({stage.test or NONE}, p={value(stage.p_value)})",
    ]
    if stage.candidate_answers is not None and stage.champion_answers is not None:
        answered = stage.candidate_answers + stage.champion_answers
        share = f"{stage.candidate_answers / answered:.3f}" if answered else NONE
        lines.append(
            f"    Answers:  candidate {stage.candidate_answers}, champion {stage.champion_answers} "
            f"(candidate share {share}, weight {value(stage.weight)})"
        )
    if stage.message:
        lines.append(f"    Message:  {one_line(stage.message)}")
    return lines


def _latest_history(history: Sequence[HistoryEntry], now: datetime) -> list[str]:
    if not history:
        return ["Latest history entry:  <none>"]
    entry = history[-1]
    summary = (
        f"{entry.version} {entry.outcome} (trigger {entry.trigger}, gates {entry.gates or NONE}, "
        f"analysis {entry.analysis or NONE}, started {human_age(entry.started_at, now)} ago)"
    )
    lines = [f"Latest history entry:  {summary}"]
    if entry.message:
        lines.append(f"  Message:  {one_line(entry.message)}")
    return lines


def describe_text(body: Mapping[str, Any], now: datetime) -> str:
    meta, spec = body["metadata"], body.get("spec") or {}
    status = parse_status(body.get("status"))
    target = spec.get("target") or {}
    last_retrain = f"{human_age(status.last_retrain_time, now)} ago" if status.last_retrain_time else NONE
    header = [
        ("Name", meta["name"]),
        ("Namespace", meta["namespace"]),
        ("Mode", str(spec.get("mode") or NONE)),
        ("Suspended", "true" if spec.get("suspend") else "false"),
        ("Phase", status.phase or NONE),
        ("Target", f"deployment/{target.get('deployment', NONE)} container {target.get('container', NONE)}"),
        ("Retrains", f"{status.retrain_count} (last {last_retrain})"),
        ("Recommended", status.recommended_version or NONE),
        ("Rejected", ", ".join(status.rejected_versions) or NONE),
    ]
    sections = [
        _fields(header),
        _conditions(status, now),
        _evaluation(status.last_evaluation, now),
        _current_model(status.current_model, now),
        _candidate_model(status.candidate_model),
        _in_flight(status, now),
        _latest_history(status.history, now),
    ]
    return "\n".join(line for section in sections for line in section)
