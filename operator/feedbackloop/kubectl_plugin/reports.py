"""A version's error-analysis report from S3, verified against the version's manifest before it is kept."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from feedbackloop.adapters.artifacts import (
    ArtifactAccessDeniedError,
    ArtifactNotFoundError,
    ArtifactStore,
    ArtifactStoreError,
    ArtifactStoreUnavailableError,
    Denial,
    DigestMismatchError,
    s3_client,
)
from feedbackloop.core import contract
from feedbackloop.kubectl_plugin.errors import PluginError

ENV_ENDPOINT = "FBL_S3_ENDPOINT_URL"  # the operator's own setting, so one environment serves both
ENV_REGION = "FBL_S3_REGION"
DEFAULT_REGION = "us-east-1"


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


def _store_failure(err: ArtifactStoreError, uri: str, endpoint: str | None, missing: str) -> PluginError:
    store = endpoint or "AWS S3"
    if isinstance(err, ArtifactNotFoundError):
        return PluginError(
            f"the bucket of {uri} does not exist at {store}" if err.missing_bucket else missing
        )
    if isinstance(err, ArtifactAccessDeniedError):
        return _access_failure(err, uri, store)
    if isinstance(err, ArtifactStoreUnavailableError) and err.endpoint_unreachable:
        return PluginError(f"cannot reach the S3 endpoint {store} (set --s3-endpoint or {ENV_ENDPOINT})")
    return PluginError(f"reading {uri} from {store} failed: {err.code or err}")


def _access_failure(err: ArtifactAccessDeniedError, uri: str, store: str) -> PluginError:
    if err.denial is Denial.NO_CREDENTIALS:
        return PluginError(
            f"no S3 credentials: set {contract.ENV_S3_ACCESS_KEY} and {contract.ENV_S3_SECRET_KEY} "
            "(or an AWS profile) to read the artifact store"
        )
    if err.denial is Denial.BAD_CREDENTIALS:
        return PluginError(f"{store} rejected the S3 credentials ({err.code})")
    return PluginError(f"{store} denied access to {uri} with the S3 credentials in use")


def download_report(
    store: ArtifactStore, uri: str, version: str, directory: Path, endpoint: str | None
) -> Path:
    """Save report.html of the version at `uri` in `directory`, only if its sha256 matches the manifest."""
    try:
        contract.split_s3_uri(uri)
    except ValueError as err:
        raise PluginError(f"{version} is recorded at {uri!r}, which is not an s3:// location") from err
    try:
        manifest = store.read_manifest(uri, version)
    except ArtifactStoreError as err:
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
        return store.download_verified(*contract.version_file(uri, report), entry.sha256, directory / report)
    except DigestMismatchError:
        raise PluginError(
            f"refused {uri}{report}: its sha256 does not match {version}'s manifest, "
            "so it changed after the trainer wrote it; nothing was saved"
        ) from None
    except ArtifactStoreError as err:
        missing = f"{version}'s manifest lists {report} but {uri}{report} is missing"
        raise _store_failure(err, uri, endpoint, missing) from None
    except OSError as err:
        raise PluginError(f"cannot write the report to {directory}: {err.strerror or err}") from None
