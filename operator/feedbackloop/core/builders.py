"""Desired Kubernetes objects as plain dicts, built from the spec and status alone."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from feedbackloop.api import (
    API_VERSION,
    COMPONENT_RETRAIN,
    FIELD_MANAGER,
    KIND,
    LABEL_APP_NAME,
    LABEL_COMPONENT,
    LABEL_LOOP,
    LABEL_MANAGED_BY,
    LABEL_TRIGGER,
    LABEL_VERSION,
    RETRAIN_POD_FINALIZER,
    TRAINER_APP_NAME,
    TRIGGER_REASON_ANNOTATION,
    Trigger,
)
from feedbackloop.core import contract
from feedbackloop.core.loop import LoopRef
from feedbackloop.core.spec import FeedbackLoopSpec, ResourceRequirements
from feedbackloop.core.status import ActiveRetrain, ModelRef

TRAINER_CONTAINER = "trainer"
TRAINER_COMMAND = ("feedbackloop-train",)
NONROOT_UID = 65532


@dataclass(frozen=True)
class JobSettings:
    """Operator-wide settings the Job needs: the chosen (allow-listed) image and the S3 endpoint."""

    image: str
    s3_endpoint_url: str | None
    s3_region: str


def retrain_job_name(loop: str, number: int) -> str:
    return f"{loop}-retrain-{number}"


def owner_reference(loop: LoopRef) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": loop.name,
        "uid": loop.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _env(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def build_retrain_job(
    loop: LoopRef,
    spec: FeedbackLoopSpec,
    retrain: ActiveRetrain,
    current: ModelRef | None,
    settings: JobSettings,
    now: datetime,
    reusable: tuple[contract.ReusableVersion, ...] = (),
) -> dict[str, Any]:
    """The retrain Job. `reusable`: earlier versions a breach retrain scores beside its fresh candidate
    (core.reuse.reusable_versions), passed only when the trigger is a breach and retrain.reuse is enabled."""
    retrain_spec = spec.retrain_spec()
    labels = {
        LABEL_APP_NAME: TRAINER_APP_NAME,
        LABEL_MANAGED_BY: FIELD_MANAGER,
        LABEL_COMPONENT: COMPONENT_RETRAIN,
        LABEL_LOOP: loop.name,
        LABEL_VERSION: retrain.version,
        LABEL_TRIGGER: retrain.trigger,
    }
    env = _trainer_env(loop, spec, retrain, current, settings, now)
    if retrain.trigger is Trigger.BREACH and retrain_spec.reuse.enabled and reusable:
        chosen = reusable[: retrain_spec.reuse.max_versions]
        env.append(_env(contract.ENV_REUSE_VERSIONS, contract.reuse_env_value(chosen)))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": retrain.job,
            "namespace": loop.namespace,
            "labels": labels,
            "annotations": {TRIGGER_REASON_ANNOTATION: retrain.reason[:1024]},
            "ownerReferences": [owner_reference(loop)],
        },
        "spec": {
            "backoffLimit": retrain_spec.backoff_limit,
            "activeDeadlineSeconds": retrain_spec.active_deadline_seconds,
            "ttlSecondsAfterFinished": retrain_spec.ttl_seconds_after_finished,
            "template": {
                "metadata": {
                    "labels": {**retrain_spec.pod_labels, **labels},
                    "annotations": dict(retrain_spec.pod_annotations),
                    "finalizers": [RETRAIN_POD_FINALIZER],
                },
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": NONROOT_UID,
                        "runAsGroup": NONROOT_UID,
                        "fsGroup": NONROOT_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [_trainer_container(settings.image, env, retrain_spec.resources)],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
                },
            },
        },
    }


def _trainer_env(
    loop: LoopRef,
    spec: FeedbackLoopSpec,
    retrain: ActiveRetrain,
    current: ModelRef | None,
    settings: JobSettings,
    now: datetime,
) -> list[dict[str, Any]]:
    """The FBL_* contract of docs/retrain-job-contract.md, and the standard AWS variables."""
    retrain_spec, artifacts = spec.retrain_spec(), spec.artifacts_spec()
    data, trainer = retrain_spec.data, retrain_spec.trainer
    artifact_uri = contract.version_uri(
        artifacts.bucket, artifacts.prefix, loop.namespace, loop.name, retrain.version
    )
    env = [
        _env(contract.ENV_LOOP_NAME, loop.name),
        _env(contract.ENV_LOOP_NAMESPACE, loop.namespace),
        _env(contract.ENV_LOOP_UID, loop.uid),
        _env(contract.ENV_VERSION, retrain.version),
        _env(contract.ENV_JOB_NAME, retrain.job),
        {"name": contract.ENV_POD_UID, "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        _env(contract.ENV_TRIGGER, retrain.trigger),
        _env(contract.ENV_ARTIFACT_URI, artifact_uri),
        _env(contract.ENV_TRAINING_DATA_URI, data.training),
        _env(contract.ENV_HOLDOUT_FRACTION, repr(data.holdout_fraction)),
        _env(contract.ENV_HOLDOUT_STRATEGY, data.holdout_strategy),
        _env(contract.ENV_SEED, str(data.seed)),
        _env(contract.ENV_LABEL_COLUMN, trainer.label),
        _env(contract.ENV_TASK, trainer.task),
        _env(contract.ENV_ESTIMATOR_CLASS, trainer.estimator.class_),
        _env(contract.ENV_ESTIMATOR_PARAMS, json.dumps(trainer.estimator.params, sort_keys=True)),
        _env(contract.ENV_TERMINATION_MESSAGE_PATH, contract.TERMINATION_MESSAGE_PATH),
        _env(contract.ENV_S3_REGION, settings.s3_region),
        _secret_env(contract.ENV_S3_ACCESS_KEY, artifacts.credentials_secret, contract.SECRET_KEY_ACCESS),
        _secret_env(contract.ENV_S3_SECRET_KEY, artifacts.credentials_secret, contract.SECRET_KEY_SECRET),
    ]
    if data.feedback:
        env.append(_env(contract.ENV_FEEDBACK_DATA_URI, data.feedback))
        if data.feedback_window is not None:
            since = (now - data.feedback_window).isoformat().replace("+00:00", "Z")
            env.append(_env(contract.ENV_FEEDBACK_SINCE, since))
        if data.since_breach and retrain.breach_since is not None:
            breach = retrain.breach_since.isoformat().replace("+00:00", "Z")
            env.append(_env(contract.ENV_DATA_SINCE, breach))
            env.append(_env(contract.ENV_MIN_ROWS, str(data.min_rows)))
            if data.effective_wider_rows:
                env.append(_env(contract.ENV_WIDER_ROWS, str(data.effective_wider_rows)))
    if data.holdout:
        env.append(_env(contract.ENV_HOLDOUT_DATA_URI, data.holdout))
    if current is not None:
        env.append(_env(contract.ENV_CURRENT_MODEL_URI, current.uri))
        env.append(_env(contract.ENV_CURRENT_MODEL_VERSION, current.version))
        if current.sha256:
            env.append(_env(contract.ENV_CURRENT_MODEL_SHA256, current.sha256))
    if settings.s3_endpoint_url:
        env.append(_env(contract.ENV_S3_ENDPOINT, settings.s3_endpoint_url))
    return env


def _trainer_container(
    image: str, env: list[dict[str, Any]], requirements: ResourceRequirements
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER,
        "image": image,
        "command": list(TRAINER_COMMAND),
        "env": env,
        "terminationMessagePath": contract.TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108 - an emptyDir, the only writable path
    }
    resources = {
        key: {name: str(value) for name, value in values.items()}
        for key, values in (("requests", requirements.requests), ("limits", requirements.limits))
        if values
    }
    if resources:
        container["resources"] = resources
    return container
