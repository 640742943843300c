"""kopf handlers: index what the watch delivers and queue it; the work queue hands each loop to the
Reconciler at the time it asked for. No logic lives here."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import kopf
from prometheus_client import start_http_server

from feedbackloop.adapters.artifacts import ArtifactStore, VerifiedVersions, s3_client
from feedbackloop.adapters.kube import (
    ApiFailureError,
    KubeAdapter,
    StaleWriteError,
    job_finished,
    load_kube_config,
)
from feedbackloop.adapters.prometheus import PrometheusAdapter
from feedbackloop.api import (
    ANNOTATION_PREFIX,
    COMPONENT_RETRAIN,
    GROUP,
    LABEL_COMPONENT,
    LABEL_LOOP,
    PLURAL,
    VERSION,
)
from feedbackloop.config import load_config, shard_selector
from feedbackloop.index import LoopIndex, LoopKey
from feedbackloop.leadership import AlwaysLeader, LeaderElector
from feedbackloop.metrics import RECONCILE_ERRORS
from feedbackloop.reconcile import NotLeaderError, Reconciled, Reconciler
from feedbackloop.workqueue import WorkQueue

log = logging.getLogger(__name__)
_RETRY_DELAY = 15  # after a failed dependency call
_WORKERS = 8  # reconciles at once; each waits mostly on HTTP
_POD_SWEEP_SECONDS = 300  # the first sweep after start as well: by then the index holds every loop
_STALE_RETRY_DELAY = 0.2  # after a write that met a newer object: read again almost at once
# Read at import, like kopf's own handler options: the loops this replica owns.
SHARD = shard_selector()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = load_config()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # Known kopf stalls: a silently dead watch. Bound every watch and request, and restart quiet ones.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    # A silently dead watch (no RST, no bookmark) restarts after this; the API server bookmarks every ~60 s.
    settings.watching.inactivity_timeout = config.watch_inactivity_seconds
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.posting.enabled = False  # events are ours: one per condition transition
    # Our resources are known at start: no CRD or namespace watching, so RBAC needs no cluster-wide reads.
    settings.scanning.disabled = True
    # Filtered by the API server: a shard never receives other shards' loops, nor the operator anyone's Jobs.
    if config.shard.label_selector:
        settings.watching.label_selectors[GROUP, PLURAL] = config.shard.label_selector
    settings.watching.label_selectors["batch", "jobs"] = f"{LABEL_COMPONENT}={COMPONENT_RETRAIN}"

    load_kube_config()
    cluster = KubeAdapter()
    index = LoopIndex()
    reconciler = Reconciler(
        cluster=cluster,
        prometheus=PrometheusAdapter(
            failure_threshold=config.prometheus_failure_threshold,
            cool_down_seconds=config.prometheus_cool_down_seconds,
            concurrency_per_url=config.prometheus_concurrency,
        ),
        # A rollback-to pending through a long retrain is verified once, not every tick.
        artifacts=ArtifactStore(s3_client(config.s3_endpoint_url, config.s3_region), VerifiedVersions()),
        policy=config.policy,
        max_concurrent_retrains=config.max_concurrent_retrains,
        namespaces=config.namespaces,
        failpoint=config.failpoint,
        budget_seconds=config.reconcile_budget_seconds,
        index=index,
    )
    executor = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="reconcile")
    queue = WorkQueue(lambda key: _run(memo, key), workers=_WORKERS)

    def elected() -> None:
        for key in index.loop_keys():
            queue.add(key)

    leader: LeaderElector | AlwaysLeader = AlwaysLeader()
    if config.leader_election:
        leader = LeaderElector(
            cluster, config.lease_namespace, config.lease_name, config.lease, on_elected=elected
        )
    reconciler.may_write = leader.is_leader
    memo.update(
        reconciler=reconciler, index=index, queue=queue, executor=executor, leader=leader, last_reconcile=None
    )
    memo.tasks = [
        asyncio.create_task(queue.run_forever()),
        asyncio.create_task(leader.run_forever()),
        asyncio.create_task(_sweep_forever(memo)),
    ]
    if config.metrics_port:
        start_http_server(config.metrics_port)
    log.info(
        "feedbackloop operator configured: images=%s max_concurrent_retrains=%d namespaces=%s tick=%ss"
        " prometheus=%s buckets=%s shard=%s lease=%s",
        ",".join(config.trainer_images),
        config.max_concurrent_retrains,
        ",".join(config.namespaces) or "<cluster>",
        config.tick_seconds,
        ",".join(config.prometheus_urls) or "<none allowed>",
        ",".join(config.artifact_buckets) or "<none allowed>",
        config.shard,
        f"{config.lease_namespace}/{config.lease_name} as {leader.identity}"
        if config.leader_election
        else "off",
    )


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    for task in memo.get("tasks", []):
        task.cancel()
    if (leader := memo.get("leader")) is not None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, leader.release)
        except Exception as err:  # the standby then waits out the lease instead
            log.warning("cannot release the lease: %s", err)
    executor = memo.get("executor")
    if executor is not None:
        executor.shutdown(wait=False, cancel_futures=True)


async def _sweep_forever(memo: Any) -> None:
    """Now and then, release retrain pods that nothing waits on (a crash can leave our finalizer behind)."""
    running = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(_POD_SWEEP_SECONDS)
        try:
            released = await running.run_in_executor(memo.executor, memo.reconciler.sweep_retrain_pods)
        except ApiFailureError as err:
            log.warning("retrain pod sweep failed: %s; again in %ss", err, _POD_SWEEP_SECONDS)
            continue
        if released:
            log.info("retrain pod sweep released %d pods", released)


async def _run(memo: Any, key: LoopKey) -> float | None:
    """Reconcile one loop in a worker thread; the monotonic time it wants to run again, or None."""
    if not memo.leader.is_leader():
        return None  # the leader does the work; once elected, every indexed loop is queued again
    running = asyncio.get_running_loop()
    try:
        reconciled = await running.run_in_executor(memo.executor, _reconcile, memo, key)
    except StaleWriteError:
        return time.monotonic() + _STALE_RETRY_DELAY
    except NotLeaderError:
        return None
    except ApiFailureError:
        return time.monotonic() + _RETRY_DELAY
    memo.last_reconcile = datetime.now(UTC)
    if reconciled.next_at is None:
        return None
    return time.monotonic() + max(0.0, (reconciled.next_at - datetime.now(UTC)).total_seconds())


def _reconcile(memo: Any, key: LoopKey) -> Reconciled:
    reconciler: Reconciler = memo.reconciler
    namespace, name = key
    try:
        return reconciler.reconcile(namespace, name)
    except StaleWriteError:
        raise
    except ApiFailureError as err:
        RECONCILE_ERRORS.labels("forbidden" if err.forbidden else "kubernetes").inc()
        reconciler.report_failure(namespace, name, err)
        log.warning("reconcile of %s/%s failed: %s; again in %ss", namespace, name, err, _RETRY_DELAY)
        raise


@kopf.on.event(GROUP, VERSION, PLURAL)
async def loop_changed(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    """Every watch event: index the loop, and queue it unless the event is the echo of our own write."""
    if memo.get("index") is None:
        return
    body: Mapping[str, Any] = event["object"]
    meta = body["metadata"]
    key: LoopKey = (meta["namespace"], meta["name"])
    if event["type"] == "DELETED" or not SHARD.matches(meta.get("labels")):
        # Deleted, or relabelled out of this shard (the filtered watch reports that as DELETED too).
        memo.index.remove(key)
        memo.queue.forget(key)
        uid = meta.get("uid")
        await asyncio.get_running_loop().run_in_executor(memo.executor, memo.reconciler.forget, *key, uid)
        return
    memo.index.put(body)
    if not memo.reconciler.is_own_write(body):
        memo.queue.add(key)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_COMPONENT: COMPONENT_RETRAIN})
async def retrain_job_changed(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    """Fast path: a retrain Job finished, so its loop need not wait for the next tick."""
    job: Mapping[str, Any] = event["object"]
    conditions = (job.get("status") or {}).get("conditions") or []
    loop = (job["metadata"].get("labels") or {}).get(LABEL_LOOP)
    key = (job["metadata"]["namespace"], loop) if loop else None
    finished = job_finished((c.get("type"), c.get("status")) for c in conditions)
    if finished and key is not None and memo.get("index") is not None and key in memo.index:
        memo.queue.add(key)


# Async, so it runs in the event loop: liveness never waits for a worker thread behind reconciles.
@kopf.on.probe(id="last_reconcile")
async def last_reconcile(memo: Any, **_: Any) -> str | None:
    value: datetime | None = memo.get("last_reconcile")
    return value.isoformat() if value else None


@kopf.on.probe(id="leader")
async def is_leader(memo: Any, **_: Any) -> bool | None:
    leader = memo.get("leader")
    return leader.is_leader() if leader is not None else None


@kopf.on.probe(id="loops")
async def loops(memo: Any, **_: Any) -> dict[str, int] | None:
    if memo.get("index") is None:
        return None
    return {"indexed": len(memo.index), "scheduled": memo.queue.scheduled()}
