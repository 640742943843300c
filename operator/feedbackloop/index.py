"""The loops as the watch last delivered them, so a reconcile reads memory instead of the API server."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

LoopKey = tuple[str, str]  # (namespace, name)
# What a reconcile reads of metadata; managedFields alone is often larger than the rest of the loop.
_KEPT_METADATA = (
    "name",
    "namespace",
    "uid",
    "generation",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "annotations",
    "labels",
    "finalizers",
)


class LoopIndex:
    """Thread-safe: the watch writes from the event loop, reconciles read from worker threads."""

    def __init__(self) -> None:
        self._bodies: dict[LoopKey, Mapping[str, Any]] = {}
        self._guard = threading.Lock()

    def put(self, body: Mapping[str, Any]) -> LoopKey:
        meta = body["metadata"]
        key = (str(meta["namespace"]), str(meta["name"]))
        kept = {
            "metadata": {field: meta[field] for field in _KEPT_METADATA if field in meta},
            "spec": body.get("spec"),
            "status": body.get("status"),
        }
        with self._guard:
            self._bodies[key] = kept
        return key

    def get(self, key: LoopKey) -> Mapping[str, Any] | None:
        with self._guard:
            return self._bodies.get(key)

    def remove(self, key: LoopKey) -> None:
        with self._guard:
            self._bodies.pop(key, None)

    def items(self) -> list[tuple[LoopKey, Mapping[str, Any]]]:
        """A snapshot: the watch may change the index while the caller iterates."""
        with self._guard:
            return list(self._bodies.items())

    def __len__(self) -> int:
        with self._guard:
            return len(self._bodies)
