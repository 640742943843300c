"""Moves joined rows from the shared stream to S3, one Parquet object per batch, on every replica.

Each pass, in order: retry this consumer's own unwritten rows (a failed upload, or a restart under the same
pod name); take over rows another consumer left idle past the claim time (its pod died); then read new rows
once enough wait or the oldest has waited long enough. A batch's object key depends only on its entries, so a
retried or taken-over batch rewrites the same object. Rows the schema cannot hold are set aside, counted and
logged once per distinct error; they never block the rows behind them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from feedbackloop.adapters.artifacts import ArtifactStoreError
from feedbackloop_serve.metrics import ServerMetrics
from feedbackloop_serve.sink import FeedbackSchema, StreamRow, batch_key
from feedbackloop_serve.store import PredictionStore, StoreUnavailableError

log = logging.getLogger("feedbackloop-serve.writer")
Put = Callable[[str, bytes], Awaitable[None]]


class FeedbackWriter:
    def __init__(
        self,
        store: PredictionStore,
        schema: FeedbackSchema,
        put: Put,
        prefix: str,
        consumer: str,
        metrics: ServerMetrics,
        flush_rows: int,
        flush_seconds: float,
        claim_idle_seconds: float,
    ) -> None:
        self._store = store
        self._schema = schema
        self._put = put
        self._prefix = prefix
        self._consumer = consumer
        self._metrics = metrics
        self._flush_rows = flush_rows
        self._flush_seconds = flush_seconds
        self._claim_idle_ms = int(claim_idle_seconds * 1000)
        self._last_flush = time.monotonic()
        self._errors_logged: set[str] = set()
        self.waiting = 0

    async def run_forever(self, wake: asyncio.Event) -> None:
        delay = 1.0
        while True:
            try:
                await self.step(force=False)
                delay = 1.0
            except (StoreUnavailableError, ArtifactStoreError) as err:
                self._metrics.feedback_flush_failures.inc()
                log.warning("feedback not written yet, retrying in %.0fs: %s", delay, err)
                delay = min(delay * 2, 30.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=delay)
            wake.clear()

    async def step(self, force: bool) -> int:
        """One pass; with `force`, new rows are written however few. Returns the rows written."""
        written = 0
        self.waiting = await self._store.waiting()
        for rows in (
            await self._store.own_pending(self._consumer, self._flush_rows),
            await self._store.claim_idle(self._consumer, self._flush_rows, self._claim_idle_ms),
        ):
            written += await self._write(rows)
        self.waiting = await self._store.waiting()
        # Size writes full batches; time, or a shutdown, writes whatever waits.
        everything = force or time.monotonic() - self._last_flush >= self._flush_seconds
        while self.waiting and (everything or self.waiting >= self._flush_rows):
            rows = await self._store.read_new(self._consumer, self._flush_rows)
            if not rows:
                break
            written += await self._write(rows)
            self.waiting = await self._store.waiting()
        if everything:
            self._last_flush = time.monotonic()
        return written

    async def _write(self, rows: list[StreamRow]) -> int:
        if not rows:
            return 0
        encoded = await asyncio.to_thread(self._schema.encode, rows)
        for row, error in encoded.set_aside:
            await self._store.set_aside(row, error)
            self._metrics.feedback_set_aside.inc()
            kind = error.split(":", 1)[0]
            if kind not in self._errors_logged:  # once per kind of error, not once per row
                self._errors_logged.add(kind)
                log.error(
                    "feedback row %s set aside, the schema cannot hold it: %s", row.prediction_id, error
                )
        if encoded.rows:
            await self._put(batch_key(self._prefix, encoded.rows), encoded.body)
        await self._store.done(rows)
        self._metrics.feedback_flushed.inc(len(encoded.rows))
        return len(encoded.rows)
