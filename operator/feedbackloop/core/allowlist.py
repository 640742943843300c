"""The operator's allow-lists of Prometheus base URLs and artifact buckets: what a loop may make it reach.

A loop's Prometheus URL matches an allowed one when both normalize to the same scheme, host, port and path:
scheme and host are case-insensitive, a default port (80, 443) equals its absence, and trailing slashes do not
count. The path is compared literally (no percent-decoding, no dot segments resolved), so anything unusual
simply does not match. The request then goes to the allowed URL as the operator was given it, never to the
loop's spelling of it. `*` allows any URL (or bucket); it is never a default Prometheus.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

ANY = "*"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNPRINTABLE = re.compile(r"[\s\x00-\x1f\x7f\\]")


def url_problem(url: str) -> str | None:
    """Why `url` cannot be a Prometheus base URL, without repeating the URL (it may carry a password)."""
    if _UNPRINTABLE.search(url):
        return "must not contain whitespace, control characters or backslashes"
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS:
        return "must be an http:// or https:// URL"
    if "@" in parts.netloc:
        return "must not carry user info (user:pass@)"
    if "?" in url:
        return "must not have a query (?...)"
    if "#" in url:
        return "must not have a fragment (#...)"
    if not parts.hostname:
        return "must name a host"
    try:
        valid_port = parts.port != 0  # urlsplit checks the port only when it is read
    except ValueError:
        valid_port = False
    return None if valid_port else "has an invalid port"


def normalize_url(url: str) -> str | None:
    """scheme://host:port/path in one spelling, or None when `url` has a problem."""
    if url_problem(url) is not None:
        return None
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    return f"{parts.scheme}://{host}:{port}{parts.path.rstrip('/')}"


@dataclass(frozen=True)
class PrometheusChoice:
    """The allowed URL to query, or why there is none."""

    url: str | None
    refusal: str = ""


# Pure, and asked three times per reconcile with the same few URLs: parsing them cost a tenth of a reconcile.
@functools.lru_cache(maxsize=4096)
def choose_prometheus(requested: str | None, allowed: tuple[str, ...]) -> PrometheusChoice:
    """The URL the operator queries for a loop that asked for `requested` (None: the operator's default)."""
    field = "spec.prometheus.url"
    configured = [entry for entry in allowed if entry != ANY]
    if not requested:
        if not configured:
            return PrometheusChoice(None, f"{field} is not set and the operator has no default Prometheus")
        return PrometheusChoice(configured[0].rstrip("/"))
    if problem := url_problem(requested):
        return PrometheusChoice(None, f"{field} {problem}")
    wanted = normalize_url(requested)
    for entry in configured:
        if normalize_url(entry) == wanted:
            return PrometheusChoice(entry.rstrip("/"))
    if ANY in allowed:
        return PrometheusChoice(requested.rstrip("/"))
    return PrometheusChoice(None, f"{field} {requested} is not one of the operator's allowed Prometheus URLs")


def bucket_refusal(bucket: str, allowed: tuple[str, ...]) -> str | None:
    """Why the operator will not touch `bucket`; the same words whether it exists, is denied or is absent."""
    if bucket in allowed or ANY in allowed:
        return None
    return f"spec.artifacts.bucket {bucket} is not one of the operator's allowed buckets"
