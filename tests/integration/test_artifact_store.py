"""The artifact store adapter against the real S3 server: versions, manifests and sha256 checks."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from feedbackloop.adapters.artifacts import ArtifactStore, DigestMismatchError
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
    assert (missing.ok, missing.message) == (False, "bucket does not exist")
    denied = ArtifactStore(s3_with_secret("wrong-secret")).probe_bucket(bucket)
    assert denied.ok is False
    assert "access denied" in denied.message
