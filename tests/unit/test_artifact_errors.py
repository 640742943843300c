"""The artifact adapter's error mapping: every botocore failure leaves it as one of its own exceptions.

S3 error responses come from botocore's Stubber on a real client; failures without a response (no
connection, no credentials, a broken stream) from a client double that raises them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)
from botocore.response import StreamingBody
from botocore.stub import Stubber

from feedbackloop.adapters.artifacts import (
    ArtifactAccessDeniedError,
    ArtifactNotFoundError,
    ArtifactStore,
    ArtifactStoreError,
    ArtifactStoreUnavailableError,
    Denial,
    s3_client,
)
from feedbackloop.core.observations import ArtifactCheck

BUCKET = "models"
KEY = "ml/churn/v1/model.joblib"
MANIFEST = {
    "schemaVersion": 1,
    "version": "v1",
    "files": {name: {"sha256": "0" * 64, "size": 1} for name in ("model.joblib", "metrics.json")},
}


@pytest.fixture
def stubbed() -> Iterator[tuple[ArtifactStore, Stubber]]:
    client = s3_client("http://127.0.0.1:9", access_key="key", secret_key="secret")
    with Stubber(client) as stubber:
        yield ArtifactStore(client), stubber
        stubber.assert_no_pending_responses()


class RaisingClient:
    """Stands in for the boto3 client when the failure happens before or without any S3 response."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def get_object(self, **_: Any) -> dict[str, Any]:
        raise self.error


class BrokenBody(io.RawIOBase):
    """A response body whose connection times out after the first chunk."""

    def __init__(self) -> None:
        self.reads = 0

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        if self.reads > 1:
            raise ReadTimeoutError(endpoint_url="http://store:9000")
        return b"first chunk"


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("NoSuchKey", 404, ArtifactNotFoundError),
        ("NoSuchBucket", 404, ArtifactNotFoundError),
        ("InvalidAccessKeyId", 403, ArtifactAccessDeniedError),
        ("SignatureDoesNotMatch", 403, ArtifactAccessDeniedError),
        ("ExpiredToken", 400, ArtifactAccessDeniedError),
        ("AccessDenied", 403, ArtifactAccessDeniedError),
        ("InternalError", 500, ArtifactStoreUnavailableError),
        ("SlowDown", 503, ArtifactStoreUnavailableError),
    ],
)
def test_an_s3_error_response_becomes_the_adapters_exception_with_its_code(
    stubbed: tuple[ArtifactStore, Stubber], code: str, status: int, kind: type[ArtifactStoreError]
) -> None:
    store, stubber = stubbed
    stubber.add_client_error("get_object", service_error_code=code, http_status_code=status)
    with pytest.raises(ArtifactStoreError) as raised:
        store.get_bytes(BUCKET, KEY)
    assert type(raised.value) is kind
    assert (raised.value.code, raised.value.bucket, raised.value.key) == (code, BUCKET, KEY)
    assert isinstance(raised.value.__cause__, ClientError)
    assert str(raised.value) == str(raised.value.__cause__)


@pytest.mark.parametrize(
    ("code", "missing_bucket"), [("NoSuchKey", False), ("404", False), ("NoSuchBucket", True)]
)
def test_not_found_tells_a_missing_key_from_a_missing_bucket(
    stubbed: tuple[ArtifactStore, Stubber], code: str, missing_bucket: bool
) -> None:
    store, stubber = stubbed
    stubber.add_client_error("get_object", service_error_code=code, http_status_code=404)
    with pytest.raises(ArtifactNotFoundError) as raised:
        store.get_bytes(BUCKET, KEY)
    assert raised.value.missing_bucket is missing_bucket


@pytest.mark.parametrize("code", ["NoSuchBucket", "404"])
def test_a_call_without_a_key_can_only_miss_the_bucket(
    stubbed: tuple[ArtifactStore, Stubber], code: str
) -> None:
    store, stubber = stubbed
    stubber.add_client_error("list_objects_v2", service_error_code=code, http_status_code=404)
    with pytest.raises(ArtifactNotFoundError) as raised:
        store.list_keys(BUCKET, "data/")
    assert (raised.value.missing_bucket, raised.value.key) == (True, None)


@pytest.mark.parametrize(
    ("code", "denial"),
    [
        ("InvalidAccessKeyId", Denial.BAD_CREDENTIALS),
        ("SignatureDoesNotMatch", Denial.BAD_CREDENTIALS),
        ("InvalidToken", Denial.BAD_CREDENTIALS),
        ("AccessDenied", Denial.NOT_ALLOWED),
        ("Forbidden", Denial.NOT_ALLOWED),
        ("403", Denial.NOT_ALLOWED),
    ],
)
def test_access_denied_says_whether_the_credentials_were_rejected_or_not_allowed(
    stubbed: tuple[ArtifactStore, Stubber], code: str, denial: Denial
) -> None:
    store, stubber = stubbed
    stubber.add_client_error("put_object", service_error_code=code, http_status_code=403)
    with pytest.raises(ArtifactAccessDeniedError) as raised:
        store.put_bytes(BUCKET, KEY, b"bytes")
    assert raised.value.denial is denial


@pytest.mark.parametrize(
    ("error", "kind", "attribute", "value"),
    [
        (NoCredentialsError(), ArtifactAccessDeniedError, "denial", Denial.NO_CREDENTIALS),
        (
            EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
            ArtifactStoreUnavailableError,
            "endpoint_unreachable",
            True,
        ),
        (
            ReadTimeoutError(endpoint_url="http://127.0.0.1:9"),
            ArtifactStoreUnavailableError,
            "endpoint_unreachable",
            False,
        ),
    ],
)
def test_a_failure_without_a_response_has_no_code(
    error: Exception, kind: type[ArtifactStoreError], attribute: str, value: object
) -> None:
    with pytest.raises(ArtifactStoreError) as raised:
        ArtifactStore(RaisingClient(error)).get_bytes(BUCKET, KEY)
    assert type(raised.value) is kind
    assert raised.value.code == ""
    assert getattr(raised.value, attribute) == value
    assert raised.value.__cause__ is error
    assert str(raised.value) == str(error)


def test_a_local_botocore_failure_is_the_base_error() -> None:
    error = ParamValidationError(report="Invalid bucket name")
    with pytest.raises(ArtifactStoreError) as raised:
        ArtifactStore(RaisingClient(error)).get_bytes(BUCKET, KEY)
    assert type(raised.value) is ArtifactStoreError
    assert "Invalid bucket name" in str(raised.value)


def test_a_stream_that_breaks_halfway_is_unavailable(tmp_path: Path) -> None:
    class BrokenStreamClient:
        def get_object(self, **_: Any) -> dict[str, Any]:
            return {"Body": BrokenBody()}

    with pytest.raises(ArtifactStoreUnavailableError) as raised:
        ArtifactStore(BrokenStreamClient()).download_verified(BUCKET, KEY, "0" * 64, tmp_path / "model")
    assert (raised.value.key, raised.value.endpoint_unreachable) == (KEY, False)
    assert not (tmp_path / "model").exists()


def test_list_keys_follows_every_page(stubbed: tuple[ArtifactStore, Stubber]) -> None:
    store, stubber = stubbed
    first = {"Contents": [{"Key": "data/a.csv"}, {"Key": "data/b.csv"}], "IsTruncated": True}
    stubber.add_response(
        "list_objects_v2", {**first, "NextContinuationToken": "page-2"}, {"Bucket": BUCKET, "Prefix": "data/"}
    )
    stubber.add_response(
        "list_objects_v2",
        {"Contents": [{"Key": "data/c.parquet"}], "IsTruncated": False},
        {"Bucket": BUCKET, "Prefix": "data/", "ContinuationToken": "page-2"},
    )
    assert store.list_keys(BUCKET, "data/") == ["data/a.csv", "data/b.csv", "data/c.parquet"]


def test_an_empty_prefix_lists_no_keys(stubbed: tuple[ArtifactStore, Stubber]) -> None:
    store, stubber = stubbed
    stubber.add_response("list_objects_v2", {"IsTruncated": False, "KeyCount": 0})
    assert store.list_keys(BUCKET, "nothing/") == []


def denied(code: str) -> str:
    return f"access denied ({code}) to bucket {BUCKET}"


@pytest.mark.parametrize(
    ("head", "listed", "expected"),
    [
        (404, ("NoSuchBucket", 404), (True, False, "bucket does not exist")),
        # versitygw's answer to an unknown access key: a bare 404 to HEAD, XAdminUserNotFound to a GET.
        (404, ("XAdminUserNotFound", 404), (False, True, denied("XAdminUserNotFound"))),
        (403, ("SignatureDoesNotMatch", 403), (False, True, denied("SignatureDoesNotMatch"))),
        (403, ("AccessDenied", 403), (False, True, denied("AccessDenied"))),
        (403, ("", 403), (False, True, denied("403"))),
        (404, None, (True, False, "bucket does not exist")),  # the GET found it: the HEAD's answer stands
        (500, None, (False, False, f"500: bucket {BUCKET}")),  # not a refusal or a miss: nothing to ask
    ],
)
def test_the_bucket_probe_asks_a_bare_403_or_404_again_for_its_code(
    stubbed: tuple[ArtifactStore, Stubber],
    head: int,
    listed: tuple[str, int] | None,
    expected: tuple[bool, bool, str],
) -> None:
    store, stubber = stubbed
    # head_bucket has no body: the store's answer is the bare HTTP status.
    stubber.add_client_error("head_bucket", service_error_code=str(head), http_status_code=head)
    if listed is not None:
        stubber.add_client_error("list_objects_v2", service_error_code=listed[0], http_status_code=listed[1])
    elif head == 404:
        stubber.add_response("list_objects_v2", {"IsTruncated": False}, {"Bucket": BUCKET, "MaxKeys": 1})
    probe = store.probe_bucket(BUCKET)
    assert (probe.ok, probe.not_found, probe.access_denied, probe.message) == (False, *expected)


def test_a_version_in_a_missing_bucket_is_unreachable_not_missing(
    stubbed: tuple[ArtifactStore, Stubber],
) -> None:
    store, stubber = stubbed
    stubber.add_client_error("get_object", service_error_code="NoSuchBucket", http_status_code=404)
    result = store.verify_version(f"s3://{BUCKET}/ml/churn/v1/", "v1")
    assert result.check is ArtifactCheck.UNREACHABLE
    assert result.message.startswith("NoSuchBucket: ")


def test_a_missing_manifest_and_a_missing_listed_file_are_told_apart(
    stubbed: tuple[ArtifactStore, Stubber],
) -> None:
    store, stubber = stubbed
    uri = f"s3://{BUCKET}/ml/churn/v1/"
    stubber.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
    stubber.add_response("get_object", {"Body": _body(MANIFEST)})
    stubber.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
    missing_manifest = store.verify_version(uri, "v1")
    missing_file = store.verify_version(uri, "v1")
    assert (missing_manifest.check, missing_manifest.message) == (
        ArtifactCheck.MANIFEST_MISSING,
        f"{uri}manifest.json is missing",
    )
    assert (missing_file.check, missing_file.message) == (
        ArtifactCheck.INVALID,
        f"listed file {uri}metrics.json is missing",
    )


# ---------------------------------------------------------------- refused credentials are their own kind

SECRET_ECHO = "StringToSign AWS4-HMAC-SHA256 secret-key-material"  # what a store's error text may carry
DENIED_RESPONSES = [
    ("AccessDenied", 403),
    ("InvalidAccessKeyId", 403),
    ("XAdminUserNotFound", 404),  # versitygw's InvalidAccessKeyId
    ("SignatureDoesNotMatch", 403),
    ("InvalidToken", 400),
    ("ExpiredToken", 400),
    ("403", 403),  # a HEAD's answer: no body, so the bare status is the code
    ("RequestTimeTooSkewed", 403),  # any other 403 is a refusal too
]


@pytest.mark.parametrize(("code", "status"), DENIED_RESPONSES)
def test_every_refusal_of_the_credentials_is_access_denied(
    stubbed: tuple[ArtifactStore, Stubber], code: str, status: int
) -> None:
    store, stubber = stubbed
    stubber.add_client_error(
        "get_object", service_error_code=code, service_message=SECRET_ECHO, http_status_code=status
    )
    with pytest.raises(ArtifactAccessDeniedError) as raised:
        store.get_bytes(BUCKET, KEY)
    assert raised.value.code == code


def test_a_403_without_a_code_is_access_denied_with_the_status_as_its_code(
    stubbed: tuple[ArtifactStore, Stubber],
) -> None:
    store, stubber = stubbed
    stubber.add_client_error("get_object", service_error_code="", http_status_code=403)
    with pytest.raises(ArtifactAccessDeniedError) as raised:
        store.get_bytes(BUCKET, KEY)
    assert (raised.value.code, raised.value.denial) == ("403", Denial.NOT_ALLOWED)


@pytest.mark.parametrize(("code", "status"), DENIED_RESPONSES)
def test_verify_version_reports_access_denied_with_only_the_code_and_key(
    stubbed: tuple[ArtifactStore, Stubber], code: str, status: int
) -> None:
    store, stubber = stubbed
    stubber.add_client_error(
        "get_object", service_error_code=code, service_message=SECRET_ECHO, http_status_code=status
    )
    result = store.verify_version(f"s3://{BUCKET}/ml/churn/v1/", "v1")
    assert (result.check, result.message) == (
        ArtifactCheck.ACCESS_DENIED,
        f"access denied ({code}) to s3://{BUCKET}/ml/churn/v1/manifest.json",
    )


def test_a_refused_listed_file_is_access_denied_too(stubbed: tuple[ArtifactStore, Stubber]) -> None:
    store, stubber = stubbed
    stubber.add_response("get_object", {"Body": _body(MANIFEST)})
    stubber.add_client_error("get_object", service_error_code="AccessDenied", http_status_code=403)
    result = store.verify_version(f"s3://{BUCKET}/ml/churn/v1/", "v1")
    assert (result.check, result.message) == (
        ArtifactCheck.ACCESS_DENIED,
        f"access denied (AccessDenied) to s3://{BUCKET}/ml/churn/v1/metrics.json",
    )


def test_no_credentials_at_all_is_access_denied() -> None:
    result = ArtifactStore(RaisingClient(NoCredentialsError())).verify_version(f"s3://{BUCKET}/ml/v1/", "v1")
    assert (result.check, result.message) == (
        ArtifactCheck.ACCESS_DENIED,
        f"access denied (no credentials were found) to s3://{BUCKET}/ml/v1/manifest.json",
    )


@pytest.mark.parametrize(("code", "status"), DENIED_RESPONSES)
def test_the_bucket_probe_reports_access_denied_with_only_the_code_and_bucket(
    stubbed: tuple[ArtifactStore, Stubber], code: str, status: int
) -> None:
    store, stubber = stubbed
    for operation in ("head_bucket", "list_objects_v2") if code == "403" else ("head_bucket",):
        stubber.add_client_error(
            operation, service_error_code=code, service_message=SECRET_ECHO, http_status_code=status
        )
    probe = store.probe_bucket(BUCKET)
    assert (probe.ok, probe.access_denied, probe.not_found) == (False, True, False)
    assert probe.message == f"access denied ({code}) to bucket {BUCKET}"


@pytest.mark.parametrize(("code", "status"), [("InternalError", 500), ("SlowDown", 503), ("500", 500)])
def test_a_store_that_fails_stays_unreachable_and_its_text_stays_out(
    stubbed: tuple[ArtifactStore, Stubber], code: str, status: int
) -> None:
    store, stubber = stubbed
    stubber.add_client_error(
        "get_object", service_error_code=code, service_message=SECRET_ECHO, http_status_code=status
    )
    stubber.add_client_error(
        "head_bucket", service_error_code=code, service_message=SECRET_ECHO, http_status_code=status
    )
    result = store.verify_version(f"s3://{BUCKET}/ml/churn/v1/", "v1")
    assert (result.check, result.message) == (
        ArtifactCheck.UNREACHABLE,
        f"{code}: s3://{BUCKET}/ml/churn/v1/manifest.json",
    )
    probe = store.probe_bucket(BUCKET)
    assert (probe.ok, probe.access_denied, probe.not_found, probe.message) == (
        False, False, False, f"{code}: bucket {BUCKET}",
    )  # fmt: skip


def _body(document: dict[str, Any]) -> StreamingBody:
    data = json.dumps(document).encode()
    return StreamingBody(io.BytesIO(data), len(data))
