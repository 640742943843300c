"""verify_version's reads, counted: each file of a version is downloaded once per verification.

The S3 client is an in-memory double that counts its GETs: the I/O edge case is how many reads a
verification makes, which only a client that records them can show.
"""

from __future__ import annotations

import io
import json
from typing import Any

from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.core import contract
from feedbackloop.core.observations import ArtifactCheck

BUCKET = "models"
URI = f"s3://{BUCKET}/churn/ml/churn/v1/"
PREFIX = "churn/ml/churn/v1/"
MODEL = b"model bytes " * 100
METRICS = {"schemaVersion": 1, "candidate": {"accuracy": 0.9}}


class CountingS3:
    """Objects in a dict; every get_object is recorded by key."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.gets: list[str] = []

    def put_object(self, Bucket: str, Key: str, Body: bytes, **_: Any) -> dict[str, Any]:  # noqa: N803
        self.objects[Key] = Body
        return {}

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        self.gets.append(Key.removeprefix(PREFIX))
        return {"Body": io.BytesIO(self.objects[Key])}


def written(model: bytes = MODEL) -> CountingS3:
    client = CountingS3()
    files = {contract.MODEL_FILE: model, contract.METRICS_FILE: json.dumps(METRICS).encode()}
    ArtifactStore(client).write_version(URI, "v1", files, {})
    return client


def test_a_verification_reads_the_manifest_and_each_listed_file_once() -> None:
    client = written()
    result = ArtifactStore(client).verify_version(URI, "v1")
    assert result.check is ArtifactCheck.VERIFIED
    assert result.metrics == METRICS  # parsed from the bytes that were hashed, not from a second GET
    assert client.gets == ["manifest.json", "metrics.json", "model.joblib"]


def test_metrics_changed_after_its_hash_was_checked_cannot_reach_the_result() -> None:
    client = written()
    key = PREFIX + contract.METRICS_FILE
    served = iter([client.objects[key], b'{"schemaVersion": 1, "candidate": {"accuracy": 1.0}}'])
    original = client.get_object

    def swapping(Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        # A writer swaps metrics.json between reads: only the first (hashed) body may be parsed.
        if Key == key:
            client.objects[key] = next(served)
        return original(Bucket, Key)

    client.get_object = swapping  # type: ignore[method-assign]
    result = ArtifactStore(client).verify_version(URI, "v1")
    assert (result.check, result.metrics) == (ArtifactCheck.VERIFIED, METRICS)


def test_a_flipped_byte_in_the_model_is_a_digest_mismatch() -> None:
    client = written()
    key = PREFIX + contract.MODEL_FILE
    client.objects[key] = MODEL[:-1] + bytes([MODEL[-1] ^ 1])
    result = ArtifactStore(client).verify_version(URI, "v1")
    assert result.check is ArtifactCheck.DIGEST_MISMATCH
    assert result.message.startswith("model.joblib has sha256 ")
