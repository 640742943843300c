"""The S3 artifact store (boto3): version layout, manifest verification, verified downloads.

Shared by the operator, jobs/ and serving/. Every byte that will be unpickled is hashed first.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from feedbackloop.core import contract
from feedbackloop.core.observations import ArtifactCheck, ArtifactObservation, Probe

_CHUNK = 1024 * 1024
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
UPLOAD_WORKERS = 4  # below botocore's default pool of 10 connections


class DigestMismatchError(ValueError):
    """Bytes from the store do not match the expected sha256."""


def s3_client(
    endpoint_url: str | None = None,
    region: str = "us-east-1",
    access_key: str | None = None,
    secret_key: str | None = None,
    connect_timeout: float = 5,
    read_timeout: float = 30,
) -> Any:
    """A boto3 S3 client; credentials default to the standard AWS environment and config chain."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(
            # boto3 >= 1.36 adds checksum headers that several S3-compatible stores refuse.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": 3, "mode": "standard"},
        ),
    )


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _hash_stream(body: BinaryIO, sink: BinaryIO | None = None) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while chunk := body.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if sink is not None:
            sink.write(chunk)
    return digest.hexdigest(), size


class ArtifactStore:
    def __init__(self, client: Any) -> None:
        self.client = client

    # ---------------------------------------------------------------- reads
    def probe_bucket(self, bucket: str) -> Probe:
        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError as err:
            code = _code(err)
            if code in _NOT_FOUND or code == "NoSuchBucket":
                return Probe(ok=False, message="bucket does not exist")
            if code in {"403", "AccessDenied", "Forbidden"}:
                return Probe(ok=False, message="access denied with the operator's read credentials")
            return Probe(ok=False, message=f"{code or 'error'}: {err}")
        except BotoCoreError as err:
            return Probe(ok=False, message=str(err))
        return Probe(ok=True)

    def get_bytes(self, bucket: str, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def read_manifest(self, uri: str, version: str | None = None) -> contract.Manifest:
        bucket, prefix = contract.split_s3_uri(uri)
        raw = json.loads(self.get_bytes(bucket, prefix + contract.MANIFEST_FILE))
        return contract.parse_manifest(raw, expected_version=version)

    def verify_version(self, uri: str, version: str) -> ArtifactObservation:
        """Manifest present, every listed file's sha256 and size match, metrics.json parsed."""
        bucket, prefix = contract.split_s3_uri(uri)
        key = prefix + contract.MANIFEST_FILE
        try:
            manifest = self.read_manifest(uri, version)
            for entry in manifest.files:
                key = prefix + entry.name
                digest, size = _hash_stream(self.client.get_object(Bucket=bucket, Key=key)["Body"])
                if (digest, size) != (entry.sha256, entry.size):
                    return ArtifactObservation(
                        ArtifactCheck.DIGEST_MISMATCH,
                        message=f"{entry.name} has sha256 {digest[:12]}… size {size}, "
                        f"manifest says {entry.sha256[:12]}… size {entry.size}",
                        uri=uri,
                    )
            key = prefix + contract.METRICS_FILE
            metrics = json.loads(self.get_bytes(bucket, key))
        except ClientError as err:
            code = _code(err)
            if code in _NOT_FOUND and key.endswith(contract.MANIFEST_FILE):
                return ArtifactObservation(
                    ArtifactCheck.MANIFEST_MISSING, message=f"{uri}manifest.json is missing", uri=uri
                )
            if code in _NOT_FOUND:
                return ArtifactObservation(
                    ArtifactCheck.INVALID, message=f"listed file s3://{bucket}/{key} is missing", uri=uri
                )
            return ArtifactObservation(ArtifactCheck.UNREACHABLE, message=f"{code}: {err}", uri=uri)
        except BotoCoreError as err:
            return ArtifactObservation(ArtifactCheck.UNREACHABLE, message=str(err), uri=uri)
        except (contract.ManifestError, json.JSONDecodeError, UnicodeDecodeError) as err:
            return ArtifactObservation(ArtifactCheck.INVALID, message=str(err), uri=uri)
        if not isinstance(metrics, dict):
            return ArtifactObservation(
                ArtifactCheck.INVALID, message="metrics.json is not an object", uri=uri
            )
        model = manifest.file(contract.MODEL_FILE)
        assert model is not None  # parse_manifest requires it
        return ArtifactObservation(
            ArtifactCheck.VERIFIED, uri=uri, model_sha256=model.sha256, metrics=metrics
        )

    def download_verified(self, bucket: str, key: str, expected_sha256: str, destination: Path) -> Path:
        """Download to `destination` and return it only if the bytes hash to `expected_sha256`."""
        partial = destination.with_name(destination.name + ".partial")
        body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
        with partial.open("wb") as sink:
            digest, _ = _hash_stream(body, sink)
        if digest != expected_sha256:
            partial.unlink(missing_ok=True)
            raise DigestMismatchError(f"s3://{bucket}/{key}: sha256 {digest} != expected {expected_sha256}")
        partial.replace(destination)
        return destination

    # ---------------------------------------------------------------- writes (trainer side)
    def put_bytes(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)

    def write_version(
        self,
        uri: str,
        version: str,
        files: dict[str, bytes],
        extra: dict[str, Any],
        before_manifest: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Upload every file, then manifest.json last: a version without a manifest does not exist."""
        bucket, prefix = contract.split_s3_uri(uri)
        # Uploads are latency-bound, so they overlap; boto3 clients are thread-safe.
        with ThreadPoolExecutor(max_workers=UPLOAD_WORKERS) as pool:
            uploads = [
                pool.submit(self.put_bytes, bucket, prefix + name, data) for name, data in files.items()
            ]
            for upload in uploads:
                upload.result()
        entries = {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for name, data in sorted(files.items())
        }
        manifest = {
            "schemaVersion": contract.MANIFEST_SCHEMA_VERSION,
            "version": version,
            "files": entries,
            **extra,
        }
        contract.parse_manifest(manifest, expected_version=version)
        if before_manifest is not None:
            before_manifest()
        self.put_bytes(
            bucket,
            prefix + contract.MANIFEST_FILE,
            json.dumps(manifest, indent=2).encode(),
            "application/json",
        )
        return manifest
