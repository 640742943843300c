"""An S3 client held in memory: the calls ArtifactStore makes, answered as S3 would, errors included.

The backtest's artifact store is the real ArtifactStore (manifest, sha256 of every file, verify before load)
over this client, so nothing in the trainer, the loader or the operator's verification changes. botocore is
imported only for its ClientError, which is how ArtifactStore learns that a key or bucket is missing.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import ClientError


def _error(code: str, status: int, operation: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, operation
    )


class _Paginator:
    def __init__(self, client: MemoryS3Client) -> None:
        self._client = client

    def paginate(self, Bucket: str, Prefix: str = "") -> Iterator[dict[str, Any]]:  # noqa: N803 - boto3's names
        yield self._client.list_objects_v2(Bucket=Bucket, Prefix=Prefix)


class MemoryS3Client:
    """Buckets of keys to bytes; thread-safe (ArtifactStore uploads a version's files concurrently)."""

    def __init__(self) -> None:
        self._buckets: dict[str, dict[str, bytes]] = {}
        self._lock = threading.Lock()

    def _bucket(self, bucket: str, operation: str) -> dict[str, bytes]:
        found = self._buckets.get(bucket)
        if found is None:
            raise _error("NoSuchBucket", 404, operation)
        return found

    def create_bucket(self, Bucket: str) -> dict[str, Any]:  # noqa: N803
        with self._lock:
            self._buckets.setdefault(Bucket, {})
        return {}

    def head_bucket(self, Bucket: str) -> dict[str, Any]:  # noqa: N803
        with self._lock:
            if Bucket not in self._buckets:
                raise _error("404", 404, "HeadBucket")
        return {}

    def list_objects_v2(self, Bucket: str, Prefix: str = "", MaxKeys: int = 1000) -> dict[str, Any]:  # noqa: N803
        with self._lock:
            keys = sorted(key for key in self._bucket(Bucket, "ListObjectsV2") if key.startswith(Prefix))
        return {"Contents": [{"Key": key} for key in keys[:MaxKeys]]} if keys else {}

    def get_paginator(self, operation: str) -> _Paginator:
        if operation != "list_objects_v2":
            raise ValueError(f"no paginator for {operation}")
        return _Paginator(self)

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        with self._lock:
            body = self._bucket(Bucket, "GetObject").get(Key)
        if body is None:
            raise _error("NoSuchKey", 404, "GetObject")
        return {"Body": io.BytesIO(body)}

    def put_object(self, Bucket: str, Key: str, Body: bytes, ContentType: str = "") -> dict[str, Any]:  # noqa: N803
        with self._lock:
            self._bucket(Bucket, "PutObject")[Key] = bytes(Body)
        return {}

    def delete_prefix(self, bucket: str, prefix: str) -> None:
        with self._lock:
            objects = self._buckets.get(bucket, {})
            for key in [key for key in objects if key.startswith(prefix)]:
                del objects[key]
