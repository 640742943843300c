"""`promtool check metrics` on what the operator and the model server really expose: a running operator's
/metrics with a Ready and a not-Ready loop, and a classifier's and a regressor's after traffic and feedback.
(The operator after a whole retrain, gates and rollout is linted in test_rollout.py.) And the README's alert
rules, checked and unit-tested by promtool."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from metrics_lint import assert_promtool_clean, promtool_check_metrics
from model_helpers import churn_frame, put_parquet, regression_env, run_trainer, train_champion
from serve_process import ServerProcess

import harness
from feedbackloop.adapters.artifacts import ArtifactStore
from loop_scenario import LOOP, Scenario, loop_spec
from operator_process import OperatorProcess


def test_promtool_reports_a_misnamed_counter_and_a_missing_help(endpoints: harness.Endpoints) -> None:
    """The linter the other tests rely on finds problems, and says which."""
    exposition = (
        "# TYPE fbl_bad_requests counter\nfbl_bad_requests 3\n"
        "# HELP fbl_good_total Counted.\n# TYPE fbl_good_total counter\nfbl_good_total 1\n"
    )
    done = promtool_check_metrics(endpoints, exposition)
    assert done.returncode != 0
    findings = done.stdout + done.stderr
    assert 'fbl_bad_requests counter metrics should have "_total" suffix' in findings
    assert "fbl_bad_requests no help text" in findings
    assert "fbl_good_total" not in findings


# ---------------------------------------------------------------- the README's alert rules


def readme_alert_rules() -> str:
    readme = (harness.REPO / "README.md").read_text()
    section = readme[readme.index("Alert rules to start from") :]
    return section.split("```yaml\n", 1)[1].split("\n```", 1)[0] + "\n"


def test_the_readmes_alert_rules_load_and_fire_as_documented(
    endpoints: harness.Endpoints, tmp_path: Path
) -> None:
    """A loop not Ready for 10 minutes alerts once, even when its reason changes on the way."""
    (tmp_path / "rules.yaml").write_text(readme_alert_rules())
    promtool = str(endpoints.bin_dir / "promtool")
    checked = subprocess.run(
        [promtool, "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 3 rules found" in checked.stdout

    not_ready = {"namespace": "ml", "loop": "churn"}
    annotations = {
        "summary": "FeedbackLoop ml/churn is not Ready",
        "description": "kubectl describe feedbackloop -n ml churn says why.",
    }
    ready = 'feedbackloop_loop_ready{namespace="ml",loop="%s",reason="%s"}'
    rollbacks = 'feedbackloop_rollbacks_total{namespace="ml",loop="churn",reason="AnalysisFailed"}'
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # Not ready for 5 minutes with one reason, then with another; a second loop stays Ready.
                    {"series": ready % ("churn", "PrometheusUnreachable"), "values": "0x5"},
                    {"series": ready % ("churn", "TargetNotFound"), "values": "_x6 0x14"},
                    {"series": ready % ("fine", "Ready"), "values": "1x20"},
                    {"series": rollbacks, "values": "0 0 1 1 1"},
                ],
                "alert_rule_test": [
                    {"eval_time": "9m", "alertname": "FeedbackLoopNotReady", "exp_alerts": []},
                    {
                        "eval_time": "12m",
                        "alertname": "FeedbackLoopNotReady",
                        "exp_alerts": [{"exp_labels": not_ready, "exp_annotations": annotations}],
                    },
                    {"eval_time": "1m", "alertname": "FeedbackLoopRolledBack", "exp_alerts": []},
                    {
                        "eval_time": "3m",
                        "alertname": "FeedbackLoopRolledBack",
                        "exp_alerts": [
                            {
                                "exp_labels": not_ready,
                                "exp_annotations": {"summary": "FeedbackLoop ml/churn rolled a version back"},
                            }
                        ],
                    },
                ],
            }
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    tested = subprocess.run(
        [promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


# ---------------------------------------------------------------- the operator


def test_a_running_operators_metrics_pass_promtool(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess], endpoints: harness.Endpoints
) -> None:
    operator = start_operator()
    scenario.apply_loop(loop_spec(scenario.model))
    scenario.apply_loop(loop_spec(scenario.model, **{"target.deployment": "absent"}), name="orphan")
    scenario.wait_condition("Healthy", "True")
    scenario.wait_condition("Ready", "False", "TargetNotFound", name="orphan")

    body = httpx.get(operator.metrics_url, timeout=5).text
    ns = scenario.namespace
    assert f'feedbackloop_loop_ready{{loop="{LOOP}",namespace="{ns}",reason="Ready"}} 1.0' in body
    assert f'feedbackloop_loop_ready{{loop="orphan",namespace="{ns}",reason="TargetNotFound"}} 0.0' in body
    assert f'feedbackloop_metric_value{{loop="{LOOP}",metric="accuracy",namespace="{ns}"}} 0.95' in body
    assert_promtool_clean(endpoints, body)


# ---------------------------------------------------------------- the model server


@pytest.fixture(scope="module")
def classifier(
    endpoints: harness.Endpoints, store: ArtifactStore, s3: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    """A churn classifier, trained once for the module (as in test_serving.py)."""
    bucket = f"lint-cls-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    return train_champion(endpoints, store, bucket, tmp_path_factory.mktemp("classifier"), rows=1000)


@pytest.fixture(scope="module")
def regressor(
    endpoints: harness.Endpoints, store: ArtifactStore, s3: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    """A Ridge regressor on `target` (as in test_serving.py), trained once for the module."""
    bucket = f"lint-reg-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"a": rng.normal(size=500), "kind": rng.choice(["x", "y"], 500)})
    frame["target"] = 3 * frame["a"] + (frame["kind"] == "x") * 1.5
    put_parquet(s3, bucket, "data/train/all.parquet", frame)
    code, message, stderr = run_trainer(
        endpoints, tmp_path_factory.mktemp("regressor"), **regression_env(bucket)
    )
    assert code == 0, message + stderr[-2000:]
    uri = f"s3://{bucket}/models/ml/churn/v1/"
    model = store.read_manifest(uri, "v1").file("model.joblib")
    assert model is not None
    return uri, model.sha256


@pytest.fixture
def serve(endpoints: harness.Endpoints, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(uri: str, sha256: str, **env: str) -> ServerProcess:
        server = ServerProcess(
            endpoints, tmp_path / f"server-{len(started)}.log", MODEL_URI=uri, MODEL_SHA256=sha256, **env
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def classifier_traffic() -> tuple[list[dict[str, Any]], Callable[[dict[str, Any], int], Any]]:
    frame = churn_frame(60, seed=23)
    rows = [
        {"tenure": int(r.tenure), "monthly": float(r.monthly), "plan": r.plan, "region": r.region}
        for r in frame.itertuples()
    ]
    return rows, lambda _prediction, index: int(frame["churned"].iloc[index])


def regressor_traffic() -> tuple[list[dict[str, Any]], Callable[[dict[str, Any], int], Any]]:
    rng = np.random.default_rng(5)
    values, kinds = rng.normal(size=60), rng.choice(["x", "y"], 60)
    rows = [{"a": float(a), "kind": str(k)} for a, k in zip(values, kinds, strict=True)]
    return rows, lambda prediction, _index: float(prediction["prediction"]) + 0.5


@pytest.mark.parametrize(
    ("model", "traffic", "error_metric"),
    [
        ("classifier", classifier_traffic, "fbl_feedback_correct_total"),
        ("regressor", regressor_traffic, "fbl_feedback_squared_error_total"),
    ],
)
def test_a_model_servers_metrics_pass_promtool_after_traffic_and_feedback(
    request: pytest.FixtureRequest,
    serve: Callable[..., ServerProcess],
    endpoints: harness.Endpoints,
    model: str,
    traffic: Callable[[], tuple[list[dict[str, Any]], Callable[[dict[str, Any], int], Any]]],
    error_metric: str,
) -> None:
    uri, sha256 = request.getfixturevalue(model)
    server = serve(uri, sha256, MODEL_NAME=model)
    server.wait_ready()
    rows, label_of = traffic()
    predicted = server.predict(rows)
    assert predicted.status_code == 200, predicted.text
    predictions = predicted.json()["predictions"]
    labels = [{"id": p["id"], "label": label_of(p, i)} for i, p in enumerate(predictions)]
    answer = server.feedback([*labels, {"id": "no-such-id", "label": labels[0]["label"]}])
    assert answer.json()["accepted"] == len(rows)

    body = server.http.get("/metrics").text
    # Every family is there with samples, so promtool lints the series a scrape really gets.
    assert server.metric("fbl_feedback_total", model=model) == len(rows)
    assert (server.metric(error_metric, model=model) or 0) > 0
    assert server.metric("fbl_feedback_refused_total", model=model, reason="malformed") == 1
    assert server.metric("fbl_feature_drift_psi", model=model) is not None
    assert server.metric("fbl_prediction_latency_seconds_count", model=model) == 1
    assert_promtool_clean(endpoints, body)
