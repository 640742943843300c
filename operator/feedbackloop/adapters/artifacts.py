"""The S3 artifact store (boto3): version layout, manifest verification, verified downloads.

Shared by the operator, jobs/ and serving/. Every byte that will be unpickled is hashed first. boto3 and
botocore stay inside this module: callers see ArtifactStoreError and its subclasses, never a botocore error.
"""

from __future__ import annotations

import enum
import hashlib
import io
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from feedbackloop.core import contract
from feedbackloop.core.observations import ArtifactCheck, ArtifactObservation, Probe

_CHUNK = 1024 * 1024
UPLOAD_WORKERS = 4  # below botocore's default pool of 10 connections
# S3 error codes; HEAD requests carry no body, so their code is the bare HTTP status.
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
_BAD_CREDENTIAL_CODES = frozenset(
    # versitygw answers an unknown access key with 404 XAdminUserNotFound where AWS says InvalidAccessKeyId.
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "XAdminUserNotFound"}
)
_NOT_ALLOWED_CODES = frozenset({"AccessDenied", "Forbidden", "403"})
VERIFIED_VERSIONS_LIMIT = 256  # versions a long-lived reader remembers as verified; each holds a metrics.json


class DigestMismatchError(ValueError):
    """Bytes from the store do not match the expected sha256."""


class ArtifactStoreError(Exception):
    """An S3 call failed. `code` is the store's error code, or "" when the store gave no answer."""

    def __init__(self, message: str, bucket: str, key: str | None, code: str = "") -> None:
        super().__init__(message)
        self.bucket = bucket
        self.key = key
        self.code = code


class ArtifactNotFoundError(ArtifactStoreError):
    """The key, or its whole bucket (`missing_bucket`), does not exist."""

    def __init__(self, message: str, bucket: str, key: str | None, code: str, missing_bucket: bool) -> None:
        super().__init__(message, bucket, key, code)
        self.missing_bucket = missing_bucket


class Denial(enum.Enum):
    """Why the store refused access."""

    NO_CREDENTIALS = "no credentials were found"
    BAD_CREDENTIALS = "the store rejected the credentials"
    NOT_ALLOWED = "the credentials are not allowed this access"


class ArtifactAccessDeniedError(ArtifactStoreError):
    """No credentials, credentials the store rejects, or credentials without the permission; see `denial`."""

    def __init__(self, message: str, bucket: str, key: str | None, code: str, denial: Denial) -> None:
        super().__init__(message, bucket, key, code)
        self.denial = denial


class ArtifactStoreUnavailableError(ArtifactStoreError):
    """The store could not serve the call (no connection, a timeout, a server error); a retry may work."""

    def __init__(
        self, message: str, bucket: str, key: str | None, code: str, endpoint_unreachable: bool
    ) -> None:
        super().__init__(message, bucket, key, code)
        self.endpoint_unreachable = endpoint_unreachable


def _from_client_error(err: ClientError, bucket: str, key: str | None) -> ArtifactStoreError:
    code = str(err.response.get("Error", {}).get("Code", ""))
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    message = str(err)
    if code in _NOT_FOUND_CODES:
        # A call without a key (head_bucket, list) can only miss the bucket.
        return ArtifactNotFoundError(
            message, bucket, key, code, missing_bucket=code == "NoSuchBucket" or key is None
        )
    if code in _BAD_CREDENTIAL_CODES:
        return ArtifactAccessDeniedError(message, bucket, key, code, Denial.BAD_CREDENTIALS)
    if code in _NOT_ALLOWED_CODES or status == 403:
        # Any other 403 (a proxy's, a skewed clock's, a disabled account's) is a refusal retries won't lift.
        return ArtifactAccessDeniedError(message, bucket, key, code or "403", Denial.NOT_ALLOWED)
    return ArtifactStoreUnavailableError(message, bucket, key, code, endpoint_unreachable=False)


def _from_botocore_error(err: BotoCoreError, bucket: str, key: str | None) -> ArtifactStoreError:
    message = str(err)
    if isinstance(err, NoCredentialsError):
        return ArtifactAccessDeniedError(message, bucket, key, "", Denial.NO_CREDENTIALS)
    if isinstance(err, BotoConnectionError | HTTPClientError):
        unreachable = isinstance(err, EndpointConnectionError)
        return ArtifactStoreUnavailableError(message, bucket, key, "", endpoint_unreachable=unreachable)
    return ArtifactStoreError(message, bucket, key)


@contextmanager
def _translated(bucket: str, key: str | None = None) -> Iterator[None]:
    """Re-raise a botocore error from the calls inside as the matching ArtifactStoreError."""
    try:
        yield
    except ClientError as err:
        raise _from_client_error(err, bucket, key) from err
    except BotoCoreError as err:
        raise _from_botocore_error(err, bucket, key) from err


def _where(err: ArtifactStoreError) -> str:
    return f"s3://{err.bucket}/{err.key}" if err.key is not None else f"bucket {err.bucket}"


def _describe(err: ArtifactStoreError) -> str:
    # An answer is named by its code and location only: the store's text may echo the signed request.
    return f"{err.code}: {_where(err)}" if err.code else str(err)


def _denied(err: ArtifactAccessDeniedError) -> str:
    return f"access denied ({err.code or err.denial.value}) to {_where(err)}"


def _bucket_problem(err: ArtifactStoreError) -> str:
    if isinstance(err, ArtifactNotFoundError):
        return "bucket does not exist"
    if isinstance(err, ArtifactAccessDeniedError):
        return _denied(err)
    return _describe(err)


def _missing_file(uri: str, err: ArtifactNotFoundError) -> ArtifactObservation:
    if err.missing_bucket:
        return ArtifactObservation(ArtifactCheck.UNREACHABLE, message=_describe(err), uri=uri)
    if (err.key or "").endswith(contract.MANIFEST_FILE):
        return ArtifactObservation(
            ArtifactCheck.MANIFEST_MISSING, message=f"{uri}manifest.json is missing", uri=uri
        )
    return ArtifactObservation(
        ArtifactCheck.INVALID, message=f"listed file s3://{err.bucket}/{err.key} is missing", uri=uri
    )


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


def _hash_stream(body: BinaryIO, sink: BinaryIO | None = None) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while chunk := body.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if sink is not None:
            sink.write(chunk)
    return digest.hexdigest(), size


class VerifiedVersions:
    """Versions a long-lived reader verified, keyed by the sha256 of the manifest they were verified against:
    a bounded LRU, safe across reconcile threads."""

    def __init__(self, limit: int = VERIFIED_VERSIONS_LIMIT) -> None:
        self._limit = limit
        self._entries: OrderedDict[tuple[str, str, str], ArtifactObservation] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, uri: str, version: str, manifest_sha256: str) -> ArtifactObservation | None:
        key = (uri, version, manifest_sha256)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, uri: str, version: str, verified: ArtifactObservation) -> None:
        key = (uri, version, verified.manifest_sha256)
        with self._lock:
            self._entries[key] = verified
            self._entries.move_to_end(key)
            while len(self._entries) > self._limit:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class ArtifactStore:
    """The S3 calls the operator, trainer, server and plugin make; every failure is an ArtifactStoreError.

    With `verified`, verify_version reads only the manifest of a version it verified before: the manifest
    lists every file's sha256, so the same manifest bytes name the same verified files."""

    def __init__(self, client: Any, verified: VerifiedVersions | None = None) -> None:
        self._client = client
        self._verified = verified

    # ---------------------------------------------------------------- reads
    def probe_bucket(self, bucket: str) -> Probe:
        try:
            with _translated(bucket):
                self._client.head_bucket(Bucket=bucket)
        except ArtifactStoreError as err:
            if err.code in {"403", "404"}:
                err = self._named(bucket, err)
            return Probe(
                ok=False,
                message=_bucket_problem(err),
                not_found=isinstance(err, ArtifactNotFoundError),
                access_denied=isinstance(err, ArtifactAccessDeniedError),
            )
        return Probe(ok=True)

    def _named(self, bucket: str, bare: ArtifactStoreError) -> ArtifactStoreError:
        """A HEAD's answer has no body, so a bare 403 or 404 is asked again by a GET, whose answer has a code:
        a missing bucket and an unknown access key (404 on some stores) are told apart."""
        try:
            with _translated(bucket):
                self._client.list_objects_v2(Bucket=bucket, MaxKeys=1)
        except ArtifactStoreError as named:
            return named
        return bare

    def list_keys(self, bucket: str, prefix: str) -> list[str]:
        """Every key under `prefix`, in the store's (lexicographic) order, across all result pages."""
        with _translated(bucket):
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            return [str(item["Key"]) for page in pages for item in page.get("Contents", [])]

    def get_bytes(self, bucket: str, key: str) -> bytes:
        with _translated(bucket, key):
            body: bytes = self._client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def read_manifest(self, uri: str, version: str | None = None) -> contract.Manifest:
        return self._read_manifest(uri, version)[0]

    def _read_manifest(self, uri: str, version: str | None) -> tuple[contract.Manifest, str]:
        """The parsed manifest and the sha256 of the very bytes it was parsed from."""
        body = self.get_bytes(*contract.version_file(uri, contract.MANIFEST_FILE))
        return contract.parse_manifest(json.loads(body), expected_version=version), contract.sha256_hex(body)

    def verify_version(self, uri: str, version: str) -> ArtifactObservation:
        """Manifest present, every listed file's sha256 and size match, metrics.json parsed."""
        try:
            manifest, manifest_sha256 = self._read_manifest(uri, version)
            known = self._verified.get(uri, version, manifest_sha256) if self._verified is not None else None
            if known is not None:
                return known
            metrics_bytes = io.BytesIO()
            for entry in manifest.files:
                # metrics.json is parsed from the very bytes hashed here, not from a second read.
                sink = metrics_bytes if entry.name == contract.METRICS_FILE else None
                digest, size = self._hash_object(*contract.version_file(uri, entry.name), sink)
                if (digest, size) != (entry.sha256, entry.size):
                    return ArtifactObservation(
                        ArtifactCheck.DIGEST_MISMATCH,
                        message=f"{entry.name} has sha256 {digest[:12]}… size {size}, "
                        f"manifest says {entry.sha256[:12]}… size {entry.size}",
                        uri=uri,
                    )
            metrics = json.loads(metrics_bytes.getvalue())
        except ArtifactNotFoundError as err:
            return _missing_file(uri, err)
        except ArtifactAccessDeniedError as err:
            return ArtifactObservation(ArtifactCheck.ACCESS_DENIED, message=_denied(err), uri=uri)
        except ArtifactStoreError as err:
            return ArtifactObservation(ArtifactCheck.UNREACHABLE, message=_describe(err), uri=uri)
        except (contract.ManifestError, ValueError) as err:  # also a >4300-digit integer, not only bad JSON
            return ArtifactObservation(ArtifactCheck.INVALID, message=str(err), uri=uri)
        if not isinstance(metrics, dict):
            return ArtifactObservation(
                ArtifactCheck.INVALID, message="metrics.json is not an object", uri=uri
            )
        model = manifest.file(contract.MODEL_FILE)
        assert model is not None  # parse_manifest requires it
        verified = ArtifactObservation(
            ArtifactCheck.VERIFIED,
            uri=uri,
            model_sha256=model.sha256,
            metrics=metrics,
            manifest_sha256=manifest_sha256,
        )
        if self._verified is not None:
            self._verified.put(uri, version, verified)
        return verified

    def download_verified(self, bucket: str, key: str, expected_sha256: str, destination: Path) -> Path:
        """Download to `destination` and return it only if the bytes hash to `expected_sha256`."""
        partial = destination.with_name(destination.name + ".partial")
        with partial.open("wb") as sink:
            digest, _ = self._hash_object(bucket, key, sink)
        if digest != expected_sha256:
            partial.unlink(missing_ok=True)
            raise DigestMismatchError(f"s3://{bucket}/{key}: sha256 {digest} != expected {expected_sha256}")
        partial.replace(destination)
        return destination

    def _hash_object(self, bucket: str, key: str, sink: BinaryIO | None = None) -> tuple[str, int]:
        # The body is read inside the translation: a connection can fail halfway through the stream.
        with _translated(bucket, key):
            return _hash_stream(self._client.get_object(Bucket=bucket, Key=key)["Body"], sink)

    # ---------------------------------------------------------------- writes
    def create_bucket(self, bucket: str) -> None:
        with _translated(bucket):
            self._client.create_bucket(Bucket=bucket)

    def put_bytes(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        with _translated(bucket, key):
            self._client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)

    def write_version(
        self,
        uri: str,
        version: str,
        files: dict[str, bytes],
        extra: dict[str, Any],
        before_manifest: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Upload every file, then manifest.json last: a version without a manifest does not exist."""
        # Uploads are latency-bound, so they overlap; boto3 clients are thread-safe.
        with ThreadPoolExecutor(max_workers=UPLOAD_WORKERS) as pool:
            uploads = [
                pool.submit(self.put_bytes, *contract.version_file(uri, name), data)
                for name, data in files.items()
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
            *contract.version_file(uri, contract.MANIFEST_FILE),
            contract.manifest_bytes(manifest),
            "application/json",
        )
        return manifest
