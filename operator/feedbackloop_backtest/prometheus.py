"""A real Prometheus for the replayed series: a scratch one started from a binary, or one at a URL.

Counters go in through the OTLP receiver (Prometheus 3, --web.enable-otlp-receiver: OTLP/JSON needs no
protobuf), in time order, one request per stretch of simulated time; the loop's queries are instant queries
at the simulated `time=`. Each answer is classified by the operator's own Prometheus adapter's rules
(adapters.prometheus.classify), so Empty, NaN and MultipleSeries mean what they mean to the operator.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from feedbackloop.adapters.prometheus import classify
from feedbackloop.core.observations import QueryOutcome, QueryResult
from feedbackloop_backtest.errors import BacktestError

OTLP_PATH = "/api/v1/otlp/v1/metrics"
READY_SECONDS = 60.0
# A fresh TSDB takes the first sample at any time; later ones must not be older than the head's newest
# minus an hour, which in-order pushes never are. Retention is counted from the newest sample, not the
# wall clock, so an old history is kept; a century keeps any history whole.
CONFIG = "global:\n  scrape_interval: 1h\n"


class PrometheusClient:
    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def push(self, payload: dict[str, Any]) -> None:
        if not payload["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]:
            return
        try:
            answer = self._http.post(
                self.url + OTLP_PATH,
                content=json.dumps(payload, separators=(",", ":")),
                headers={"Content-Type": "application/json"},
            )
        except httpx.HTTPError as err:
            raise BacktestError(f"Prometheus at {self.url}: cannot push samples: {err}") from None
        if answer.status_code == 404:
            raise BacktestError(
                f"Prometheus at {self.url} has no OTLP receiver: start it with --web.enable-otlp-receiver "
                "(Prometheus 3), or pass --prometheus-bin"
            )
        if answer.status_code >= 300:
            raise BacktestError(
                f"Prometheus at {self.url} refused samples: HTTP {answer.status_code} {answer.text[:300]}"
            )

    def query(self, query: str, at: float, timeout_seconds: float) -> QueryResult:
        try:
            answer = self._http.get(
                self.url + "/api/v1/query",
                params={"query": query, "time": f"{at:.3f}", "timeout": f"{timeout_seconds:g}s"},
            )
        except httpx.TimeoutException:
            return QueryResult(QueryOutcome.TIMEOUT, message=f"no answer within {timeout_seconds:g}s")
        except httpx.HTTPError as err:
            return QueryResult(QueryOutcome.ERROR, message=f"unreachable: {type(err).__name__}")
        if answer.status_code != 200:
            try:
                error_type = answer.json().get("errorType", "")
            except ValueError:
                error_type = ""
            return QueryResult(QueryOutcome.ERROR, message=f"HTTP {answer.status_code}: {error_type}")
        try:
            result = answer.json()["data"]["result"]
        except (ValueError, KeyError, TypeError):
            return QueryResult(
                QueryOutcome.ERROR, message="the answer is not a Prometheus query API response"
            )
        return classify(result)


class ScratchPrometheus:
    """A Prometheus of our own on a free local port, its TSDB in a temporary directory; stop() removes it."""

    def __init__(self, binary: str) -> None:
        path = shutil.which(binary) or binary
        if not Path(path).is_file():
            raise BacktestError(f"--prometheus-bin {binary}: no such file")
        self._dir = Path(tempfile.mkdtemp(prefix="fbl-backtest-prometheus-"))
        (self._dir / "prometheus.yml").write_text(CONFIG)
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._log = (self._dir / "prometheus.log").open("wb")
        self._process = subprocess.Popen(
            [
                path,
                f"--config.file={self._dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self._dir / 'data'}",
                "--storage.tsdb.retention.time=36500d",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-otlp-receiver",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready(binary)

    def _wait_ready(self, binary: str) -> None:
        end = time.monotonic() + READY_SECONDS
        while time.monotonic() < end:
            if self._process.poll() is not None:
                tail = (self._dir / "prometheus.log").read_text(errors="replace")[-800:]
                self.stop()
                raise BacktestError(f"--prometheus-bin {binary}: exited at start: {tail}")
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise BacktestError(f"--prometheus-bin {binary}: not ready within {READY_SECONDS:g}s")

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
