"""The values users write into the request annotations (retrain-requested, promote, rollback-to): untrusted
text of any length up to the API server's limit for all annotations together (256 KiB), so the status holds
one verbatim only when it fits the field the CRD declares for it."""

from __future__ import annotations

import enum
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


class Pending(enum.Enum):
    """Which of promote and rollback-to to handle now."""

    NONE = enum.auto()
    PROMOTE = enum.auto()
    ROLLBACK = enum.auto()
    CONFLICT = enum.auto()  # both new in the same way: which one was meant cannot be told


def pending_request(
    promote: str | None,
    handled_promote: str | None,
    rollback: str | None,
    handled_rollback: str | None,
    token: str | None,
) -> Pending:
    """One requested-at token is one request. The two annotations share the token, so a new token makes an
    old value beside the new request look new too: when only one of the two has a new value, that one is
    the request; when both are new only by the token, or both have new values, neither is guessed."""
    promote_due = bool(promote) and not is_handled(promote, handled_promote, token)
    rollback_due = bool(rollback) and not is_handled(rollback, handled_rollback, token)
    if promote_due and rollback_due:
        promote_changed = not _same_value(promote, handled_promote)
        if promote_changed != (not _same_value(rollback, handled_rollback)):
            return Pending.PROMOTE if promote_changed else Pending.ROLLBACK
        return Pending.CONFLICT
    if promote_due:
        return Pending.PROMOTE
    return Pending.ROLLBACK if rollback_due else Pending.NONE


def _same_value(value: str | None, handled: str | None) -> bool:
    """The value handled before, under whatever token (a digest record cannot tell: then not the same)."""
    return bool(value) and handled is not None and (handled == value or handled.startswith(f"{value}@"))
