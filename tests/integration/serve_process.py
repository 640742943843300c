"""`python -m feedbackloop_serve` as a real process on a free port, and a TCP proxy a test can cut."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx

import harness
from operator_process import start_module

# One key for every server a test starts, so replicas check each other's prediction ids.
ID_KEYS = f"test:{base64.b64encode(secrets.token_bytes(32)).decode()}"


class ServerProcess:
    def __init__(
        self, endpoints: harness.Endpoints, log_path: Path, s3_endpoint: str | None = None, **env: str
    ):
        self.port = harness.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FBL_", "AWS_", "MODEL_"))},
            "AWS_ENDPOINT_URL_S3": s3_endpoint or endpoints.s3_endpoint_url,
            "AWS_ACCESS_KEY_ID": endpoints.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": endpoints.s3_secret_key,
            "AWS_DEFAULT_REGION": harness.S3_REGION,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "POD_NAME": f"server-{self.port}",
            "FBL_REDIS_URL": endpoints.redis_url,
            "FBL_PREDICTION_ID_KEYS": ID_KEYS,
            "FBL_DRAIN_SECONDS": "0",  # tests of draining set it
            **env,
        }
        self.popen: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def start(self) -> ServerProcess:
        self.popen = start_module("feedbackloop_serve", self.env, self.log_path)
        if not harness.wait_until(self._alive, bool, timeout=30):
            raise RuntimeError(f"server did not answer /healthz:\n{self.log()}")
        return self

    def _alive(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            raise RuntimeError(f"server exited with {self.popen.returncode}:\n{self.log()}")
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def readyz(self) -> httpx.Response:
        return self.http.get("/readyz")

    def wait_ready(self, timeout: float = 60) -> None:
        response = harness.wait_until(self.readyz, lambda r: r.status_code == 200, timeout=timeout)
        assert response.status_code == 200, f"{response.text}\n{self.log()}"

    def predict(self, rows: list[dict[str, Any]]) -> httpx.Response:
        return self.http.post("/predict", json={"rows": rows})

    def feedback(self, items: list[dict[str, Any]]) -> httpx.Response:
        return self.http.post("/feedback", json={"feedback": items})

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample from /metrics; None when the series does not exist."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.http.get("/metrics").text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return None

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30) -> int:
        if self.popen is None:
            return 0
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self.http.close()
        return self.popen.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def register_with(self, targets_file: Path, lock: threading.Lock) -> None:
        """Add this server to the file_sd list Prometheus watches."""
        with lock:
            current: list[dict[str, Any]] = json.loads(targets_file.read_text() or "[]")
            current.append({"targets": [f"127.0.0.1:{self.port}"], "labels": {"suite": "serving"}})
            targets_file.write_text(json.dumps(current))


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; `cut()` refuses and drops connections, like an outage."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = harness.free_port()
        self._open = threading.Event()
        self._open.set()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        self._open.clear()
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            source.close()
            sink.close()
