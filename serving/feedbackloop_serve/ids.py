"""Prediction ids that any replica can check: issued time and randomness, signed with HMAC-SHA256.

An id is `<key id>.<payload>.<tag>` in base64url: the payload holds the issue time (milliseconds) and 12
random bytes, the tag is the first 16 bytes of HMAC-SHA256 over key id and payload. The keys come from a
Secret; the first signs, every listed key verifies, so a key is rotated by listing the new one first for one
TTL.
A forged or tampered id fails the tag, an old one fails the TTL, and neither costs a store lookup. Only the
canonical base64url spelling is accepted, so one prediction never has two ids.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass

_PAYLOAD = struct.Struct(">Q12s")  # issued at (ms since the epoch), nonce
_TAG_BYTES = 16
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
MAX_ID_LENGTH = 64


class IdRefusal(enum.StrEnum):
    """Why a label's prediction id is refused before any store lookup (the `reason` of the metric)."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"  # forged, tampered, or signed with a key no longer listed
    EXPIRED = "expired"


@dataclass(frozen=True)
class CheckedId:
    issued_ms: int


class IdKeyError(ValueError):
    """The key setting is malformed; the message names the problem, never a key."""


def parse_keys(text: str) -> dict[str, bytes]:
    """`kid:base64key,kid:base64key`, the signing key first; each key at least 32 bytes."""
    keys: dict[str, bytes] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        kid, _, encoded = entry.partition(":")
        if not _KEY_ID.match(kid):
            raise IdKeyError(f"key id {kid!r} must be 1-16 of A-Z a-z 0-9 _ -")
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise IdKeyError(f"key {kid!r} is not base64") from None
        if len(key) < 32:
            raise IdKeyError(f"key {kid!r} has {len(key)} bytes; use at least 32")
        if kid in keys:
            raise IdKeyError(f"key id {kid!r} is listed twice")
        keys[kid] = key
    if not keys:
        raise IdKeyError("no key listed")
    return keys


def random_keys() -> dict[str, bytes]:
    """One process-local key: ids then verify on this replica only (no shared store configured)."""
    return {"local": secrets.token_bytes(32)}


class IdSigner:
    def __init__(self, keys: Mapping[str, bytes], ttl_ms: int) -> None:
        self._keys = dict(keys)
        self._signing_kid = next(iter(self._keys))
        self._ttl_ms = ttl_ms

    def issue(self, now_ms: int) -> str:
        payload = _PAYLOAD.pack(now_ms, secrets.token_bytes(12))
        kid = self._signing_kid
        return f"{kid}.{_b64(payload)}.{_b64(self._tag(kid, payload))}"

    def check(self, token: str, now_ms: int) -> CheckedId | IdRefusal:
        parts = token.split(".") if len(token) <= MAX_ID_LENGTH else []
        if len(parts) != 3 or parts[0] not in self._keys:
            return IdRefusal.MALFORMED if len(parts) != 3 else IdRefusal.BAD_SIGNATURE
        kid, payload_text, tag_text = parts
        try:
            payload, tag = _unb64(payload_text), _unb64(tag_text)
        except (binascii.Error, ValueError):
            return IdRefusal.MALFORMED
        if _b64(payload) != payload_text or _b64(tag) != tag_text:
            return IdRefusal.MALFORMED  # unused low bits set: one id must have exactly one spelling
        if len(payload) != _PAYLOAD.size or not hmac.compare_digest(tag, self._tag(kid, payload)):
            return IdRefusal.BAD_SIGNATURE
        issued_ms, _nonce = _PAYLOAD.unpack(payload)
        if now_ms - issued_ms > self._ttl_ms:
            return IdRefusal.EXPIRED
        return CheckedId(issued_ms)

    def _tag(self, kid: str, payload: bytes) -> bytes:
        return hmac.new(self._keys[kid], kid.encode() + payload, hashlib.sha256).digest()[:_TAG_BYTES]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
