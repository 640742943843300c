"""The HTTP API: /predict, /feedback, /healthz, /readyz, /metrics, on FastAPI."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from cachetools import TTLCache
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.core import contract
from feedbackloop_serve import sink as sink_module
from feedbackloop_serve.drift import DriftWindow
from feedbackloop_serve.loader import LoadedModel, ModelRefusedError, StoreUnavailableError, load_model
from feedbackloop_serve.metrics import ServerMetrics
from feedbackloop_serve.rows import NUMERIC, FieldError, check_rows, rows_of
from feedbackloop_serve.settings import ServeSettings
from feedbackloop_train import evaluate
from feedbackloop_train.model import prepare

log = logging.getLogger("feedbackloop-serve")
RETRY_SECONDS = (1, 2, 5, 10, 30)


@dataclass(frozen=True)
class _Prediction:
    row: dict[str, Any]
    value: Any
    version: str
    at: datetime


class ModelServer:
    def __init__(self, settings: ServeSettings, store: ArtifactStore, metrics: ServerMetrics | None = None):
        self.settings = settings
        self.store = store
        self.metrics = metrics or ServerMetrics()
        self.model: LoadedModel | None = None
        self.not_ready = "loading the model"
        self.predictions: TTLCache[str, _Prediction] = TTLCache(
            maxsize=settings.prediction_store_size, ttl=settings.prediction_ttl_seconds
        )
        self.drift: DriftWindow | None = None
        self.sink: sink_module.FeedbackSink | None = None
        self._flush_now = asyncio.Event()
        self._workdir = tempfile.TemporaryDirectory(prefix="fbl-serve-")
        self.metrics.prediction_store.set_function(self._store_size)
        self.metrics.feedback_buffered.set_function(lambda: self.sink.buffered if self.sink else 0)
        self.metrics.watch_drift(self._drift_labels, lambda: self.drift.psi() if self.drift else {})

    # ------------------------------------------------------------ loading
    async def load_until_ready(self) -> None:
        attempt, last_reason = 0, ""
        while self.model is None:
            try:
                model = await asyncio.to_thread(
                    load_model,
                    self.store,
                    self.settings.model_uri,
                    self.settings.model_sha256,
                    Path(self._workdir.name),
                    self.settings.model_name,
                )
            except (ModelRefusedError, StoreUnavailableError) as err:
                reason = str(err)
                if reason != last_reason:  # one log line per distinct reason, not one per retry
                    log.error("not ready: %s", reason)
                    last_reason = reason
                self.not_ready = reason
                await asyncio.sleep(RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)])
                attempt += 1
                continue
            self._serve(model)

    def _serve(self, model: LoadedModel) -> None:
        self.drift = DriftWindow(model.reference or {}, self.settings.drift_window)
        if self.settings.feedback_uri:
            bucket, prefix = contract.split_s3_uri(self.settings.feedback_uri)
            self.sink = sink_module.FeedbackSink(
                put=lambda key, body: self.store.put_bytes(
                    bucket, key, body, "application/vnd.apache.parquet"
                ),
                prefix=prefix,
                features=model.features,
                feature_types=model.feature_types,
                label_type=sink_module.label_type(model.task, model.classes),
                flush_rows=self.settings.feedback_flush_rows,
                max_rows=self.settings.feedback_buffer_rows,
                source=self.settings.source,
                on_dropped=self.metrics.feedback_dropped.inc,
            )
        self.metrics.model_info.labels(model.name, model.version, model.version, model.sha256).set(1)
        self.metrics.ready.set(1)
        self.model = model
        self.not_ready = ""
        log.info(
            "serving %s version %s (sha256 %s…) from %s",
            model.name,
            model.version,
            model.sha256[:12],
            model.uri,
        )

    def _drift_labels(self) -> tuple[str, str] | None:
        return None if self.model is None else (self.model.name, self.model.version)

    def _store_size(self) -> int:
        self.predictions.expire()
        return len(self.predictions)

    # ------------------------------------------------------------ predict
    def predict(self, body: Any) -> tuple[int, dict[str, Any]]:
        model = self.model
        if model is None:
            return 503, {"detail": f"not ready: {self.not_ready}"}
        rows, errors = rows_of(body)
        if not errors:
            errors = check_rows(rows, model.features, model.feature_types, single="row" in body)
        if errors:
            return 422, {"detail": [e.as_dict() for e in errors]}
        started = time.perf_counter()
        frame = _frame(rows, model)
        try:
            labels, probabilities = _score(model, frame)
        except (ValueError, TypeError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            return 422, {
                "detail": [
                    FieldError(
                        ("body",), f"the model cannot score these rows: {first}", "value_error"
                    ).as_dict()
                ]
            }
        now = datetime.now(UTC)
        out = []
        for index, row in enumerate(rows):
            prediction_id = uuid.uuid4().hex
            value = _plain(labels[index])
            self.predictions[prediction_id] = _Prediction(_stored_row(row, model), value, model.version, now)
            item: dict[str, Any] = {"id": prediction_id, "prediction": value}
            if probabilities is not None and model.classes is not None:
                item["probabilities"] = {
                    str(c): float(p) for c, p in zip(model.classes, probabilities[index], strict=True)
                }
            out.append(item)
        assert self.drift is not None
        self.drift.observe(rows)
        self.metrics.predictions.labels(model.name, model.version).inc(len(rows))
        self.metrics.latency.labels(model.name, model.version).observe(time.perf_counter() - started)
        return 200, {"model_version": model.version, "predictions": out}

    # ------------------------------------------------------------ feedback
    def feedback(self, body: Any) -> tuple[int, dict[str, Any]]:
        model = self.model
        if model is None:
            return 503, {"detail": f"not ready: {self.not_ready}"}
        if isinstance(body, Mapping) and "feedback" in body:
            items, single = body["feedback"], False
            if not isinstance(items, list) or not items:
                return 422, {
                    "detail": [
                        FieldError(
                            ("body", "feedback"), "Input should be a non-empty list", "list_type"
                        ).as_dict()
                    ]
                }
        elif isinstance(body, Mapping):
            items, single = [body], True
        else:
            return 422, {
                "detail": [
                    FieldError(
                        ("body",), "Input should be {id, label} or {feedback: [...]}", "model_type"
                    ).as_dict()
                ]
            }
        malformed = [
            FieldError(
                ("body",) if single else ("body", "feedback", i),
                "Input should be an object with 'id' and 'label'",
                "model_type",
            )
            for i, item in enumerate(items)
            if not isinstance(item, Mapping) or not isinstance(item.get("id"), str) or "label" not in item
        ]
        if malformed:
            return 422, {"detail": [e.as_dict() for e in malformed]}
        now = datetime.now(UTC)
        results, accepted = [], 0
        for item in items:
            prediction_id = item["id"]
            stored = self.predictions.pop(prediction_id, None)
            if stored is None:
                self.metrics.feedback_unmatched.labels(model.name, model.version).inc()
                results.append(
                    {"id": prediction_id, "status": "error", "error": "unknown or expired prediction id"}
                )
                continue
            label, problem = _label(item["label"], model)
            if problem:
                self.predictions[prediction_id] = stored  # a fixed label may be sent again
                results.append({"id": prediction_id, "status": "error", "error": problem})
                continue
            self._record(model, stored, label, prediction_id, now)
            results.append({"id": prediction_id, "status": "accepted"})
            accepted += 1
        if self.sink is not None and self.sink.buffered >= self.sink.flush_rows:
            self._flush_now.set()
        return 200, {"accepted": accepted, "results": results}

    def _record(
        self, model: LoadedModel, stored: _Prediction, label: Any, prediction_id: str, now: datetime
    ) -> None:
        labels = (model.name, stored.version)
        self.metrics.feedback.labels(*labels).inc()
        if model.task == "regression":
            error = float(label) - float(stored.value)
            self.metrics.feedback_abs_error.labels(*labels).inc(abs(error))
            self.metrics.feedback_squared_error.labels(*labels).inc(error * error)
        else:
            # inc(0) still creates the series, so correct / total exists from the first label.
            self.metrics.feedback_correct.labels(*labels).inc(1 if label == stored.value else 0)
        if self.sink is not None:
            self.sink.add(
                {
                    **stored.row,
                    contract.FEEDBACK_LABEL: label,
                    contract.FEEDBACK_PREDICTION: stored.value,
                    contract.FEEDBACK_MODEL_VERSION: stored.version,
                    contract.FEEDBACK_PREDICTION_ID: prediction_id,
                    contract.FEEDBACK_PREDICTED_AT: stored.at,
                    contract.FEEDBACK_LABELLED_AT: now,
                }
            )

    # ------------------------------------------------------------ flushing
    async def flush_forever(self) -> None:
        last = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), timeout=1.0)
            self._flush_now.clear()
            sink = self.sink
            if sink is None or not sink.buffered:
                last = time.monotonic()
                continue
            if (
                sink.buffered < sink.flush_rows
                and time.monotonic() - last < self.settings.feedback_flush_seconds
            ):
                continue
            last = time.monotonic()
            await self.flush()

    async def flush(self) -> bool:
        if self.sink is None:
            return True
        try:
            written = await asyncio.to_thread(self.sink.flush)
        except Exception as err:  # the rows stay buffered; an outage only delays them
            self.metrics.feedback_flush_failures.inc()
            log.warning("feedback flush failed, %d rows kept for the next try: %s", self.sink.buffered, err)
            return False
        self.metrics.feedback_flushed.inc(written)
        return True

    async def close(self) -> None:
        if self.sink is not None and self.sink.buffered:
            try:
                flushed = await asyncio.wait_for(self.flush(), timeout=self.settings.shutdown_flush_seconds)
            except TimeoutError:
                flushed = False
            if not flushed:
                log.error("shutting down with %d feedback rows not written to S3", self.sink.buffered)
        self._workdir.cleanup()


def _frame(rows: list[Any], model: LoadedModel) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(rows, columns=model.features)
    for name in model.features:
        if model.feature_types[name] == NUMERIC:
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(float)
    return prepare(frame, model.estimator, model.features)


def _score(
    model: LoadedModel, frame: pd.DataFrame
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any] | None]:
    # The trainer's scoring: one pass gives labels and probabilities where predict() is their argmax.
    scored = evaluate.predict(model.estimator, frame)
    return scored.labels, scored.probabilities if model.classes is not None else None


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _stored_row(row: Mapping[str, Any], model: LoadedModel) -> dict[str, Any]:
    """The row as the sink's schema wants it: numbers as floats, everything else as text."""
    out: dict[str, Any] = {}
    for name in model.features:
        value = row.get(name)
        if value is None:
            out[name] = None
        elif model.feature_types[name] == NUMERIC:
            out[name] = float(value)
        else:
            out[name] = str(value)
    return out


def _label(value: Any, model: LoadedModel) -> tuple[Any, str]:
    """The label in the type of the model's classes (or a float for regression), or why it is unusable."""
    if model.task == "regression" or model.classes is None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None, "label must be a finite number"
        return float(value), ""
    kind = sink_module.label_type(model.task, model.classes)
    try:
        if kind == pa.int64() and not isinstance(value, bool):
            number = float(value)
            if number.is_integer():
                return int(number), ""
        elif kind == pa.float64() and not isinstance(value, bool):
            return float(value), ""
        elif kind == pa.bool_() and isinstance(value, bool):
            return value, ""
        elif kind == pa.string() and isinstance(value, str | int | float | bool):
            return str(value), ""
    except (TypeError, ValueError):
        pass
    return None, f"label {value!r} is not of the model's class type ({kind})"


def create_app(server: ModelServer) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(server.load_until_ready()), asyncio.create_task(server.flush_forever())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.close()

    app = FastAPI(title="feedbackloop model server", lifespan=lifespan)

    async def answer(request: Request, handle: Callable[[Any], tuple[int, dict[str, Any]]]) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError as err:
            detail = [FieldError(("body",), f"JSON decode error: {err}", "json_invalid").as_dict()]
            return JSONResponse({"detail": detail}, status_code=422)
        status, payload = handle(body)
        return JSONResponse(payload, status_code=status)

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        return await answer(request, server.predict)

    @app.post("/feedback")
    async def feedback(request: Request) -> JSONResponse:
        return await answer(request, server.feedback)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        model = server.model
        if model is None:
            return JSONResponse({"status": "not ready", "reason": server.not_ready}, status_code=503)
        return JSONResponse({"status": "ready", "model": model.name, "model_version": model.version})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
