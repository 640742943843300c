"""Operator-wide settings, read from the environment once at start-up and validated there."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from feedbackloop import __version__
from feedbackloop.core.allowlist import ANY, url_problem
from feedbackloop.core.lease import LeaseTimings
from feedbackloop.core.loop import DEFAULT_CREDENTIALS_SECRET_PREFIX, OperatorPolicy
from feedbackloop.core.shard import SelectorError, ShardSelector, parse_selector
from feedbackloop.failpoints import FAILPOINT_ALIASES, Failpoint

DEFAULT_TRAINER_IMAGE = f"feedbackloop-operator:{__version__}"
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SECRET_PREFIX = re.compile(r"^[a-z0-9.-]{0,200}$")  # the start of a Secret's DNS-1123 name
_METADATA_KEY_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,252}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # the CRD's spec.artifacts.bucket pattern


class ConfigError(ValueError):
    """A setting is malformed; the message names the variable."""


@dataclass(frozen=True)
class OperatorConfig:
    trainer_images: tuple[str, ...]
    """FBL_TRAINER_IMAGES: comma-separated allow-list; the first is the default trainer image."""
    max_concurrent_retrains: int
    """FBL_MAX_CONCURRENT_RETRAINS: operator-wide cap on running retrain Jobs."""
    s3_endpoint_url: str | None
    """FBL_S3_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3): the artifact store; None means AWS S3."""
    s3_region: str
    """FBL_S3_REGION (or AWS_DEFAULT_REGION)."""
    namespaces: tuple[str, ...]
    """FBL_WATCH_NAMESPACES: comma-separated; empty watches the whole cluster."""
    tick_seconds: float
    """FBL_TICK_SECONDS: how often each loop is reconciled; evaluations follow spec.monitoring.interval."""
    metrics_port: int
    """FBL_METRICS_PORT: the operator's own /metrics; 0 turns it off."""
    health_endpoint: str
    """FBL_HEALTH_ENDPOINT: kopf's liveness endpoint URL."""
    failpoint: Failpoint | None = None
    """FBL_FAILPOINT: fault injection for tests only: the process exits (137) at that point."""
    credentials_secret_prefix: str = DEFAULT_CREDENTIALS_SECRET_PREFIX
    """FBL_CREDENTIALS_SECRET_PREFIX: a loop's credentialsSecret must start with it; empty allows any."""
    pod_metadata_prefixes: tuple[str, ...] = ()
    """FBL_POD_METADATA_PREFIXES: comma-separated key prefixes allowed in retrain.podLabels and
    podAnnotations; empty allows none."""
    prometheus_urls: tuple[str, ...] = ()
    """FBL_PROMETHEUS_URLS: comma-separated allowed Prometheus base URLs, the first the default;
    `*` allows any; empty allows none."""
    artifact_buckets: tuple[str, ...] = ()
    """FBL_ARTIFACT_BUCKETS: comma-separated allowed buckets; `*` allows any; empty allows none."""
    reconcile_budget_seconds: float = 20.0
    """FBL_RECONCILE_BUDGET_SECONDS: how long one reconcile waits for all its Prometheus answers together."""
    prometheus_failure_threshold: int = 3
    """FBL_PROMETHEUS_FAILURE_THRESHOLD: consecutive failures of one Prometheus URL that open its circuit."""
    prometheus_cool_down_seconds: float = 30.0
    """FBL_PROMETHEUS_COOL_DOWN_SECONDS: how long an open circuit refuses requests before one trial."""
    watch_inactivity_seconds: float = 70.0
    """FBL_WATCH_INACTIVITY_SECONDS: a watch that delivers nothing, not even a bookmark, for this long is
    restarted; the API server sends a bookmark about every minute."""
    prometheus_concurrency: int = 4
    """FBL_PROMETHEUS_CONCURRENCY: requests in flight to one Prometheus URL at most."""
    shard: ShardSelector = field(default_factory=ShardSelector)
    """FBL_SHARD_SELECTOR: the labels of the loops this replica owns (key=value,key!=value,key,!key)."""
    leader_election: bool = True
    """FBL_LEADER_ELECTION: take a Lease before writing; false only for a single replica."""
    lease_namespace: str = "default"
    """FBL_LEASE_NAMESPACE (or POD_NAMESPACE): where the Lease lives."""
    lease_name: str = "feedbackloop-operator"
    """FBL_LEASE_NAME: one Lease per shard; replicas of one shard share it."""
    lease: LeaseTimings = field(default_factory=LeaseTimings)
    """FBL_LEASE_DURATION_SECONDS, FBL_LEASE_RENEW_DEADLINE_SECONDS, FBL_LEASE_RETRY_SECONDS."""
    job_create_backoff_seconds: float = 10.0
    """FBL_JOB_CREATE_BACKOFF_SECONDS: the wait after a failed retrain Job create, doubled with each failed
    try up to 5 minutes."""
    probe_interval_seconds: float = 60.0
    """FBL_PROBE_INTERVAL_SECONDS: how often a Ready loop re-checks its dependencies and reads its Deployment
    (1 to 1.5 times this, per loop); it bounds how long an out-of-band MODEL_URI change goes unnoticed."""

    @property
    def policy(self) -> OperatorPolicy:
        return OperatorPolicy(
            trainer_images=self.trainer_images,
            s3_endpoint_url=self.s3_endpoint_url,
            s3_region=self.s3_region,
            credentials_secret_prefix=self.credentials_secret_prefix,
            pod_metadata_prefixes=self.pod_metadata_prefixes,
            prometheus_urls=self.prometheus_urls,
            artifact_buckets=self.artifact_buckets,
            tick=timedelta(seconds=self.tick_seconds),
            job_create_backoff=timedelta(seconds=self.job_create_backoff_seconds),
            probe_interval=timedelta(seconds=self.probe_interval_seconds),
        )


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} must be between {low} and {high}")
    return value


def _list(env: Mapping[str, str], name: str, default: str = "") -> tuple[str, ...]:
    return tuple(item.strip() for item in env.get(name, default).split(",") if item.strip())


def _prometheus_urls(env: Mapping[str, str]) -> tuple[str, ...]:
    urls = _list(env, "FBL_PROMETHEUS_URLS")
    for position, url in enumerate(urls, start=1):
        # The entry is not repeated: it may carry a password.
        if url != ANY and (problem := url_problem(url)):
            raise ConfigError(f"FBL_PROMETHEUS_URLS: entry {position} {problem}")
    return urls


def _failpoint(env: Mapping[str, str]) -> Failpoint | None:
    value = env.get("FBL_FAILPOINT") or None
    if value is None:
        return None
    if value in FAILPOINT_ALIASES:
        return FAILPOINT_ALIASES[value]
    try:
        return Failpoint(value)
    except ValueError:
        known = ", ".join(point.value for point in Failpoint)
        raise ConfigError(f"FBL_FAILPOINT: {value!r} is not one of {known}") from None


def _artifact_buckets(env: Mapping[str, str]) -> tuple[str, ...]:
    buckets = _list(env, "FBL_ARTIFACT_BUCKETS")
    for bucket in buckets:
        if bucket != ANY and not _BUCKET.match(bucket):
            raise ConfigError(f"FBL_ARTIFACT_BUCKETS: {bucket!r} is not a bucket name")
    return buckets


def _credentials_secret_prefix(env: Mapping[str, str]) -> str:
    prefix = env.get("FBL_CREDENTIALS_SECRET_PREFIX", DEFAULT_CREDENTIALS_SECRET_PREFIX).strip()
    if not _SECRET_PREFIX.match(prefix):
        raise ConfigError(f"FBL_CREDENTIALS_SECRET_PREFIX={prefix!r} is not the start of a Secret name")
    return prefix


def _pod_metadata_prefixes(env: Mapping[str, str]) -> tuple[str, ...]:
    prefixes = _list(env, "FBL_POD_METADATA_PREFIXES")
    for prefix in prefixes:
        if not _METADATA_KEY_PREFIX.match(prefix):
            raise ConfigError(f"FBL_POD_METADATA_PREFIXES: {prefix!r} is not the start of a label key")
    return prefixes


def _seconds(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name, f"{default:g}")
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not low <= value <= high:  # also refuses nan
        raise ConfigError(f"{name}={value:g} must be between {low:g} and {high:g}")
    return value


def tick_seconds(env: Mapping[str, str] | None = None) -> float:
    """FBL_TICK_SECONDS alone: kopf fixes a timer's interval when the handlers module is imported."""
    env = os.environ if env is None else env
    raw = env.get("FBL_TICK_SECONDS", "5")
    try:
        tick = float(raw)
    except ValueError:
        raise ConfigError(f"FBL_TICK_SECONDS={raw!r} is not a number") from None
    if not 0.5 <= tick <= 300:
        raise ConfigError(f"FBL_TICK_SECONDS={tick:g} must be between 0.5 and 300")
    return tick


def shard_selector(env: Mapping[str, str] | None = None) -> ShardSelector:
    """FBL_SHARD_SELECTOR alone: the handlers read it when they are imported."""
    return _shard(os.environ if env is None else env)


def _shard(env: Mapping[str, str]) -> ShardSelector:
    try:
        return parse_selector(env.get("FBL_SHARD_SELECTOR", ""))
    except SelectorError as err:
        raise ConfigError(f"FBL_SHARD_SELECTOR: {err}") from None


def _lease(env: Mapping[str, str]) -> LeaseTimings:
    timings = LeaseTimings(
        duration=timedelta(seconds=_seconds(env, "FBL_LEASE_DURATION_SECONDS", 15, 2, 300)),
        renew_deadline=timedelta(seconds=_seconds(env, "FBL_LEASE_RENEW_DEADLINE_SECONDS", 10, 1, 299)),
        retry_period=timedelta(seconds=_seconds(env, "FBL_LEASE_RETRY_SECONDS", 2, 0.2, 60)),
    )
    if problem := timings.problem():
        raise ConfigError(f"FBL_LEASE_*: {problem}")
    return timings


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "true" if default else "false").strip().lower()
    if raw not in ("true", "false"):
        raise ConfigError(f"{name}={raw!r} must be true or false")
    return raw == "true"


def _name(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name) or default
    if not _NAMESPACE.match(value):
        raise ConfigError(f"{name}={value!r} is not a DNS-1123 label")
    return value


def load_config(env: Mapping[str, str] | None = None) -> OperatorConfig:
    env = os.environ if env is None else env
    images = _list(env, "FBL_TRAINER_IMAGES", DEFAULT_TRAINER_IMAGE)
    for image in images:
        if not _IMAGE.match(image):
            raise ConfigError(f"FBL_TRAINER_IMAGES: {image!r} is not an image reference")
    if not images:
        raise ConfigError("FBL_TRAINER_IMAGES must name at least one image")
    namespaces = _list(env, "FBL_WATCH_NAMESPACES")
    for namespace in namespaces:
        if not _NAMESPACE.match(namespace):
            raise ConfigError(f"FBL_WATCH_NAMESPACES: {namespace!r} is not a namespace name")
    endpoint = env.get("FBL_S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL_S3") or None
    if endpoint is not None and not re.match(r"^https?://", endpoint):
        raise ConfigError(f"FBL_S3_ENDPOINT_URL={endpoint!r} must be an http(s) URL")
    return OperatorConfig(
        trainer_images=images,
        max_concurrent_retrains=_int(env, "FBL_MAX_CONCURRENT_RETRAINS", 2, 1, 1000),
        s3_endpoint_url=endpoint,
        s3_region=env.get("FBL_S3_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        namespaces=namespaces,
        tick_seconds=tick_seconds(env),
        metrics_port=_int(env, "FBL_METRICS_PORT", 8080, 0, 65535),
        health_endpoint=env.get("FBL_HEALTH_ENDPOINT", "http://0.0.0.0:8081/healthz"),
        failpoint=_failpoint(env),
        credentials_secret_prefix=_credentials_secret_prefix(env),
        pod_metadata_prefixes=_pod_metadata_prefixes(env),
        prometheus_urls=_prometheus_urls(env),
        artifact_buckets=_artifact_buckets(env),
        reconcile_budget_seconds=_seconds(env, "FBL_RECONCILE_BUDGET_SECONDS", 20, 1, 300),
        prometheus_failure_threshold=_int(env, "FBL_PROMETHEUS_FAILURE_THRESHOLD", 3, 1, 100),
        prometheus_cool_down_seconds=_seconds(env, "FBL_PROMETHEUS_COOL_DOWN_SECONDS", 30, 1, 3600),
        watch_inactivity_seconds=_seconds(env, "FBL_WATCH_INACTIVITY_SECONDS", 70, 10, 3600),
        prometheus_concurrency=_int(env, "FBL_PROMETHEUS_CONCURRENCY", 4, 1, 64),
        shard=_shard(env),
        leader_election=_flag(env, "FBL_LEADER_ELECTION", True),
        lease_namespace=_name(env, "FBL_LEASE_NAMESPACE", env.get("POD_NAMESPACE") or "default"),
        lease_name=_name(env, "FBL_LEASE_NAME", "feedbackloop-operator"),
        lease=_lease(env),
        job_create_backoff_seconds=_seconds(env, "FBL_JOB_CREATE_BACKOFF_SECONDS", 10, 0.1, 300),
        probe_interval_seconds=_seconds(env, "FBL_PROBE_INTERVAL_SECONDS", 60, 1, 3600),
    )
