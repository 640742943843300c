"""Scoring threads that take every /predict request waiting, validate each, and score the valid ones in one
call of the model: a pipeline's fixed cost per call (column selection, encoders, the predictor's set-up) is
then paid once for all of them. A lone request is scored at once; nothing waits to fill a batch.

No I/O: the event loop hands over request bytes and gets back an answer to send and the records to store.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError
from threadpoolctl import threadpool_limits

from feedbackloop_serve.drift import DriftWindow
from feedbackloop_serve.ids import IdSigner
from feedbackloop_serve.rows import NUMERIC, RequestModels, errors_of
from feedbackloop_serve.served import LoadedModel
from feedbackloop_serve.sink import encode_record
from feedbackloop_train import evaluate
from feedbackloop_train.model import frame_of

MAX_REQUESTS_PER_CALL = 64


@dataclass(frozen=True)
class Scored:
    rows: int
    payload: dict[str, Any]
    body: bytes  # the payload as JSON, encoded here rather than on the event loop
    records: list[tuple[str, bytes]]  # (prediction id, record) to store before answering
    columns: dict[str, list[Any]] = field(default_factory=dict)  # the rows, for a shadow candidate


def predict_columns(model: LoadedModel, columns: dict[str, list[Any]], count: int) -> list[Any] | None:
    """A shadow candidate's predictions of rows already validated for the champion; None when any is not a
    finite number (nobody is answered with it, so it is counted as unscored)."""
    frame = frame_of({name: columns[name] for name in model.features}, model.numeric, model.categorical)
    predicted = np.asarray(evaluate.predict(model.estimator, frame).labels)
    if len(predicted) != count or (predicted.dtype.kind == "f" and not np.isfinite(predicted).all()):
        return None
    labels: list[Any] = predicted.tolist()
    return labels


@dataclass(frozen=True)
class Rejected:
    """A 422: the body is invalid, or the model cannot score its rows."""

    detail: list[dict[str, Any]]


Outcome = Scored | Rejected


NOT_FINITE = "the model's prediction for this row is not a finite number"


def _not_finite(request: _Request, rows: list[int]) -> Rejected:
    where = [["body", "row"]] if request.single else [["body", "rows", row] for row in rows[:20]]
    return Rejected([{"loc": loc, "msg": NOT_FINITE, "type": "value_error"} for loc in where])


@dataclass
class _Request:
    body: bytes
    now_ms: int
    deliver: Callable[[Outcome | BaseException], None]
    columns: dict[str, list[Any]] = field(default_factory=dict)
    count: int = 0
    single: bool = False  # sent as {"row": ...}


class Scorer:
    def __init__(
        self,
        model: LoadedModel,
        requests: RequestModels,
        signer: IdSigner,
        drift: DriftWindow,
        keep_records: bool,
        threads: int,
        request_features: list[str] | None = None,
        role: str | None = None,
    ) -> None:
        """`request_features`: the fields of `requests`, in order, when they are not the model's own (a
        split's candidate reads the champion's requests); `role`: stored with each record (a split's
        candidate)."""
        self._model, self._requests, self._signer = model, requests, signer
        self._request_features = request_features or model.features
        self._role = role
        self._drift, self._drift_lock = drift, threading.Lock()
        self._keep_records = keep_records
        self._categorical = frozenset(n for n, kind in model.feature_types.items() if kind != NUMERIC)
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"score-{index}", daemon=True) for index in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, body: bytes, now_ms: int) -> asyncio.Future[Outcome]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()

        def deliver(outcome: Outcome | BaseException) -> None:
            def settle() -> None:
                if future.done():  # cancelled, or answered already
                    return
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

            loop.call_soon_threadsafe(settle)

        self._queue.put(_Request(body, now_ms, deliver))
        return future

    def psi(self) -> dict[str, float]:
        with self._drift_lock:
            return self._drift.psi()

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self) -> None:
        # Requests run side by side on these threads, so each scores with one OpenMP/BLAS thread: a native
        # team per thread would oversubscribe the cores (a 1-row HistGradientBoosting predict took 3x longer).
        threadpool_limits(limits=1)
        while (first := self._queue.get()) is not None:
            batch = [first]
            while len(batch) < MAX_REQUESTS_PER_CALL:
                try:
                    waiting = self._queue.get_nowait()
                except queue.Empty:
                    break
                if waiting is None:
                    self._queue.put(None)  # the stop is for this thread's next turn
                    break
                batch.append(waiting)
            try:
                self._score_all(batch)
            except BaseException as err:  # a bug must answer its requests, not leave them waiting
                for request in batch:
                    request.deliver(err)

    def _score_all(self, batch: list[_Request]) -> None:
        valid = [request for request in batch if self._parse(request)]
        if not valid:
            return
        try:
            self._score(valid)
        except (ValueError, TypeError):
            for request in valid:  # one request's rows broke the call: find out whose
                try:
                    self._score([request])
                except (ValueError, TypeError) as err:
                    first = str(err).splitlines()[0] if str(err) else type(err).__name__
                    message = f"the model cannot score these rows: {first}"
                    request.deliver(Rejected([{"loc": ["body"], "msg": message, "type": "value_error"}]))

    def _parse(self, request: _Request) -> bool:
        try:
            parsed = self._requests.predict.model_validate_json(request.body)
        except ValidationError as err:
            request.deliver(Rejected(errors_of(err, self._categorical)))
            return False
        request.single = parsed.row is not None  # type: ignore[attr-defined]
        rows = [parsed.row] if request.single else parsed.rows  # type: ignore[attr-defined]
        request.count = len(rows)
        request.columns = {
            name: [getattr(row, f"f{index}") for row in rows]
            for index, name in enumerate(self._request_features)
        }
        return True

    def _score(self, batch: list[_Request]) -> None:
        model = self._model
        columns = {name: [v for request in batch for v in request.columns[name]] for name in model.features}
        total = sum(request.count for request in batch)
        scored = evaluate.predict(model.estimator, frame_of(columns, model.numeric, model.categorical))
        with self._drift_lock:
            self._drift.observe_columns(columns, total)
        predicted = np.asarray(scored.labels)
        # A regressor extrapolating past float64 predicts inf or NaN: JSON cannot carry it, nobody can use it
        unusable = ~np.isfinite(predicted) if predicted.dtype.kind == "f" else np.zeros(total, dtype=bool)
        labels = predicted.tolist()
        shares = scored.probabilities.tolist() if scored.probabilities is not None and model.classes else None
        start = 0
        for request in batch:
            end = start + request.count
            if unusable[start:end].any():
                request.deliver(_not_finite(request, np.flatnonzero(unusable[start:end]).tolist()))
            else:
                request.deliver(
                    self._answer(request, labels[start:end], shares[start:end] if shares else None)
                )
            start = end

    def _answer(self, request: _Request, labels: list[Any], shares: list[list[float]] | None) -> Scored:
        model = self._model
        ids: list[str | None] = [None] * request.count
        records: list[tuple[str, bytes]] = []
        if self._keep_records:
            issued = [self._signer.issue(request.now_ms) for _ in labels]
            rows = [
                dict(zip(self._request_features, values, strict=True))
                for values in zip(*request.columns.values(), strict=True)
            ]
            records = [
                (prediction_id, encode_record(row, label, model.version, request.now_ms, self._role))
                for prediction_id, row, label in zip(issued, rows, labels, strict=True)
            ]
            ids = list(issued)
        names = [str(c) for c in model.classes or ()]
        out = [
            {"id": prediction_id, "prediction": label}
            if shares is None
            else {
                "id": prediction_id,
                "prediction": label,
                "probabilities": dict(zip(names, shares[i], strict=True)),
            }
            for i, (prediction_id, label) in enumerate(zip(ids, labels, strict=True))
        ]
        payload = {"model_version": model.version, "predictions": out}
        return Scored(request.count, payload, orjson.dumps(payload), records, request.columns)
