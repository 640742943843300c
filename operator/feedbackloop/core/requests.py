"""The values users write into the request annotations (retrain-requested, promote, rollback-to): untrusted
text of any length up to the API server's limit for all annotations together (256 KiB), so the status holds
one verbatim only when it fits the field the CRD declares for it."""

from __future__ import annotations

import hashlib

HANDLED_REQUEST_LIMIT = 1024  # the CRD's maxLength of each status.handled*Request
DIGEST_PREFIX = "sha256:"
QUOTED_LIMIT = 64  # enough of a value to recognise it in a message


def request_id(value: str, token: str | None = None) -> str:
    """What status.handled*Request records for an annotation value (and the requested-at token beside it,
    which makes the same value a new request): the value itself when it fits, else its sha256. A digest, not
    a prefix: distinct values stay distinct, so each is still handled exactly once."""
    if token:
        value = f"{value}@{token}"
    encoded = value.encode("utf-8", "surrogatepass")
    # Bytes, not characters: the API server's "Too long" counts either way within this.
    if len(encoded) <= HANDLED_REQUEST_LIMIT and not value.startswith(DIGEST_PREFIX):
        return value
    return DIGEST_PREFIX + hashlib.sha256(encoded).hexdigest()


def is_handled(value: str | None, handled: str | None, token: str | None = None) -> bool:
    """No request, or the one status.handled*Request already records."""
    return not value or request_id(value, token) == handled


def quoted(value: str) -> str:
    """An annotation value for a condition or Event message, cut so the message stays within its field."""
    if len(value) <= QUOTED_LIMIT:
        return f"'{value}'"
    return f"'{value[:QUOTED_LIMIT]}…' ({len(value)} characters)"
