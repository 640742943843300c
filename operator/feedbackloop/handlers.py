"""kopf handlers: each one only names a loop and hands it to the Reconciler. No logic lives here."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from prometheus_client import start_http_server

from feedbackloop.adapters.artifacts import ArtifactStore, s3_client
from feedbackloop.adapters.kube import ApiFailureError, KubeAdapter, job_finished, load_kube_config
from feedbackloop.adapters.prometheus import PrometheusAdapter
from feedbackloop.api import (
    ANNOTATION_PREFIX,
    COMPONENT_RETRAIN,
    FINALIZER,
    GROUP,
    LABEL_COMPONENT,
    LABEL_LOOP,
    PLURAL,
    RETRAIN_REQUEST_ANNOTATION,
    VERSION,
)
from feedbackloop.config import load_config, tick_seconds
from feedbackloop.metrics import RECONCILE_ERRORS
from feedbackloop.reconcile import Reconciler

log = logging.getLogger(__name__)
# kopf fixes a timer's interval at import; the per-loop cadence is spec.monitoring.interval, checked in core.
TICK_SECONDS = tick_seconds()
_RETRY_DELAY = 15


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = load_config()
    # Our own annotation prefix and finalizer, so several kopf operators never share state.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = FINALIZER
    # Known kopf stalls: a silently dead watch. Bound every watch and request, and restart quiet ones.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.watching.inactivity_timeout = 600
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.posting.enabled = False  # events are ours: one per condition transition
    # Our resources are known at start: no CRD or namespace watching, so RBAC needs no cluster-wide reads.
    settings.scanning.disabled = True
    settings.execution.max_workers = 8

    load_kube_config()
    artifacts = ArtifactStore(s3_client(config.s3_endpoint_url, config.s3_region))
    memo.reconciler = Reconciler(
        cluster=KubeAdapter(),
        prometheus=PrometheusAdapter(
            failure_threshold=config.prometheus_failure_threshold,
            cool_down_seconds=config.prometheus_cool_down_seconds,
            concurrency_per_url=config.prometheus_concurrency,
        ),
        artifacts=artifacts,
        policy=config.policy,
        max_concurrent_retrains=config.max_concurrent_retrains,
        namespaces=config.namespaces,
        failpoint=config.failpoint,
        budget_seconds=config.reconcile_budget_seconds,
    )
    memo.last_reconcile = None
    if config.metrics_port:
        start_http_server(config.metrics_port)
    log.info(
        "feedbackloop operator configured: images=%s max_concurrent_retrains=%d namespaces=%s tick=%ss"
        " prometheus=%s buckets=%s",
        ",".join(config.trainer_images),
        config.max_concurrent_retrains,
        ",".join(config.namespaces) or "<cluster>",
        config.tick_seconds,
        ",".join(config.prometheus_urls) or "<none allowed>",
        ",".join(config.artifact_buckets) or "<none allowed>",
    )


def _reconcile(memo: Any, namespace: str | None, name: str) -> None:
    if namespace is None:  # FeedbackLoop is namespaced; kopf's signature is generic
        return
    reconciler: Reconciler = memo.reconciler
    try:
        reconciler.reconcile(namespace, name)
    except ApiFailureError as err:
        RECONCILE_ERRORS.labels("forbidden" if err.forbidden else "kubernetes").inc()
        reconciler.report_failure(namespace, name, err)
        raise kopf.TemporaryError(str(err), delay=_RETRY_DELAY) from err
    memo.last_reconcile = datetime.now(UTC)


@kopf.timer(GROUP, VERSION, PLURAL, interval=TICK_SECONDS, initial_delay=1)
def tick(name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    """The level-triggered backstop: every loop is reconciled on every tick."""
    _reconcile(memo, namespace, name)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@kopf.on.field(GROUP, VERSION, PLURAL, field=("metadata", "annotations", RETRAIN_REQUEST_ANNOTATION))
def changed(name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    """Fast path for spec edits and manual retrain requests."""
    _reconcile(memo, namespace, name)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def deleted(name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    if namespace is not None:
        memo.reconciler.forget(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_COMPONENT: COMPONENT_RETRAIN})
def retrain_job_changed(
    status: kopf.Status, labels: Mapping[str, str], namespace: str | None, memo: Any, **_: Any
) -> None:
    """Fast path: a retrain Job finished, so its loop need not wait for the next tick."""
    finished = job_finished((c.get("type"), c.get("status")) for c in status.get("conditions") or [])
    loop = labels.get(LABEL_LOOP)
    if finished and loop and memo.get("reconciler") is not None:
        _reconcile(memo, namespace, loop)


# Async, so it runs in the event loop: liveness never waits for a worker thread behind reconciles.
@kopf.on.probe(id="last_reconcile")
async def last_reconcile(memo: Any, **_: Any) -> str | None:
    value: datetime | None = memo.get("last_reconcile")
    return value.isoformat() if value else None
