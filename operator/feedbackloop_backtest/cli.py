"""`feedbackloop backtest`: the command line. Errors are one `error: ...` line naming what to fix, exit 1."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from feedbackloop.api import KIND
from feedbackloop.core.durations import format_duration, parse_duration
from feedbackloop.core.spec import FeedbackLoopSpec, SpecError, Task, parse_spec
from feedbackloop_backtest import output
from feedbackloop_backtest.errors import BacktestError
from feedbackloop_backtest.history import History, prepare_history, read_table
from feedbackloop_backtest.prometheus import PrometheusClient, ScratchPrometheus
from feedbackloop_backtest.replay import Replay, ReplayConfig, ReplayResult, at
from feedbackloop_backtest.scoring import BaselineResult, primary_metric, run_baselines, step_of

PROG = "feedbackloop"
EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130
DEFAULT_PERIODIC_EVERY = 10
DEFAULT_PERIODIC_WINDOW = 10
PROMETHEUS_BIN_ENV = "FBL_PROMETHEUS_BIN"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog=PROG, description="FeedbackLoop tools that run on your machine.")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    about = "replay a labelled history through a FeedbackLoop's own decisions, in simulated time"
    sub = commands.add_parser("backtest", help=about, description=about)
    sub.add_argument("-f", "--filename", required=True, help="the FeedbackLoop YAML (a manifest or its spec)")
    sub.add_argument("--data", required=True, help="the history: a .parquet/.csv file or an s3:// prefix")
    sub.add_argument("--time-column", required=True, help="the column with each row's arrival time")
    sub.add_argument("--step", default="1h", help="simulated time per step (default 1h)")
    sub.add_argument(
        "--label-delay", default="0s", help="how long after its row a label arrives (default 0s)"
    )
    sub.add_argument(
        "--start",
        help="the first replayed time (RFC 3339 or epoch seconds; default: after "
        "the first 2%% of the rows, which train the initial model)",
    )
    where = sub.add_mutually_exclusive_group()
    where.add_argument(
        "--prometheus-url",
        help="a Prometheus 3 with --web.enable-otlp-receiver and an "
        "empty TSDB, used instead of a scratch one",
    )
    where.add_argument(
        "--prometheus-bin",
        help=f"the prometheus binary for a scratch server (default: "
        f"${PROMETHEUS_BIN_ENV}, else `prometheus` on PATH)",
    )
    sub.add_argument(
        "--output", required=True, help="the directory for summary.json, decisions.jsonl, timeline.png"
    )
    sub.add_argument(
        "--holdout", help="a .parquet/.csv file for spec.retrain.data.holdout, when it names one"
    )
    sub.add_argument(
        "--evaluate-every",
        help="decide this often (default: once per step; the loop's "
        "monitoring.interval reproduces production's cadence, at more cost)",
    )
    sub.add_argument("--scrape-interval", default="30s", help="the simulated scrape grid (default 30s)")
    sub.add_argument(
        "--periodic-every",
        type=int,
        default=DEFAULT_PERIODIC_EVERY,
        metavar="P",
        help=f"the periodic baseline retrains every P steps (default {DEFAULT_PERIODIC_EVERY})",
    )
    sub.add_argument(
        "--periodic-window",
        type=int,
        default=DEFAULT_PERIODIC_WINDOW,
        metavar="W",
        help=f"... on the rows of the last W steps (default {DEFAULT_PERIODIC_WINDOW})",
    )
    sub.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="a progress line on stderr (auto: when stderr is a terminal)",
    )
    return top


def duration(flag: str, text: str, allow_zero: bool = False) -> timedelta:
    try:
        value = parse_duration(text)
    except ValueError as err:
        raise BacktestError(f"{flag} {text}: {err}") from None
    if value < timedelta(0) or (value == timedelta(0) and not allow_zero):
        raise BacktestError(f"{flag} {text}: must be {'zero or ' if allow_zero else ''}positive")
    return value


def start_time(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BacktestError(f"--start {text}: not an RFC 3339 time or epoch seconds") from None
    if moment.tzinfo is None:
        raise BacktestError(f"--start {text}: give a time zone (e.g. Z)")
    return moment.timestamp()


def load_loop(path: str) -> tuple[dict[str, Any], FeedbackLoopSpec]:
    """The first FeedbackLoop in the file (or a bare spec), parsed by the operator's own parse_spec."""
    try:
        documents = [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]
    except OSError as err:
        raise BacktestError(f"-f {path}: cannot read it: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise BacktestError(f"-f {path}: not YAML: {str(err).splitlines()[0]}") from None
    bodies = [d for d in documents if isinstance(d, dict) and d.get("kind") == KIND]
    if bodies:
        return load_loop_body(bodies[0], f"-f {path}")
    if len(documents) == 1 and isinstance(documents[0], dict) and "kind" not in documents[0]:
        return load_loop_body({"spec": documents[0]}, f"-f {path}")  # a bare spec
    raise BacktestError(f"-f {path}: no {KIND} in it")


def load_loop_body(body: dict[str, Any], where: str = "-f") -> tuple[dict[str, Any], FeedbackLoopSpec]:
    raw = body.get("spec")
    if not isinstance(raw, dict):
        raise BacktestError(f"{where}: the {KIND} has no spec")
    try:
        spec = parse_spec(raw)
    except SpecError as err:
        raise BacktestError(f"{where}: {err}") from None
    if spec.retrain is None or spec.artifacts is None:
        raise BacktestError(
            f"{where}: spec.retrain and spec.artifacts are needed: the backtest trains with the loop's "
            "trainer and keeps versions under its artifact layout"
        )
    return body, spec


class Progress:
    """One stderr line, rewritten in place: steps done, elapsed and left."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.monotonic()
        self.shown = -1
        self.last = -1.0  # redrawn at most twice a second

    def __call__(self, done: int, total: int) -> None:
        elapsed = time.monotonic() - self.started
        if not self.enabled or done == self.shown or (done < total and elapsed - self.last < 0.5):
            return
        self.shown, self.last = done, elapsed
        left = elapsed / done * (total - done) if done else 0.0
        width = 30
        bar = "#" * (width * done // max(total, 1))
        sys.stderr.write(
            f"\rbacktest [{bar:<{width}}] {done}/{total} steps, {elapsed:.0f}s, ~{left:.0f}s left"
        )
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def figures_of(task: Task, scores: Any, row_steps: Any, steps: int) -> dict[str, Any]:
    return output.figures(task, scores, row_steps, steps)


def summarize(
    spec: FeedbackLoopSpec,
    history: History,
    config: ReplayConfig,
    result: ReplayResult,
    baselines: tuple[BaselineResult, BaselineResult],
    every: int,
    window: int,
) -> tuple[dict[str, Any], dict[str, list[float | None]]]:
    task = spec.retrain_spec().trainer.task
    metric = primary_metric(task)
    step_seconds = config.step.total_seconds()
    row_steps = step_of(history.times[history.start_index :], history.start_time, step_seconds)
    key = f"prequential_{metric}"
    loop = figures_of(task, result.scores, row_steps, result.steps)
    common = {"label_delay": format_duration(config.label_delay)}
    never, periodic = baselines
    never_figures = figures_of(task, never.scores, row_steps, result.steps)
    periodic_figures = figures_of(task, periodic.scores, row_steps, result.steps)
    status = result.final_status
    summary = {
        "primary_metric": metric,
        key: _rounded(loop["overall"]),
        "retrains": result.retrains,
        "retrain_failures": result.retrain_failures,
        "rejected_candidates": len(result.rejected),
        "rejected_versions": result.rejected,
        "reused_candidates": len(result.reused),
        "reused_versions": result.reused,
        "rollouts": result.rollouts,
        "rollbacks": result.rollbacks,
        **common,
        "final_version": status.current_model.version if status and status.current_model else None,
        "step": format_duration(config.step),
        "steps": result.steps,
        "rows": {"before_start": history.start_index, "replayed": len(history.frame) - history.start_index},
        "start": at(history.start_time).isoformat().replace("+00:00", "Z"),
        "baselines": {
            "never": {
                key: _rounded(never_figures["overall"]),
                "retrains": 0,
                "rejected_candidates": 0,
                "rollbacks": 0,
                **common,
            },
            "periodic": {
                key: _rounded(periodic_figures["overall"]),
                "retrains": periodic.retrains,
                "rejected_candidates": 0,
                "rollbacks": 0,
                **common,
                "every_steps": every,
                "window_steps": window,
                "failed_retrains": periodic.failures,
            },
        },
    }
    series = {
        "loop": loop["per_step"],
        "never": never_figures["per_step"],
        "periodic": periodic_figures["per_step"],
    }
    return summary, series


def _rounded(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.6g}")


def prometheus_binary(flag: str | None) -> str:
    chosen = flag or os.environ.get(PROMETHEUS_BIN_ENV) or shutil.which("prometheus")
    if not chosen:
        raise BacktestError(
            f"no Prometheus: pass --prometheus-bin PATH (a Prometheus 3 binary), set ${PROMETHEUS_BIN_ENV}, "
            "or pass --prometheus-url of one started with --web.enable-otlp-receiver"
        )
    return chosen


def backtest(args: argparse.Namespace) -> int:
    body, spec = load_loop(args.filename)
    step = duration("--step", args.step)
    config = ReplayConfig(
        step=step,
        label_delay=duration("--label-delay", args.label_delay, allow_zero=True),
        evaluate_every=duration("--evaluate-every", args.evaluate_every) if args.evaluate_every else None,
        scrape_interval=duration("--scrape-interval", args.scrape_interval),
        holdout=read_table(args.holdout) if args.holdout else None,
    )
    if args.periodic_every < 1 or args.periodic_window < 1:
        raise BacktestError("--periodic-every and --periodic-window: must be at least 1 step")
    if args.holdout is None and spec.retrain_spec().data.holdout:
        raise BacktestError(
            "--holdout: the spec names spec.retrain.data.holdout; pass the rows it holds with --holdout FILE"
        )
    label = spec.retrain_spec().trainer.label
    history = prepare_history(
        read_table(args.data), args.data, args.time_column, label, start_time(args.start)
    )
    if config.holdout is not None:
        missing = sorted({*history.features, label} - set(map(str, config.holdout.columns)))
        if missing:
            raise BacktestError(f"--holdout {args.holdout}: lacks columns {', '.join(missing)}")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    scratch = None if args.prometheus_url else ScratchPrometheus(prometheus_binary(args.prometheus_bin))
    prometheus = PrometheusClient(args.prometheus_url or (scratch.url if scratch else ""))
    progress = Progress(args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty()))
    try:
        with tempfile.TemporaryDirectory(prefix="fbl-backtest-") as workdir:
            replay = Replay(body, spec, history, prometheus, config, Path(workdir), progress)
            result = replay.run()
    finally:
        prometheus.close()
        if scratch is not None:
            scratch.stop()
    baselines = run_baselines(
        spec.retrain_spec().trainer,
        history.frame,
        history.times,
        history.features,
        history.start_index,
        step.total_seconds(),
        result.steps,
        config.label_delay.total_seconds(),
        args.periodic_every,
        args.periodic_window,
        result.initial_estimator,
    )
    summary, series = summarize(
        spec, history, config, result, baselines, args.periodic_every, args.periodic_window
    )
    output.write_summary(out / "summary.json", summary)
    output.write_decisions(out / "decisions.jsonl", result.decisions)
    output.write_timeline(out / "timeline.png", summary["primary_metric"], series, result.markers, args.step)
    key = f"prequential_{summary['primary_metric']}"
    print(
        f"{key} {summary[key]} (never {summary['baselines']['never'][key]}, periodic "
        f"{summary['baselines']['periodic'][key]}); {summary['retrains']} retrains, "
        f"{summary['rejected_candidates']} rejected, {summary['rollbacks']} rollbacks; written to {out}/"
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "backtest":
            return backtest(args)
    except BacktestError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
