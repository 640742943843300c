"""The operator process with loops on a hung and on a trickling Prometheus: neither delays a healthy loop's
breach → Job, each turns into one condition on its loops, and liveness stays fast throughout."""

from __future__ import annotations

import math
import threading
import time
import urllib.request
from collections.abc import Callable

from feedbackloop.adapters.artifacts import ArtifactStore
from loop_scenario import LOOP, Scenario, loop_spec, trainer_report, write_candidate
from operator_process import ModelExporter, OperatorProcess
from unresponsive_servers import hung_server, trickling_server

BAD_LOOPS_PER_SERVER = 8
FOR_SECONDS, INTERVAL_SECONDS, SCRAPE_SECONDS = 15, 10, 1  # loop_spec's and the test Prometheus's
# Evaluations come every interval, so `for` is served in whole intervals after the first one that sees it.
NORMAL_BREACH_TO_JOB = math.ceil(FOR_SECONDS / INTERVAL_SECONDS) * INTERVAL_SECONDS + INTERVAL_SECONDS
SLACK_SECONDS = 6  # a noisy 2-core machine


class LivenessSampler:
    """GETs /healthz every 0.2 s in the background and keeps each latency (a failure counts as 10 s)."""

    def __init__(self, url: str) -> None:
        self.url, self.latencies = url, list[float]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            started = time.monotonic()
            try:
                urllib.request.urlopen(self.url, timeout=10).read()  # noqa: S310 - loopback
                self.latencies.append(time.monotonic() - started)
            except Exception:
                self.latencies.append(10.0)

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join(15)
        return sorted(self.latencies)


def test_loops_on_a_hung_and_a_trickling_prometheus_delay_neither_a_breach_nor_liveness(
    scenario: Scenario,
    start_operator: Callable[..., OperatorProcess],
    exporter: ModelExporter,
    store: ArtifactStore,
) -> None:
    candidate_uri = write_candidate(store, scenario.namespace, "v2")
    with hung_server() as hung, trickling_server() as trickling:
        allowed = ",".join((scenario.endpoints.prometheus_url, hung, trickling))
        operator = start_operator(FBL_PROMETHEUS_URLS=allowed)
        liveness = LivenessSampler(operator.health_url)
        for index in range(BAD_LOOPS_PER_SERVER):
            for kind, url in (("hung", hung), ("trickling", trickling)):
                spec = loop_spec(scenario.model)
                spec["prometheus"]["url"] = url
                scenario.apply_loop(spec, name=f"{kind}-{index}")
        scenario.apply_loop(
            loop_spec(scenario.model, **{"retrain.podAnnotations": trainer_report(store, candidate_uri)})
        )
        scenario.wait_condition("Healthy", "True")

        breach_started = time.monotonic()
        exporter.set(scenario.model, accuracy=0.62)
        scenario.wait_jobs([f"{LOOP}-retrain-2"])
        breach_to_job = time.monotonic() - breach_started

        for kind in ("hung", "trickling"):
            ready = scenario.wait_condition("Ready", "False", "PrometheusCircuitOpen", name=f"{kind}-7")
            assert "circuit open after" in ready["message"] and "next try at" in ready["message"]
        latencies = liveness.stop()

    assert FOR_SECONDS <= breach_to_job <= NORMAL_BREACH_TO_JOB + SCRAPE_SECONDS + SLACK_SECONDS
    assert len(latencies) >= 50
    p99 = latencies[math.ceil(len(latencies) * 0.99) - 1]
    assert p99 < 1.0, latencies[-5:]
