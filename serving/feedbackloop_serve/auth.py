"""Optional bearer-token auth for /predict and /feedback, the token read from a mounted Secret's file.

The file is re-read when it changes, so rotating the Secret needs no restart; a file that is briefly absent
while the kubelet swaps the Secret's symlink keeps the last token rather than opening the server.
"""

from __future__ import annotations

import hmac
import threading
from pathlib import Path

MIN_TOKEN_LENGTH = 16


class TokenError(ValueError):
    """The token file is unreadable or too short; the message names the file, never the token."""


def read_token(path: Path) -> bytes:
    try:
        token = path.read_bytes().strip()
    except OSError as err:
        raise TokenError(f"cannot read {path}: {err.strerror}") from None
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokenError(f"{path} holds {len(token)} bytes; a token needs at least {MIN_TOKEN_LENGTH}")
    return token


class BearerToken:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._token = read_token(path)
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int] | None:
        try:
            stat = self._path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_ino)

    def current(self) -> bytes:
        stamp = self._stamp()
        if stamp is not None and stamp != self._seen:
            with self._lock:
                try:
                    self._token = read_token(self._path)
                except TokenError:
                    return self._token  # half-written or emptied: keep the last good token
                self._seen = stamp
        return self._token

    def admits(self, authorization: str | None) -> bool:
        scheme, _, credentials = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode(), self.current())
