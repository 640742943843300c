"""The operator's finalizer on retrain pods: set by the Job template, kept while the retrain is active,
released once the status holds the result, and swept when a crash or a deleted loop left it behind."""

from __future__ import annotations

import copy

from test_reconcile import names, request_retrain, spec

from core_inputs import T0
from feedbackloop.adapters.kube import job_finished
from feedbackloop.api import RETRAIN_POD_FINALIZER
from feedbackloop.core.observations import HeldPod, JobState
from reconcile_fakes import World


def _world(name: str) -> World:
    return World(name, spec(), T0)


def test_the_job_template_puts_the_finalizer_on_every_retrain_pod() -> None:
    world = _world("finalizer-template")
    request_retrain(world)
    job = world.cluster.jobs[f"{world.name}-retrain-1"]
    assert job["spec"]["template"]["metadata"]["finalizers"] == [RETRAIN_POD_FINALIZER]
    # Only the pods: the Job itself is left to its TTL and the garbage collector.
    assert "finalizers" not in job["metadata"]


def test_the_pod_is_held_while_the_retrain_runs_and_released_after_the_status_records_the_result() -> None:
    world = _world("finalizer-release")
    request_retrain(world)
    job = f"{world.name}-retrain-1"
    world.reconcile(after_seconds=1)
    assert [pod.job for pod in world.cluster.held_pods.values()] == [job]
    assert "release_pod" not in names(world.last_calls)

    world.cluster.job_states[job] = JobState.SUCCEEDED
    calls = names(world.reconcile(after_seconds=1))
    assert world.status["candidateModel"]["job"] == job
    assert world.cluster.held_pods == {}
    # The result is durable before the report it came from may go.
    assert calls.index("patch_loop_status") < calls.index("release_pod")


def test_a_job_gone_before_it_finished_ends_the_retrain_and_releases_its_pods() -> None:
    world = _world("finalizer-missing")
    request_retrain(world)
    job = f"{world.name}-retrain-1"
    world.cluster.job_states[job] = JobState.MISSING
    world.reconcile(after_seconds=1)
    assert world.status["history"][-1]["reason"] == "RetrainJobMissing"
    assert world.cluster.held_pods == {}


def test_a_failing_release_fails_nothing_and_leaves_the_pod_to_the_sweep() -> None:
    world = _world("finalizer-release-fails")
    request_retrain(world)
    job = f"{world.name}-retrain-1"
    world.cluster.job_states[job] = JobState.SUCCEEDED
    world.cluster.failing.add("release_pod")
    world.reconcile(after_seconds=1)
    assert world.status["candidateModel"]["job"] == job
    assert list(world.cluster.held_pods) == [f"{job}-pod"]

    world.cluster.failing.clear()
    assert world.reconciler.sweep_retrain_pods() == 1
    assert world.cluster.held_pods == {}


def test_the_sweep_keeps_active_retrains_and_live_loops_of_other_shards_and_releases_the_rest() -> None:
    world = _world("finalizer-sweep")
    request_retrain(world)  # this loop's retrain is active: its pod stays
    world.cluster.loops[("ml", "other-shard")] = {"metadata": {"name": "other-shard", "uid": "uid-other"}}
    pods = {
        "ended": HeldPod("ml", "ended", world.name, f"uid-{world.name}", f"{world.name}-retrain-0"),
        "other-shard": HeldPod("ml", "other-shard", "other-shard", "uid-other", "other-shard-retrain-1"),
        "deleted-loop": HeldPod("ml", "deleted-loop", "gone", "uid-gone", "gone-retrain-1"),
        "replaced-loop": HeldPod("ml", "replaced-loop", "other-shard", "uid-old", "other-shard-retrain-1"),
    }
    world.cluster.held_pods.update(copy.deepcopy(pods))
    assert world.reconciler.sweep_retrain_pods() == 3
    assert set(world.cluster.held_pods) == {"other-shard", f"{world.name}-retrain-1-pod"}


def test_the_sweep_does_nothing_without_the_lease() -> None:
    world = _world("finalizer-sweep-follower")
    world.cluster.held_pods["stale"] = HeldPod("ml", "stale", "gone", "uid-gone", "gone-retrain-1")
    world.reconciler.may_write = lambda: False
    assert world.reconciler.sweep_retrain_pods() == 0
    assert list(world.cluster.held_pods) == ["stale"]


def test_a_deleted_loop_releases_its_pods_but_one_moved_to_another_shard_does_not() -> None:
    world = _world("finalizer-forget")
    request_retrain(world)
    pod = f"{world.name}-retrain-1-pod"

    world.reconciler.forget(world.namespace, world.name, f"uid-{world.name}")  # relabelled: it still exists
    assert list(world.cluster.held_pods) == [pod]

    del world.cluster.loops[(world.namespace, world.name)]
    world.reconciler.forget(world.namespace, world.name, f"uid-{world.name}")
    assert world.cluster.held_pods == {}


def test_a_loop_being_deleted_releases_its_pods_on_its_last_reconcile() -> None:
    world = _world("finalizer-deleting")
    request_retrain(world)
    world.body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    world.body["metadata"]["finalizers"] = ["example.com/someone-else"]
    world.cluster.bump(world.namespace, world.name)
    world.reconcile(after_seconds=1)
    assert world.cluster.held_pods == {}


def test_a_failing_list_while_forgetting_a_loop_is_logged_not_raised() -> None:
    world = _world("finalizer-forget-fails")
    request_retrain(world)
    del world.cluster.loops[(world.namespace, world.name)]
    world.cluster.failing.add("held_retrain_pods")
    world.reconciler.forget(world.namespace, world.name, f"uid-{world.name}")  # raises nothing
    assert len(world.cluster.held_pods) == 1


def test_a_job_marked_to_fail_is_finished_while_its_held_pods_still_terminate() -> None:
    # Kubernetes adds Failed only once the pods are gone; our finalizer may hold one, so FailureTarget counts.
    assert job_finished([("FailureTarget", "True")])
    assert job_finished([("Complete", "True")])
    assert not job_finished([("FailureTarget", "False"), ("Suspended", "True")])
