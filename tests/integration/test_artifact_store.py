"""The artifact store adapter against the real S3 server: versions, manifests and sha256 checks."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import harness
from feedbackloop.adapters.artifacts import (
    ArtifactAccessDeniedError,
    ArtifactNotFoundError,
    ArtifactStore,
    ArtifactStoreUnavailableError,
    Denial,
    DigestMismatchError,
    s3_client,
)
from feedbackloop.core.observations import ArtifactCheck

MODEL = b"model bytes " * 1000
METRICS = {"schemaVersion": 1, "candidate": {"accuracy": 0.9}}


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"art-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    return name


def write(store: ArtifactStore, bucket: str, version: str = "v1") -> str:
    uri = f"s3://{bucket}/p/ns/loop/{version}/"
    store.write_version(
        uri, version, {"model.joblib": MODEL, "metrics.json": json.dumps(METRICS).encode()}, {}
    )
    return uri


def test_a_written_version_verifies_with_its_digests(s3: Any, bucket: str) -> None:
    store = ArtifactStore(s3)
    uri = write(store, bucket)
    result = store.verify_version(uri, "v1")
    assert result.check is ArtifactCheck.VERIFIED
    assert result.model_sha256 == hashlib.sha256(MODEL).hexdigest()
    assert result.metrics == METRICS
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="p/ns/loop/v1/manifest.json")["Body"].read())
    assert manifest["files"]["model.joblib"] == {
        "sha256": hashlib.sha256(MODEL).hexdigest(),
        "size": len(MODEL),
    }


def test_missing_manifest(s3: Any, bucket: str) -> None:
    store = ArtifactStore(s3)
    s3.put_object(Bucket=bucket, Key="p/ns/loop/v1/model.joblib", Body=MODEL)
    result = store.verify_version(f"s3://{bucket}/p/ns/loop/v1/", "v1")
    assert result.check is ArtifactCheck.MANIFEST_MISSING


def test_a_changed_model_file_is_a_digest_mismatch(s3: Any, bucket: str) -> None:
    store = ArtifactStore(s3)
    uri = write(store, bucket)
    s3.put_object(Bucket=bucket, Key="p/ns/loop/v1/model.joblib", Body=MODEL[:-1] + b"X")
    result = store.verify_version(uri, "v1")
    assert result.check is ArtifactCheck.DIGEST_MISMATCH
    assert "model.joblib" in result.message


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s3, b: s3.delete_object(Bucket=b, Key="p/ns/loop/v1/metrics.json"), "is missing"),
        (
            lambda s3, b: s3.put_object(Bucket=b, Key="p/ns/loop/v1/manifest.json", Body=b"{not json"),
            "Expecting",
        ),
        (
            lambda s3, b: s3.put_object(
                Bucket=b,
                Key="p/ns/loop/v1/manifest.json",
                Body=json.dumps({"schemaVersion": 1, "version": "v9"}),
            ),
            "expected 'v1'",
        ),
    ],
)
def test_unusable_versions_are_invalid(
    s3: Any, bucket: str, damage: Callable[[Any, str], None], message: str
) -> None:
    store = ArtifactStore(s3)
    uri = write(store, bucket)
    damage(s3, bucket)
    result = store.verify_version(uri, "v1")
    assert result.check is ArtifactCheck.INVALID
    assert message in result.message


def test_a_metrics_json_with_an_integer_python_will_not_parse_is_invalid_not_a_crash(
    s3: Any, bucket: str
) -> None:
    store = ArtifactStore(s3)
    uri = f"s3://{bucket}/p/ns/loop/v1/"
    huge = b'{"schemaVersion": 1, "candidate": {"accuracy": ' + b"9" * 5000 + b"}}"
    store.write_version(uri, "v1", {"model.joblib": MODEL, "metrics.json": huge}, {})
    result = store.verify_version(uri, "v1")
    assert result.check is ArtifactCheck.INVALID
    assert "digits" in result.message and "9999" not in result.message


def test_download_verified_refuses_bytes_that_do_not_match(s3: Any, bucket: str, tmp_path: Path) -> None:
    store = ArtifactStore(s3)
    write(store, bucket)
    good = store.download_verified(
        bucket, "p/ns/loop/v1/model.joblib", hashlib.sha256(MODEL).hexdigest(), tmp_path / "model.joblib"
    )
    assert good.read_bytes() == MODEL
    with pytest.raises(DigestMismatchError):
        store.download_verified(bucket, "p/ns/loop/v1/model.joblib", "0" * 64, tmp_path / "other.joblib")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.joblib"]


def test_probe_distinguishes_missing_bucket_and_wrong_credentials(
    s3: Any, bucket: str, s3_with_secret: Callable[[str], Any]
) -> None:
    assert ArtifactStore(s3).probe_bucket(bucket).ok is True
    missing = ArtifactStore(s3).probe_bucket("no-such-bucket-here")
    assert (missing.ok, missing.message, missing.not_found) == (False, "bucket does not exist", True)
    denied = ArtifactStore(s3_with_secret("wrong-secret")).probe_bucket(bucket)
    assert (denied.ok, denied.not_found, denied.access_denied) == (False, False, True)
    assert denied.message == f"access denied (SignatureDoesNotMatch) to bucket {bucket}"


def test_a_missing_key_is_not_found_and_names_the_key(s3: Any, bucket: str) -> None:
    with pytest.raises(ArtifactNotFoundError) as raised:
        ArtifactStore(s3).get_bytes(bucket, "p/ns/loop/v1/model.joblib")
    assert (raised.value.code, raised.value.missing_bucket) == ("NoSuchKey", False)
    assert (raised.value.bucket, raised.value.key) == (bucket, "p/ns/loop/v1/model.joblib")


@pytest.mark.parametrize(
    "read",
    [
        lambda store: store.get_bytes("no-such-bucket-here", "p/ns/loop/v1/model.joblib"),
        lambda store: store.list_keys("no-such-bucket-here", "p/"),
    ],
    ids=["get", "list"],
)
def test_a_missing_bucket_is_not_found_with_the_bucket_marked(
    s3: Any, read: Callable[[ArtifactStore], object]
) -> None:
    with pytest.raises(ArtifactNotFoundError) as raised:
        read(ArtifactStore(s3))
    assert (raised.value.code, raised.value.missing_bucket) == ("NoSuchBucket", True)
    assert raised.value.bucket == "no-such-bucket-here"


def test_wrong_credentials_are_access_denied(bucket: str, s3_with_secret: Callable[[str], Any]) -> None:
    with pytest.raises(ArtifactAccessDeniedError) as raised:
        ArtifactStore(s3_with_secret("wrong-secret")).list_keys(bucket, "p/")
    assert (raised.value.code, raised.value.denial) == ("SignatureDoesNotMatch", Denial.BAD_CREDENTIALS)


def test_an_endpoint_that_refuses_connections_is_unavailable() -> None:
    closed = harness.free_port()  # bound and released: nothing listens there now
    store = ArtifactStore(
        s3_client(f"http://127.0.0.1:{closed}", harness.S3_REGION, "key", "secret", connect_timeout=2)
    )
    with pytest.raises(ArtifactStoreUnavailableError) as raised:
        store.get_bytes("models", "p/ns/loop/v1/manifest.json")
    assert (raised.value.code, raised.value.endpoint_unreachable) == ("", True)
    assert f"127.0.0.1:{closed}" in str(raised.value)
