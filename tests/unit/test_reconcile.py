"""The Reconciler over in-memory fakes of its Protocols: the order of its writes, what it does when each write
fails, that an idle reconcile writes nothing, and the exact increments of every operator metric."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from prometheus_client import REGISTRY

from core_inputs import T0, spec_dict
from feedbackloop.adapters.kube import StaleWriteError
from feedbackloop.api import RETRAIN_REQUEST_ANNOTATION
from feedbackloop.core.loop import OperatorPolicy
from feedbackloop.core.observations import JobState
from feedbackloop.reconcile import NotLeaderError
from reconcile_fakes import Call, FakeApiError, World

INTERVAL = 10  # seconds between evaluations, and between analysis measurements
PROBE_INTERVAL = OperatorPolicy(trainer_images=()).probe_interval.total_seconds() * 1.5  # the longest spread


def spec(**changes: Any) -> dict[str, Any]:
    """One accuracy metric, a gate at 0.85, a two-measurement analysis, every interval 10s."""
    return spec_dict(
        **{
            "monitoring.interval": f"{INTERVAL}s",
            "monitoring.metrics": [
                {"name": "accuracy", "query": "acc{loop={{loop}}}", "threshold": {"min": 0.8}, "for": "0s"}
            ],
            "retrain.cooldown": "0s",
            "validation": {"gates": [{"metric": "accuracy", "min": 0.85}]},
            "rollout": {"analysis": {"interval": f"{INTERVAL}s", "count": 2, "failureLimit": 0}},
            **changes,
        }
    )


_names = iter(range(10_000))


@pytest.fixture
def world() -> World:
    """A loop with a name of its own, so the process-wide metrics of one test never mix with another's."""
    return World(f"loop-{next(_names)}", spec(), T0)


def names(calls: list[Call]) -> list[str]:
    return [call.name for call in calls]


def metric(world: World, name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, {"namespace": world.namespace, "loop": world.name, **labels})
    return value or 0.0


def request_retrain(world: World) -> None:
    world.annotate(RETRAIN_REQUEST_ANNOTATION, "r1")
    world.reconcile()


# ---------------------------------------------------------------- write order


def test_a_retrain_writes_the_counter_then_the_job_then_marks_it_then_posts_events(world: World) -> None:
    request_retrain(world)
    writes = world.writes()
    assert names(writes)[:3] == ["patch_loop_status", "create_job", "patch_loop_status"]
    counter = writes[0].args[2]
    assert counter["retrainCount"] == 1
    assert counter["activeRetrain"]["job"] == f"{world.name}-retrain-1"
    assert counter["activeRetrain"].get("jobCreated", False) is False
    assert writes[1].args == (f"{world.name}-retrain-1",)
    assert writes[2].args[2] == {"activeRetrain": {"jobCreated": True}}
    assert set(names(writes[3:])) == {"post_event"}
    assert ("Normal", "RetrainStarted") in [call.args for call in writes[3:]]


def test_status_records_the_query_as_it_was_sent(world: World) -> None:
    world.reconcile()
    sent = [call.args[0] for call in world.last_calls if call.name == "query"]
    assert sent == [f'acc{{loop="{world.name}"}}']
    assert world.status["lastEvaluation"]["metrics"][0]["query"] == sent[0]


def test_an_idle_reconcile_reads_the_watched_loop_and_calls_nothing(world: World) -> None:
    world.reconcile()
    assert "patch_loop_status" in names(world.writes())
    assert names(world.reconcile(after_seconds=1)) == []
    assert names(world.reconcile(after_seconds=1)) == []


def test_an_evaluation_that_changes_nothing_is_written_only_as_a_heartbeat(world: World) -> None:
    world.reconcile()
    first = world.status["lastEvaluation"]["time"]
    for _ in range(59):  # ten minutes of evaluations every 10s
        calls = world.reconcile(after_seconds=INTERVAL)
        assert [call.name for call in calls if call.name == "query"] == ["query"]
        assert world.writes(calls) == []
    assert world.status["lastEvaluation"]["time"] == first
    calls = world.reconcile(after_seconds=INTERVAL)
    (patch,) = [call.args[2] for call in world.writes(calls)]
    assert set(patch) == {"lastEvaluation"}
    assert set(patch["lastEvaluation"]) == {"time"}


def test_a_changed_verdict_is_written_at_once_with_the_fresh_time_and_value(world: World) -> None:
    world.reconcile()
    world.prometheus.value = 0.5
    calls = world.reconcile(after_seconds=INTERVAL)
    (patch, *_rest) = [call.args[2] for call in world.writes(calls) if call.name == "patch_loop_status"]
    assert patch["lastEvaluation"]["metrics"][0]["value"] == 0.5
    assert patch["lastEvaluation"]["time"] == world.clock.now.isoformat().replace("+00:00", "Z")


def test_a_watch_that_lags_behind_our_own_write_does_not_cost_a_read(world: World) -> None:
    """The reconcile after a write may see the loop as it was before it: the remembered status is used."""
    world.reconcile()
    world.watch_lags = True
    stale_meta = {**world.body["metadata"], "resourceVersion": "0"}
    world.reconciler.index.put({**world.body, "status": {}, "metadata": stale_meta})
    calls = world.reconcile(after_seconds=1)
    assert names(calls) == ["get_loop"]  # the stale copy differs: one read shows the write was ours
    assert names(world.reconcile(after_seconds=1)) == ["get_loop"]
    world.watch_lags = False
    assert names(world.reconcile(after_seconds=1)) == []


def test_a_status_written_by_someone_else_is_taken_as_stored_and_writes_are_guarded(world: World) -> None:
    world.reconcile()
    world.body["status"]["retrainCount"] = 7  # e.g. a restore from backup, or another writer
    world.cluster.bump(world.namespace, world.name)
    world.annotate(RETRAIN_REQUEST_ANNOTATION, "r1")
    world.reconcile()
    assert world.status["retrainCount"] == 8
    assert world.status["activeRetrain"]["number"] == 8


def test_a_write_decided_on_a_stale_read_is_refused_and_nothing_follows_it(world: World) -> None:
    world.reconcile()
    world.watch_lags = True
    world.annotate(RETRAIN_REQUEST_ANNOTATION, "r1")  # the index still has the loop without it ...
    world.reconciler.index.put(copy.deepcopy(world.body))  # ... now it has it, then someone writes again
    world.cluster.bump(world.namespace, world.name)
    with pytest.raises(StaleWriteError):
        world.reconcile()
    assert names(world.writes()) == ["patch_loop_status"]
    assert world.cluster.jobs == {}
    world.watch_lags = False
    world.reconcile()
    assert list(world.cluster.jobs) == [f"{world.name}-retrain-1"]


def test_a_replica_that_is_not_the_leader_writes_nothing(world: World) -> None:
    world.reconciler.may_write = lambda: False
    world.annotate(RETRAIN_REQUEST_ANNOTATION, "r1")
    with pytest.raises(NotLeaderError):
        world.reconcile()
    assert world.writes() == []
    assert world.cluster.jobs == {}


# ---------------------------------------------------------------- failing writes


def test_a_failed_status_write_creates_no_job_posts_nothing_and_counts_nothing(world: World) -> None:
    world.cluster.failing.add("patch_loop_status")
    world.annotate(RETRAIN_REQUEST_ANNOTATION, "r1")
    with pytest.raises(FakeApiError):
        world.reconcile()
    assert names(world.writes()) == ["patch_loop_status"]
    assert world.cluster.jobs == {}
    assert metric(world, "feedbackloop_retrains_started_total", trigger="Manual") == 0
    assert metric(world, "feedbackloop_metric_evaluations_total", metric="accuracy", verdict="Healthy") == 0


def test_a_failed_job_create_keeps_the_counter_backs_off_and_retries_the_same_name(world: World) -> None:
    world.cluster.create_failures.append(503)
    world.annotate(RETRAIN_REQUEST_ANNOTATION, "r1")
    world.reconcile()  # handled in status, not raised: its backoff decides the next try
    writes = world.writes()
    assert names(writes)[:3] == ["patch_loop_status", "create_job", "patch_loop_status"]
    assert set(names(writes[3:])) == {"post_event"}
    assert [call.args for call in writes].count(("Warning", "Blocked")) == 1
    retraining = next(c for c in world.status["conditions"] if c["type"] == "Retraining")
    assert (retraining["status"], retraining["reason"]) == ("False", "Blocked")
    assert f"cannot create Job {world.name}-retrain-1: HTTP 503 injected (try 1)" in retraining["message"]
    assert world.status["retrainCount"] == 1

    calls = world.reconcile(after_seconds=10)
    assert [call.args for call in calls if call.name == "create_job"] == [(f"{world.name}-retrain-1",)]
    assert world.status["activeRetrain"]["jobCreated"] is True
    assert world.status["activeRetrain"]["createAttempts"] == 0
    assert "nextCreateAt" not in world.status["activeRetrain"]
    assert world.status["retrainCount"] == 1
    assert metric(world, "feedbackloop_retrains_started_total", trigger="Manual") == 1


def test_a_failed_event_loses_the_event_not_the_reconcile(world: World) -> None:
    lost = REGISTRY.get_sample_value("feedbackloop_events_lost_total") or 0.0
    world.cluster.failing.add("post_event")
    request_retrain(world)
    events = [call for call in world.last_calls if call.name == "post_event"]
    assert events, "the retrain should have tried to post its events"
    assert world.status["activeRetrain"]["jobCreated"] is True
    assert REGISTRY.get_sample_value("feedbackloop_events_lost_total") == lost + len(events)


def test_a_failed_model_apply_keeps_the_rollout_and_applies_again(world: World) -> None:
    request_retrain(world)
    world.cluster.job_states[f"{world.name}-retrain-1"] = JobState.SUCCEEDED
    world.cluster.failing.add("apply_model")
    with pytest.raises(FakeApiError):
        world.reconcile(after_seconds=1)
    assert world.status["rollout"]["version"] == "v1"
    assert world.cluster.deployed_uri is None

    world.cluster.failing.clear()
    calls = world.reconcile(after_seconds=1)
    assert [call.args for call in calls if call.name == "apply_model"] == [("churn-server", "v1")]
    assert world.cluster.deployed_uri == world.status["rollout"]["uri"]


def test_the_retrain_cap_counts_jobs_only_when_a_launch_is_wanted(world: World) -> None:
    world.cluster.job_states.update(
        {"other-retrain-1": JobState.RUNNING, "other-retrain-2": JobState.RUNNING}
    )
    world.reconcile()
    assert "count_active_retrains" not in names(world.last_calls)
    request_retrain(world)
    assert "count_active_retrains" in names(world.last_calls)
    assert "create_job" not in names(world.last_calls)
    retraining = next(c for c in world.status["conditions"] if c["type"] == "Retraining")
    assert retraining["reason"] == "Queued"


# ---------------------------------------------------------------- metrics


def lifecycle(world: World, analysis_value: float) -> None:
    """Manual retrain → Job succeeds → gates pass → rollout → available → two analysis measurements."""
    request_retrain(world)
    world.cluster.job_states[f"{world.name}-retrain-1"] = JobState.SUCCEEDED
    world.reconcile(after_seconds=1)  # candidate verified, gates pass, rollout starts
    world.reconcile(after_seconds=1)  # available: analysis begins
    world.prometheus.value = analysis_value
    world.reconcile(after_seconds=INTERVAL)
    world.reconcile(after_seconds=INTERVAL)
    world.reconcile(after_seconds=1)  # a rollback, if any, completes


def test_a_good_retrain_counts_each_transition_exactly_once(world: World) -> None:
    lifecycle(world, analysis_value=0.95)
    assert world.status["currentModel"]["version"] == "v1"
    assert world.status["history"][-1]["outcome"] == "RolledOut"
    assert metric(world, "feedbackloop_retrains_started_total", trigger="Manual") == 1
    assert (
        metric(world, "feedbackloop_retrains_finished_total", outcome="Retrained", reason="RetrainSucceeded")
        == 1
    )
    for outcome in ("RollingOut", "RolledOut", "Recommended", "Rejected"):
        assert (
            metric(world, "feedbackloop_retrains_finished_total", outcome=outcome, reason="RetrainSucceeded")
            == 0
        )
    assert metric(world, "feedbackloop_gate_verdicts_total", metric="accuracy", verdict="Passed") == 1
    assert metric(world, "feedbackloop_rollouts_started_total", kind="Promotion") == 1
    assert metric(world, "feedbackloop_rollouts_finished_total", outcome="RolledOut") == 1
    assert metric(world, "feedbackloop_rollbacks_total", reason="AnalysisFailed") == 0
    # Evaluations: the first reconcile, then one per measurement; the others were not due.
    assert metric(world, "feedbackloop_metric_evaluations_total", metric="accuracy", verdict="Healthy") == 3
    assert metric(world, "feedbackloop_metric_value", metric="accuracy") == 0.95


def test_a_failed_analysis_counts_one_rollback_and_one_rolled_back_rollout(world: World) -> None:
    lifecycle(world, analysis_value=0.5)
    assert world.status["history"][-1]["outcome"] == "RolledBack"
    assert world.status["rejectedVersions"] == ["v1"]
    assert (
        metric(world, "feedbackloop_retrains_finished_total", outcome="Retrained", reason="RetrainSucceeded")
        == 1
    )
    assert metric(world, "feedbackloop_rollbacks_total", reason="AnalysisFailed") == 1
    assert metric(world, "feedbackloop_rollouts_finished_total", outcome="RolledBack") == 1
    assert metric(world, "feedbackloop_rollouts_finished_total", outcome="RolledOut") == 0
    # for: 0s makes a breach sustained at once: the failed measurement, then once more while rolling back.
    assert metric(world, "feedbackloop_metric_evaluations_total", metric="accuracy", verdict="Breached") == 2
    assert metric(world, "feedbackloop_metric_evaluations_total", metric="accuracy", verdict="Breaching") == 0
    assert metric(world, "feedbackloop_metric_evaluations_total", metric="accuracy", verdict="Healthy") == 1


def test_a_rejected_candidate_counts_a_failed_gate_and_no_rollout(world: World) -> None:
    world.artifacts.candidate_metrics = {"accuracy": 0.7}
    request_retrain(world)
    world.cluster.job_states[f"{world.name}-retrain-1"] = JobState.SUCCEEDED
    world.reconcile(after_seconds=1)
    assert world.status["history"][-1]["outcome"] == "Rejected"
    assert (
        metric(world, "feedbackloop_retrains_finished_total", outcome="Retrained", reason="RetrainSucceeded")
        == 1
    )
    assert metric(world, "feedbackloop_gate_verdicts_total", metric="accuracy", verdict="Failed") == 1
    assert metric(world, "feedbackloop_rollouts_started_total", kind="Promotion") == 0


def test_every_reconcile_is_timed(world: World) -> None:
    before = (
        REGISTRY.get_sample_value("feedbackloop_reconcile_duration_seconds_count", {"outcome": "ok"}) or 0
    )
    world.reconcile()
    world.reconcile(after_seconds=1)
    after = REGISTRY.get_sample_value("feedbackloop_reconcile_duration_seconds_count", {"outcome": "ok"})
    assert after == before + 2


# ---------------------------------------------------------------- readiness gauge


def ready_series(world: World) -> dict[str, float]:
    """reason -> value of every feedbackloop_loop_ready series of this loop."""
    return {
        sample.labels["reason"]: sample.value
        for family in REGISTRY.collect()
        if family.name == "feedbackloop_loop_ready"
        for sample in family.samples
        if (sample.labels["namespace"], sample.labels["loop"]) == (world.namespace, world.name)
    }


def test_the_readiness_gauge_keeps_one_series_per_loop_that_follows_the_ready_condition(world: World) -> None:
    world.reconcile()
    assert ready_series(world) == {"Ready": 1.0}

    world.prometheus.reachable = False
    world.reconcile(after_seconds=PROBE_INTERVAL)  # a Ready loop re-probes on this slower cadence
    ready = next(c for c in world.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "PrometheusUnreachable")
    assert ready_series(world) == {"PrometheusUnreachable": 0.0}

    world.prometheus.reachable = True
    world.reconcile(after_seconds=INTERVAL)
    assert ready_series(world) == {"Ready": 1.0}


def test_a_kubernetes_failure_reported_in_ready_sets_the_gauge_to_zero(world: World) -> None:
    world.reconcile()
    world.reconciler.report_failure(world.namespace, world.name, FakeApiError("patch_loop_status"))
    assert ready_series(world) == {"KubernetesAPIError": 0.0}


def test_an_unwritten_status_leaves_the_gauge_as_it_was(world: World) -> None:
    world.cluster.failing.add("patch_loop_status")
    with pytest.raises(FakeApiError):
        world.reconcile()
    assert ready_series(world) == {}


def test_an_operator_restart_publishes_readiness_without_writing_status(world: World) -> None:
    world.reconcile()
    restarted = World(world.name, spec(), T0)
    restarted.cluster.loops = world.cluster.loops
    restarted.clock.now = world.clock.now
    world.reconciler.forget(world.namespace, world.name)
    assert ready_series(world) == {}
    restarted.reconcile(after_seconds=1)
    assert restarted.writes() == []
    assert ready_series(world) == {"Ready": 1.0}


def test_a_deleted_loop_leaves_no_readiness_series(world: World) -> None:
    world.reconcile()
    world.reconciler.forget(world.namespace, world.name)
    assert ready_series(world) == {}

    world.reconcile(after_seconds=1)
    assert ready_series(world) == {"Ready": 1.0}
    world.body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    world.reconcile(after_seconds=1)
    assert ready_series(world) == {}

    del world.body["metadata"]["deletionTimestamp"]
    world.reconcile(after_seconds=1)
    del world.cluster.loops[(world.namespace, world.name)]
    world.reconcile(after_seconds=1)  # missed the delete event: the next reconcile finds no loop
    assert ready_series(world) == {}


def test_a_thousand_loops_have_a_thousand_readiness_series() -> None:
    worlds = [World(f"many-{index}", spec(), T0) for index in range(1000)]
    for index, each in enumerate(worlds):
        each.prometheus.reachable = index % 2 == 0
        each.reconcile()
        each.prometheus.reachable = index % 2 == 1  # every loop changes its reason once
        each.reconcile(after_seconds=PROBE_INTERVAL)

    def series() -> list[float]:
        return [
            sample.value
            for family in REGISTRY.collect()
            if family.name == "feedbackloop_loop_ready"
            for sample in family.samples
            if sample.labels["loop"].startswith("many-")
        ]

    assert len(series()) == 1000
    assert sum(series()) == 500
    for each in worlds:
        each.reconciler.forget(each.namespace, each.name)
    assert series() == []
