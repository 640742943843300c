"""Prometheus through prometheus-api-client: one instant query → a QueryResult, never an exception."""

from __future__ import annotations

import threading
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from feedbackloop.core.observations import Probe, QueryOutcome, QueryResult

_MAX_MESSAGE = 300


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
                self._clients[url] = PrometheusConnect(url=url, disable_ssl=False, retry=retry)
            return self._clients[url]

    def query(self, url: str, query: str, timeout_seconds: float) -> QueryResult:
        try:
            result = self._client(url).custom_query(
                query, params={"timeout": f"{timeout_seconds:g}s"}, timeout=timeout_seconds
            )
        except requests.Timeout:
            return QueryResult(QueryOutcome.TIMEOUT, message=f"no answer within {timeout_seconds:g}s")
        except requests.ConnectionError as err:
            if "timed out" in str(err).lower():
                return QueryResult(QueryOutcome.TIMEOUT, message=f"no answer within {timeout_seconds:g}s")
            return QueryResult(QueryOutcome.ERROR, message=f"unreachable: {_short(err)}")
        except PrometheusApiClientException as err:
            return QueryResult(QueryOutcome.ERROR, message=_short(err))
        except (requests.RequestException, ValueError) as err:
            return QueryResult(QueryOutcome.ERROR, message=_short(err))
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
    if not isinstance(sample, dict) or "value" not in sample:
        return QueryResult(
            QueryOutcome.ERROR, message="a range vector is not a measurement; use an instant vector"
        )
    return _number(sample["value"][1])


def _number(text: str) -> QueryResult:
    try:
        value = float(text)
    except ValueError:
        return QueryResult(QueryOutcome.ERROR, message=f"not a number: {text[:40]!r}")
    return QueryResult.of(value)


def _short(err: Exception) -> str:
    return str(err).replace("\n", " ")[:_MAX_MESSAGE]
