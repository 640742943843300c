"""The model server against its own OpenAPI document, fuzzed by schemathesis with every check it has.

A classifier and a regressor each serve with the shared store; schemathesis generates valid and invalid
bodies from /openapi.json and fails on any 5xx, any undocumented status, content type, header or body, and
any valid body refused or invalid body accepted.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from model_helpers import train_champion, train_regressor
from serve_process import ServerProcess

import harness
from feedbackloop.adapters.artifacts import ArtifactStore

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
HERE = Path(__file__).parent
EXAMPLES_PER_OPERATION = 40  # enough to find the outside findings again; the whole file stays under a minute


@pytest.fixture(scope="module")
def versions(
    endpoints: harness.Endpoints, store: ArtifactStore, s3: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[str, str]]:
    buckets = {task: f"contract-{task}-{uuid.uuid4().hex[:8]}" for task in ("classifier", "regressor")}
    for bucket in buckets.values():
        s3.create_bucket(Bucket=bucket)
    classifier = train_champion(
        endpoints, store, buckets["classifier"], tmp_path_factory.mktemp("classifier"), rows=1000
    )
    regressor = train_regressor(endpoints, store, buckets["regressor"], tmp_path_factory.mktemp("regressor"))
    return {"classifier": classifier, "regressor": regressor}


@pytest.fixture
def serve(endpoints: harness.Endpoints, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(uri: str, sha256: str, **env: str) -> ServerProcess:
        server = ServerProcess(endpoints, tmp_path / "server.log", MODEL_URI=uri, MODEL_SHA256=sha256, **env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def schemathesis(url: str, report: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(SCHEMATHESIS), "run", f"{url}/openapi.json",
            "--checks", "all",
            "--exclude-checks", "positive_data_acceptance",  # replaced by schemathesis_hooks.py's version
            "--max-examples", str(EXAMPLES_PER_OPERATION),
            "--seed", "20261202",
            "--generation-database", "none",
            "--request-timeout", "20",
            "--workers", "1",  # hypothesis reprs lambdas with ast.parse, which 3.11 threads can crash
            "--no-color",
            "--report", "junit", "--report-junit-path", str(report),
            *extra,
        ],
        cwd=report.parent,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks", "PYTHONPATH": str(HERE)},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("task", ["classifier", "regressor"])
def test_schemathesis_finds_no_server_error_and_no_undocumented_response(
    task: str,
    versions: dict[str, tuple[str, str]],
    serve: Callable[..., ServerProcess],
    tmp_path: Path,
) -> None:
    # The classifier also requires a bearer token: `ignored_auth` checks a request without it is refused.
    token = tmp_path / "token"
    token.write_text(secrets.token_urlsafe(24))
    auth = {"FBL_SERVE_TOKEN_FILE": str(token)} if task == "classifier" else {}
    server = serve(*versions[task], MODEL_NAME=task, **auth)
    server.wait_ready()
    headers = ["--header", f"Authorization: Bearer {token.read_text()}"] if auth else []
    run = schemathesis(server.url, tmp_path / "junit.xml", *headers)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    # Every operation was exercised, and the server neither failed nor restarted under the fuzzing.
    suite = ElementTree.parse(tmp_path / "junit.xml").getroot()  # noqa: S314 - written by the run above
    tested = {case.get("name") for case in suite.iter("testcase")}
    assert tested == {"POST /predict", "POST /feedback", "GET /healthz", "GET /readyz", "GET /metrics"}
    assert suite.get("failures") == "0" and suite.get("errors") == "0"
    assert (server.metric("fbl_predictions_total", model=task, model_version="v1") or 0) > 0
    if auth:
        assert (server.metric("fbl_unauthorized_requests_total", path="/predict") or 0) > 0
    assert "Traceback" not in server.log(), server.log()[-3000:]
