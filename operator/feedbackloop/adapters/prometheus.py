"""Prometheus over requests: one instant query → a QueryResult, never an exception, never past its deadline.

No redirect is followed, and no byte of an answer's body reaches a message: a non-200 answer becomes its
status code and a fixed reason (for Prometheus's own error JSON, chosen by its errorType).

Isolation: each request has a total deadline (connect, headers and a body read chunk by chunk, so a server
that trickles bytes is cut off too), none is retried (the next tick is the retry), each URL has its own
small thread pool (one slow URL queues only its own requests) and a circuit breaker: after repeated failures
a URL is not asked again until a cool-down ends, and every loop on it is told so at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
import urllib3.exceptions

from feedbackloop.core.circuit import Circuit, Verdict
from feedbackloop.core.observations import Probe, QueryOutcome, QueryResult

_MAX_ERROR_BODY = 4096  # Prometheus's error JSON is small; a larger body is not read for its errorType
_MAX_ANSWER = 16 * 1024 * 1024  # an instant query for one series is small; this bounds a hostile answer
_CHUNK = 65536
# A request the budget cut off sooner than this says nothing about the server, so the breaker ignores it.
_MIN_FAIR_WAIT_SECONDS = 1.0
_ERROR_TYPES = {
    "bad_data": "the query is malformed",
    "execution": "the query failed to run",
    "timeout": "the query timed out in Prometheus",
    "canceled": "the query was canceled",
    "internal": "Prometheus had an internal error",
    "unavailable": "Prometheus is unavailable",
    "not_found": "not found",
    "not_acceptable": "not acceptable",
}
OVER_BUDGET = QueryResult(
    QueryOutcome.BUDGET_EXCEEDED,
    message="not answered within this reconcile's time budget (FBL_RECONCILE_BUDGET_SECONDS)",
)


class HttpStatusError(requests.RequestException):
    """A non-200 answer, reduced to what may be shown: its status code and a fixed reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status


class _DeadlineExceededError(Exception):
    pass


class _TooLargeError(Exception):
    pass


def _status_reason(status: int, error_type: str | None) -> str:
    if error_type in _ERROR_TYPES:
        return f"{_ERROR_TYPES[error_type]} ({error_type})"
    if 300 <= status < 400:
        return "a redirect, not followed"
    if status in (401, 403):
        return "authentication or authorization refused"
    if status == 404:
        return "no query API here (is the URL the Prometheus base URL, without /api/v1?)"
    if 400 <= status < 500:
        return "the request was refused"
    return "server error"


def _read_body(response: requests.Response, end: float, limit: int) -> bytes:
    """The whole body by `end` (monotonic): each read waits at most the time left, not a fresh timeout."""
    chunks: list[bytes] = []
    size = 0
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise _DeadlineExceededError
        connection = response.raw.connection
        if connection is not None and connection.sock is not None:
            connection.sock.settimeout(left)
        chunk = response.raw.read1(_CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise _TooLargeError
        chunks.append(chunk)


def _error_type(response: requests.Response, end: float) -> str | None:
    try:
        answer = json.loads(_read_body(response, end, _MAX_ERROR_BODY))
    except Exception:  # an unreadable, late, large or non-JSON body just has no errorType
        return None
    error_type = answer.get("errorType") if isinstance(answer, dict) else None
    return error_type if isinstance(error_type, str) else None


def _session() -> requests.Session:
    session = requests.Session()
    # No retry: a retried request would double a reconcile's wait; the next tick is the retry.
    session.mount("http://", requests.adapters.HTTPAdapter(max_retries=0))
    session.mount("https://", requests.adapters.HTTPAdapter(max_retries=0))
    return session


class PrometheusAdapter:
    """One session, one circuit breaker and one thread pool per Prometheus URL, reused across reconciles."""

    def __init__(
        self,
        failure_threshold: int = 3,
        cool_down_seconds: float = 30,
        concurrency_per_url: int = 4,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._new_circuit = Circuit(failure_threshold, timedelta(seconds=cool_down_seconds))
        self._concurrency = concurrency_per_url
        self._clock = clock
        self._sessions: dict[str, requests.Session] = {}
        self._circuits: dict[str, Circuit] = {}
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._lock = threading.Lock()

    def _session_for(self, url: str) -> requests.Session:
        with self._lock:
            return self._sessions.setdefault(url, _session())

    def _pool_for(self, url: str) -> ThreadPoolExecutor:
        with self._lock:
            if url not in self._pools:
                self._pools[url] = ThreadPoolExecutor(self._concurrency, thread_name_prefix="prometheus")
            return self._pools[url]

    def _admit(self, url: str) -> str | None:
        """None if a request may go; else why not (the circuit is open)."""
        with self._lock:
            circuit = self._circuits.get(url, self._new_circuit)
            self._circuits[url], admitted = circuit.admit(self._clock())
            return None if admitted else circuit.refusal

    def _record(self, url: str, verdict: Verdict, failure: str = "") -> None:
        with self._lock:
            circuit = self._circuits.get(url, self._new_circuit)
            self._circuits[url] = circuit.record(verdict, self._clock(), failure)

    def circuit(self, url: str) -> Circuit:
        with self._lock:
            return self._circuits.get(url, self._new_circuit)

    def query_all(
        self, url: str, queries: Sequence[str], timeout_seconds: float, deadline: float
    ) -> tuple[QueryResult, ...]:
        """Every query at once (at most concurrency_per_url in flight for this URL), each answer by `deadline`
        (monotonic); what is not answered by then is BudgetExceeded, and its thread is free soon after."""
        pool = self._pool_for(url)
        futures: list[Future[QueryResult]] = [
            pool.submit(self.query, url, query, timeout_seconds, deadline) for query in queries
        ]
        done, _ = wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        results = []
        for future in futures:
            if future in done:
                results.append(future.result())
            else:
                future.cancel()  # still queued: never sent; in flight: it ends at the deadline by itself
                results.append(OVER_BUDGET)
        return tuple(results)

    def query(
        self, url: str, query: str, timeout_seconds: float, deadline: float | None = None
    ) -> QueryResult:
        started = time.monotonic()
        end = started + timeout_seconds if deadline is None else min(started + timeout_seconds, deadline)
        if end <= started:
            return OVER_BUDGET
        if (refusal := self._admit(url)) is not None:
            return QueryResult(QueryOutcome.CIRCUIT_OPEN, message=refusal)
        try:
            result, server_failed = self._request(url, query, timeout_seconds, end)
        except BaseException:
            self._record(url, Verdict.FAILED, "request failed")  # a half-open circuit must not stay half-open
            raise
        if deadline is not None and end == deadline and result.outcome is QueryOutcome.TIMEOUT:
            result = OVER_BUDGET
        if not server_failed:
            self._record(url, Verdict.SUCCEEDED)
        elif end - started >= min(timeout_seconds, _MIN_FAIR_WAIT_SECONDS):
            self._record(url, Verdict.FAILED, result.message)
        else:
            self._record(url, Verdict.INCONCLUSIVE)
        return result

    def _request(self, url: str, query: str, timeout_seconds: float, end: float) -> tuple[QueryResult, bool]:
        """The result, and whether it shows the server failing (rather than, say, refusing a bad query)."""
        timeout = QueryResult(QueryOutcome.TIMEOUT, message=f"no answer within {timeout_seconds:g}s")
        try:
            left = end - time.monotonic()
            response = self._session_for(url).get(
                f"{url}/api/v1/query",
                params={"query": query, "timeout": f"{timeout_seconds:g}s"},
                headers={"Accept-Encoding": "identity"},  # read chunk by chunk, as sent
                timeout=(left, left),
                stream=True,
                allow_redirects=False,
            )
            with response:
                if response.status_code != 200:
                    status = response.status_code
                    error_type = _error_type(response, end) if status >= 400 else None
                    reason = f"HTTP {status}: {_status_reason(status, error_type)}"
                    return QueryResult(QueryOutcome.ERROR, message=reason), status >= 500
                body = _read_body(response, end, _MAX_ANSWER)
        except (_DeadlineExceededError, requests.Timeout, urllib3.exceptions.TimeoutError):
            return timeout, True
        except _TooLargeError:
            return QueryResult(QueryOutcome.ERROR, message="the answer is too large"), False
        except requests.ConnectionError as err:
            if "timed out" in str(err).lower():
                return timeout, True
            return QueryResult(QueryOutcome.ERROR, message=f"unreachable: {_connection_reason(err)}"), True
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as err:
            return QueryResult(QueryOutcome.ERROR, message=f"request failed ({type(err).__name__})"), True
        return _parse(body), False

    def probe(self, url: str, timeout_seconds: float, deadline: float | None = None) -> Probe:
        return Probe.of_query(self.query(url, "vector(1)", timeout_seconds, deadline))


def _parse(body: bytes) -> QueryResult:
    not_prometheus = QueryResult(
        QueryOutcome.ERROR, message="the answer is not a Prometheus query API response"
    )
    try:
        answer = json.loads(body)
        result = answer["data"]["result"]
    except (ValueError, KeyError, TypeError):
        return not_prometheus
    return classify(result)


def classify(result: Any) -> QueryResult:
    """The `data.result` of an instant query: a scalar `[ts, "v"]` or a vector of `{metric, value}`."""
    if isinstance(result, list) and len(result) == 2 and isinstance(result[1], str):
        return _number(result[1])
    if not isinstance(result, list):
        return QueryResult(QueryOutcome.ERROR, message=f"unexpected result type {type(result).__name__}")
    if not result:
        return QueryResult(QueryOutcome.EMPTY, message="the query matched no series")
    if len(result) > 1:
        return QueryResult(
            QueryOutcome.MULTIPLE_SERIES,
            message=f"the query returned {len(result)} series; aggregate it to one (e.g. sum(...))",
        )
    sample = result[0]
    if isinstance(sample, dict) and "values" in sample:
        return QueryResult(
            QueryOutcome.ERROR, message="a range vector is not a measurement; use an instant vector"
        )
    value = sample.get("value") if isinstance(sample, dict) else None
    if not isinstance(value, list) or len(value) != 2:
        return QueryResult(QueryOutcome.ERROR, message="the answer is not a Prometheus query API response")
    return _number(value[1])


def _number(text: object) -> QueryResult:
    if not isinstance(text, str):  # Prometheus sends sample values as strings; a number here is not it
        return QueryResult(QueryOutcome.ERROR, message="the sample value is not a number")
    try:
        value = float(text)
    except ValueError:
        return QueryResult(QueryOutcome.ERROR, message="the sample value is not a number")
    return QueryResult.of(value)


def _connection_reason(err: requests.ConnectionError) -> str:
    """A fixed phrase: the error's text can quote what the server sent (a bad status line, say)."""
    if isinstance(err, requests.exceptions.SSLError):
        return "TLS handshake failed"
    text = str(err)
    if "Connection refused" in text:
        return "connection refused"
    if "NameResolutionError" in text or "Name or service not known" in text or "name resolution" in text:
        return "the host name does not resolve"
    if "Connection reset" in text or "RemoteDisconnected" in text:
        return "the connection was closed without an answer"
    return "connection failed"
