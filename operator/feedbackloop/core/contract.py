"""The retrain Job contract, shared by the operator (which sets it) and jobs/ (which honours it).

Documented for people in docs/retrain-job-contract.md; this module is the single source for code.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

# ---- FBL_* environment of the retrain container
ENV_LOOP_NAME = "FBL_LOOP_NAME"
ENV_LOOP_NAMESPACE = "FBL_LOOP_NAMESPACE"
ENV_LOOP_UID = "FBL_LOOP_UID"
ENV_VERSION = "FBL_VERSION"
ENV_JOB_NAME = "FBL_JOB_NAME"
ENV_POD_UID = "FBL_POD_UID"  # from the downward API; a Job's own uid is not exposed to its pods
ENV_TRIGGER = "FBL_TRIGGER"
ENV_ARTIFACT_URI = "FBL_ARTIFACT_URI"
ENV_TRAINING_DATA_URI = "FBL_TRAINING_DATA_URI"
ENV_FEEDBACK_DATA_URI = "FBL_FEEDBACK_DATA_URI"
ENV_FEEDBACK_SINCE = "FBL_FEEDBACK_SINCE"
# A since-breach retrain: train on the rows labelled since this time, or on the newest FBL_MIN_ROWS if fewer.
ENV_DATA_SINCE = "FBL_DATA_SINCE"
ENV_MIN_ROWS = "FBL_MIN_ROWS"
# ... and also fit one on the newest FBL_WIDER_ROWS rows, keeping whichever scores better on the holdout.
ENV_WIDER_ROWS = "FBL_WIDER_ROWS"
METRICS_WINDOW = "window"  # metrics.json: which training window the candidate was fitted on, and both scores
WINDOW_SINCE_BREACH = "sinceBreach"
WINDOW_WIDER = "wider"
ENV_HOLDOUT_DATA_URI = "FBL_HOLDOUT_DATA_URI"
ENV_HOLDOUT_FRACTION = "FBL_HOLDOUT_FRACTION"
ENV_HOLDOUT_STRATEGY = "FBL_HOLDOUT_STRATEGY"
ENV_SEED = "FBL_SEED"
ENV_LABEL_COLUMN = "FBL_LABEL_COLUMN"
ENV_TASK = "FBL_TASK"
ENV_ESTIMATOR_CLASS = "FBL_ESTIMATOR_CLASS"
ENV_ESTIMATOR_PARAMS = "FBL_ESTIMATOR_PARAMS"
ENV_CURRENT_MODEL_URI = "FBL_CURRENT_MODEL_URI"
ENV_CURRENT_MODEL_SHA256 = "FBL_CURRENT_MODEL_SHA256"
ENV_CURRENT_MODEL_VERSION = "FBL_CURRENT_MODEL_VERSION"
# A breach retrain under retrain.reuse: earlier versions of this loop to score beside the new model, newest
# first, as JSON [{"version": "v3", "manifestSha256": "<64 hex>"}]. The digests come from status.history (the
# manifests the operator verified); a version is read only from the loop's own prefix and only if its manifest
# hashes to the digest given.
ENV_REUSE_VERSIONS = "FBL_REUSE_VERSIONS"
ENV_TERMINATION_MESSAGE_PATH = "FBL_TERMINATION_MESSAGE_PATH"
# Standard AWS SDK variables, so any S3 client in a bring-your-own image works unchanged.
ENV_S3_ENDPOINT = "AWS_ENDPOINT_URL_S3"
ENV_S3_REGION = "AWS_DEFAULT_REGION"
ENV_S3_ACCESS_KEY = "AWS_ACCESS_KEY_ID"
ENV_S3_SECRET_KEY = "AWS_SECRET_ACCESS_KEY"  # noqa: S105 - a variable name, not a secret
# Keys looked up in the user's Secret (names, not values).
SECRET_KEY_ACCESS = "AWS_ACCESS_KEY_ID"  # noqa: S105
SECRET_KEY_SECRET = "AWS_SECRET_ACCESS_KEY"  # noqa: S105
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
# On success the termination message is {"manifestSha256": "<hex>"}. It comes back through the API server,
# which a bucket writer cannot forge, so the operator accepts only the manifest the trainer wrote.
TERMINATION_MANIFEST_SHA256 = "manifestSha256"

# ---- artifact layout: s3://<bucket>/<prefix><namespace>/<loop>/<version>/<file>
MODEL_FILE = "model.joblib"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.json"
REPORT_HTML_FILE = "report.html"  # the human-readable error analysis `kubectl feedbackloop report` opens
REFERENCE_FILE = "reference.json"
MANIFEST_FILE = "manifest.json"
REQUIRED_FILES = (MODEL_FILE, METRICS_FILE)
MANIFEST_SCHEMA_VERSION = 1
# Manifest fields besides schemaVersion, version and files that the trainer writes and the model server reads.
MANIFEST_FEATURES = "features"
MANIFEST_LOOP = "loop"
# A version whose model is an earlier version's, copied because it beat the fresh candidate on the holdout:
# metrics.json names that version, the manifest names it and the manifest digest it was verified against.
METRICS_REUSED_VERSION = "reusedVersion"
MANIFEST_REUSED_FROM = "reusedFrom"
REUSE_VERSIONS_LIMIT = 20  # status.history holds at most 20 entries

# ---- feedback rows the model server writes and the trainer reads: the features plus these columns
FEEDBACK_LABEL = "fbl_label"
FEEDBACK_LABELLED_AT = "fbl_labelled_at"
FEEDBACK_PREDICTION = "fbl_prediction"
FEEDBACK_MODEL_VERSION = "fbl_model_version"
FEEDBACK_PREDICTION_ID = "fbl_prediction_id"
FEEDBACK_PREDICTED_AT = "fbl_predicted_at"
FEEDBACK_COLUMN_PREFIX = "fbl_"  # the trainer drops every column with it once the label is renamed

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_VERSION = re.compile(r"^v([0-9]+)$")
_S3_URI = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(.*)$")
# A version names one directory below the loop's: no "/", no "..", only what the operator itself makes.
VERSION_NAME = re.compile(r"v[0-9]{1,9}")
VERSION_NAME_RULE = "v followed by 1 to 9 digits"
# metrics.json is untrusted: status keeps what its schema accepts (maxProperties, finite numbers).
METRICS_LIMIT = 64
COMPARISON_STATS_LIMIT = 16
METRIC_NAME_LIMIT = 63


def version_name(number: int) -> str:
    return f"v{number}"


def is_version_name(value: str | None) -> bool:
    """Whether `value` may name a version in an S3 key: fullmatch, so a trailing newline is refused too."""
    return value is not None and VERSION_NAME.fullmatch(value) is not None


def version_number(version: str | None) -> int:
    """The n of `vN`, or 0 for anything else (a hand-named initial model)."""
    match = _VERSION.match(version or "")
    return int(match.group(1)) if match else 0


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


@dataclass(frozen=True)
class ReusableVersion:
    """An earlier version a breach retrain may reuse, and the sha256 of the manifest the operator verified."""

    version: str
    manifest_sha256: str


def reuse_env_value(versions: tuple[ReusableVersion, ...]) -> str:
    return json.dumps(
        [{"version": v.version, "manifestSha256": v.manifest_sha256} for v in versions], separators=(",", ":")
    )


def parse_reuse_env(text: str) -> tuple[ReusableVersion, ...]:
    """FBL_REUSE_VERSIONS: a list of version names (vN) and manifest digests, at most REUSE_VERSIONS_LIMIT."""
    try:
        raw = json.loads(text)
    except ValueError:
        raise ValueError("is not JSON") from None
    if not isinstance(raw, list) or len(raw) > REUSE_VERSIONS_LIMIT:
        raise ValueError(f"must be a JSON list of at most {REUSE_VERSIONS_LIMIT} entries")
    found: list[ReusableVersion] = []
    for entry in raw:
        version = entry.get("version") if isinstance(entry, dict) else None
        digest = entry.get("manifestSha256") if isinstance(entry, dict) else None
        if not isinstance(version, str) or not is_version_name(version) or not is_sha256(digest):
            raise ValueError(f"entry {entry!r} needs a version ({VERSION_NAME_RULE}) and a manifestSha256")
        assert isinstance(digest, str)
        if all(known.version != version for known in found):
            found.append(ReusableVersion(version, digest))
    return tuple(found)


def sibling_version_uri(artifact_uri: str, own_version: str, version: str) -> str:
    """The URI of another version of the same loop: `artifact_uri` (…/<loop>/<own_version>/) with the last
    segment replaced. `version` must be a version name, so the URI cannot leave the loop's prefix."""
    if not is_version_name(version):
        raise ValueError(f"{version!r} is not a version name ({VERSION_NAME_RULE})")
    root = version_root_uri(artifact_uri)
    suffix = f"/{own_version}/"
    if not is_version_name(own_version) or not root.endswith(suffix):
        raise ValueError(f"{artifact_uri!r} does not end with the version {own_version!r}")
    return root[: -len(suffix) + 1] + version + "/"


def version_prefix(prefix: str, namespace: str, loop: str, version: str) -> str:
    return f"{prefix}{namespace}/{loop}/{version}/"


def version_uri(bucket: str, prefix: str, namespace: str, loop: str, version: str) -> str:
    return f"s3://{bucket}/{version_prefix(prefix, namespace, loop, version)}"


def split_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key or prefix) of an s3:// URI."""
    match = _S3_URI.match(uri)
    if not match:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return match.group(1), match.group(2)


def version_root_uri(uri: str) -> str:
    """A version's URI names its prefix, so a missing trailing slash is implied."""
    return uri if uri.endswith("/") else uri + "/"


def version_file(uri: str, name: str) -> tuple[str, str]:
    """(bucket, key) of the file `name` of the version at `uri`."""
    bucket, prefix = split_s3_uri(version_root_uri(uri))
    return bucket, prefix + name


@dataclass(frozen=True)
class ManifestFile:
    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    version: str
    files: tuple[ManifestFile, ...]
    raw: dict[str, Any]

    def file(self, name: str) -> ManifestFile | None:
        return next((f for f in self.files if f.name == name), None)


class ManifestError(ValueError):
    """The manifest is present but does not describe a usable version."""


def parse_manifest(raw: Any, expected_version: str | None = None) -> Manifest:
    if not isinstance(raw, dict):
        raise ManifestError("manifest.json is not a JSON object")
    if raw.get("schemaVersion") != MANIFEST_SCHEMA_VERSION:
        raise ManifestError(f"unsupported manifest schemaVersion {raw.get('schemaVersion')!r}")
    version = raw.get("version")
    if not isinstance(version, str) or (expected_version is not None and version != expected_version):
        raise ManifestError(f"manifest is for version {version!r}, expected {expected_version!r}")
    entries = raw.get("files")
    if not isinstance(entries, dict) or not entries:
        raise ManifestError("manifest lists no files")
    files = []
    for name, entry in sorted(entries.items()):
        if "/" in name or name in {"", ".", ".."} or name == MANIFEST_FILE:
            raise ManifestError(f"manifest lists an invalid file name {name!r}")
        if not isinstance(entry, dict) or not _SHA256.match(str(entry.get("sha256", ""))):
            raise ManifestError(f"manifest entry for {name} has no valid sha256")
        size = entry.get("size")
        if not isinstance(size, int) or size < 0:
            raise ManifestError(f"manifest entry for {name} has no valid size")
        files.append(ManifestFile(name=name, sha256=entry["sha256"], size=size))
    manifest = Manifest(version=version, files=tuple(files), raw=raw)
    missing = [name for name in REQUIRED_FILES if manifest.file(name) is None]
    if missing:
        raise ManifestError(f"manifest lacks required files: {', '.join(missing)}")
    return manifest


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """manifest.json exactly as the trainer writes it, so that its sha256 can be reported."""
    return json.dumps(manifest, indent=2).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def success_message(manifest_sha256: str) -> str:
    """The trainer's termination message once its manifest is written."""
    return json.dumps({TERMINATION_MANIFEST_SHA256: manifest_sha256})


def reported_manifest_sha256(message: str) -> str | None:
    """The manifest digest a succeeded trainer reported in its termination message, if it reported one."""
    try:
        report = json.loads(message)
    except ValueError:
        return None
    digest = report.get(TERMINATION_MANIFEST_SHA256) if isinstance(report, dict) else None
    return digest if isinstance(digest, str) and _SHA256.match(digest) else None


def numeric_metrics(section: Any, limit: int = METRICS_LIMIT) -> dict[str, float]:
    """The finite numeric entries of one metrics.json section, the first `limit` by name; anything else is
    ignored, so status takes them (the API server refuses NaN, Infinity and more keys than its schema)."""
    if not isinstance(section, dict):
        return {}
    numbers = {
        str(name): number
        for name, value in section.items()
        if len(str(name)) <= METRIC_NAME_LIMIT and (number := _finite(value)) is not None
    }
    return dict(sorted(numbers.items())[:limit])


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        return None
    return number if math.isfinite(number) else None


def comparisons(raw: Any) -> dict[str, dict[str, float]]:
    """metrics.json's `comparison` section: per metric, the numeric statistics of (candidate - current)."""
    if not isinstance(raw, dict):
        return {}
    entries = {
        str(name): numeric_metrics(stats, COMPARISON_STATS_LIMIT)
        for name, stats in raw.items()
        if isinstance(stats, dict) and len(str(name)) <= METRIC_NAME_LIMIT
    }
    return dict(sorted(entries.items())[:METRICS_LIMIT])
