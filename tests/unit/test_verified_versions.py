"""verify_version's reads, counted: each file of a version is downloaded once per verification, and with a
memory of verified versions, once per manifest.

The S3 client is an in-memory double that counts its GETs: the I/O edge case is how many reads a
verification makes, which only a client that records them can show.
"""

from __future__ import annotations

import io
import json
from typing import Any

from core_inputs import T0, spec_dict
from feedbackloop.adapters.artifacts import ArtifactStore, VerifiedVersions
from feedbackloop.api import RETRAIN_REQUEST_ANNOTATION, ROLLBACK_ANNOTATION
from feedbackloop.core import contract
from feedbackloop.core.observations import ArtifactCheck, JobState
from reconcile_fakes import World

BUCKET = "models"
URI = f"s3://{BUCKET}/churn/ml/churn/v1/"
PREFIX = "churn/ml/churn/v1/"
MODEL = b"model bytes " * 100
METRICS = {"schemaVersion": 1, "candidate": {"accuracy": 0.9}}


class CountingS3:
    """Objects in a dict; every get_object is recorded by file name."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.gets: list[str] = []

    def put_object(self, Bucket: str, Key: str, Body: bytes, **_: Any) -> dict[str, Any]:  # noqa: N803
        self.objects[Key] = Body
        return {}

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        self.gets.append(Key.rsplit("/", 1)[-1])
        return {"Body": io.BytesIO(self.objects[Key])}

    def head_bucket(self, Bucket: str) -> dict[str, Any]:  # noqa: N803
        return {}


def written(model: bytes = MODEL, uri: str = URI) -> CountingS3:
    client = CountingS3()
    files = {contract.MODEL_FILE: model, contract.METRICS_FILE: json.dumps(METRICS).encode()}
    ArtifactStore(client).write_version(uri, "v1", files, {})
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


# ---------------------------------------------------------------- verified once per manifest


def test_a_verified_version_is_not_downloaded_again_while_its_manifest_is_unchanged() -> None:
    client = written()
    store = ArtifactStore(client, VerifiedVersions())
    first = store.verify_version(URI, "v1")
    again = [store.verify_version(URI, "v1") for _ in range(10)]
    assert first.check is ArtifactCheck.VERIFIED
    assert all(result is first for result in again)
    assert client.gets == ["manifest.json", "metrics.json", "model.joblib"] + ["manifest.json"] * 10


def test_without_a_memory_every_verification_downloads_everything() -> None:
    client = written()
    store = ArtifactStore(client)
    store.verify_version(URI, "v1")
    store.verify_version(URI, "v1")
    assert client.gets == ["manifest.json", "metrics.json", "model.joblib"] * 2


def test_a_rewritten_manifest_is_verified_again() -> None:
    client = written()
    store = ArtifactStore(client, VerifiedVersions())
    store.verify_version(URI, "v1")
    # Another model with its own manifest: different manifest bytes, so nothing of the first check is reused.
    client.objects = written(MODEL + b"!").objects
    client.gets.clear()
    result = store.verify_version(URI, "v1")
    assert result.check is ArtifactCheck.VERIFIED
    assert result.model_sha256 == contract.sha256_hex(MODEL + b"!")
    assert client.gets == ["manifest.json", "metrics.json", "model.joblib"]


def test_a_failed_verification_is_not_remembered() -> None:
    client = written()
    key = PREFIX + contract.MODEL_FILE
    client.objects[key] = MODEL[:-1] + bytes([MODEL[-1] ^ 1])
    store = ArtifactStore(client, VerifiedVersions())
    assert store.verify_version(URI, "v1").check is ArtifactCheck.DIGEST_MISMATCH
    client.objects[key] = MODEL  # repaired: a failure is checked afresh, never taken from memory
    assert store.verify_version(URI, "v1").check is ArtifactCheck.VERIFIED


def test_the_memory_is_bounded_and_forgets_the_least_recently_used() -> None:
    verified = VerifiedVersions(limit=2)
    result = ArtifactStore(written(), verified).verify_version(URI, "v1")
    verified.put("s3://models/a/", "v1", result)
    assert verified.get(URI, "v1", result.manifest_sha256) is result  # used: now the most recent
    verified.put("s3://models/b/", "v1", result)
    assert len(verified) == 2
    assert verified.get("s3://models/a/", "v1", result.manifest_sha256) is None
    assert verified.get(URI, "v1", result.manifest_sha256) is result


def test_a_rollback_to_pending_through_a_long_retrain_downloads_the_version_once() -> None:
    world = World("slow-retrain", spec_dict(), T0)
    uri = contract.version_uri("models", "churn/", world.namespace, world.name, "v1")
    client = written(uri=uri)
    client.gets.clear()
    world.reconciler.artifacts = ArtifactStore(client, VerifiedVersions())
    world.annotate(RETRAIN_REQUEST_ANNOTATION, "r1")
    world.reconcile()
    job = world.status["activeRetrain"]["job"]
    world.annotate(ROLLBACK_ANNOTATION, "v1")
    ticks = 120  # ten minutes of a running Job, reconciled every 5 s
    for _ in range(ticks):
        world.reconcile(after_seconds=5)
    assert "handledRollbackRequest" not in world.status  # busy: the request waits
    assert client.gets == ["manifest.json", "metrics.json", "model.joblib"] + ["manifest.json"] * (ticks - 1)

    # The retrain fails: the rollback goes ahead on that very tick, from the version verified before.
    world.cluster.job_states[job] = JobState.FAILED
    calls = world.reconcile(after_seconds=5)
    assert [call.args for call in calls if call.name == "apply_model"] == [("churn-server", "v1")]
    assert client.gets[-1:] == ["manifest.json"] and len(client.gets) == ticks + 3
