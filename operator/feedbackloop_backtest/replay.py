"""The replay: the operator's plan → observe → decide → act, in simulated time, over a labelled history.

reconcile.py does this against a cluster; here the same core functions get Observations from the simulated
world (feedbackloop_backtest.world) and a real Prometheus, and `now` is the simulated clock. Between two
decisions the served model scores the rows that arrived, and labels reach the server's counters
`label_delay` after their row. Decisions fall on the step grid (or every --evaluate-every); while a retrain
or a rollout is in flight they follow the operator's own cadence (core.cadence.next_reconcile) and the
rollout's measurement times, so an analysis of count x interval takes as long as in production.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feedbackloop.api import GateVerdict, Outcome, RolloutPhase, Trigger
from feedbackloop.core import contract
from feedbackloop.core.builders import JobSettings, build_retrain_job, retrain_job_name
from feedbackloop.core.cadence import next_reconcile
from feedbackloop.core.decide import decide
from feedbackloop.core.decision import (
    ApplyModel,
    CreateJob,
    Decision,
    GateChecked,
    MetricEvaluated,
    RetrainFinished,
    RetrainStarted,
    RollbackStarted,
    RolloutStarted,
)
from feedbackloop.core.loop import LoopRef, LoopState, OperatorPolicy
from feedbackloop.core.observations import (
    PROBE_QUERY,
    DeployedModel,
    DeploymentProgress,
    JobObservation,
    JobState,
    MetricObservation,
    Observations,
    Probe,
    RetrainCapacity,
    TargetObservation,
)
from feedbackloop.core.plan import ObservationPlan, plan
from feedbackloop.core.retrain import mark_job_created
from feedbackloop.core.spec import FeedbackLoopSpec
from feedbackloop.core.status import ActiveRetrain, FeedbackLoopStatus, ModelRef
from feedbackloop_backtest.errors import BacktestError
from feedbackloop_backtest.history import History
from feedbackloop_backtest.prometheus import PrometheusClient
from feedbackloop_backtest.scoring import per_row, step_of
from feedbackloop_backtest.series import ServerCounters, otlp_payload, scrape_grid
from feedbackloop_backtest.world import World, job_env, predict

BACKTEST_IMAGE = "feedbackloop-backtest/in-process-trainer"
LIVE_DEPLOYMENT = DeploymentProgress(
    generation=1, observed_generation=1, replicas=1, updated=1, available=1, total=1
)


@dataclass(frozen=True)
class ReplayConfig:
    step: timedelta
    label_delay: timedelta = timedelta(0)
    evaluate_every: timedelta | None = None  # None: at step boundaries
    scrape_interval: timedelta = timedelta(seconds=30)
    holdout: pd.DataFrame | None = None


@dataclass
class ReplayResult:
    scores: np.ndarray[Any, Any]  # per replayed row: the served model's correctness (or squared error)
    versions: list[str]  # per replayed row: the version that served it
    steps: int
    decisions: list[dict[str, Any]] = field(default_factory=list)
    retrains: int = 0
    retrain_failures: int = 0
    rejected: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)  # "vN=vK": candidate vN is earlier version vK's model
    rollouts: int = 0
    rollbacks: int = 0
    markers: list[tuple[int, str, str]] = field(default_factory=list)  # (step, kind, version)
    initial_estimator: Any = None  # v1 as the server loaded it: the baselines start from it too
    final_status: FeedbackLoopStatus | None = None


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(round(seconds, 3), UTC)


def seconds_of(moment: datetime) -> float:
    return moment.timestamp()


def backtest_policy(spec: FeedbackLoopSpec, prometheus_url: str) -> OperatorPolicy:
    """An operator that allows what the loop names: the backtest judges the loop, not its admission."""
    images = (
        (BACKTEST_IMAGE, spec.retrain.image) if spec.retrain and spec.retrain.image else (BACKTEST_IMAGE,)
    )
    prefixes = tuple(
        sorted({*spec.retrain.pod_labels, *spec.retrain.pod_annotations}) if spec.retrain else ()
    )
    return OperatorPolicy(
        trainer_images=images,
        credentials_secret_prefix="",
        pod_metadata_prefixes=prefixes,
        prometheus_urls=(prometheus_url, "*"),
        artifact_buckets=("*",),
    )


class Replay:
    def __init__(
        self,
        body: dict[str, Any],
        spec: FeedbackLoopSpec,
        history: History,
        prometheus: PrometheusClient,
        config: ReplayConfig,
        workdir: Path,
        progress: Callable[[int, int], None] = lambda done, total: None,
    ) -> None:
        self.spec = spec
        self.history = history
        self.prometheus = prometheus
        self.config = config
        self.progress = progress
        meta = body.get("metadata") or {}
        name, namespace = str(meta.get("name") or "backtest"), str(meta.get("namespace") or "default")
        self.ref = LoopRef(name=name, namespace=namespace, uid=f"backtest-{namespace}-{name}")
        self.model_name = spec.monitoring.labels.get("model", name)
        self.task = spec.retrain_spec().trainer.task
        self.policy = backtest_policy(spec, prometheus.url)
        self.world = World(spec, workdir)
        self.counters = ServerCounters(self.model_name, self.task.value)
        self.start = history.start_time
        self.step_seconds = config.step.total_seconds()
        self.delay = config.label_delay.total_seconds()
        last = float(history.times[-1])
        self.steps = max(1, math.ceil((last - self.start) / self.step_seconds))
        self.end = self.start + self.steps * self.step_seconds
        replayed = len(history.frame) - history.start_index
        self.scores = np.full(replayed, math.nan)
        self.served_versions = [""] * replayed
        self.predictions: list[Any] = [None] * replayed
        self.cursor = history.start_index  # the next row to arrive
        self.labels_cursor = history.start_index  # the next row whose label has not reached the server
        self.staged_cursor = history.start_index  # the next labelled row not yet in the feedback prefix
        self.pushed_until = self.start - 1e-3
        self.jobs: dict[str, JobObservation] = {}
        self.pending_labels: deque[int] = deque()
        self.result = ReplayResult(np.zeros(0), [], self.steps)
        self.loop = LoopState(
            ref=self.ref,
            generation=1,
            created=at(self.start),
            spec=spec,
            spec_error=None,
            status=FeedbackLoopStatus(),
        )
        self.initial: ModelRef | None = None
        self.deployed: ModelRef | None = None

    # ------------------------------------------------------------------ setup
    def _initial_model(self) -> None:
        """v1: the loop's own trainer on the rows before --start, written and verified like any version."""
        history = self.history
        before = history.frame.iloc[: history.start_index]
        self.world.stage_training(before[[*history.features, history.label]])
        if self.config.holdout is not None:
            self.world.stage_holdout(self.config.holdout[[*history.features, history.label]])
        number = 1
        active = ActiveRetrain(
            job=retrain_job_name(self.ref.name, number),
            version=contract.version_name(number),
            number=number,
            trigger=Trigger.MANUAL,
            started_at=at(self.start),
        )
        settings = JobSettings(image=BACKTEST_IMAGE, s3_endpoint_url=None, s3_region="us-east-1")
        env = job_env(build_retrain_job(self.ref, self.spec, active, None, settings, at(self.start)))
        env.pop(contract.ENV_FEEDBACK_DATA_URI, None)  # no label has arrived yet
        env.pop(contract.ENV_FEEDBACK_SINCE, None)
        run = self.world.run_trainer(env)
        if run.job.state is not JobState.SUCCEEDED:
            why = run.job.message
            raise BacktestError(
                f"--start: the trainer cannot train the initial model on the rows before it: {why}"
            )
        artifacts = self.spec.artifacts_spec()
        uri = contract.version_uri(
            artifacts.bucket, artifacts.prefix, self.ref.namespace, self.ref.name, active.version
        )
        verified = self.world.store.verify_version(uri, active.version)
        model = ModelRef(version=active.version, uri=uri, sha256=verified.model_sha256)
        self.initial = model
        self._deploy(model)
        self.result.initial_estimator = self.served.estimator

    def _deploy(self, model: ModelRef | None) -> None:
        chosen = model or self.initial  # releasing our fields leaves what the Deployment's own manifest sets
        assert chosen is not None
        self.served = self.world.load(chosen, self.model_name)
        self.deployed = chosen

    # ------------------------------------------------------------------ the world between decisions
    def _advance(self, now: float) -> None:
        """Rows up to `now` arrive and are predicted; labels due by `now` reach the counters; the samples a
        scrape grid would have taken go to Prometheus."""
        times, frame, label = self.history.times, self.history.frame, self.history.label
        first = self.cursor
        last = int(np.searchsorted(times, now, side="right"))
        if last > first:
            rows = frame.iloc[first:last]
            predicted = predict(self.served, rows)
            version = self.served.version
            offset = self.history.start_index
            truth = rows[label].to_numpy()
            self.scores[first - offset : last - offset] = per_row(self.task, truth, predicted)
            for i in range(first, last):
                self.served_versions[i - offset] = version
                self.predictions[i - offset] = predicted[i - first]
                self.counters.predicted(float(times[i]), version, 1)
                self.pending_labels.append(i)
            self.cursor = last
        offset = self.history.start_index
        labels = frame[label]
        while self.pending_labels and times[self.pending_labels[0]] + self.delay <= now:
            i = self.pending_labels.popleft()
            value = labels.iat[i]
            if pd.isna(value):
                continue  # a row that never gets a label
            self.counters.labelled(
                float(times[i] + self.delay),
                self.served_versions[i - offset],
                _plain(value),
                _plain(self.predictions[i - offset]),
            )
        self._push(now)

    def _push(self, now: float) -> None:
        grid = scrape_grid(self.pushed_until, now, self.start, self.config.scrape_interval.total_seconds())
        if not grid:
            return
        offset = self.history.start_index
        live = {self.served.version} | {self.served_versions[i - offset] for i in self.pending_labels}
        self.prometheus.push(otlp_payload(self.counters.samples(grid, live)))
        self.pushed_until = grid[-1]

    def _stage_feedback(self, now: float) -> None:
        """Rows labelled by `now`, as the server's feedback writer puts them under the feedback prefix."""
        times, history = self.history.times, self.history
        end = self.staged_cursor
        while end < self.cursor and times[end] + self.delay <= now:
            end += 1
        if end == self.staged_cursor:
            return
        offset = history.start_index
        rows = history.frame.iloc[self.staged_cursor : end]
        batch = rows[history.features].copy()
        batch[contract.FEEDBACK_LABEL] = rows[history.label].to_numpy()
        labelled = pd.to_datetime(times[self.staged_cursor : end] + self.delay, unit="s", utc=True)
        batch[contract.FEEDBACK_LABELLED_AT] = labelled
        batch[contract.FEEDBACK_PREDICTED_AT] = pd.to_datetime(
            times[self.staged_cursor : end], unit="s", utc=True
        )
        batch[contract.FEEDBACK_MODEL_VERSION] = self.served_versions[
            self.staged_cursor - offset : end - offset
        ]
        batch[contract.FEEDBACK_PREDICTION_ID] = [f"backtest-{i}" for i in range(self.staged_cursor, end)]
        batch = batch[batch[contract.FEEDBACK_LABEL].notna()]
        self.world.stage_feedback(batch)
        self.staged_cursor = end

    # ------------------------------------------------------------------ one reconcile
    def _observe(self, how: ObservationPlan, now: float) -> Observations:
        spec = self.spec
        observed = Observations()
        timeout = spec.prometheus.timeout.total_seconds()
        if how.queries is not None:
            metrics = []
            for rendered in how.queries:
                result = self.prometheus.query(rendered.query, now, timeout)
                samples = (
                    self.prometheus.query(rendered.samples_query, now, timeout)
                    if rendered.samples_query
                    else None
                )
                metrics.append(
                    MetricObservation(rendered.name, rendered.query, result, samples, rendered.samples_query)
                )
            observed = replace(observed, metrics=tuple(metrics))
        if how.probe_dependencies:
            artifacts = spec.artifacts_spec()
            observed = replace(
                observed,
                prometheus=Probe.of_query(self.prometheus.query(PROBE_QUERY, now, timeout)),
                artifact_store=self.world.store.probe_bucket(artifacts.bucket),
            )
        if how.probe_dependencies or how.observe_target:
            deployed = self.deployed
            observed = replace(
                observed,
                target=TargetObservation(
                    deployment_found=True,
                    container_found=True,
                    containers=(spec.target.container,),
                    deployed=DeployedModel(deployed.uri, deployed.sha256, deployed.version)
                    if deployed
                    else None,
                    progress=LIVE_DEPLOYMENT,
                ),
            )
        if how.job_name is not None:
            job = self.jobs.get(how.job_name, JobObservation(how.job_name, JobState.MISSING))
            observed = replace(observed, job=job)
            if job.state is JobState.SUCCEEDED and how.candidate_uri and how.candidate_version:
                verified = self.world.store.verify_version(how.candidate_uri, how.candidate_version)
                observed = replace(observed, artifacts=verified)
        return observed

    def _reconcile(self, now: float) -> None:
        moment = at(now)
        loop = self.loop
        how = plan(loop, self.policy, moment)
        observed = self._observe(how, now)
        decision = decide(loop, observed, self.policy, moment)
        if decision.needs_capacity:
            # One loop in the backtest: the operator-wide cap is never reached by another.
            observed = replace(observed, capacity=RetrainCapacity(0, 1))
            decision = decide(loop, observed, self.policy, moment)
        status, trainer = self._act(decision, now)
        self._record(now, loop.status, decision, status, trainer, observed.metrics is not None)
        self.loop = replace(
            loop, status=status, last_probe=moment if how.probe_dependencies else loop.last_probe
        )

    def _act(self, decision: Decision, now: float) -> tuple[FeedbackLoopStatus, dict[str, Any] | None]:
        status = decision.status
        trainer = None
        for action in decision.actions:
            match action:
                case ApplyModel():
                    self._deploy(action.model)
                case CreateJob():
                    self._stage_feedback(now)
                    run = self.world.run_trainer(job_env(action.manifest))
                    self.jobs[run.job.name] = run.job
                    status = mark_job_created(status)
                    trainer = {
                        "job": run.job.name,
                        "version": run.version,
                        "succeeded": run.job.state is JobState.SUCCEEDED,
                        "rows": dict(sorted(run.rows.items())),
                        "candidate": _numbers(run.candidate),
                        "current": _numbers(run.current),
                    }
                    if run.job.state is not JobState.SUCCEEDED:
                        trainer["message"] = run.job.message
                    if run.reused is not None:
                        trainer["reused"] = run.reused
        return status, trainer

    # ------------------------------------------------------------------ bookkeeping
    def _step(self, now: float) -> int:
        return int(step_of(np.asarray([now]), self.start, self.step_seconds)[0])

    def _record(
        self,
        now: float,
        before: FeedbackLoopStatus,
        decision: Decision,
        after: FeedbackLoopStatus,
        trainer: dict[str, Any] | None,
        evaluated: bool,
    ) -> None:
        result, step = self.result, self._step(now)
        if trainer is not None and trainer.get("reused"):
            result.reused.append(f"{trainer['version']}={trainer['reused']}")
        changed = [t for t in decision.transitions if not isinstance(t, MetricEvaluated)]
        for transition in decision.transitions:
            match transition:
                case RetrainStarted():
                    result.retrains += 1
                    result.markers.append(
                        (step, "retrain", after.active_retrain.version if after.active_retrain else "")
                    )
                case RetrainFinished(outcome=Outcome.RETRAIN_FAILED):
                    result.retrain_failures += 1
                case RolloutStarted():
                    result.rollouts += 1
                case RollbackStarted():
                    result.rollbacks += 1
                    result.markers.append((step, "rollback", after.rollout.version if after.rollout else ""))
                case _:
                    pass
        candidate = after.candidate_model
        gates = None
        if any(isinstance(t, GateChecked) for t in decision.transitions) and candidate is not None:
            gates = [_plain_dict(gate) for gate in candidate.gates]
            if candidate.validation is GateVerdict.FAILED:
                result.rejected.append(candidate.version)
                result.markers.append((step, "rejected", candidate.version))
        verdicts_before = _verdicts(before)
        verdicts_after = _verdicts(after)
        if not (
            changed
            or decision.actions
            or decision.events
            or trainer
            or verdicts_before != verdicts_after
            or before.phase != after.phase
        ):
            return
        line: dict[str, Any] = {
            "time": at(now).isoformat().replace("+00:00", "Z"),
            "step": step,
            "phase": after.phase.value if after.phase else None,
            "serving": self.deployed.version if self.deployed else None,
        }
        if evaluated and after.last_evaluation is not None:
            line["evaluation"] = [
                {
                    "metric": m.name,
                    "value": _number(m.value),
                    "samples": _number(m.samples),
                    "verdict": m.verdict.value,
                    "reason": m.reason,
                }
                for m in after.last_evaluation.metrics
            ]
        if changed:
            line["transitions"] = [_plain_dict(t, kind=type(t).__name__) for t in changed]
        if trainer is not None:
            line["trainer"] = trainer
        if gates is not None:
            line["gates"] = gates
        if decision.actions:
            line["actions"] = [_describe_action(a) for a in decision.actions]
        if decision.events:
            line["events"] = [
                {"type": e.type.value, "reason": e.reason.value, "message": e.message}
                for e in decision.events
            ]
        result.decisions.append(line)

    # ------------------------------------------------------------------ the clock
    def _next(self, now: float) -> float:
        """The next simulated time to decide at: the next step boundary (or --evaluate-every tick), sooner
        while a retrain or a rollout is in flight, as the operator's own cadence would look."""
        since = now - self.start
        boundary = self.start + (math.floor(since / self.step_seconds + 1e-9) + 1) * self.step_seconds
        if self.config.evaluate_every is not None:
            every = self.config.evaluate_every.total_seconds()
            boundary = min(boundary, self.start + (math.floor(since / every + 1e-9) + 1) * every)
        status = self.loop.status
        if status.active_retrain is None and status.rollout is None:
            return boundary
        wake = seconds_of(next_reconcile(self.loop, {}, self.policy, at(now)))
        rollout = status.rollout
        if rollout is not None and rollout.phase is RolloutPhase.ANALYZING and rollout.next_measurement_at:
            # Nothing an analysis waits for changes between its measurements: the idle ticks are skipped.
            wake = max(wake, seconds_of(rollout.next_measurement_at))
        return min(max(wake, now + 1e-3), boundary)

    def run(self) -> ReplayResult:
        self._initial_model()
        now = self.start
        while now <= self.end + 1e-6:
            self._advance(now)
            self._reconcile(now)
            self.progress(min(self._step(now) + 1, self.steps), self.steps)
            now = self._next(now)
        self.result.scores = self.scores
        self.result.versions = self.served_versions
        self.result.final_status = self.loop.status
        return self.result


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _number(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.10g}")


def _numbers(values: Any) -> dict[str, float | None]:
    return {name: _number(value) for name, value in sorted(dict(values).items())}


def _plain_dict(item: Any, kind: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": kind} if kind else {}
    names = (
        [f.name for f in fields(item)]
        if hasattr(item, "__dataclass_fields__")
        else list(type(item).model_fields)
    )
    for name in names:
        value = getattr(item, name)
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, float):
            value = _number(value)
        out[name] = value
    return out


def _describe_action(action: ApplyModel | CreateJob) -> dict[str, Any]:
    match action:
        case ApplyModel(model=model):
            return {"kind": "ApplyModel", "version": model.version if model else None}
        case CreateJob(manifest=manifest):
            return {"kind": "CreateJob", "job": manifest["metadata"]["name"]}


def _verdicts(status: FeedbackLoopStatus) -> tuple[tuple[str, str], ...]:
    evaluation = status.last_evaluation
    if evaluation is None:
        return ()
    return tuple((m.name, m.verdict.value) for m in evaluation.metrics)
