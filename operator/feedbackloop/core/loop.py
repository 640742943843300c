"""The inputs of a decision besides what was observed: the loop as read from the API, and operator policy."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from feedbackloop.core.spec import FeedbackLoopSpec
from feedbackloop.core.status import FeedbackLoopStatus

DEFAULT_CREDENTIALS_SECRET_PREFIX = "feedbackloop-"  # noqa: S105 - the start of a name, not a secret


@dataclass(frozen=True)
class LoopRef:
    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class OperatorPolicy:
    """Operator-wide settings that shape decisions (from feedbackloop.config)."""

    trainer_images: tuple[str, ...]
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    # A loop may name only a Secret whose name starts with this: the name is the Secret's opt-in.
    credentials_secret_prefix: str = DEFAULT_CREDENTIALS_SECRET_PREFIX
    # Keys of retrain.podLabels and podAnnotations must start with one of these; none by default.
    pod_metadata_prefixes: tuple[str, ...] = ()
    # Empty allows nothing; "*" allows any (core.allowlist).
    prometheus_urls: tuple[str, ...] = ()
    artifact_buckets: tuple[str, ...] = ()
    # How often a Ready loop re-checks Prometheus, its bucket and its Deployment (unready: every evaluation).
    probe_interval: timedelta = timedelta(seconds=60)
    # Status is written when something in it changes, and this often while only evaluation times move.
    heartbeat: timedelta = timedelta(minutes=10)
    # How often a loop with work in flight (a Job, a rollout, a waiting trigger) is looked at.
    tick: timedelta = timedelta(seconds=5)
    # The wait after a failed retrain Job create; it doubles with each failed try (core.retrain).
    job_create_backoff: timedelta = timedelta(seconds=10)


@dataclass(frozen=True)
class LoopState:
    ref: LoopRef
    generation: int
    created: datetime
    spec: FeedbackLoopSpec | None
    spec_error: str | None
    status: FeedbackLoopStatus
    rollback_request: str | None = None  # planning needs it to fetch that version's manifest
    promote_request: str | None = None  # one still to handle takes the rollback-to with it: nothing to fetch
    request_token: str | None = None  # feedbackloop.dev/requested-at: the same promote or rollback-to again
    last_probe: datetime | None = None  # when this process last probed the dependencies; None: never
