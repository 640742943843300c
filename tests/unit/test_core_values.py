"""PromQL templating, the retrain Job's shape, the manifest contract, durations and spec parsing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from core_inputs import REF, T0, spec_dict
from feedbackloop.api import API_VERSION, LABEL_LOOP, LABEL_VERSION, Trigger
from feedbackloop.core import contract
from feedbackloop.core.builders import JobSettings, build_retrain_job
from feedbackloop.core.durations import format_duration, parse_duration
from feedbackloop.core.promql import UnsafeQueryError, quote_label_value, render_query, template_variables
from feedbackloop.core.spec import SpecError, parse_spec
from feedbackloop.core.status import ActiveRetrain, ModelRef

# ---------------------------------------------------------------- PromQL


def test_placeholders_become_quoted_label_values() -> None:
    variables = template_variables("ml", "churn", {"model": "churn-v1"})
    rendered = render_query("sum(x{model={{model}}, ns={{ namespace }}, loop={{loop}}})", variables)
    assert rendered == 'sum(x{model="churn-v1", ns="ml", loop="churn"})'


@pytest.mark.parametrize(
    "value",
    ['churn"} or vector(1) #', "a\nb", "x\\y", 'a"b', "{job=~'.*'}", "a" * 129],
)
def test_injection_attempts_are_rejected(value: str) -> None:
    with pytest.raises(UnsafeQueryError, match="not allowed"):
        render_query("up{model={{model}}}", template_variables("ml", "churn", {"model": value}))


def test_unknown_placeholders_and_bad_label_names_are_rejected() -> None:
    with pytest.raises(UnsafeQueryError, match=r"unknown placeholder \{\{job\}\}"):
        render_query("up{job={{job}}}", {})
    with pytest.raises(UnsafeQueryError, match="malformed placeholder"):
        render_query("up{job={{ bad-name }}}", {"job": "x"})
    with pytest.raises(UnsafeQueryError, match="label name"):
        template_variables("ml", "churn", {"bad-name": "x"})


def test_built_in_variables_cannot_be_overridden_by_user_labels() -> None:
    assert template_variables("ml", "churn", {"namespace": "other"})["namespace"] == "ml"


def test_quote_label_value_is_a_promql_string() -> None:
    assert quote_label_value("churn_v1.2:a/b-c") == '"churn_v1.2:a/b-c"'


# ---------------------------------------------------------------- the retrain Job


def _job(**spec_changes: Any) -> dict[str, Any]:
    spec = parse_spec(spec_dict(**spec_changes))
    active = ActiveRetrain(
        job="churn-retrain-3", version="v3", number=3, trigger=Trigger.BREACH, started_at=T0
    )
    current = ModelRef(version="v2", uri="s3://models/churn/ml/churn/v2/", sha256="c" * 64)
    settings = JobSettings(image="trainer:1", s3_endpoint_url="http://s3:7070", s3_region="eu-west-1")
    return build_retrain_job(REF, spec, active, current, settings, T0)


def test_job_identity_ownership_and_limits() -> None:
    job = _job(**{"retrain.backoffLimit": 2, "retrain.activeDeadlineSeconds": 900})
    meta, spec = job["metadata"], job["spec"]
    assert meta["name"] == "churn-retrain-3"
    assert meta["namespace"] == "ml"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": API_VERSION,
            "kind": "FeedbackLoop",
            "name": "churn",
            "uid": REF.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["labels"][LABEL_LOOP] == "churn"
    assert meta["labels"][LABEL_VERSION] == "v3"
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (
        2,
        900,
        86400,
    )


def test_job_pod_passes_restricted_pod_security() -> None:
    pod = _job()["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert not any("hostPath" in volume for volume in pod["volumes"])


def test_job_env_contract_and_secret_references() -> None:
    job = _job(**{"retrain.data.feedbackWindow": "24h", "retrain.resources": {"limits": {"memory": "2Gi"}}})
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["FBL_ARTIFACT_URI"]["value"] == "s3://models/churn/ml/churn/v3/"
    assert env["FBL_TRAINING_DATA_URI"]["value"] == "s3://data/churn/train/"
    assert env["FBL_FEEDBACK_SINCE"]["value"] == "2026-11-27T12:00:00Z"
    assert env["FBL_CURRENT_MODEL_SHA256"]["value"] == "c" * 64
    assert env["FBL_ESTIMATOR_CLASS"]["value"] == "sklearn.ensemble.HistGradientBoostingClassifier"
    assert env["FBL_ESTIMATOR_PARAMS"]["value"] == "{}"
    assert env["AWS_ENDPOINT_URL_S3"]["value"] == "http://s3:7070"
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "name": "AWS_SECRET_ACCESS_KEY",
        "valueFrom": {
            "secretKeyRef": {"name": "feedbackloop-s3-credentials", "key": "AWS_SECRET_ACCESS_KEY"}
        },
    }
    assert "value" not in env["AWS_ACCESS_KEY_ID"]
    assert env["FBL_POD_UID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
    assert container["resources"] == {"limits": {"memory": "2Gi"}}
    assert container["command"] == ["feedbackloop-train"]


# ---------------------------------------------------------------- manifest contract

DIGEST = "d" * 64
MANIFEST: dict[str, Any] = {
    "schemaVersion": 1,
    "version": "v3",
    "files": {"model.joblib": {"sha256": DIGEST, "size": 10}, "metrics.json": {"sha256": DIGEST, "size": 2}},
}


def test_manifest_parses() -> None:
    manifest = contract.parse_manifest(MANIFEST, expected_version="v3")
    model = manifest.file("model.joblib")
    assert model is not None and model.sha256 == DIGEST and model.size == 10


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schemaVersion": 9}, "schemaVersion"),
        ({"version": "v4"}, "expected 'v3'"),
        ({"files": {}}, "no files"),
        ({"files": {"metrics.json": {"sha256": DIGEST, "size": 2}}}, "model.joblib"),
        ({"files": {"../model.joblib": {"sha256": DIGEST, "size": 2}}}, "invalid file name"),
        ({"files": {"model.joblib": {"sha256": "nope", "size": 2}}}, "sha256"),
        ({"files": {"model.joblib": {"sha256": DIGEST, "size": -1}}}, "size"),
    ],
)
def test_manifest_errors_say_what_is_wrong(change: dict[str, Any], message: str) -> None:
    with pytest.raises(contract.ManifestError, match=message):
        contract.parse_manifest({**MANIFEST, **change}, expected_version="v3")


def test_version_numbers_and_uris() -> None:
    assert contract.version_number("v12") == 12
    assert contract.version_number("initial") == 0
    assert contract.split_s3_uri("s3://models/churn/ml/churn/v3/") == ("models", "churn/ml/churn/v3/")
    with pytest.raises(ValueError, match="not an s3"):
        contract.split_s3_uri("http://models/x")


# ---------------------------------------------------------------- durations and spec


@pytest.mark.parametrize(
    ("text", "seconds"), [("10s", 10), ("1h30m", 5400), ("250ms", 0.25), ("1.5h", 5400), ("0s", 0)]
)
def test_durations_round_trip(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert parse_duration(format_duration(timedelta(seconds=seconds))) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "10", "-1h", "ten minutes", "1d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_spec_defaults() -> None:
    spec = parse_spec(spec_dict())
    assert spec.monitoring.metrics[0].for_ == timedelta(minutes=10)
    assert spec.retrain_spec().backoff_limit == 1
    assert spec.rollout.analysis.count == 5
    assert spec.retrain_spec().trainer.estimator.class_ == "sklearn.ensemble.HistGradientBoostingClassifier"


def _threshold(threshold: dict[str, float]) -> dict[str, Any]:
    return {"monitoring.metrics": [{"name": "a", "query": "q", "threshold": threshold}]}


@pytest.mark.parametrize(
    "threshold",
    [
        {"min": 0.85, "clearMin": 0.85},
        {"min": 0.85, "max": 0.99, "clearMin": 0.9, "clearMax": 0.95},
        {"max": 0.25, "clearMax": 0.25},
    ],
)
def test_clear_bounds_within_the_threshold_are_accepted(threshold: dict[str, float]) -> None:
    parsed = parse_spec(spec_dict(**_threshold(threshold))).monitoring.metrics[0].threshold
    assert (parsed.clear_min, parsed.clear_max) == (threshold.get("clearMin"), threshold.get("clearMax"))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (
            {"monitoring.metrics": [{"name": "a", "query": "q", "threshold": {}}]},
            "spec.monitoring.metrics.0.threshold",
        ),
        ({"validation.gates": [{"metric": "acuracy", "min": 0.8}]}, "unknown metric 'acuracy'"),
        ({"rollout.analysis.metrics": ["latency"]}, "rollout.analysis.metrics"),
        ({"retrain.trainer.estimator": {"class": "os.system"}}, "spec.retrain.trainer.estimator.class"),
        ({"target": {"deployment": "x"}}, "spec.target.container"),
        (_threshold({"max": 0.3, "clearMin": 0.2}), "threshold.clearMin needs threshold.min"),
        (_threshold({"min": 0.85, "clearMin": 0.8}), "threshold.clearMin 0.8 must be at least min 0.85"),
        (_threshold({"min": 0.1, "max": 0.3, "clearMin": 0.3}), "threshold.clearMin 0.3 must be below max"),
        (_threshold({"min": 0.1, "clearMax": 0.2}), "threshold.clearMax needs threshold.max"),
        (_threshold({"max": 0.25, "clearMax": 0.3}), "threshold.clearMax 0.3 must be at most max 0.25"),
        (_threshold({"min": 0.1, "max": 0.3, "clearMax": 0.1}), "threshold.clearMax 0.1 must be above min"),
    ],
)
def test_spec_errors_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError, match=field.replace(".", r"\.").replace("'", ".")):
        parse_spec(spec_dict(**changes))
