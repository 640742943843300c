"""Labelled rows, buffered and written to the loop's feedback prefix as Parquet in the trainer's schema.

A flush seals the buffer into a batch with a fixed key, so a retried upload rewrites the same object rather
than adding a duplicate. The buffer is bounded; past the bound the oldest rows are dropped and counted.
"""

from __future__ import annotations

import io
import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from feedbackloop.core import contract
from feedbackloop_serve.rows import NUMERIC

log = logging.getLogger("feedbackloop-serve.sink")
_TIME = pa.timestamp("us", tz="UTC")


@dataclass
class _Batch:
    key: str
    rows: list[dict[str, Any]]


class FeedbackSink:
    def __init__(
        self,
        put: Callable[[str, bytes], None],
        prefix: str,
        features: Sequence[str],
        feature_types: Mapping[str, str],
        label_type: pa.DataType,
        flush_rows: int,
        max_rows: int,
        source: str,
        on_dropped: Callable[[int], None] = lambda rows: None,
    ) -> None:
        self._put = put
        self._prefix = prefix
        self._schema = pa.schema(
            [(name, _arrow_type(feature_types.get(name, ""))) for name in features]
            + [
                (contract.FEEDBACK_LABEL, label_type),
                (contract.FEEDBACK_PREDICTION, label_type),
                (contract.FEEDBACK_MODEL_VERSION, pa.string()),
                (contract.FEEDBACK_PREDICTION_ID, pa.string()),
                (contract.FEEDBACK_PREDICTED_AT, _TIME),
                (contract.FEEDBACK_LABELLED_AT, _TIME),
            ]
        )
        self.flush_rows = flush_rows
        self.max_rows = max_rows
        self._source = f"{source}-{uuid.uuid4().hex[:8]}"
        self._on_dropped = on_dropped
        self._rows: deque[dict[str, Any]] = deque()
        self._sealed: deque[_Batch] = deque()
        self._uploading: _Batch | None = None
        self._sequence = 0
        self._lock = threading.Lock()
        self._flushing = threading.Lock()

    @property
    def buffered(self) -> int:
        with self._lock:
            return self._count()

    def _count(self) -> int:
        return len(self._rows) + sum(len(batch.rows) for batch in self._sealed)

    def add(self, row: Mapping[str, Any]) -> None:
        with self._lock:
            self._rows.append(dict(row))
            dropped = self._trim(self._count() - self.max_rows)
        if dropped:
            log.warning("feedback buffer full (%d rows): dropped the %d oldest", self.max_rows, dropped)
            self._on_dropped(dropped)

    def _trim(self, excess: int) -> int:
        """Drop the `excess` oldest rows, except those of a batch being uploaded right now."""
        dropped = 0
        for batch in list(self._sealed):
            if excess <= 0:
                break
            if batch is self._uploading:
                continue
            cut = min(excess, len(batch.rows))
            batch.rows = batch.rows[cut:]
            batch.key = self._next_key(datetime.now(UTC))  # new content, so a new object
            excess, dropped = excess - cut, dropped + cut
            if not batch.rows:
                self._sealed.remove(batch)
        while excess > 0 and self._rows:
            self._rows.popleft()
            excess, dropped = excess - 1, dropped + 1
        return dropped

    def flush(self, now: datetime | None = None) -> int:
        """Seal what is buffered and upload every sealed batch in order; returns the rows written.

        A failed upload stays sealed, under the same key, for the next flush; the error propagates.
        """
        with self._flushing:
            with self._lock:
                if self._rows:
                    self._sealed.append(_Batch(self._next_key(now or datetime.now(UTC)), list(self._rows)))
                    self._rows.clear()
            written = 0
            while True:
                with self._lock:
                    if not self._sealed:
                        return written
                    batch = self._uploading = self._sealed[0]
                    key, rows = batch.key, batch.rows
                try:
                    self._put(key, self._encode(rows))
                finally:
                    with self._lock:
                        self._uploading = None
                with self._lock:
                    self._sealed.remove(batch)
                written += len(rows)

    def _next_key(self, now: datetime) -> str:
        self._sequence += 1
        return f"{self._prefix}{now:%Y/%m/%d/%H%M%S}-{self._source}-{self._sequence:06d}.parquet"

    def _encode(self, rows: list[dict[str, Any]]) -> bytes:
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=self._schema), buffer)
        return buffer.getvalue()


def _arrow_type(kind: str) -> pa.DataType:
    # Categorical features, and features of unknown type, are kept as text, which the trainer reads.
    return pa.float64() if kind == NUMERIC else pa.string()


def label_type(task: str, classes: Sequence[Any] | None) -> pa.DataType:
    if task == "regression" or not classes:
        return pa.float64()
    if all(isinstance(c, bool) for c in classes):
        return pa.bool_()
    if all(isinstance(c, int) for c in classes):
        return pa.int64()
    if all(isinstance(c, float) for c in classes):
        return pa.float64()
    return pa.string()
