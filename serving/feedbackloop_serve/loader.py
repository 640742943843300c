"""Load a version by MODEL_URI: the manifest, then every byte to be unpickled checked against its sha256."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from feedbackloop.adapters.artifacts import (
    ArtifactNotFoundError,
    ArtifactStore,
    ArtifactStoreError,
    DigestMismatchError,
)
from feedbackloop.core import contract
from feedbackloop_serve.rows import ANY
from feedbackloop_serve.served import LoadedModel


class ModelRefusedError(Exception):
    """The version must not be served; the message says why."""


class StoreUnavailableError(Exception):
    """The store could not be read; trying again later may work."""


def load_model(store: ArtifactStore, uri: str, sha256: str, workdir: Path, name: str | None) -> LoadedModel:
    try:
        contract.split_s3_uri(uri)
    except ValueError:
        raise ModelRefusedError(f"MODEL_URI={uri!r} is not an s3://bucket/prefix/ URI") from None
    uri = contract.version_root_uri(uri)
    manifest_uri = uri + contract.MANIFEST_FILE
    try:
        manifest = store.read_manifest(uri)
    except ArtifactNotFoundError:
        raise ModelRefusedError(f"{manifest_uri} is missing: not a complete version") from None
    except ArtifactStoreError as err:
        raise StoreUnavailableError(_unreadable(manifest_uri, uri, err)) from None
    except contract.ManifestError as err:
        raise ModelRefusedError(f"unusable manifest at {uri}: {err}") from None
    except json.JSONDecodeError as err:
        raise ModelRefusedError(f"{manifest_uri} is not JSON: {err}") from None
    try:
        model_entry = manifest.file(contract.MODEL_FILE)
        assert model_entry is not None  # parse_manifest requires it
        if model_entry.sha256 != sha256:
            raise ModelRefusedError(
                f"MODEL_SHA256 {sha256[:12]}… does not match the manifest's model.joblib "
                f"{model_entry.sha256[:12]}…"
            )
        model_path = store.download_verified(
            *contract.version_file(uri, contract.MODEL_FILE), sha256, workdir / "model.joblib"
        )
        metrics = _verified_json(store, uri, manifest, contract.METRICS_FILE, workdir)
        reference = _verified_json(store, uri, manifest, contract.REFERENCE_FILE, workdir)
    except DigestMismatchError as err:
        raise ModelRefusedError(f"refused before loading: {err}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelRefusedError(f"unreadable JSON in {uri}: {err}") from None
    except ArtifactNotFoundError as err:
        raise ModelRefusedError(f"a file the manifest lists is missing under {uri}: {err}") from None
    except ArtifactStoreError as err:
        raise StoreUnavailableError(_unreadable(uri, uri, err)) from None
    try:
        estimator = joblib.load(model_path)  # only after download_verified matched MODEL_SHA256
    except Exception as err:  # a verified file that still cannot be loaded, e.g. a library mismatch
        raise ModelRefusedError(f"cannot load model.joblib: {type(err).__name__}: {err}") from None
    features = manifest.raw.get(contract.MANIFEST_FEATURES) or [
        str(f) for f in getattr(estimator, "feature_names_in_", [])
    ]
    if not features or not all(isinstance(f, str) for f in features):
        raise ModelRefusedError("neither the manifest nor the model names its features")
    types = dict.fromkeys(features, ANY)
    for feature, spec in ((reference or {}).get("features") or {}).items():
        if feature in types and isinstance(spec, dict) and spec.get("type") in ("numeric", "categorical"):
            types[feature] = spec["type"]
    classes = getattr(estimator, "classes_", None)
    task = str((metrics or {}).get("task") or ("classification" if classes is not None else "regression"))
    loop = manifest.raw.get(contract.MANIFEST_LOOP) or {}
    loaded = LoadedModel(
        uri=uri,
        version=manifest.version,
        sha256=sha256,
        name=name or str(loop.get("name") or "model"),
        estimator=estimator,
        features=list(features),
        feature_types=types,
        task=task,
        classes=None if classes is None else np.asarray(classes).tolist(),
        reference=reference,
    )
    _ = loaded.nullable  # probed here, off the event loop
    return loaded


def _unreadable(what: str, uri: str, err: ArtifactStoreError) -> str:
    if err.code:  # the store answered, with an error
        return f"cannot read {what}: {err.code} {err}"
    return f"cannot reach the store for {uri}: {err}"


def _verified_json(
    store: ArtifactStore, uri: str, manifest: contract.Manifest, name: str, workdir: Path
) -> dict[str, Any] | None:
    entry = manifest.file(name)
    if entry is None:
        return None
    path = store.download_verified(*contract.version_file(uri, name), entry.sha256, workdir / name)
    loaded = json.loads(path.read_text())
    return loaded if isinstance(loaded, dict) else None
