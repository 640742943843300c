"""A version's error-analysis report from S3, verified against the version's manifest before it is kept."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from feedbackloop.adapters.artifacts import ArtifactStore, DigestMismatchError, s3_client
from feedbackloop.core import contract
from feedbackloop.kubectl_plugin.errors import PluginError

ENV_ENDPOINT = "FBL_S3_ENDPOINT_URL"  # the operator's own setting, so one environment serves both
ENV_REGION = "FBL_S3_REGION"
DEFAULT_REGION = "us-east-1"
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"403", "AccessDenied", "Forbidden"}
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}


def s3_endpoint(option: str | None, env: Mapping[str, str]) -> str | None:
    """--s3-endpoint, else FBL_S3_ENDPOINT_URL, else AWS_ENDPOINT_URL_S3; None means AWS S3 itself."""
    endpoint = option or env.get(ENV_ENDPOINT) or env.get(contract.ENV_S3_ENDPOINT) or None
    if endpoint is not None and not re.match(r"^https?://", endpoint):
        raise PluginError(f"the S3 endpoint {endpoint!r} must be an http:// or https:// URL")
    return endpoint


def s3_region(env: Mapping[str, str]) -> str:
    return env.get(ENV_REGION) or env.get(contract.ENV_S3_REGION) or DEFAULT_REGION


def default_report_dir(env: Mapping[str, str], home: Path, namespace: str, loop: str, version: str) -> Path:
    """~/.cache/feedbackloop/reports/<namespace>/<loop>/<version>, under $XDG_CACHE_HOME when set."""
    cache = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else home / ".cache"
    return cache / "feedbackloop" / "reports" / namespace / loop / version


def open_store(endpoint: str | None, region: str) -> ArtifactStore:
    # Credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profiles).
    return ArtifactStore(s3_client(endpoint_url=endpoint, region=region))


def _store_failure(err: Exception, uri: str, endpoint: str | None, missing: str) -> PluginError:
    store = endpoint or "AWS S3"
    if isinstance(err, NoCredentialsError):
        return PluginError(
            f"no S3 credentials: set {contract.ENV_S3_ACCESS_KEY} and {contract.ENV_S3_SECRET_KEY} "
            "(or an AWS profile) to read the artifact store"
        )
    if isinstance(err, EndpointConnectionError):
        return PluginError(f"cannot reach the S3 endpoint {store} (set --s3-endpoint or {ENV_ENDPOINT})")
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in _NOT_FOUND:
            return PluginError(missing)
        if code == "NoSuchBucket":
            return PluginError(f"the bucket of {uri} does not exist at {store}")
        if code in _BAD_CREDENTIALS:
            return PluginError(f"{store} rejected the S3 credentials ({code})")
        if code in _DENIED:
            return PluginError(f"{store} denied access to {uri} with the S3 credentials in use")
        return PluginError(f"reading {uri} from {store} failed: {code or err}")
    return PluginError(f"reading {uri} from {store} failed: {err}")


def download_report(
    store: ArtifactStore, uri: str, version: str, directory: Path, endpoint: str | None
) -> Path:
    """Save report.html of the version at `uri` in `directory`, only if its sha256 matches the manifest."""
    try:
        bucket, prefix = contract.split_s3_uri(uri)
    except ValueError as err:
        raise PluginError(f"{version} is recorded at {uri!r}, which is not an s3:// location") from err
    try:
        manifest = store.read_manifest(uri, version)
    except (ClientError, BotoCoreError) as err:
        missing = f"{version} has no {contract.MANIFEST_FILE} at {uri}: the store holds no such version"
        raise _store_failure(err, uri, endpoint, missing) from None
    except (contract.ManifestError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PluginError(f"the manifest of {version} at {uri} is unusable: {err}") from None
    report = contract.REPORT_HTML_FILE
    entry = manifest.file(report)
    if entry is None:
        listed = ", ".join(file.name for file in manifest.files)
        raise PluginError(
            f"{version} has no {report} among its artifacts at {uri} (manifest lists: {listed})"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        return store.download_verified(bucket, prefix + report, entry.sha256, directory / report)
    except DigestMismatchError:
        raise PluginError(
            f"refused {uri}{report}: its sha256 does not match {version}'s manifest, "
            "so it changed after the trainer wrote it; nothing was saved"
        ) from None
    except (ClientError, BotoCoreError) as err:
        missing = f"{version}'s manifest lists {report} but {uri}{report} is missing"
        raise _store_failure(err, uri, endpoint, missing) from None
    except OSError as err:
        raise PluginError(f"cannot write the report to {directory}: {err.strerror or err}") from None
