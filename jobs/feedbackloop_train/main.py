"""feedbackloop-train: read the FBL_* env, train, compare with the champion, write a complete version to S3.

Exit 0 only once manifest.json (written last) is in S3, with the manifest's sha256 in the termination message
(the operator accepts only that manifest). On failure, one line goes to the termination-message file and the
exit code is 1.
"""

from __future__ import annotations

import io
import json
import logging
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import sklearn

from feedbackloop.adapters.artifacts import ArtifactStore, ArtifactStoreError, DigestMismatchError, s3_client
from feedbackloop.core import contract
from feedbackloop.core.observations import ArtifactCheck
from feedbackloop_train import evaluate, model, reference, report, reuse
from feedbackloop_train.data import Dataset, load_dataset
from feedbackloop_train.settings import TrainerError, TrainSettings, load_settings

log = logging.getLogger("feedbackloop-train")
CRASH_BEFORE_MANIFEST = "crash-before-manifest"
MAX_MESSAGE = 4096  # the kubelet keeps at most 4096 bytes of a termination message


def load_champion(store: ArtifactStore, settings: TrainSettings, workdir: Path) -> Any | None:
    """The current model, its sha256 verified before joblib.load, because loading runs pickle."""
    if not settings.current_uri or not settings.current_sha256:
        return None
    bucket, key = contract.version_file(settings.current_uri, contract.MODEL_FILE)
    try:
        path = store.download_verified(bucket, key, settings.current_sha256, workdir / "champion.joblib")
    except DigestMismatchError as err:
        raise TrainerError(f"current model refused before loading: {err}") from None
    except ArtifactStoreError as err:
        raise TrainerError(f"cannot download the current model {settings.current_uri}: {err}") from None
    return joblib.load(path)


def fit_wider_window(
    settings: TrainSettings, dataset: Dataset, fitted: Any, predictions: evaluate.Predictions
) -> tuple[Any, evaluate.Predictions, pd.DataFrame, dict[str, Any] | None]:
    """A since-breach retrain's second candidate, on the newest widerRows rows: kept only when it scores
    better than the since-breach model on the same holdout (docs/policy.md). Returns the model, its holdout
    predictions, its training rows and what metrics.json records of the choice."""
    if dataset.wider_extra is None:
        return fitted, predictions, dataset.train, None
    rows = pd.concat([dataset.wider_extra, dataset.train], ignore_index=True)
    wider = model.build_pipeline(
        settings.estimator_class, settings.estimator_params, settings.task, rows, dataset.features
    )
    model.fit(wider, rows, dataset.features, dataset.label)
    wider_predictions = evaluate.predict(wider, model.prepare(dataset.holdout, wider, dataset.features))
    truth = dataset.holdout[dataset.label].to_numpy()
    primary = evaluate.PRIMARY[settings.task]
    since_scores = evaluate.score(settings.task, truth, predictions)
    wider_scores = evaluate.score(settings.task, truth, wider_predictions)
    better = evaluate.better(settings.task, wider_scores, since_scores)
    record = {
        "chosen": contract.WINDOW_WIDER if better else contract.WINDOW_SINCE_BREACH,
        "metric": primary,
        "scores": {
            contract.WINDOW_SINCE_BREACH: since_scores.get(primary),
            contract.WINDOW_WIDER: wider_scores.get(primary),
        },
        "trainRows": {contract.WINDOW_SINCE_BREACH: len(dataset.train), contract.WINDOW_WIDER: len(rows)},
    }
    if better:
        return wider, wider_predictions, rows, record
    return fitted, predictions, dataset.train, record


def train(settings: TrainSettings, store: ArtifactStore, workdir: Path) -> dict[str, Any]:
    timings: dict[str, float] = {}
    started = time.monotonic()
    dataset = load_dataset(store, settings)
    timings["loadSeconds"] = time.monotonic() - started

    step = time.monotonic()
    pipeline = model.build_pipeline(
        settings.estimator_class, settings.estimator_params, settings.task, dataset.train, dataset.features
    )
    model.fit(pipeline, dataset.train, dataset.features, dataset.label)
    timings["fitSeconds"] = time.monotonic() - step

    step = time.monotonic()
    truth = dataset.holdout[dataset.label].to_numpy()
    candidate = evaluate.predict(pipeline, model.prepare(dataset.holdout, pipeline, dataset.features))
    pipeline, candidate, train_rows, window = fit_wider_window(settings, dataset, pipeline, candidate)
    metrics: dict[str, Any] = {
        "schemaVersion": 1,
        "task": settings.task,
        "primaryMetric": evaluate.PRIMARY[settings.task],
        "holdout": {
            "rows": len(dataset.holdout),
            "strategy": "Given" if settings.holdout_uri else settings.holdout_strategy,
        },
        "candidate": evaluate.score(settings.task, truth, candidate),
        "current": None,
        "comparison": {},
    }
    if window is not None:
        metrics[contract.METRICS_WINDOW] = window
    reused: reuse.Earlier | None = None
    if settings.reuse:
        reused, metrics["reuse"] = reuse.choose(
            store, settings, dataset.holdout, dataset.features, metrics["candidate"], workdir
        )
    if reused is not None:
        # An earlier version beat the fresh model on this holdout: it is the candidate, as its own bytes.
        candidate = reused.predictions
        metrics["candidate"] = reused.scores
        metrics[contract.METRICS_REUSED_VERSION] = reused.version
    analyses = {
        "candidate": report.analyse(
            settings.task, dataset.holdout, dataset.features, dataset.holdout[dataset.label], candidate.labels
        )
    }
    champion = load_champion(store, settings, workdir)
    if champion is not None:
        try:
            current = evaluate.predict(champion, model.prepare(dataset.holdout, champion, dataset.features))
        except (ValueError, KeyError, TypeError) as err:
            raise TrainerError(
                f"the current model cannot score the holdout: {str(err).splitlines()[0]}"
            ) from None
        metrics["current"] = evaluate.score(settings.task, truth, current)
        metrics["currentVersion"] = settings.current_version
        metrics["comparison"] = evaluate.compare(settings.task, truth, candidate, current, settings.seed)
        analyses["current"] = report.analyse(
            settings.task, dataset.holdout, dataset.features, dataset.holdout[dataset.label], current.labels
        )
    timings["evaluateSeconds"] = time.monotonic() - step

    if reused is not None:
        model_bytes = reused.model_bytes
        reference_bytes = reused.reference
    else:
        buffer = io.BytesIO()
        joblib.dump(pipeline, buffer)
        model_bytes = buffer.getvalue()
        reference_bytes = json.dumps(
            reference.build_reference(train_rows, dataset.features, settings.seed)
        ).encode()
    images = report.plots(analyses["candidate"], metrics)
    files = {
        contract.MODEL_FILE: model_bytes,
        contract.METRICS_FILE: json.dumps(metrics, indent=2, default=_json_default).encode(),
        contract.REPORT_FILE: json.dumps(analyses, indent=2, default=_json_default).encode(),
        contract.REPORT_HTML_FILE: report.render_html(settings.version, metrics, analyses, images),
        **({contract.REFERENCE_FILE: reference_bytes} if reference_bytes is not None else {}),
        **images,
    }
    timings["totalSeconds"] = time.monotonic() - started
    extra = {
        "createdAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        contract.MANIFEST_LOOP: {"name": settings.loop, "namespace": settings.namespace},
        "job": {"name": settings.job, "podUid": os.environ.get(contract.ENV_POD_UID)},
        "libraries": {
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
            "joblib": joblib.__version__,
            "numpy": np.__version__,
        },
        "estimator": {"class": settings.estimator_class, "params": settings.estimator_params},
        "data": {
            "training": settings.training_uri,
            "feedback": settings.feedback_uri,
            "feedbackSince": settings.feedback_since.isoformat() if settings.feedback_since else None,
            "dataSince": settings.data_since.isoformat() if settings.data_since else None,
            "minRows": settings.min_rows if settings.data_since else None,
            "widerRows": settings.wider_rows if settings.data_since else None,
            "holdout": settings.holdout_uri,
            "rows": dataset.rows,
        },
        "durations": timings,
        contract.MANIFEST_FEATURES: dataset.features,
        "label": dataset.label,
    }
    if reused is not None:
        # The model is the earlier version's, byte for byte: so are the features it reads and what made it.
        extra[contract.MANIFEST_FEATURES] = reused.features
        for key in ("libraries", "estimator"):
            if key in reused.manifest.raw:
                extra[key] = reused.manifest.raw[key]
        extra[contract.MANIFEST_REUSED_FROM] = {
            "version": reused.version,
            "uri": reused.uri,
            "manifestSha256": reused.manifest_sha256,
        }
    try:
        return store.write_version(settings.artifact_uri, settings.version, files, extra, _failpoint)
    except ArtifactStoreError as err:
        raise TrainerError(f"cannot write the version to {settings.artifact_uri}: {err}") from None


def _failpoint() -> None:
    # Fault injection for tests (FBL_FAILPOINT): die with every file uploaded but no manifest yet.
    if os.environ.get("FBL_FAILPOINT") == CRASH_BEFORE_MANIFEST:
        log.error("failpoint %s: exiting before the manifest", CRASH_BEFORE_MANIFEST)
        os._exit(137)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _terminate(path: str, message: str) -> None:
    line = " ".join(message.split())[:MAX_MESSAGE]
    try:
        Path(path).write_text(line + "\n")
    except OSError as err:
        log.error("cannot write the termination message to %s: %s", path, err)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Known before the rest of the settings, so even a settings error reaches the operator.
    default_path = contract.TERMINATION_MESSAGE_PATH
    termination_path = os.environ.get(contract.ENV_TERMINATION_MESSAGE_PATH) or default_path
    try:
        settings = load_settings()
        store = ArtifactStore(s3_client(settings.s3_endpoint_url, settings.s3_region))
        existing = store.verify_version(settings.artifact_uri, settings.version)
        if existing.check is ArtifactCheck.VERIFIED:
            # A pod retried after a complete write: the version exists and must not change now.
            log.info(
                "version %s is already complete at %s; nothing to do", settings.version, settings.artifact_uri
            )
            _terminate(termination_path, contract.success_message(existing.manifest_sha256))
            return 0
        with tempfile.TemporaryDirectory(prefix="fbl-train-") as workdir:
            manifest = train(settings, store, Path(workdir))
    except TrainerError as err:
        log.error("%s", err)
        _terminate(termination_path, str(err))
        return 1
    except Exception as err:  # the reason must reach the operator, whatever it is
        log.exception("unexpected failure")
        _terminate(termination_path, f"unexpected {type(err).__name__}: {err}")
        return 1
    log.info("wrote version %s with %d files", manifest["version"], len(manifest["files"]))
    _terminate(
        termination_path, contract.success_message(contract.sha256_hex(contract.manifest_bytes(manifest)))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
