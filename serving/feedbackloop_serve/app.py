"""The HTTP API: /predict, /feedback, /healthz, /readyz, /metrics, on FastAPI.

The request models are built from the loaded model, so /predict and /feedback are (re)registered once it is
loaded; until then they answer 503. Scoring runs in a thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from threadpoolctl import threadpool_limits

from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.api import CANDIDATE_MODE_SPLIT, ROLE_CANDIDATE, ROLE_CHAMPION
from feedbackloop.core import contract
from feedbackloop_serve.auth import BearerToken
from feedbackloop_serve.drift import DriftWindow
from feedbackloop_serve.ids import CheckedId, IdRefusal, IdSigner, random_keys
from feedbackloop_serve.loader import ModelRefusedError, StoreUnavailableError, load_model
from feedbackloop_serve.metrics import ServerMetrics
from feedbackloop_serve.rows import RefusalReason, RequestModels, errors_of
from feedbackloop_serve.scoring import Rejected, Scored, Scorer, predict_columns
from feedbackloop_serve.served import LoadedModel
from feedbackloop_serve.settings import CandidateSettings, ServeSettings
from feedbackloop_serve.sink import FeedbackSchema, decode_record, label_type
from feedbackloop_serve.store import JoinStatus, Label, PredictionStore
from feedbackloop_serve.store import StoreUnavailableError as PredictionStoreUnavailableError
from feedbackloop_serve.writer import FeedbackWriter

log = logging.getLogger("feedbackloop-serve")
RETRY_SECONDS = (1, 2, 5, 10, 30)
# A shadow candidate scores what waited in one call every 50 ms: a model's fixed cost per call, paid once for
# many requests, holds the GIL far less than a call per request (that doubled the answers' latency).
SHADOW_BATCH_SECONDS = 0.05
# Rows a shadow candidate may have waiting; past this it skips rows rather than fall behind.
SHADOW_BACKLOG_ROWS = 10_000
JSON = "application/json"
_REFUSED_BY_STATUS: dict[JoinStatus, RefusalReason] = {
    JoinStatus.UNKNOWN: "unknown",
    JoinStatus.DUPLICATE: "duplicate",
    JoinStatus.FULL: "full",
}
_REFUSED_BY_ID: dict[IdRefusal, RefusalReason] = {
    IdRefusal.MALFORMED: "malformed",
    IdRefusal.BAD_SIGNATURE: "bad_signature",
    IdRefusal.EXPIRED: "expired",
}
_REFUSAL_TEXT: dict[RefusalReason, str] = {
    "malformed": "malformed prediction id",
    "bad_signature": "prediction id not issued by this model server (bad signature)",
    "expired": "expired prediction id",
    "unknown": "unknown or expired prediction id",
    "duplicate": "a label for this prediction id was already accepted",
    "full": "too many labelled rows wait for the store; retry later",
}


class ModelServer:
    def __init__(self, settings: ServeSettings, store: ArtifactStore, metrics: ServerMetrics | None = None):
        self.settings = settings
        self.artifacts = store
        self.metrics = metrics or ServerMetrics()
        self.model: LoadedModel | None = None
        self.requests: RequestModels | None = None
        self.not_ready = "loading the model"
        self.draining = False
        self.scorer: Scorer | None = None
        self.predictions: PredictionStore | None = None
        self.writer: FeedbackWriter | None = None
        self.signer = IdSigner(settings.id_keys or random_keys(), settings.prediction_ttl_seconds * 1000)
        self.on_loaded: list[Any] = []
        self.candidate: LoadedModel | None = None
        self.candidate_scorer: Scorer | None = None  # a split's candidate answers its share through it
        self.candidate_not_loaded = "waiting for the champion" if settings.candidate else ""
        self._shadow_pool: ThreadPoolExecutor | None = None
        self._shadow_waiting: list[Scored] = []
        self._shadow_rows = 0
        self._wake_writer = asyncio.Event()
        self._workdir = tempfile.TemporaryDirectory(prefix="fbl-serve-")
        self.metrics.feedback_buffered.set_function(lambda: self.writer.waiting if self.writer else 0)
        self.metrics.watch_drift(self._drift_labels, self._psi)

    # ------------------------------------------------------------ loading
    async def load_until_ready(self) -> None:
        attempt, last_reason = 0, ""
        while self.model is None:
            try:
                model = await asyncio.to_thread(
                    load_model,
                    self.artifacts,
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

    async def load_candidate_until_ready(self) -> None:
        """The candidate of a Shadow or Split stage, verified like the champion; until it loads (or if it
        never does) the champion alone answers, as without a candidate."""
        settings = self.settings.candidate
        if settings is None:
            return
        while self.model is None:
            await asyncio.sleep(0.2)
        workdir = Path(self._workdir.name) / "candidate"
        workdir.mkdir(exist_ok=True)
        attempt, last_reason = 0, ""
        while self.candidate is None:
            try:
                candidate = await asyncio.to_thread(
                    load_model,
                    self.artifacts,
                    settings.uri,
                    settings.sha256,
                    workdir,
                    self.settings.model_name,
                )
                _check_candidate(self.model, candidate)
            except Exception as err:  # whatever it is, the champion serves on and the reason is shown
                reason = str(err) if isinstance(err, ModelRefusedError | StoreUnavailableError) else repr(err)
                if reason != last_reason:
                    log.error("candidate not loaded: %s", reason)
                    last_reason = reason
                self.candidate_not_loaded = reason
                await asyncio.sleep(RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)])
                attempt += 1
                continue
            self._serve_candidate(candidate, settings)

    def _serve_candidate(self, candidate: LoadedModel, settings: CandidateSettings) -> None:
        assert self.model is not None
        assert self.requests is not None
        if settings.mode == CANDIDATE_MODE_SPLIT:
            self.candidate_scorer = Scorer(
                candidate,
                self.requests,
                self.signer,
                DriftWindow(candidate.reference or {}, self.settings.drift_window),
                keep_records=self.predictions is not None,
                threads=self.settings.scoring_threads,
                request_features=self.model.features,
                role=ROLE_CANDIDATE,
            )
        else:
            # One thread, one BLAS thread: the shadow never takes the cores the champion's answers need.
            self._shadow_pool = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix="shadow",
                initializer=threadpool_limits,
                initargs=(1,),
            )
        self._start_stage_series(candidate, settings.mode)
        self.metrics.candidate_info.labels(
            candidate.name, candidate.version, settings.mode, candidate.sha256
        ).set(1)
        self.candidate = candidate
        self.candidate_not_loaded = ""
        log.info(
            "candidate %s (sha256 %s…) from %s: %s",
            candidate.version,
            candidate.sha256[:12],
            candidate.uri,
            f"answers {settings.weight:.0%} of requests"
            if settings.mode == CANDIDATE_MODE_SPLIT
            else "scores every request in the shadow of the champion",
        )

    def _start_stage_series(self, candidate: LoadedModel, mode: str) -> None:
        """Every series a stage's verdict reads exists at 0 from the candidate's load: Prometheus's increase()
        cannot count what a series gained before its first scrape."""
        champion = self.model
        assert champion is not None
        regression = champion.task == "regression"
        if mode != CANDIDATE_MODE_SPLIT:
            pair = (champion.name, candidate.version, champion.version)
            if regression:
                self.metrics.shadow_feedback.labels(*pair, "paired")
                self.metrics.shadow_squared_error.labels(*pair, ROLE_CHAMPION)
                self.metrics.shadow_squared_error.labels(*pair, ROLE_CANDIDATE)
                self.metrics.shadow_squared_error_difference_squared.labels(*pair)
            else:
                for outcome in ("both", "champion_only", "candidate_only", "neither"):
                    self.metrics.shadow_feedback.labels(*pair, outcome)
            return
        for version, role in ((champion.version, ROLE_CHAMPION), (candidate.version, ROLE_CANDIDATE)):
            labels = (champion.name, version, role)
            self.metrics.predictions.labels(*labels)
            self.metrics.feedback.labels(*labels)
            if regression:
                self.metrics.feedback_squared_error.labels(*labels)
                self.metrics.feedback_fourth_power_error.labels(*labels)
            else:
                self.metrics.feedback_correct.labels(*labels)

    def _serve(self, model: LoadedModel) -> None:
        self.requests = RequestModels(
            model.features, model.feature_types, model.task, model.classes, nullable=model.nullable
        )
        if self.settings.redis_url:
            self.predictions = PredictionStore.connect(
                self.settings.redis_url,
                model.name,
                self.settings.prediction_ttl_seconds,
                self.settings.feedback_buffer_rows,
                keep_rows=self.settings.feedback_uri is not None,
            )
        if self.predictions is not None and self.settings.feedback_uri:
            self.writer = self._writer(model, self.predictions, self.settings.feedback_uri)
        self.scorer = Scorer(
            model,
            self.requests,
            self.signer,
            DriftWindow(model.reference or {}, self.settings.drift_window),
            keep_records=self.predictions is not None,
            threads=self.settings.scoring_threads,
        )
        # The loaded model and libraries never become garbage: keeping them out of the collector's full passes
        # keeps those short, so a large request's garbage does not pause every other request for 100+ ms.
        gc.freeze()
        self.metrics.model_info.labels(model.name, model.version, model.version, model.sha256).set(1)
        self.model = model
        self.not_ready = ""
        self.metrics.ready.set(0 if self.draining else 1)
        for callback in self.on_loaded:
            callback(model)
        log.info(
            "serving %s version %s (sha256 %s…) from %s; feedback %s",
            model.name,
            model.version,
            model.sha256[:12],
            model.uri,
            "joins on every replica (shared store)" if self.predictions else "off (no FBL_REDIS_URL)",
        )

    def _writer(self, model: LoadedModel, predictions: PredictionStore, feedback_uri: str) -> FeedbackWriter:
        bucket, prefix = contract.split_s3_uri(feedback_uri)
        schema = FeedbackSchema(model.features, model.feature_types, label_type(model.task, model.classes))

        async def put(key: str, body: bytes) -> None:
            await asyncio.to_thread(
                self.artifacts.put_bytes, bucket, key, body, "application/vnd.apache.parquet"
            )

        return FeedbackWriter(
            predictions,
            schema,
            put,
            prefix,
            consumer=self.settings.source,
            metrics=self.metrics,
            flush_rows=self.settings.feedback_flush_rows,
            flush_seconds=self.settings.feedback_flush_seconds,
            claim_idle_seconds=self.settings.claim_idle_seconds,
        )

    def _drift_labels(self) -> tuple[str, str] | None:
        return None if self.model is None else (self.model.name, self.model.version)

    def _psi(self) -> dict[str, float]:
        return self.scorer.psi() if self.scorer else {}

    @property
    def ready(self) -> bool:
        return self.model is not None and not self.draining

    # ------------------------------------------------------------ predict
    async def predict(self, body: bytes, route_key: str | None = None) -> Response:
        """The scoring threads parse, validate and score; the event loop only moves bytes and stores ids.
        `route_key`: the value of a split's request-key header, which picks the model that answers."""
        model, scorer, role = self.model, self.scorer, ROLE_CHAMPION
        candidate, split = self.candidate, self.candidate_scorer
        if candidate is not None and split is not None and self._routes_to_candidate(candidate, route_key):
            model, scorer, role = candidate, split, ROLE_CANDIDATE
        assert model is not None
        assert scorer is not None
        started = time.perf_counter()
        answer = await scorer.submit(body, int(time.time() * 1000))
        if isinstance(answer, Rejected):
            return _json({"detail": answer.detail}, 422)
        if answer.records and self.predictions is not None:
            try:
                await self.predictions.save(answer.records)
            except PredictionStoreUnavailableError as err:
                # The prediction stands; without a stored record no label can join it, so it gets no id.
                self.metrics.store_errors.labels("save").inc()
                log.warning("prediction store unavailable, answering without ids: %s", err)
                for item in answer.payload["predictions"]:
                    item["id"] = None
                return self._answered(model, role, answer.rows, started, _json(answer.payload))
            if role == ROLE_CHAMPION and candidate is not None and self._shadow_pool is not None:
                self._start_shadow(candidate, answer)
        return self._answered(model, role, answer.rows, started, Response(answer.body, media_type=JSON))

    def _answered(
        self, model: LoadedModel, role: str, rows: int, started: float, response: Response
    ) -> Response:
        self.metrics.predictions.labels(model.name, model.version, role).inc(rows)
        self.metrics.latency.labels(model.name, model.version, role).observe(time.perf_counter() - started)
        return response

    def _routes_to_candidate(self, candidate: LoadedModel, route_key: str | None) -> bool:
        settings = self.settings.candidate
        assert settings is not None
        if route_key is None:
            return secrets.randbelow(1_000_000) < settings.weight * 1_000_000
        return routes_to_candidate(settings.weight, route_key, candidate.version)

    # ------------------------------------------------------------ shadow
    def _start_shadow(self, candidate: LoadedModel, answer: Scored) -> None:
        """Queue the champion's rows for the candidate: scored after the answer, not in the client's time."""
        if self._shadow_rows + answer.rows > SHADOW_BACKLOG_ROWS:
            self.metrics.shadow_unscored.labels(candidate.name, "backlog").inc(answer.rows)
            return
        self._shadow_waiting.append(answer)
        self._shadow_rows += answer.rows

    async def shadow_forever(self) -> None:
        while True:
            await asyncio.sleep(SHADOW_BATCH_SECONDS)
            candidate, waiting = self.candidate, self._shadow_waiting
            if candidate is None or self._shadow_pool is None or not waiting:
                continue
            self._shadow_waiting = []
            try:
                await self._shadow(candidate, waiting)
            finally:
                self._shadow_rows -= sum(answer.rows for answer in waiting)

    async def _shadow(self, candidate: LoadedModel, answers: list[Scored]) -> None:
        loop = asyncio.get_running_loop()
        scored: list[tuple[Scored, list[Any]]] = []
        labels = await loop.run_in_executor(self._shadow_pool, _shadow_predictions, candidate, answers)
        if labels is not None:
            scored = [(answer, labels[answer_index]) for answer_index, answer in enumerate(answers)]
        else:  # one request's rows spoiled the call: score each alone, so the others still count
            for answer in answers:
                alone = await loop.run_in_executor(
                    self._shadow_pool, _shadow_predictions, candidate, [answer]
                )
                if alone is None:
                    self.metrics.shadow_unscored.labels(candidate.name, "failed").inc(answer.rows)
                else:
                    scored.append((answer, alone[0]))
        values = [
            (prediction_id, orjson.dumps({"version": candidate.version, "prediction": label}))
            for answer, predicted in scored
            for (prediction_id, _), label in zip(answer.records, predicted, strict=True)
        ]
        if not values:
            return
        assert self.predictions is not None
        try:
            await self.predictions.save_shadow(values)
        except PredictionStoreUnavailableError as err:
            self.metrics.store_errors.labels("save").inc()
            self.metrics.shadow_unscored.labels(candidate.name, "failed").inc(len(values))
            log.warning("prediction store unavailable, shadow predictions dropped: %s", err)
            return
        self.metrics.shadow_predictions.labels(candidate.name, candidate.version).inc(len(values))

    # ------------------------------------------------------------ feedback
    async def feedback(self, body: bytes) -> Response:
        model, requests = self.model, self.requests
        assert model is not None
        assert requests is not None
        if self.predictions is None:
            return _json({"detail": "feedback needs the shared prediction store: set FBL_REDIS_URL"}, 503)
        loop = asyncio.get_running_loop()
        parsed = await loop.run_in_executor(None, _validated, requests.feedback, body)
        if isinstance(parsed, Response):
            return parsed
        items = parsed.feedback if parsed.feedback is not None else [parsed]  # type: ignore[attr-defined]
        now_ms = int(time.time() * 1000)
        results: list[dict[str, Any]] = [{}] * len(items)
        labels: list[tuple[int, Any, Label]] = []
        for index, item in enumerate(items):
            checked = self.signer.check(item.id, now_ms)
            if isinstance(checked, CheckedId):
                labels.append((index, item.label, Label(item.id, orjson.dumps(item.label), now_ms)))
            else:
                results[index] = self._refuse(model, item.id, _REFUSED_BY_ID[checked])
        try:
            joins = await self.predictions.join([label for _, _, label in labels])
        except PredictionStoreUnavailableError as err:
            self.metrics.store_errors.labels("join").inc()
            log.warning("prediction store unavailable, feedback refused with 503: %s", err)
            return _json({"detail": "the prediction store is unavailable; retry later"}, 503, retry_after=5)
        accepted = 0
        for (index, label, request), join in zip(labels, joins, strict=True):
            if join.status is JoinStatus.JOINED:
                self._count(model, decode_record(join.record), label, join.shadow)
                results[index] = {"id": request.prediction_id, "status": "accepted"}
                accepted += 1
            else:
                results[index] = self._refuse(model, request.prediction_id, _REFUSED_BY_STATUS[join.status])
        if accepted and self.writer is not None:
            self.writer.waiting += accepted  # exact again at the writer's next pass
            if self.writer.waiting >= self.settings.feedback_flush_rows:
                self._wake_writer.set()
        return _json({"accepted": accepted, "results": results})

    def _refuse(self, model: LoadedModel, prediction_id: str, reason: RefusalReason) -> dict[str, Any]:
        self.metrics.feedback_refused.labels(model.name, reason).inc()
        return {"id": prediction_id, "status": "error", "reason": reason, "error": _REFUSAL_TEXT[reason]}

    def _count(self, model: LoadedModel, record: dict[str, Any], label: Any, shadow: bytes) -> None:
        version, role = str(record["version"]), str(record.get("role", ROLE_CHAMPION))
        self._count_one(model, version, role, record["prediction"], label)
        if not shadow:
            if self.candidate is not None and self._shadow_pool is not None and role == ROLE_CHAMPION:
                self.metrics.shadow_unscored.labels(model.name, "late").inc()
            return
        # A shadow's prediction was never served: it is counted only in the fbl_shadow_* metrics, so a loop's
        # accuracy query over fbl_feedback_* keeps meaning what users got while a stage runs.
        paired = decode_record(shadow)
        pair = (model.name, str(paired["version"]), version)
        champion = _judged(model.task, record["prediction"], label)
        candidate = _judged(model.task, paired["prediction"], label)
        if model.task == "regression":
            self.metrics.shadow_feedback.labels(*pair, "paired").inc()
            self.metrics.shadow_squared_error.labels(*pair, ROLE_CHAMPION).inc(champion)
            self.metrics.shadow_squared_error.labels(*pair, ROLE_CANDIDATE).inc(candidate)
            difference = candidate - champion
            self.metrics.shadow_squared_error_difference_squared.labels(*pair).inc(difference * difference)
        else:
            outcome = {(1.0, 1.0): "both", (1.0, 0.0): "champion_only", (0.0, 1.0): "candidate_only"}
            self.metrics.shadow_feedback.labels(*pair, outcome.get((champion, candidate), "neither")).inc()

    def _count_one(self, model: LoadedModel, version: str, role: str, prediction: Any, label: Any) -> None:
        """One label of the model that answered, under its version and role."""
        labels = (model.name, version, role)
        self.metrics.feedback.labels(*labels).inc()
        if model.task == "regression":
            error = float(label) - float(prediction)
            squared = error * error
            self.metrics.feedback_abs_error.labels(*labels).inc(abs(error))
            self.metrics.feedback_squared_error.labels(*labels).inc(squared)
            self.metrics.feedback_fourth_power_error.labels(*labels).inc(squared * squared)
        else:
            # inc(0) still creates the series, so correct / total exists from the first label.
            self.metrics.feedback_correct.labels(*labels).inc(1 if label == prediction else 0)

    # ------------------------------------------------------------ background work and shutdown
    async def write_feedback_forever(self) -> None:
        while self.writer is None or self.predictions is None:
            await asyncio.sleep(0.5)
        while True:
            try:
                await self.predictions.prepare()
                break
            except PredictionStoreUnavailableError as err:
                log.warning("prediction store not reachable yet: %s", err)
                await asyncio.sleep(2)
        await self.writer.run_forever(self._wake_writer)

    def start_draining(self) -> None:
        """Unready at once, so endpoints drop this pod; requests still arriving are served until shutdown."""
        if not self.draining:
            self.draining = True
            self.metrics.ready.set(0)
            log.info("draining: /readyz now answers 503; serving for %.0fs more", self.settings.drain_seconds)

    async def close(self) -> None:
        if self.writer is not None:
            try:
                written = await asyncio.wait_for(
                    self.writer.step(force=True), self.settings.shutdown_flush_seconds
                )
                log.info("shutdown: wrote %d feedback rows to S3", written)
            except Exception as err:  # the rows stay in the shared store for another replica
                log.warning("shutdown: feedback left in the shared store for another replica: %s", err)
        if self.predictions is not None:
            await self.predictions.close()
        if self.scorer is not None:
            self.scorer.close()
        if self.candidate_scorer is not None:
            self.candidate_scorer.close()
        if self._shadow_pool is not None:
            self._shadow_pool.shutdown(wait=True, cancel_futures=True)
        self._workdir.cleanup()


def _shadow_predictions(candidate: LoadedModel, answers: list[Scored]) -> list[list[Any]] | None:
    """The candidate's predictions of every answer's rows in one call, split back per answer; None when the
    call fails or predicts a value that is not finite."""
    columns = {name: [v for answer in answers for v in answer.columns[name]] for name in candidate.features}
    try:
        labels = predict_columns(candidate, columns, sum(answer.rows for answer in answers))
    except (ValueError, TypeError, KeyError) as err:
        log.warning("the shadow candidate could not score %d requests: %s", len(answers), err)
        return None
    if labels is None:
        return None
    split, start = [], 0
    for answer in answers:
        split.append(labels[start : start + answer.rows])
        start += answer.rows
    return split


def _judged(task: str, prediction: Any, label: Any) -> float:
    """A prediction against its label: 1.0 or 0.0, right or wrong (classification), else its squared error."""
    if task == "regression":
        error = float(label) - float(prediction)
        return error * error
    return 1.0 if label == prediction else 0.0


def routes_to_candidate(weight: float, route_key: str, candidate_version: str) -> bool:
    """A split by a request key: the same key always gets the same model for one candidate, and about
    `weight` of the keys get the candidate. The version salts the hash, so each stage exposes other users."""
    digest = hashlib.sha256(f"{candidate_version}\0{route_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < weight * 2**64


def _check_candidate(champion: LoadedModel | None, candidate: LoadedModel) -> None:
    """A candidate scores the champion's requests: it must do the same task on features they carry."""
    assert champion is not None
    if candidate.task != champion.task:
        raise ModelRefusedError(
            f"the candidate's task {candidate.task} is not the champion's {champion.task}"
        )
    missing = sorted(set(candidate.features) - set(champion.features))
    if missing:
        raise ModelRefusedError(
            f"the candidate reads features the champion's requests lack: {', '.join(missing)}"
        )


def _json(
    payload: Any, status: int = 200, retry_after: int | None = None, www_authenticate: str | None = None
) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after else {}
    if www_authenticate:
        headers["WWW-Authenticate"] = www_authenticate
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, media_type=JSON
    )


def _validated(model: type[BaseModel], body: bytes) -> BaseModel | Response:
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        return _json({"detail": errors_of(err, ())}, 422)


async def _bounded_body(request: Request, limit: int) -> bytes | Response:
    """The body, read only up to `limit` bytes: a client cannot make a replica buffer gigabytes."""
    too_large = _json({"detail": f"the body is larger than {limit} bytes"}, 413)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return too_large
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(server: ModelServer) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(server.load_until_ready()),
            asyncio.create_task(server.load_candidate_until_ready()),
            asyncio.create_task(server.shadow_forever()),
            asyncio.create_task(server.write_feedback_forever()),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.close()

    app = FastAPI(title="feedbackloop model server", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> Response:
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in err.errors()]
        return _json({"detail": detail}, 422)

    @app.exception_handler(Exception)
    async def failed(_: Request, err: Exception) -> Response:
        # A bug answers 500 with a body and keeps the connection, rather than resetting a keep-alive client.
        log.exception("unhandled error: %s", err)
        return _json({"detail": "internal error"}, 500)

    async def not_ready(_: Request) -> Response:
        return _json({"detail": f"not ready: {server.not_ready}"}, 503)

    app.add_api_route("/predict", not_ready, methods=["POST"], name="predict")
    app.add_api_route("/feedback", not_ready, methods=["POST"], name="feedback")
    server.on_loaded.append(lambda model: _register_model_routes(app, server))

    @app.get("/healthz", responses=_documented(200, _HEALTHY))
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz", responses={**_documented(200, _READY), **_documented(503, _NOT_READY)})
    async def readyz() -> Response:
        model = server.model
        if server.draining:
            return _json({"status": "not ready", "reason": "draining before shutdown"}, 503)
        if model is None:
            return _json({"status": "not ready", "reason": server.not_ready}, 503)
        ready: dict[str, Any] = {"status": "ready", "model": model.name, "model_version": model.version}
        if server.settings.candidate is not None:
            candidate = server.candidate
            ready["candidate"] = (
                {
                    "status": "loaded",
                    "model_version": candidate.version,
                    "mode": server.settings.candidate.mode,
                }
                if candidate is not None
                else {"status": "not loaded", "reason": server.candidate_not_loaded}
            )
        return _json(ready)

    @app.get("/metrics", responses=_METRICS_RESPONSE)
    async def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _register_model_routes(app: FastAPI, server: ModelServer) -> None:
    """Replace the 503 placeholders with the model's routes, and document their real request bodies."""
    assert server.requests is not None
    requests = server.requests

    limit = server.settings.max_body_bytes
    token = BearerToken(server.settings.token_file) if server.settings.token_file else None

    async def checked_body(request: Request) -> bytes | Response:
        if token is not None and not token.admits(request.headers.get("authorization")):
            server.metrics.unauthorized.labels(request.url.path).inc()
            return _json({"detail": "a valid bearer token is required"}, 401, www_authenticate="Bearer")
        return await _bounded_body(request, limit)

    route_header = server.settings.candidate.request_key if server.settings.candidate else None

    async def predict(request: Request) -> Response:
        body = await checked_body(request)
        if isinstance(body, Response):
            return body
        return await server.predict(body, request.headers.get(route_header) if route_header else None)

    async def feedback(request: Request) -> Response:
        body = await checked_body(request)
        return body if isinstance(body, Response) else await server.feedback(body)

    app.router.routes = [
        route
        for route in app.router.routes
        if not (isinstance(route, APIRoute) and route.path in ("/predict", "/feedback"))
    ]
    for path, endpoint, body, answer in (
        ("/predict", predict, requests.predict, requests.predict_response),
        ("/feedback", feedback, requests.feedback, requests.feedback_response),
    ):
        app.add_api_route(
            path,
            endpoint,
            methods=["POST"],
            name=path.strip("/"),
            openapi_extra={
                "requestBody": _request_body(body),
                **({"security": [{"bearer": []}]} if token else {}),
            },
            responses={
                **_documented(200, _ref(answer)),
                **(_UNAUTHORIZED if token else {}),
                **_ERROR_RESPONSES,
            },
        )
    schemas = {}
    for model in requests.models:
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            document.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
            if token is not None:
                document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi_schema = None  # regenerated with the real fields on the next /openapi.json
    app.openapi = openapi  # type: ignore[method-assign]


_REF = "#/components/schemas/{model}"
_DETAIL = {"type": "object", "properties": {"detail": {}}, "required": ["detail"]}
_HEALTHY = {"type": "object", "properties": {"status": {"const": "ok"}}, "required": ["status"]}
_READY = {
    "type": "object",
    "properties": {
        "status": {"const": "ready"},
        "model": {"type": "string"},
        "model_version": {"type": "string"},
    },
    "required": ["status", "model", "model_version"],
}
_NOT_READY = {
    "type": "object",
    "properties": {"status": {"const": "not ready"}, "reason": {"type": "string"}},
    "required": ["status", "reason"],
}
_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait, when the store is down", "schema": {"type": "integer"}}
}
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"description": "The body is larger than FBL_MAX_BODY_BYTES (32 MiB by default).",
          "content": {"application/json": {"schema": _DETAIL}}},
    422: {"description": "The body names a field it must not, or lacks one; `detail` lists each problem.",
          "content": {"application/json": {"schema": _DETAIL}}},
    503: {"description": "No verified model loaded yet, draining, or the shared store is unavailable.",
          "content": {"application/json": {"schema": _DETAIL}}, "headers": _RETRY_AFTER},
}  # fmt: skip
_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"description": "FBL_SERVE_TOKEN_FILE is set and the request has no valid bearer token.",
          "content": {"application/json": {"schema": _DETAIL}},
          "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}}},
}  # fmt: skip
_METRICS_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text exposition format.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}


def _documented(status: int, schema: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    return {status: {"description": HTTPStatus(status).phrase, "content": {JSON: {"schema": schema}}}}


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": _REF.format(model=model.__name__)}


def _request_body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": _ref(model)}}}
