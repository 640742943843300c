"""The server's environment, parsed and checked once; errors name the variable."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from feedbackloop.core import contract

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class ServeSettings:
    model_uri: str
    model_sha256: str
    model_name: str | None
    feedback_uri: str | None
    host: str
    port: int
    prediction_store_size: int
    prediction_ttl_seconds: float
    drift_window: int
    feedback_flush_rows: int
    feedback_flush_seconds: float
    feedback_buffer_rows: int
    shutdown_flush_seconds: float
    s3_endpoint_url: str | None
    s3_region: str
    source: str


def _number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw} must be at least {minimum:g}")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> ServeSettings:
    env = os.environ if env is None else env
    uri = env.get("MODEL_URI", "").strip()
    sha256 = env.get("MODEL_SHA256", "").strip().lower()
    if not uri:
        raise SettingsError("MODEL_URI is not set")
    if not _SHA256.match(sha256):
        raise SettingsError("MODEL_SHA256 must be 64 hex characters")
    feedback = env.get("FEEDBACK_URI", "").strip() or None
    for name, value in (("MODEL_URI", uri), ("FEEDBACK_URI", feedback)):
        if value is not None:
            try:
                contract.split_s3_uri(value)
            except ValueError:
                raise SettingsError(f"{name}={value!r} is not an s3://bucket/prefix/ URI") from None
    if feedback is not None and not feedback.endswith("/"):
        feedback += "/"
    return ServeSettings(
        model_uri=uri,
        model_sha256=sha256,
        model_name=env.get("MODEL_NAME", "").strip() or None,
        feedback_uri=feedback,
        host=env.get("HOST", "0.0.0.0"),  # noqa: S104 - a server in a pod listens on its pod IP
        port=int(_number(env, "PORT", 8080, 1)),
        prediction_store_size=int(_number(env, "FBL_PREDICTION_STORE_SIZE", 100_000, 1)),
        prediction_ttl_seconds=_number(env, "FBL_PREDICTION_TTL_SECONDS", 3600, 1),
        drift_window=int(_number(env, "FBL_DRIFT_WINDOW", 1000, 1)),
        feedback_flush_rows=int(_number(env, "FBL_FEEDBACK_FLUSH_ROWS", 1000, 1)),
        feedback_flush_seconds=_number(env, "FBL_FEEDBACK_FLUSH_SECONDS", 60, 0.1),
        feedback_buffer_rows=int(_number(env, "FBL_FEEDBACK_BUFFER_ROWS", 100_000, 1)),
        shutdown_flush_seconds=_number(env, "FBL_SHUTDOWN_FLUSH_SECONDS", 20, 0),
        s3_endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("FBL_S3_ENDPOINT_URL") or None,
        s3_region=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1",
        source=env.get("POD_NAME") or env.get("HOSTNAME") or "server",
    )
