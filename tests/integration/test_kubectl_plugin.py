"""`kubectl feedbackloop`: the real kubectl runs the plugin from PATH against the real API and S3 servers.

No operator runs: each test writes a realistic status through the status subresource, then reads what the
plugin printed and what it changed on the object in the API server.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import harness
from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.api import (
    ABORT_ANNOTATION,
    API_VERSION,
    CRD_NAME,
    PROMOTE_ANNOTATION,
    REQUESTED_AT_ANNOTATION,
    RETRAIN_REQUEST_ANNOTATION,
    ROLLBACK_ANNOTATION,
)
from feedbackloop.core import contract
from harness import wait_until
from loop_scenario import BUCKET, LOOP, PREFIX, loop_spec

pytestmark = pytest.mark.integration

VENV_BIN = Path(sys.executable).parent
OTHER_LOOP = "fraud"
ALL_VERSIONS = "v1, v2, v3, v4, v5"
FIELD_MANAGER = "feedbackloop-cli"


def ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def loop_status(namespace: str) -> dict[str, Any]:
    """A Recommend loop some way in: v1 served then replaced by v2, v3 failed, v4 rejected, v5 recommended."""

    def uri(version: str) -> str:
        return contract.version_uri(BUCKET, PREFIX, namespace, LOOP, version)

    def condition(kind: str, status: str, reason: str, message: str, age: float) -> dict[str, Any]:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": ago(age),
        }

    return {
        "observedGeneration": 1,
        "phase": "Recommending",
        "conditions": [
            condition("Ready", "True", "Ready", "Prometheus, the artifact store and the target answer", 7200),
            condition("Healthy", "False", "ThresholdBreached", "accuracy 0.71 < min 0.85 for 10m", 600),
            condition("Retraining", "False", "RetrainSucceeded", "v5 trained by churn-retrain-5", 300),
            condition("Validated", "True", "GatesPassed", "v5: accuracy 0.93 >= min 0.85", 290),
            condition("RolledOut", "True", "AnalysisSuccessful", "v2 serves: 2/2 measurements", 5400),
            condition("Degraded", "False", "NotDegraded", "v2 passed its analysis", 5400),
        ],
        "lastEvaluation": {
            "time": ago(30),
            "metrics": [
                {
                    "name": "accuracy",
                    "value": 0.71,
                    "threshold": {"min": 0.85},
                    "samples": 120,
                    "verdict": "Breached",
                    "reason": "ThresholdBreached",
                    "message": "0.71 < min 0.85",
                    "breachingSince": ago(600),
                }
            ],
        },
        "currentModel": {
            "version": "v2",
            "uri": uri("v2"),
            "sha256": sha("model v2"),
            "metrics": {"accuracy": 0.88},
            "deployedAt": ago(5400),
        },
        "candidateModel": {
            "version": "v5",
            "job": "churn-retrain-5",
            "uri": uri("v5"),
            "sha256": sha("model v5"),
            "trigger": "Breach",
            "metrics": {"accuracy": 0.93},
            "currentMetrics": {"accuracy": 0.71},
            "validation": "Passed",
            "validatedAt": ago(290),
            "gates": [
                {
                    "metric": "accuracy",
                    "value": 0.93,
                    "threshold": "min 0.85",
                    "verdict": "Passed",
                    "reason": "WithinBound",
                    "message": "accuracy 0.93 >= min 0.85",
                },
                {
                    "metric": "accuracy",
                    "value": 0.22,
                    "threshold": "minDeltaVsCurrent 0",
                    "verdict": "Passed",
                    "reason": "WithinBound",
                    "message": "accuracy delta 0.22 >= 0 vs v2",
                },
            ],
        },
        "recommendedVersion": "v5",
        "retrainCount": 5,
        "lastRetrainTime": ago(400),
        "rejectedVersions": ["v4"],
        "history": [
            {
                "version": "v1",
                "trigger": "Schedule",
                "outcome": "RolledOut",
                "gates": "Passed",
                "analysis": "Successful",
                "startedAt": ago(90000),
                "retrainedAt": ago(89000),
                "rolledOutAt": ago(88000),
                "finishedAt": ago(87000),
            },
            {
                "version": "v2",
                "trigger": "Breach",
                "outcome": "RolledOut",
                "gates": "Passed",
                "analysis": "Successful",
                "startedAt": ago(7200),
                "retrainedAt": ago(6800),
                "rolledOutAt": ago(6000),
                "finishedAt": ago(5400),
            },
            {
                "version": "v3",
                "trigger": "Manual",
                "outcome": "RetrainFailed",
                "reason": "RetrainJobFailed",
                "message": "label column churned is missing",
                "startedAt": ago(3600),
                "finishedAt": ago(3500),
            },
            {
                "version": "v4",
                "trigger": "Breach",
                "outcome": "Rejected",
                "reason": "GatesFailed",
                "gates": "Failed",
                "startedAt": ago(1800),
                "retrainedAt": ago(1700),
                "finishedAt": ago(1690),
            },
            {
                "version": "v5",
                "trigger": "Breach",
                "outcome": "Recommended",
                "gates": "Passed",
                "startedAt": ago(600),
                "retrainedAt": ago(300),
                "validatedAt": ago(290),
            },
        ],
    }


@dataclass
class Plugin:
    """`kubectl feedbackloop ...` as a user runs it: kubectl finds the plugin on PATH."""

    cluster: harness.Cluster
    endpoints: harness.Endpoints
    namespace: str
    env: dict[str, str]

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.endpoints.bin_dir / "kubectl"), "feedbackloop", *args],
            env=env if env is not None else self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        printed = result.stdout + result.stderr
        assert "Traceback" not in printed, printed
        for secret in (self.endpoints.s3_secret_key, self.endpoints.admin_token, self.endpoints.user_token):
            assert secret not in printed, "the plugin printed a secret"
        return result

    def ok(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = self.run(*args, "-n", self.namespace, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def fails(self, *args: str, env: dict[str, str] | None = None) -> str:
        """Exit code 1 and one `error:` line on stderr; returns that line."""
        result = self.run(*args, "-n", self.namespace, env=env)
        assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
        assert result.stdout == ""
        assert result.stderr.startswith("error: "), result.stderr
        return result.stderr.strip()

    def kubectl(self, *args: str, input_text: str | None = None) -> str:
        return self.cluster.kubectl(*args, "-n", self.namespace, input_text=input_text).stdout

    def apply_loop(self, name: str, **changes: Any) -> None:
        spec = loop_spec(self.namespace, **changes)
        spec["prometheus"]["url"] = self.endpoints.prometheus_url
        body = {"apiVersion": API_VERSION, "kind": "FeedbackLoop", "metadata": {"name": name}}
        self.kubectl("apply", "-f", "-", input_text=json.dumps({**body, "spec": spec}))

    def set_status(self, name: str, status: dict[str, Any]) -> None:
        patch = json.dumps({"status": status})
        self.kubectl("patch", "fbl", name, "--subresource=status", "--type=merge", "-p", patch)

    def loop(self, name: str = LOOP) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(
            self.kubectl("get", "fbl", name, "-o", "json", "--show-managed-fields")
        )
        return loaded

    def annotations(self, name: str = LOOP) -> dict[str, str]:
        found: dict[str, str] = self.loop(name)["metadata"].get("annotations") or {}
        return found


@pytest.fixture
def plugin(
    cluster: harness.Cluster,
    endpoints: harness.Endpoints,
    namespace: str,
    crd: dict[str, Any],
    tmp_path: Path,
) -> Plugin:
    assert (VENV_BIN / "kubectl-feedbackloop").exists(), "run `pip install -e .` to create the console script"
    env = {
        "PATH": os.pathsep.join([str(VENV_BIN), str(endpoints.bin_dir), os.defpath]),
        "HOME": str(tmp_path / "home"),  # the default report cache and kubectl's cache go here
        "KUBECONFIG": str(endpoints.kubeconfig),
        "AWS_ACCESS_KEY_ID": endpoints.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": endpoints.s3_secret_key,
        "AWS_ENDPOINT_URL_S3": endpoints.s3_endpoint_url,
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata lookup when credentials are missing
    }
    # A worktree's own sources, when the venv's editable install is another checkout.
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.pathsep.join(map(os.path.abspath, os.environ["PYTHONPATH"].split(os.pathsep)))
    running = Plugin(cluster, endpoints, namespace, env)
    running.apply_loop(LOOP, mode="Recommend")
    running.set_status(LOOP, loop_status(namespace))
    return running


def parse_table(text: str) -> list[dict[str, str]]:
    """Rows of a kubectl-style table, cut at the header's column starts (cells may contain single spaces)."""
    header, *lines = text.rstrip("\n").splitlines()
    starts = [match.start() for match in re.finditer(r"(?:^|(?<=\s{2}))\S", header)]
    names = [header[start:end].strip() for start, end in zip(starts, [*starts[1:], None], strict=True)]
    return [
        {
            name: line[start:end].strip()
            for name, start, end in zip(names, starts, [*starts[1:], None], strict=True)
        }
        for line in lines
    ]


def write_version(store: ArtifactStore, namespace: str, version: str, report: bytes | None) -> str:
    uri = contract.version_uri(BUCKET, PREFIX, namespace, LOOP, version)
    files = {
        "model.joblib": f"model {version}".encode(),
        "metrics.json": json.dumps({"schemaVersion": 1, "candidate": {"accuracy": 0.9}}).encode(),
    }
    if report is not None:
        files["report.html"] = report
    store.write_version(uri, version, files, {"job": {"name": f"{LOOP}-retrain-{version[1:]}"}})
    return uri


def report_html(namespace: str, version: str) -> bytes:
    return f"<!doctype html><h1>Model {version} of {namespace}: error analysis</h1>".encode()


# ---------------------------------------------------------------- status, describe, history


def test_status_shows_versions_and_conditions_of_every_loop(plugin: Plugin) -> None:
    plugin.apply_loop(OTHER_LOOP, suspend=True)

    rows = parse_table(plugin.ok("status"))

    assert [row["NAME"] for row in rows] == [LOOP, OTHER_LOOP]
    churn, fraud = rows
    assert churn == {
        "NAME": LOOP,
        "MODE": "Recommend",
        "MODEL VERSION": "v2",
        "CANDIDATE": "v5 (Passed)",
        "READY": "True",
        "HEALTHY": "False (ThresholdBreached)",
        "RETRAINING": "RetrainSucceeded",
        "LAST EVALUATION": churn["LAST EVALUATION"],
    }
    assert re.fullmatch(r"\d+s ago", churn["LAST EVALUATION"]), churn
    assert fraud == {
        "NAME": OTHER_LOOP,
        "MODE": "Auto (suspended)",
        "MODEL VERSION": "<none>",
        "CANDIDATE": "<none>",
        "READY": "<none>",
        "HEALTHY": "<none>",
        "RETRAINING": "<none>",
        "LAST EVALUATION": "<none>",
    }


def test_status_all_namespaces_adds_the_namespace_column(plugin: Plugin) -> None:
    # Options may also stand before the subcommand; -A ignores the namespace.
    result = plugin.run("-n", "default", "status", "-A")
    assert result.returncode == 0, result.stderr

    rows = [row for row in parse_table(result.stdout) if row["NAMESPACE"] == plugin.namespace]

    assert [(row["NAME"], row["MODEL VERSION"], row["HEALTHY"]) for row in rows] == [
        (LOOP, "v2", "False (ThresholdBreached)")
    ]


def test_status_of_an_empty_namespace_says_so(plugin: Plugin) -> None:
    plugin.kubectl("delete", "fbl", LOOP)

    result = plugin.run("status", "-n", plugin.namespace)

    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr.strip() == f'No FeedbackLoops found in namespace "{plugin.namespace}".'


def test_describe_shows_conditions_evaluation_models_and_gates(plugin: Plugin) -> None:
    out = plugin.ok("describe", LOOP)

    assert re.search(rf"^Name:\s+{LOOP}$", out, re.M)
    assert re.search(r"^Mode:\s+Recommend$", out, re.M)
    assert re.search(r"^Recommended:\s+v5$", out, re.M)
    assert re.search(r"^Rejected:\s+v4$", out, re.M)
    # Conditions: type, status, reason, age, message.
    assert re.search(
        r"^  Healthy\s+False\s+ThresholdBreached\s+10m\s+accuracy 0\.71 < min 0\.85 for 10m$", out, re.M
    )
    assert re.search(r"^  Validated\s+True\s+GatesPassed\s+\S+\s+v5: accuracy 0\.93 >= min 0\.85$", out, re.M)
    # The last evaluation: value, threshold, samples, verdict, reason, breaching for.
    assert re.search(r"^Last evaluation:\s+\d+s ago", out, re.M)
    assert re.search(
        r"^  accuracy\s+0\.71\s+min 0\.85\s+120\s+Breached\s+ThresholdBreached\s+10m\s+0\.71", out, re.M
    )
    # Current and candidate models, and the candidate's gates.
    current = out.split("Current model:")[1].split("Candidate model:")[0]
    assert re.search(r"Version:\s+v2\n", current)
    assert contract.version_uri(BUCKET, PREFIX, plugin.namespace, LOOP, "v2") in current
    assert re.search(r"Metrics:\s+accuracy=0\.88\n", current)
    candidate = out.split("Candidate model:")[1]
    assert re.search(r"Version:\s+v5\n", candidate)
    assert re.search(r"Validation:\s+Passed\n", candidate)
    assert re.search(
        r"^    accuracy\s+0\.93\s+min 0\.85\s+Passed\s+WithinBound\s+accuracy 0\.93 >= min 0\.85$", out, re.M
    )
    assert re.search(r"^    accuracy\s+0\.22\s+minDeltaVsCurrent 0\s+Passed\s+WithinBound\s+", out, re.M)
    assert re.search(
        r"^Latest history entry:\s+v5 Recommended \(trigger Breach, gates Passed, analysis <none>", out, re.M
    )


def test_history_has_one_row_per_version(plugin: Plugin) -> None:
    rows = parse_table(plugin.ok("history", LOOP))

    assert [
        (row["VERSION"], row["TRIGGER"], row["OUTCOME"], row["REASON"], row["GATES"], row["ANALYSIS"])
        for row in rows
    ] == [
        ("v1", "Schedule", "RolledOut", "<none>", "Passed", "Successful"),
        ("v2", "Breach", "RolledOut", "<none>", "Passed", "Successful"),
        ("v3", "Manual", "RetrainFailed", "RetrainJobFailed", "<none>", "<none>"),
        ("v4", "Breach", "Rejected", "GatesFailed", "Failed", "<none>"),
        ("v5", "Breach", "Recommended", "<none>", "Passed", "<none>"),
    ]
    assert [(row["STARTED"], row["FINISHED"]) for row in rows[1:3]] == [("120m", "90m"), ("60m", "58m")]
    assert (rows[0]["STARTED"], rows[0]["ROLLED OUT"]) == ("25h", "24h")
    assert rows[4]["FINISHED"] == "<none>"


# ---------------------------------------------------------------- report


def test_report_of_the_current_model_lands_verified_in_the_cache(
    plugin: Plugin, store: ArtifactStore
) -> None:
    written = report_html(plugin.namespace, "v2")
    write_version(store, plugin.namespace, "v2", written)

    out = plugin.ok("report", LOOP)

    expected = Path(
        plugin.env["HOME"], ".cache/feedbackloop/reports", plugin.namespace, LOOP, "v2/report.html"
    )
    assert out == f"{expected}\n"
    assert expected.read_bytes() == written


def test_report_of_a_named_version_to_a_directory_and_opened(
    plugin: Plugin, store: ArtifactStore, tmp_path: Path
) -> None:
    written = report_html(plugin.namespace, "v1")
    write_version(store, plugin.namespace, "v1", written)
    opened = tmp_path / "opened-url"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\nprintf %s "$1" > {opened}\n')
    browser.chmod(0o755)

    out = plugin.ok(
        "report",
        LOOP,
        "v1",
        "--output",
        str(tmp_path / "out"),
        "--open",
        env={**plugin.env, "BROWSER": str(browser)},
    )

    saved = tmp_path / "out" / "report.html"
    assert out == f"{saved}\n"
    assert saved.read_bytes() == written
    assert opened.read_text() == saved.as_uri()


def test_report_endpoint_option_and_fbl_variable(
    plugin: Plugin, store: ArtifactStore, tmp_path: Path
) -> None:
    written = report_html(plugin.namespace, "v2")
    write_version(store, plugin.namespace, "v2", written)
    env = {key: value for key, value in plugin.env.items() if key != "AWS_ENDPOINT_URL_S3"}

    by_option = plugin.ok(
        "report",
        LOOP,
        "--output",
        str(tmp_path / "a"),
        "--s3-endpoint",
        plugin.endpoints.s3_endpoint_url,
        env=env,
    )
    by_variable = plugin.ok(
        "report",
        LOOP,
        "--output",
        str(tmp_path / "b"),
        env={**env, "FBL_S3_ENDPOINT_URL": plugin.endpoints.s3_endpoint_url},
    )

    assert Path(by_option.strip()).read_bytes() == written
    assert Path(by_variable.strip()).read_bytes() == written


def test_report_refuses_bytes_changed_after_the_manifest(
    plugin: Plugin, store: ArtifactStore, s3: Any, tmp_path: Path
) -> None:
    uri = write_version(store, plugin.namespace, "v2", report_html(plugin.namespace, "v2"))
    bucket, prefix = contract.split_s3_uri(uri)
    s3.put_object(Bucket=bucket, Key=prefix + "report.html", Body=b"<script>tampered</script>")

    error = plugin.fails("report", LOOP, "--output", str(tmp_path / "out"))

    assert error == (
        f"error: refused {uri}report.html: its sha256 does not match v2's manifest, "
        "so it changed after the trainer wrote it; nothing was saved"
    )
    assert list((tmp_path / "out").iterdir()) == []


def test_report_errors_name_the_problem(plugin: Plugin, store: ArtifactStore, tmp_path: Path) -> None:
    uri_v1 = write_version(store, plugin.namespace, "v1", report=None)
    uri_v5 = contract.version_uri(BUCKET, PREFIX, plugin.namespace, LOOP, "v5")
    output = ("--output", str(tmp_path / "out"))

    assert plugin.fails("report", LOOP, "v9", *output) == (
        f'error: unknown version v9 of FeedbackLoop "{LOOP}"; known versions: {ALL_VERSIONS}'
    )
    assert plugin.fails("report", LOOP, "v1", *output) == (
        f"error: v1 has no report.html among its artifacts at {uri_v1} "
        "(manifest lists: metrics.json, model.joblib)"
    )
    assert plugin.fails("report", LOOP, "v5", *output) == (
        f"error: v5 has no manifest.json at {uri_v5}: the store holds no such version"
    )
    without_credentials = {
        **{
            key: value
            for key, value in plugin.env.items()
            if not key.startswith("AWS_ACCESS") and "SECRET" not in key
        },
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
    }
    assert plugin.fails("report", LOOP, "v1", *output, env=without_credentials) == (
        "error: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS profile) "
        "to read the artifact store"
    )
    wrong_secret = {**plugin.env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    store_url = plugin.endpoints.s3_endpoint_url
    assert plugin.fails("report", LOOP, "v1", *output, env=wrong_secret) in {
        f"error: {store_url} rejected the S3 credentials (SignatureDoesNotMatch)",
        f"error: {store_url} denied access to {uri_v1} with the S3 credentials in use",
    }


def test_report_without_a_current_model_asks_for_a_version(plugin: Plugin) -> None:
    plugin.apply_loop(OTHER_LOOP)
    plugin.set_status(
        OTHER_LOOP, {"history": [{"version": "v1", "trigger": "Manual", "outcome": "Recommended"}]}
    )

    assert plugin.fails("report", OTHER_LOOP) == (
        f'error: FeedbackLoop "{OTHER_LOOP}" serves no known model yet: name a VERSION (known versions: v1)'
    )


# ---------------------------------------------------------------- retrain, promote, rollback, suspend, resume


def managers_of(loop: dict[str, Any], field: str) -> set[str]:
    return {
        entry["manager"]
        for entry in loop["metadata"]["managedFields"]
        if field in json.dumps(entry["fieldsV1"])
    }


def test_retrain_sets_a_fresh_request_each_time(plugin: Plugin) -> None:
    first = plugin.ok("retrain", LOOP)
    value_one = plugin.annotations()[RETRAIN_REQUEST_ANNOTATION]
    second = plugin.ok("retrain", LOOP)
    value_two = plugin.annotations()[RETRAIN_REQUEST_ANNOTATION]

    described = f'FeedbackLoop "{LOOP}" in namespace "{plugin.namespace}"'
    assert first == f"{described}: retrain requested (feedbackloop.dev/retrain-requested={value_one})\n"
    assert second == f"{described}: retrain requested (feedbackloop.dev/retrain-requested={value_two})\n"
    assert value_one != value_two
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", value_two)
    assert managers_of(plugin.loop(), f"f:{RETRAIN_REQUEST_ANNOTATION}") == {FIELD_MANAGER}


def test_retrain_of_a_suspended_loop_warns_that_it_waits(plugin: Plugin) -> None:
    plugin.ok("suspend", LOOP)

    result = plugin.run("retrain", LOOP, "-n", plugin.namespace)

    assert result.returncode == 0
    assert (
        result.stderr
        == f"warning: the loop is suspended: the retrain waits until `kubectl feedbackloop resume {LOOP}`\n"
    )
    assert RETRAIN_REQUEST_ANNOTATION in plugin.annotations()


def test_promote_accepts_only_the_validated_candidate(plugin: Plugin) -> None:
    out = plugin.ok("promote", LOOP, "v5")

    token = plugin.annotations()[REQUESTED_AT_ANNOTATION]
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", token)
    assert out == (
        f'FeedbackLoop "{LOOP}" in namespace "{plugin.namespace}": promotion of v5 requested '
        f"(feedbackloop.dev/promote=v5, feedbackloop.dev/requested-at={token})\n"
    )
    assert plugin.annotations()[PROMOTE_ANNOTATION] == "v5"
    assert plugin.fails("promote", LOOP, "v4") == (
        f'error: cannot promote v4 on FeedbackLoop "{LOOP}": the operator rejected it; '
        f"promotable: v5; known versions: {ALL_VERSIONS}"
    )
    assert plugin.fails("promote", LOOP, "v9") == (
        f'error: cannot promote v9 on FeedbackLoop "{LOOP}": it is not the validated candidate; '
        f"promotable: v5; known versions: {ALL_VERSIONS}"
    )
    assert plugin.annotations()[PROMOTE_ANNOTATION] == "v5"  # refusals change nothing


def test_a_handled_request_asked_again_is_a_new_one_and_the_other_request_goes(plugin: Plugin) -> None:
    plugin.kubectl("annotate", "fbl", LOOP, f"{ROLLBACK_ANNOTATION}=v1", f"{REQUESTED_AT_ANNOTATION}=monday")
    plugin.set_status(LOOP, {"handledPromoteRequest": "v5", "handledRollbackRequest": "v1@monday"})

    out = plugin.ok("promote", LOOP, "v5")

    token = plugin.annotations()[REQUESTED_AT_ANNOTATION]
    assert out == (
        f'FeedbackLoop "{LOOP}" in namespace "{plugin.namespace}": promotion of v5 requested '
        f"(feedbackloop.dev/promote=v5, feedbackloop.dev/requested-at={token}, "
        "feedbackloop.dev/rollback-to removed)\n"
    )
    assert {key: plugin.annotations().get(key) for key in (PROMOTE_ANNOTATION, ROLLBACK_ANNOTATION)} == {
        PROMOTE_ANNOTATION: "v5",
        ROLLBACK_ANNOTATION: None,
    }
    assert managers_of(plugin.loop(), f"f:{REQUESTED_AT_ANNOTATION}") == {FIELD_MANAGER}

    plugin.set_status(LOOP, {"handledPromoteRequest": f"v5@{token}"})
    result = plugin.run("promote", LOOP, "v5", "-n", plugin.namespace)
    assert (result.returncode, result.stderr) == (0, "")
    assert plugin.annotations()[REQUESTED_AT_ANNOTATION] != token


def test_rollback_accepts_stored_versions_that_are_neither_serving_nor_rejected(plugin: Plugin) -> None:
    out = plugin.ok("rollback", LOOP, "v1")

    token = plugin.annotations()[REQUESTED_AT_ANNOTATION]
    assert out == (
        f'FeedbackLoop "{LOOP}" in namespace "{plugin.namespace}": rollback to v1 requested '
        f"(feedbackloop.dev/rollback-to=v1, feedbackloop.dev/requested-at={token})\n"
    )
    assert plugin.annotations()[ROLLBACK_ANNOTATION] == "v1"
    targets = f"rollback targets: v1, v5; known versions: {ALL_VERSIONS}"
    refused = f'error: cannot roll FeedbackLoop "{LOOP}" back to'
    assert plugin.fails("rollback", LOOP, "v2") == f"{refused} v2: it is already serving; {targets}"
    assert plugin.fails("rollback", LOOP, "v4") == f"{refused} v4: the operator rejected it; {targets}"
    assert plugin.fails("rollback", LOOP, "v3") == (
        f"{refused} v3: its retrain failed, so it has no verified artifacts; {targets}"
    )
    assert plugin.fails("rollback", LOOP, "v0") == (
        f"{refused} v0: the status does not know it (use --force for a version stored outside the status); "
        f"{targets}"
    )
    assert plugin.annotations()[ROLLBACK_ANNOTATION] == "v1"

    plugin.ok("rollback", LOOP, "v0", "--force")
    assert plugin.annotations()[ROLLBACK_ANNOTATION] == "v0"
    assert managers_of(plugin.loop(), f"f:{ROLLBACK_ANNOTATION}") == {FIELD_MANAGER}


def test_rollback_warns_while_a_rollout_is_in_flight(plugin: Plugin) -> None:
    plugin.set_status(
        LOOP,
        {
            "activeRetrain": {
                "job": "churn-retrain-6",
                "version": "v6",
                "number": 6,
                "trigger": "Breach",
                "startedAt": ago(20),
            }
        },
    )

    result = plugin.run("rollback", LOOP, "v1", "-n", plugin.namespace)

    assert result.returncode == 0
    assert result.stderr == "warning: retrain of v6 is in flight: the rollback waits until it ends\n"


def test_abort_sets_a_fresh_request_and_warns_when_there_is_nothing_to_stop(plugin: Plugin) -> None:
    idle = plugin.run("abort", LOOP, "-n", plugin.namespace)
    first = plugin.annotations()[ABORT_ANNOTATION]
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", first)
    described = f'FeedbackLoop "{LOOP}" in namespace "{plugin.namespace}"'
    assert (idle.returncode, idle.stdout) == (
        0,
        f"{described}: abort requested ({ABORT_ANNOTATION}={first})\n",
    )
    assert (
        idle.stderr
        == "warning: no rollout is in flight: the operator records the abort and changes nothing\n"
    )

    uri = contract.version_uri(BUCKET, PREFIX, plugin.namespace, LOOP, "v5")
    rollout = {
        "version": "v5",
        "uri": uri,
        "sha256": sha("model v5"),
        "kind": "Promotion",
        "phase": "Analyzing",
    }
    plugin.set_status(
        LOOP,
        {"rollout": {**rollout, "trigger": "ManualPromote", "startedAt": ago(60), "phaseStartedAt": ago(30)}},
    )
    stopping = plugin.run("abort", LOOP, "-n", plugin.namespace)
    assert (stopping.returncode, stopping.stderr) == (0, "")
    assert plugin.annotations()[ABORT_ANNOTATION] != first  # a new request, handled once more

    plugin.set_status(LOOP, {"rollout": {"phase": "RollingBack"}})
    rolling_back = plugin.run("abort", LOOP, "-n", plugin.namespace)
    assert rolling_back.stderr == "warning: the rollback of v5 in flight is never aborted: it goes on\n"


def test_suspend_and_resume_set_spec_suspend(plugin: Plugin) -> None:
    described = f'FeedbackLoop "{LOOP}" in namespace "{plugin.namespace}"'

    assert plugin.ok("suspend", LOOP) == f"{described} suspended (spec.suspend=true)\n"
    assert plugin.loop()["spec"]["suspend"] is True
    assert managers_of(plugin.loop(), "f:suspend") == {FIELD_MANAGER}
    assert plugin.ok("resume", LOOP) == f"{described} resumed (spec.suspend=false)\n"
    assert plugin.loop()["spec"]["suspend"] is False


# ---------------------------------------------------------------- errors


def test_an_unknown_loop_is_named_with_its_namespace(plugin: Plugin) -> None:
    expected = f'error: FeedbackLoop "nope" not found in namespace "{plugin.namespace}"'
    for command in (
        ["describe", "nope"],
        ["history", "nope"],
        ["report", "nope"],
        ["retrain", "nope"],
        ["promote", "nope", "v1"],
        ["rollback", "nope", "v1"],
        ["suspend", "nope"],
        ["resume", "nope"],
    ):
        assert plugin.fails(*command) == expected, command


def test_forbidden_says_which_verb_on_which_resource(plugin: Plugin) -> None:
    limited = {**plugin.env, "KUBECONFIG": str(plugin.endpoints.limited_kubeconfig)}

    listed = plugin.fails("status", env=limited)
    got = plugin.fails("describe", LOOP, env=limited)

    resource, where = CRD_NAME, f'in namespace "{plugin.namespace}"'
    assert listed.startswith(f"error: forbidden: you may not list {resource} {where} ("), listed
    assert got.startswith(f'error: forbidden: you may not get {resource} "{LOOP}" {where} ('), got
    assert 'User "fbl-user" cannot get resource "feedbackloops"' in got


def test_forbidden_patch_names_the_patch_verb(plugin: Plugin) -> None:
    # The plain user may read loops in this namespace, not change them.
    plugin.kubectl("create", "role", "fbl-reader", "--verb=get,list", f"--resource={CRD_NAME}")
    plugin.kubectl("create", "rolebinding", "fbl-reader", "--role=fbl-reader", "--user=fbl-user")
    limited = {**plugin.env, "KUBECONFIG": str(plugin.endpoints.limited_kubeconfig)}
    readable = wait_until(
        lambda: plugin.run("status", "-n", plugin.namespace, env=limited), lambda r: r.returncode == 0, 30
    )
    assert readable.returncode == 0, readable.stderr

    error = plugin.fails("retrain", LOOP, env=limited)

    where = f'in namespace "{plugin.namespace}"'
    assert error.startswith(
        f'error: forbidden: you may not patch feedbackloops.feedbackloop.dev "{LOOP}" {where} ('
    ), error
    assert RETRAIN_REQUEST_ANNOTATION not in plugin.annotations()


def test_unreachable_server_and_bad_kubeconfig(plugin: Plugin, tmp_path: Path) -> None:
    config = json.loads(plugin.endpoints.kubeconfig.read_text())
    closed = f"https://127.0.0.1:{harness.free_port()}"
    config["clusters"][0]["cluster"]["server"] = closed
    unreachable = tmp_path / "unreachable.kubeconfig"
    unreachable.write_text(json.dumps(config))
    garbage = tmp_path / "garbage.kubeconfig"
    garbage.write_text("clusters: [unterminated\n")

    refused = plugin.fails("status", env={**plugin.env, "KUBECONFIG": str(unreachable)})
    missing = plugin.fails("--kubeconfig", str(tmp_path / "absent"), "status")
    malformed = plugin.fails("status", "--kubeconfig", str(garbage))
    no_context = plugin.fails("status", "--context", "elsewhere")

    assert refused.startswith(f"error: cannot reach the Kubernetes API server at {closed}: "), refused
    assert "Connection refused" in refused
    assert missing.startswith(f"error: cannot load the kubeconfig {tmp_path / 'absent'}: "), missing
    assert malformed.startswith(f"error: cannot load the kubeconfig {garbage}: "), malformed
    assert no_context == (
        f'error: context "elsewhere" is not in the kubeconfig {plugin.endpoints.kubeconfig} (contexts: fbl)'
    )


def test_usage_errors_exit_with_2(plugin: Plugin) -> None:
    for command in (["promote", LOOP], ["frobnicate"], [], ["status", "--bogus"]):
        result = plugin.run(*command)
        assert result.returncode == 2, (command, result.stderr)
        assert "usage: kubectl feedbackloop" in result.stderr
