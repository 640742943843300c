"""Prometheus through prometheus-api-client: one instant query → a QueryResult, never an exception.

No redirect is followed, and no byte of an answer's body reaches a message: a non-200 answer becomes its
status code and a fixed reason (for Prometheus's own error JSON, chosen by its errorType).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from feedbackloop.core.observations import Probe, QueryOutcome, QueryResult

_MAX_ERROR_BODY = 4096  # Prometheus's error JSON is small; a larger body is not read for its errorType
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


class HttpStatusError(requests.RequestException):
    """A non-200 answer, reduced to what may be shown: its status code and a fixed reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status


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


def _error_type(response: requests.Response) -> str | None:
    try:
        head = response.raw.read(_MAX_ERROR_BODY + 1, decode_content=True)
        answer = json.loads(head) if len(head) <= _MAX_ERROR_BODY else None
    except Exception:  # an unreadable or non-JSON body just has no errorType
        return None
    error_type = answer.get("errorType") if isinstance(answer, dict) else None
    return error_type if isinstance(error_type, str) else None


def _refuse_unless_ok(response: requests.Response, *_args: Any, **_kwargs: Any) -> requests.Response:
    """A response hook: it runs before requests would follow a redirect, so none ever is."""
    if response.status_code == 200:
        return response
    status = response.status_code
    error_type = _error_type(response) if status >= 400 else None
    response.close()
    raise HttpStatusError(status, _status_reason(status, error_type))


def _session() -> requests.Session:
    session = requests.Session()
    session.max_redirects = 0
    session.hooks["response"].append(_refuse_unless_ok)
    return session


class PrometheusAdapter:
    """One client per Prometheus URL, reused across reconciles."""

    def __init__(self) -> None:
        self._clients: dict[str, PrometheusConnect] = {}
        self._lock = threading.Lock()

    def _client(self, url: str) -> PrometheusConnect:
        with self._lock:
            if url not in self._clients:
                # One quick retry on connection errors; a slow Prometheus must not stall the loop.
                retry = Retry(total=1, read=0, backoff_factor=0.2, status_forcelist=(502, 503, 504))
                self._clients[url] = PrometheusConnect(url=url, retry=retry, session=_session())
            return self._clients[url]

    def query(self, url: str, query: str, timeout_seconds: float) -> QueryResult:
        try:
            result = self._client(url).custom_query(
                query, params={"timeout": f"{timeout_seconds:g}s"}, timeout=timeout_seconds
            )
        except HttpStatusError as err:
            return QueryResult(QueryOutcome.ERROR, message=str(err))
        except requests.Timeout:
            return QueryResult(QueryOutcome.TIMEOUT, message=f"no answer within {timeout_seconds:g}s")
        except requests.exceptions.RetryError:
            return QueryResult(QueryOutcome.ERROR, message="HTTP 502, 503 or 504 twice: server unavailable")
        except requests.ConnectionError as err:
            if "timed out" in str(err).lower():
                return QueryResult(QueryOutcome.TIMEOUT, message=f"no answer within {timeout_seconds:g}s")
            return QueryResult(QueryOutcome.ERROR, message=f"unreachable: {_connection_reason(err)}")
        except (PrometheusApiClientException, requests.RequestException) as err:
            return QueryResult(QueryOutcome.ERROR, message=f"request failed ({type(err).__name__})")
        except (ValueError, KeyError, TypeError):
            return QueryResult(
                QueryOutcome.ERROR, message="the answer is not a Prometheus query API response"
            )
        return classify(result)

    def probe(self, url: str, timeout_seconds: float) -> Probe:
        outcome = self.query(url, "vector(1)", timeout_seconds)
        if outcome.has_value:
            return Probe(ok=True)
        return Probe(ok=False, message=outcome.message or str(outcome.outcome))


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
