"""Reuse a past version (retrain.reuse): score the loop's earlier versions on the holdout beside the new one.

Concepts recur, so after a breach a version trained on an earlier concept may beat a model fitted on the few
rows labelled since the breach. The operator names the versions and the sha256 of each one's manifest (from
status.history: the manifests it verified); nothing here trusts the bucket's listing or contents beyond that:

- a version is read only at its place under this loop's own prefix (the sibling of FBL_ARTIFACT_URI);
- its manifest.json must hash to the digest the operator gave, and every file read from it (model.joblib,
  reference.json) to the manifest's sha256 before it is used: joblib.load runs pickle.

A version that cannot be read, verified or scored is skipped with its reason in metrics.json; it never fails
the retrain.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import pandas as pd

from feedbackloop.adapters.artifacts import ArtifactStore, ArtifactStoreError
from feedbackloop.core import contract
from feedbackloop_train import evaluate, model
from feedbackloop_train.settings import TrainSettings

log = logging.getLogger("feedbackloop-train")


@dataclass(frozen=True)
class Earlier:
    """An earlier version, verified and scored on this retrain's holdout."""

    version: str
    uri: str
    manifest_sha256: str
    manifest: contract.Manifest
    model_bytes: bytes
    reference: bytes | None
    features: list[str]
    predictions: evaluate.Predictions
    scores: dict[str, float]


class RefusedError(Exception):
    """One earlier version cannot be reused; the message says why."""


def _verified_file(
    store: ArtifactStore, uri: str, manifest: contract.Manifest, name: str, workdir: Path
) -> bytes:
    entry = manifest.file(name)
    if entry is None:
        raise RefusedError(f"its manifest lists no {name}")
    bucket, key = contract.version_file(uri, name)
    path = store.download_verified(bucket, key, entry.sha256, workdir / f"reuse-{manifest.version}-{name}")
    data = path.read_bytes()
    if len(data) != entry.size:
        raise RefusedError(f"{name} has {len(data)} bytes, its manifest says {entry.size}")
    return data


def load_earlier(
    store: ArtifactStore,
    settings: TrainSettings,
    wanted: contract.ReusableVersion,
    holdout: pd.DataFrame,
    features: list[str],
    workdir: Path,
) -> Earlier:
    """Read, verify, load and score one earlier version; RefusedError says why it cannot be reused."""
    try:
        uri = contract.sibling_version_uri(settings.artifact_uri, settings.version, wanted.version)
        body = store.get_bytes(*contract.version_file(uri, contract.MANIFEST_FILE))
        digest = contract.sha256_hex(body)
        if digest != wanted.manifest_sha256:
            raise RefusedError(
                f"manifest.json has sha256 {digest[:12]}…, status.history recorded "
                f"{wanted.manifest_sha256[:12]}…"
            )
        manifest = contract.parse_manifest(json.loads(body), expected_version=wanted.version)
        model_bytes = _verified_file(store, uri, manifest, contract.MODEL_FILE, workdir)
        reference = (
            _verified_file(store, uri, manifest, contract.REFERENCE_FILE, workdir)
            if manifest.file(contract.REFERENCE_FILE) is not None
            else None
        )
    except (ValueError, ArtifactStoreError) as err:  # DigestMismatchError and ManifestError are ValueErrors
        raise RefusedError(_first_line(err)) from None
    # Only bytes whose sha256 the trusted manifest lists reach pickle.
    try:
        estimator = joblib.load(io.BytesIO(model_bytes))
    except Exception as err:  # an unpicklable or incompatible model is skipped, whatever the library raises
        raise RefusedError(f"cannot load its model: {type(err).__name__}: {_first_line(err)}") from None
    listed = manifest.raw.get(contract.MANIFEST_FEATURES)
    used = (
        [str(name) for name in listed]
        if isinstance(listed, list) and listed and all(isinstance(n, str) and n in holdout for n in listed)
        else features
    )
    try:
        predictions = evaluate.predict(estimator, model.prepare(holdout, estimator, used))
    except Exception as err:  # a model of another schema cannot score this holdout: not a candidate
        raise RefusedError(f"cannot score the holdout: {type(err).__name__}: {_first_line(err)}") from None
    truth = holdout[settings.label].to_numpy()
    return Earlier(
        version=wanted.version,
        uri=uri,
        manifest_sha256=wanted.manifest_sha256,
        manifest=manifest,
        model_bytes=model_bytes,
        reference=reference,
        features=used,
        predictions=predictions,
        scores=evaluate.score(settings.task, truth, predictions),
    )


def choose(
    store: ArtifactStore,
    settings: TrainSettings,
    holdout: pd.DataFrame,
    features: list[str],
    fresh: dict[str, float],
    workdir: Path,
) -> tuple[Earlier | None, dict[str, Any]]:
    """The earlier version that beats the fresh model (and every other earlier one) on the holdout, if any,
    and what was scored or skipped, for metrics.json."""
    primary = evaluate.PRIMARY[settings.task]
    scored: dict[str, float] = {}
    skipped: dict[str, str] = {}
    best: Earlier | None = None
    for wanted in settings.reuse:
        if wanted.version == settings.current_version:
            continue  # the champion is scored as the current model already
        try:
            earlier = load_earlier(store, settings, wanted, holdout, features, workdir)
        except RefusedError as err:
            log.warning("not reusing %s: %s", wanted.version, err)
            skipped[wanted.version] = str(err)[:512]
            continue
        scored[wanted.version] = earlier.scores[primary]
        # Newest first, so among equals the newest earlier version stays chosen.
        if evaluate.better(settings.task, earlier.scores, fresh) and (
            best is None or evaluate.better(settings.task, earlier.scores, best.scores)
        ):
            best = earlier
    summary: dict[str, Any] = {"metric": primary, "fresh": fresh.get(primary), "versions": scored}
    if skipped:
        summary["skipped"] = skipped
    if best is not None:
        log.info(
            "reusing %s: %s %.4f beats the fresh model's %.4f",
            best.version,
            primary,
            best.scores[primary],
            fresh.get(primary, float("nan")),
        )
    return best, summary


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
