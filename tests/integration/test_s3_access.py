"""Refused S3 credentials and repeated verification, against the real S3 server and the operator process."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

import harness
from feedbackloop.adapters.artifacts import ArtifactStore, VerifiedVersions, s3_client
from feedbackloop.core.observations import ArtifactCheck
from loop_scenario import BUCKET, Scenario, loop_spec
from operator_process import OperatorProcess

MODEL = b"model bytes " * 1000
METRICS = {"schemaVersion": 1, "candidate": {"accuracy": 0.9}}
WRONG_SECRET = "wrong-secret-5f3a9c"  # deliberately wrong credentials, so they must show up nowhere
WRONG_KEY = "AKIAWRONGKEY5F3A9C"


def write(store: ArtifactStore, bucket: str, model: bytes = MODEL) -> str:
    uri = f"s3://{bucket}/p/ns/loop/v1/"
    store.write_version(uri, "v1", {"model.joblib": model, "metrics.json": json.dumps(METRICS).encode()}, {})
    return uri


def operator_client(endpoints: harness.Endpoints, access_key: str, secret_key: str) -> Any:
    """The client the operator builds (the adapter's s3_client), with the given credentials."""
    return s3_client(endpoints.s3_endpoint_url, harness.S3_REGION, access_key, secret_key)


@pytest.mark.parametrize(
    ("credentials", "code"),
    # versitygw names an unknown access key XAdminUserNotFound (with a 404) where AWS says InvalidAccessKeyId.
    [("wrong secret", "SignatureDoesNotMatch"), ("unknown access key", "XAdminUserNotFound")],
)
def test_wrong_credentials_are_access_denied_and_no_secret_reaches_the_message(
    s3: Any, bucket: str, endpoints: harness.Endpoints, credentials: str, code: str
) -> None:
    uri = write(ArtifactStore(s3), bucket)
    access_key = WRONG_KEY if credentials == "unknown access key" else endpoints.s3_access_key
    store = ArtifactStore(operator_client(endpoints, access_key, WRONG_SECRET), VerifiedVersions())

    probe = store.probe_bucket(bucket)
    assert (probe.ok, probe.access_denied, probe.not_found) == (False, True, False)
    assert probe.message == f"access denied ({code}) to bucket {bucket}"

    result = store.verify_version(uri, "v1")
    assert (result.check, result.message) == (
        ArtifactCheck.ACCESS_DENIED,
        f"access denied ({code}) to s3://{bucket}/p/ns/loop/v1/manifest.json",
    )
    for message in (probe.message, result.message):
        assert WRONG_SECRET not in message and WRONG_KEY not in message
        assert endpoints.s3_secret_key not in message


def test_a_verified_version_is_read_again_only_as_its_manifest(
    s3: Any, bucket: str, endpoints: harness.Endpoints
) -> None:
    client = operator_client(endpoints, endpoints.s3_access_key, endpoints.s3_secret_key)
    gets: list[str] = []  # the file name of every GET request sent to the server, retries included
    client.meta.events.register(
        "before-send.s3.GetObject", lambda request, **_: gets.append(request.url.rsplit("/", 1)[-1])
    )
    store = ArtifactStore(client, VerifiedVersions())
    uri = write(ArtifactStore(s3), bucket)

    first = store.verify_version(uri, "v1")
    repeats = [store.verify_version(uri, "v1") for _ in range(5)]
    assert first.check is ArtifactCheck.VERIFIED and all(r == first for r in repeats)
    assert gets == ["manifest.json", "metrics.json", "model.joblib"] + ["manifest.json"] * 5

    # A rewritten version has other manifest bytes: it is downloaded and hashed again.
    write(ArtifactStore(s3), bucket, MODEL + b"!")
    gets.clear()
    rewritten = store.verify_version(uri, "v1")
    assert rewritten.check is ArtifactCheck.VERIFIED and rewritten.model_sha256 != first.model_sha256
    assert gets == ["manifest.json", "metrics.json", "model.joblib"]


def test_an_operator_with_wrong_s3_credentials_is_not_ready_with_access_denied(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator(AWS_SECRET_ACCESS_KEY=WRONG_SECRET)
    scenario.apply_loop(loop_spec(scenario.model))

    ready = scenario.wait_condition("Ready", "False", "AccessDenied")
    assert ready["message"] == (
        "artifact store, with the operator's credentials: "
        f"access denied (SignatureDoesNotMatch) to bucket {BUCKET}"
    )
    scenario.annotate_retrain("r1")
    retraining = scenario.wait_condition("Retraining", "False", "Blocked")
    assert "AccessDenied" in retraining["message"]
    assert scenario.job_names() == []
    assert WRONG_SECRET not in json.dumps(scenario.loop()["status"])
