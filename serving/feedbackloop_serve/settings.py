"""The server's environment, parsed and checked once; errors name the variable."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from feedbackloop.api import (
    CANDIDATE_MODE_SHADOW,
    CANDIDATE_MODE_SPLIT,
    ENV_CANDIDATE_MODE,
    ENV_CANDIDATE_MODEL_SHA256,
    ENV_CANDIDATE_MODEL_URI,
    ENV_CANDIDATE_REQUEST_KEY,
    ENV_CANDIDATE_WEIGHT,
    ENV_MODEL_SHA256,
    ENV_MODEL_URI,
)
from feedbackloop.core import contract
from feedbackloop_serve.auth import TokenError, read_token
from feedbackloop_serve.ids import IdKeyError, parse_keys

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HEADER = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_CANDIDATE_ENV = (
    ENV_CANDIDATE_MODE,
    ENV_CANDIDATE_MODEL_SHA256,
    ENV_CANDIDATE_WEIGHT,
    ENV_CANDIDATE_REQUEST_KEY,
)


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class CandidateSettings:
    """A candidate beside the champion: scored on every request (shadow) or answering a share (split)."""

    uri: str
    sha256: str
    mode: str
    weight: float  # split only: the share of requests it answers
    request_key: str | None  # split only: the header whose value decides, so one user sees one model


@dataclass(frozen=True)
class ServeSettings:
    model_uri: str
    model_sha256: str
    model_name: str | None
    feedback_uri: str | None
    redis_url: str | None
    id_keys: dict[str, bytes] | None  # None: a process-local key (no shared store)
    host: str
    port: int
    prediction_ttl_seconds: int
    drift_window: int
    scoring_threads: int
    feedback_flush_rows: int
    feedback_flush_seconds: float
    feedback_buffer_rows: int
    claim_idle_seconds: float
    drain_seconds: float
    shutdown_flush_seconds: float
    max_body_bytes: int
    token_file: Path | None  # bearer-token auth on /predict and /feedback when set
    s3_endpoint_url: str | None
    s3_region: str
    source: str
    candidate: CandidateSettings | None = None

    def __repr__(self) -> str:
        return f"ServeSettings(model_uri={self.model_uri!r}, …)"  # never the keys or the store's password


def _number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw} must be at least {minimum:g}")
    return value


def _token_file(env: Mapping[str, str]) -> Path | None:
    raw = env.get("FBL_SERVE_TOKEN_FILE", "").strip()
    if not raw:
        return None
    try:
        read_token(Path(raw))
    except TokenError as err:
        raise SettingsError(f"FBL_SERVE_TOKEN_FILE: {err}") from None
    return Path(raw)


def _candidate(env: Mapping[str, str]) -> CandidateSettings | None:
    uri = env.get(ENV_CANDIDATE_MODEL_URI, "").strip()
    if not uri:
        stray = [name for name in _CANDIDATE_ENV if env.get(name, "").strip()]
        if stray:
            raise SettingsError(f"{stray[0]} is set without {ENV_CANDIDATE_MODEL_URI}")
        return None
    try:
        contract.split_s3_uri(uri)
    except ValueError:
        raise SettingsError(f"{ENV_CANDIDATE_MODEL_URI}={uri!r} is not an s3://bucket/prefix/ URI") from None
    sha256 = env.get(ENV_CANDIDATE_MODEL_SHA256, "").strip().lower()
    if not _SHA256.match(sha256):
        raise SettingsError(f"{ENV_CANDIDATE_MODEL_SHA256} must be 64 hex characters")
    mode = env.get(ENV_CANDIDATE_MODE, "").strip()
    if mode not in (CANDIDATE_MODE_SHADOW, CANDIDATE_MODE_SPLIT):
        raise SettingsError(f"{ENV_CANDIDATE_MODE}={mode!r} must be shadow or split")
    weight_text = env.get(ENV_CANDIDATE_WEIGHT, "").strip()
    key = env.get(ENV_CANDIDATE_REQUEST_KEY, "").strip() or None
    if mode == CANDIDATE_MODE_SHADOW:
        for name, value in ((ENV_CANDIDATE_WEIGHT, weight_text), (ENV_CANDIDATE_REQUEST_KEY, key)):
            if value:
                raise SettingsError(f"{name} applies to {ENV_CANDIDATE_MODE}=split only")
        return CandidateSettings(uri, sha256, mode, 0.0, None)
    try:
        weight = float(weight_text)
    except ValueError:
        weight = math.nan
    if not 0 < weight < 1:
        raise SettingsError(
            f"{ENV_CANDIDATE_WEIGHT}={weight_text!r} must be a number between 0 and 1 for a split"
        )
    if key is not None and not _HEADER.match(key):
        raise SettingsError(f"{ENV_CANDIDATE_REQUEST_KEY}={key!r} is not an HTTP header name")
    return CandidateSettings(uri, sha256, mode, weight, key.lower() if key else None)


def load_settings(env: Mapping[str, str] | None = None) -> ServeSettings:
    env = os.environ if env is None else env
    uri = env.get(ENV_MODEL_URI, "").strip()
    sha256 = env.get(ENV_MODEL_SHA256, "").strip().lower()
    if not uri:
        raise SettingsError(f"{ENV_MODEL_URI} is not set")
    if not _SHA256.match(sha256):
        raise SettingsError(f"{ENV_MODEL_SHA256} must be 64 hex characters")
    feedback = env.get("FEEDBACK_URI", "").strip() or None
    for name, value in ((ENV_MODEL_URI, uri), ("FEEDBACK_URI", feedback)):
        if value is not None:
            try:
                contract.split_s3_uri(value)
            except ValueError:
                raise SettingsError(f"{name}={value!r} is not an s3://bucket/prefix/ URI") from None
    if feedback is not None and not feedback.endswith("/"):
        feedback += "/"
    redis_url = env.get("FBL_REDIS_URL", "").strip() or None
    if redis_url is not None and not re.match(r"^(redis|rediss|unix)://", redis_url):
        raise SettingsError("FBL_REDIS_URL must be a redis://, rediss:// or unix:// URL")
    keys_text = env.get("FBL_PREDICTION_ID_KEYS", "").strip()
    if redis_url is not None and not keys_text:
        raise SettingsError(
            "FBL_PREDICTION_ID_KEYS is required with FBL_REDIS_URL: every replica must check ids"
        )
    try:
        keys = parse_keys(keys_text) if keys_text else None
    except IdKeyError as err:
        raise SettingsError(f"FBL_PREDICTION_ID_KEYS: {err}") from None
    return ServeSettings(
        model_uri=uri,
        model_sha256=sha256,
        model_name=env.get("MODEL_NAME", "").strip() or None,
        feedback_uri=feedback,
        redis_url=redis_url,
        id_keys=keys,
        host=env.get("HOST", "0.0.0.0"),  # noqa: S104 - a server in a pod listens on its pod IP
        port=int(_number(env, "PORT", 8080, 1)),
        prediction_ttl_seconds=int(_number(env, "FBL_PREDICTION_TTL_SECONDS", 3600, 1)),
        drift_window=int(_number(env, "FBL_DRIFT_WINDOW", 1000, 1)),
        scoring_threads=int(_number(env, "FBL_SCORING_THREADS", min(4, os.cpu_count() or 1), 1)),
        feedback_flush_rows=int(_number(env, "FBL_FEEDBACK_FLUSH_ROWS", 1000, 1)),
        feedback_flush_seconds=_number(env, "FBL_FEEDBACK_FLUSH_SECONDS", 60, 0.1),
        feedback_buffer_rows=int(_number(env, "FBL_FEEDBACK_BUFFER_ROWS", 1_000_000, 1)),
        claim_idle_seconds=_number(env, "FBL_FEEDBACK_CLAIM_IDLE_SECONDS", 60, 1),
        drain_seconds=_number(env, "FBL_DRAIN_SECONDS", 5, 0),
        shutdown_flush_seconds=_number(env, "FBL_SHUTDOWN_FLUSH_SECONDS", 20, 0),
        max_body_bytes=int(_number(env, "FBL_MAX_BODY_BYTES", 32 * 1024 * 1024, 1024)),
        token_file=_token_file(env),
        s3_endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("FBL_S3_ENDPOINT_URL") or None,
        s3_region=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1",
        source=env.get("POD_NAME") or env.get("HOSTNAME") or "server",
        candidate=_candidate(env),
    )
