"""Run the real operator (`python -m feedbackloop`) against the test cluster, and a metrics exporter
that tests drive, which the cluster's Prometheus scrapes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

import harness

TRAINER_IMAGE = "feedbackloop-trainer:test"
# The one bucket every operator-driven test and the demo keep versions in; a test needing another names it.
ARTIFACT_BUCKET = "models"


def start_module(module: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`python -m <module>` in its own session (so a test can signal its group), appending to log_path."""
    with log_path.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", module],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


class OperatorProcess:
    def __init__(
        self, endpoints: harness.Endpoints, log_path: Path, namespaces: list[str], **env: str
    ) -> None:
        self.log_path = log_path
        metrics_port, health_port = harness.free_port(), harness.free_port()
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.health_url = f"http://127.0.0.1:{health_port}/healthz"
        self.env = {
            **os.environ,
            **endpoints.env(),
            "FBL_S3_ENDPOINT_URL": endpoints.s3_endpoint_url,
            "FBL_TRAINER_IMAGES": TRAINER_IMAGE,
            "FBL_PROMETHEUS_URLS": endpoints.prometheus_url,
            "FBL_ARTIFACT_BUCKETS": ARTIFACT_BUCKET,
            "FBL_WATCH_NAMESPACES": ",".join(namespaces),
            "FBL_TICK_SECONDS": "1",
            "FBL_METRICS_PORT": str(metrics_port),
            "FBL_HEALTH_ENDPOINT": self.health_url,
            # Tests steer kwok through pod annotations (harness.KWOK_OUTCOME_ANNOTATION and its message).
            "FBL_POD_METADATA_PREFIXES": "kwok.feedbackloop.dev/",
            # A Lease of its own: operators of different tests never wait for each other's.
            "FBL_LEASE_NAMESPACE": namespaces[0] if namespaces else "default",
            "FBL_LEASE_NAME": f"feedbackloop-{uuid.uuid4().hex[:10]}",
            **env,
        }
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        self.popen = start_module("feedbackloop", self.env, self.log_path)
        ready = harness.wait_until(self._healthy, bool, timeout=30)
        if not ready:
            raise RuntimeError(f"operator did not become healthy:\n{harness.tail(self.log_path)}")
        return self

    def _healthy(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            raise RuntimeError(
                f"operator exited with {self.popen.returncode}:\n{harness.tail(self.log_path)}"
            )
        try:
            return harness._http_ok(self.health_url)
        except Exception:
            return False

    def wait_exit(self, timeout: float) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, sig)
        try:
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class ModelExporter:
    """Gauges a test sets per model label; registered with Prometheus through the file_sd list."""

    def __init__(self, endpoints: harness.Endpoints) -> None:
        self.registry = CollectorRegistry()
        self.accuracy = Gauge(
            "fbl_test_accuracy", "Accuracy a test dictates.", ["model"], registry=self.registry
        )
        self.samples = Gauge(
            "fbl_test_samples", "Feedback samples a test dictates.", ["model"], registry=self.registry
        )
        self.port = harness.free_port()
        self.server, self.thread = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        self.targets_file = endpoints.prometheus_targets_file
        self._lock = threading.Lock()
        self._register()

    def _register(self) -> None:
        with self._lock:
            current: list[dict[str, Any]] = json.loads(self.targets_file.read_text() or "[]")
            target = f"127.0.0.1:{self.port}"
            if not any(target in group.get("targets", []) for group in current):
                current.append({"targets": [target], "labels": {"suite": "operator"}})
                self.targets_file.write_text(json.dumps(current))

    def set(self, model: str, accuracy: float, samples: float = 1000) -> None:
        self._register()  # again: another test may have rewritten the shared targets file since
        self.accuracy.labels(model=model).set(accuracy)
        self.samples.labels(model=model).set(samples)

    def remove(self, model: str) -> None:
        self.accuracy.remove(model)
        self.samples.remove(model)

    def close(self) -> None:
        with self._lock:
            current: list[dict[str, Any]] = json.loads(self.targets_file.read_text() or "[]")
            target = f"127.0.0.1:{self.port}"
            kept = [group for group in current if target not in group.get("targets", [])]
            self.targets_file.write_text(json.dumps(kept))
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
