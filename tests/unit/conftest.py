"""Unit tests run without any external component; a network connection here is a bug in the test."""

from __future__ import annotations

import socket
from typing import Any

import pytest


class NetworkUsedInUnitTestError(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: socket.socket, address: Any) -> None:
        if self.family == socket.AF_UNIX:
            return original(self, address)
        raise NetworkUsedInUnitTestError(f"unit test tried to connect to {address!r}")

    original = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)
