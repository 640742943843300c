"""GitOps assets: the Argo CD health check, run as Lua against the statuses the operator really writes, the
argocd-cm patch and Application that carry it, and every YAML file under manifests/gitops."""

from __future__ import annotations

import dataclasses
import importlib
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_stage import serving as stage_serving
from test_stage import shadow_reads, shadow_spec, staging

from argocd_health import ARGO_HEALTH, HEALTH_LUA, LUA_MODULES, argo_health
from core_inputs import (
    POLICY,
    T0,
    V1,
    V2_URI,
    accuracy,
    healthy_dependencies,
    loop_state,
    rolling_deployment,
    rolling_status,
    spec_dict,
)
from feedbackloop.adapters.kube import ApiFailureError
from feedbackloop.api import (
    API_VERSION,
    FIELD_MANAGER,
    PROMOTE_ANNOTATION,
    RETRAIN_REQUEST_ANNOTATION,
    ROLLBACK_ANNOTATION,
    ConditionType,
    Reason,
    RolloutKind,
    RolloutPhase,
)
from feedbackloop.core.decide import decide
from feedbackloop.core.observations import (
    JobObservation,
    JobState,
    Observations,
    TargetObservation,
)
from feedbackloop.core.readiness import dependency_failed
from feedbackloop.core.spec import Mode
from feedbackloop.core.status import (
    FeedbackLoopStatus,
    ModelRef,
    to_status_dict,
)

REPO = Path(__file__).resolve().parents[2]
GITOPS = REPO / "manifests" / "gitops"
CM_PATCH = GITOPS / "argocd" / "argocd-cm-patch.yaml"
APPLICATION = GITOPS / "argocd" / "application.yaml"
HEALTH_KEY = "resource.customizations.health.feedbackloop.dev_FeedbackLoop"
IGNORE_KEY = "resource.customizations.ignoreDifferences.apps_Deployment"
OPERATOR_FIELD_MANAGER = FIELD_MANAGER  # the field manager of the operator's server-side apply

V3 = ModelRef(version="v3", uri="s3://models/churn/ml/churn/v3/", sha256="3" * 64, metrics={"accuracy": 0.9})


@pytest.fixture(params=LUA_MODULES)
def lua_module(request: pytest.FixtureRequest) -> Any:
    return importlib.import_module(request.param)


def feedback_loop(
    status: FeedbackLoopStatus | dict[str, Any] | None,
    generation: int = 1,
    spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "FeedbackLoop",
        "metadata": {"name": "churn", "namespace": "ml", "generation": generation, "uid": "0f0e0d0c-uid"},
        "spec": spec if spec is not None else spec_dict(),
    }
    if isinstance(status, FeedbackLoopStatus):
        obj["status"] = to_status_dict(status)
    elif status is not None:
        obj["status"] = status
    return obj


# ---------------------------------------------------------------- statuses written by the operator's decide()


def decided(
    status: FeedbackLoopStatus | None = None,
    observed: Observations | None = None,
    spec: dict[str, Any] | None = None,
    minutes: float = 0,
    generation: int = 1,
) -> FeedbackLoopStatus:
    loop = loop_state(spec, status, generation=generation)
    seen = observed if observed is not None else healthy_dependencies(metrics=(accuracy(0.93),))
    return decide(loop, seen, POLICY, T0 + timedelta(minutes=minutes)).status


def serving(version: ModelRef = V3) -> FeedbackLoopStatus:
    return decided(FeedbackLoopStatus(current_model=version, retrain_count=3))


def condition(status: FeedbackLoopStatus, kind: ConditionType) -> tuple[str, str]:
    found = status.condition(kind)
    assert found is not None
    return found.status, found.reason


def deployment(uri: str, complete: bool, deadline_exceeded: bool = False) -> Observations:
    return rolling_deployment(uri, complete, deadline_exceeded, metrics=(accuracy(0.93),))


def failed_reconcile(
    forbidden: bool, message: str, status: FeedbackLoopStatus, generation: int
) -> dict[str, Any]:
    """The loop as Reconciler.report_failure leaves it: Ready=False with the reason at the failed generation,
    nothing else touched (tests/integration/test_rbac.py checks one the real operator wrote)."""
    return feedback_loop(dependency_failed(status, forbidden, message, T0, generation), generation=generation)


# ---------------------------------------------------------------- the health mapping


def test_a_loop_without_status_waits_for_the_operator(lua_module: Any) -> None:
    assert argo_health(lua_module, feedback_loop(None, generation=1)) == (
        "Progressing",
        "waiting for the operator to observe generation 1",
    )


def test_a_spec_change_not_yet_observed_is_progressing(lua_module: Any) -> None:
    status = serving()
    assert status.observed_generation == 1
    health, message = argo_health(lua_module, feedback_loop(status, generation=2))
    assert (health, message) == ("Progressing", "waiting for the operator to observe generation 2")


def test_a_suspended_loop_is_suspended(lua_module: Any) -> None:
    spec = spec_dict(suspend=True)
    status = decided(FeedbackLoopStatus(current_model=V3), spec=spec)
    assert status.phase == "Suspended"
    health, message = argo_health(lua_module, feedback_loop(status, spec=spec))
    assert health == "Suspended"
    assert message == "spec.suspend is true, nothing is launched; serving model version v3"


def test_an_invalid_spec_is_degraded_with_the_operator_reason(lua_module: Any) -> None:
    spec = spec_dict(**{"retrain.image": "registry.example/not-allowed:1"})
    status = decided(spec=spec)
    assert condition(status, ConditionType.READY) == ("False", Reason.INVALID_SPEC)
    health, message = argo_health(lua_module, feedback_loop(status, spec=spec))
    assert health == "Degraded"
    assert message.startswith(f"{Reason.INVALID_SPEC}: spec.retrain.image:")
    assert "allowed trainer images" in message


def test_an_invalid_spec_outranks_suspend(lua_module: Any) -> None:
    spec = spec_dict(suspend=True, **{"retrain.image": "registry.example/not-allowed:1"})
    health, message = argo_health(lua_module, feedback_loop(decided(spec=spec), spec=spec))
    assert health == "Degraded" and message.startswith(Reason.INVALID_SPEC)


@pytest.mark.parametrize(
    ("http_status", "reason"),
    [(403, Reason.FORBIDDEN), (500, Reason.KUBERNETES_API_ERROR)],
)
def test_a_failed_reconcile_is_degraded_with_its_reason(
    lua_module: Any, http_status: int, reason: str
) -> None:
    failure = ApiFailureError("patch deployments.apps churn-server", http_status, "denied")
    # A spec change (generation 2) whose reconcile failed: only Ready carries the new generation.
    body = failed_reconcile(failure.forbidden, str(failure), serving(), generation=2)
    assert body["status"]["observedGeneration"] == 1
    health, message = argo_health(lua_module, body)
    assert health == "Degraded"
    assert message == f"{reason}: patch deployments.apps churn-server: HTTP {http_status} denied"


def test_an_unreachable_dependency_is_degraded(lua_module: Any) -> None:
    observed = healthy_dependencies(
        target=TargetObservation(deployment_found=False, container_found=False, containers=())
    )
    status = decided(FeedbackLoopStatus(current_model=V3), observed)
    health, message = argo_health(lua_module, feedback_loop(status))
    assert (health, message) == ("Degraded", f"{Reason.TARGET_NOT_FOUND}: Deployment churn-server not found")


def test_a_rollback_in_flight_and_after_it_is_degraded(lua_module: Any) -> None:
    # The new version misses its progress deadline: the operator rolls back to v1 ...
    rolling_back = decided(
        rolling_status(), deployment(V2_URI, complete=False, deadline_exceeded=True), minutes=1
    )
    assert condition(rolling_back, ConditionType.DEGRADED) == ("True", Reason.PROGRESS_DEADLINE_EXCEEDED)
    assert rolling_back.rollout is not None and rolling_back.rollout.phase == "RollingBack"
    health, message = argo_health(lua_module, feedback_loop(rolling_back))
    assert health == "Degraded"
    assert message.startswith(f"{Reason.PROGRESS_DEADLINE_EXCEEDED}: v2:")
    assert f"{Reason.ROLLING_BACK}: rolling back to v1" in message
    # ... and once v1 serves again, the loop stays Degraded: a version failed in production.
    rolled_back = decided(rolling_back, deployment(V1.uri, complete=True), minutes=2)
    assert rolled_back.rollout is None
    assert condition(rolled_back, ConditionType.ROLLED_OUT) == ("False", Reason.ROLLED_BACK)
    health, message = argo_health(lua_module, feedback_loop(rolled_back))
    assert health == "Degraded"
    assert f"{Reason.ROLLED_BACK}: v2 rolled back to v1" in message
    assert message.endswith("serving model version v1")


def test_a_running_retrain_is_progressing(lua_module: Any) -> None:
    started = decided(serving(), healthy_dependencies(retrain_request="r1", metrics=(accuracy(0.93),)))
    assert condition(started, ConditionType.RETRAINING) == ("True", Reason.RETRAIN_STARTED)
    health, message = argo_health(lua_module, feedback_loop(started))
    assert health == "Progressing" and message.startswith(f"retraining v4: {Reason.RETRAIN_STARTED}")
    running = decided(started, healthy_dependencies(job=JobObservation("churn-retrain-4", JobState.RUNNING)))
    assert condition(running, ConditionType.RETRAINING) == ("True", Reason.RETRAIN_RUNNING)
    health, message = argo_health(lua_module, feedback_loop(running))
    assert health == "Progressing"
    assert message.startswith(f"retraining v4: {Reason.RETRAIN_RUNNING}: Job churn-retrain-4 training v4")
    assert message.endswith("serving model version v3")


def test_a_rollout_in_progress_is_progressing(lua_module: Any) -> None:
    progressing = decided(rolling_status(), deployment(V2_URI, complete=False), minutes=1)
    assert condition(progressing, ConditionType.ROLLED_OUT) == ("Unknown", Reason.ROLLOUT_PROGRESSING)
    assert argo_health(lua_module, feedback_loop(progressing)) == (
        "Progressing",
        f"rolling out v2 (Progressing): {Reason.ROLLOUT_PROGRESSING}: v2: 1/2 updated, 1 available",
    )
    analysing = decided(rolling_status(), deployment(V2_URI, complete=True), minutes=1)
    health, message = argo_health(lua_module, feedback_loop(analysing))
    assert health == "Progressing"
    assert message.startswith(f"rolling out v2 (Analyzing): {Reason.ROLLOUT_COMPLETE}")


def test_a_requested_rollback_is_progressing(lua_module: Any) -> None:
    rollout = rolling_status().rollout
    assert rollout is not None
    status = rolling_status().model_copy(
        update={"rollout": dataclasses.replace(rollout, kind=RolloutKind.ROLLBACK)}
    )
    progressing = decided(status, deployment(V2_URI, complete=False), minutes=1)
    health, message = argo_health(lua_module, feedback_loop(progressing))
    assert health == "Progressing" and message.startswith("rolling back to v2 (Progressing)")


def test_a_first_visit_without_checks_is_progressing(lua_module: Any) -> None:
    status = decided(observed=Observations())
    assert condition(status, ConditionType.READY) == ("Unknown", Reason.INITIALIZING)
    health, message = argo_health(lua_module, feedback_loop(status))
    assert health == "Progressing"
    assert message == f"waiting for the first check of the loop's dependencies ({Reason.INITIALIZING})"


def test_a_serving_loop_is_healthy_and_names_the_version(lua_module: Any) -> None:
    status = serving()
    assert condition(status, ConditionType.READY) == ("True", Reason.READY)
    assert argo_health(lua_module, feedback_loop(status)) == ("Healthy", "serving model version v3")


def test_a_breach_the_loop_only_reports_keeps_it_healthy_and_says_so(lua_module: Any) -> None:
    spec = spec_dict(mode=Mode.OBSERVE.value)
    status = decided(
        FeedbackLoopStatus(current_model=V3), healthy_dependencies(metrics=(accuracy(0.7),)), spec
    )
    assert condition(status, ConditionType.HEALTHY)[0] == "False"
    health, message = argo_health(lua_module, feedback_loop(status, spec=spec))
    assert health == "Healthy"
    assert message.startswith("serving model version v3; metrics: ")


def test_a_failed_retrain_keeps_the_loop_healthy_and_says_so(lua_module: Any) -> None:
    started = decided(serving(), healthy_dependencies(retrain_request="r1", metrics=(accuracy(0.93),)))
    failed_job = JobObservation("churn-retrain-4", JobState.FAILED, "OOMKilled")
    failed = decided(started, healthy_dependencies(job=failed_job, metrics=(accuracy(0.93),)))
    assert condition(failed, ConditionType.RETRAINING) == ("False", Reason.RETRAIN_JOB_FAILED)
    health, message = argo_health(lua_module, feedback_loop(failed))
    assert health == "Healthy"
    assert f"last retrain failed: {Reason.RETRAIN_JOB_FAILED}: Job churn-retrain-4" in message


@pytest.mark.parametrize(
    "reason",
    [
        Reason.ACCESS_DENIED,
        Reason.JOB_CREATE_REFUSED,
        Reason.JOB_CREATE_FAILED,
        Reason.MANIFEST_TAMPERED,
        Reason.JOB_NAME_TAKEN,
        Reason.MANIFEST_MISSING,
    ],
)
def test_every_way_a_retrain_ends_in_failure_is_named_in_argo_health(lua_module: Any, reason: Reason) -> None:
    retraining = {"type": "Retraining", "status": "False", "reason": str(reason), "message": "why"}
    ready = {"type": "Ready", "status": "True", "reason": "Ready", "message": ""}
    status = {"observedGeneration": 1, "conditions": [ready, retraining]}
    _health, message = argo_health(lua_module, feedback_loop(status))
    assert f"last retrain failed: {reason}: why" in message


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"metadata": None, "spec": None, "status": None},
        {"metadata": {"generation": "3"}, "status": {"observedGeneration": "3"}},
        {"metadata": {"generation": 1}, "status": "not an object"},
        {"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "conditions": "nope"}},
        {"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "conditions": [None, 7, {}]}},
        {
            "metadata": {"generation": 1},
            "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "False"}]},
        },
        {
            "metadata": {"generation": 1},
            "spec": {"suspend": "yes"},
            "status": {"observedGeneration": 1, "rollout": {}, "activeRetrain": [], "currentModel": {}},
        },
    ],
)
def test_malformed_objects_never_break_the_script(lua_module: Any, obj: dict[str, Any]) -> None:
    argo_health(lua_module, obj)


def test_the_lua_names_only_reasons_and_types_the_operator_has() -> None:
    known = (
        {reason.value for reason in Reason}
        | {c.value for c in ConditionType}
        | ARGO_HEALTH
        | {"True", "False", RolloutKind.ROLLBACK.value, RolloutPhase.STAGING.value}
    )
    literals = set(re.findall(r'"([A-Z][A-Za-z]+)"', HEALTH_LUA.read_text()))
    literals |= set(re.findall(r"^\s+([A-Z][A-Za-z]+) = true,$", HEALTH_LUA.read_text(), re.MULTILINE))
    assert literals, "the pattern no longer finds the Lua's string literals"
    assert literals - known == set()


# ---------------------------------------------------------------- argocd-cm patch and Application


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def test_the_configmap_carries_health_lua_byte_for_byte() -> None:
    (configmap,) = load_yaml_documents(CM_PATCH)
    assert (configmap["kind"], configmap["metadata"]["name"]) == ("ConfigMap", "argocd-cm")
    assert configmap["data"][HEALTH_KEY] == HEALTH_LUA.read_text()


def test_the_configmap_ignores_what_the_operator_manages_on_deployments() -> None:
    (configmap,) = load_yaml_documents(CM_PATCH)
    rule = yaml.safe_load(configmap["data"][IGNORE_KEY])
    assert rule == {"managedFieldsManagers": [OPERATOR_FIELD_MANAGER]}


def test_the_application_ignores_the_operator_fields_and_respects_that_in_syncs() -> None:
    (application,) = load_yaml_documents(APPLICATION)
    assert application["kind"] == "Application"
    spec = application["spec"]
    deployment_rules = [
        rule for rule in spec["ignoreDifferences"] if (rule["group"], rule["kind"]) == ("apps", "Deployment")
    ]
    assert deployment_rules == [
        {"group": "apps", "kind": "Deployment", "managedFieldsManagers": [OPERATOR_FIELD_MANAGER]}
    ]
    assert {"ServerSideApply=true", "RespectIgnoreDifferences=true"} <= set(spec["syncPolicy"]["syncOptions"])


def test_the_application_ignores_exactly_the_request_annotations() -> None:
    (application,) = load_yaml_documents(APPLICATION)
    (rule,) = [r for r in application["spec"]["ignoreDifferences"] if r["kind"] == "FeedbackLoop"]
    annotations = {pointer.split("/")[-1].replace("~1", "/") for pointer in rule["jsonPointers"]}
    declared = {RETRAIN_REQUEST_ANNOTATION, PROMOTE_ANNOTATION, ROLLBACK_ANNOTATION}
    assert (
        annotations
        == declared
        == {
            RETRAIN_REQUEST_ANNOTATION,
            "feedbackloop.dev/promote",
            "feedbackloop.dev/rollback-to",
        }
    )


# ---------------------------------------------------------------- every YAML file parses


GITOPS_YAML = sorted([*GITOPS.rglob("*.yaml"), *GITOPS.rglob("*.yml")])


def test_there_are_gitops_yaml_files() -> None:
    names = {path.relative_to(GITOPS).as_posix() for path in GITOPS_YAML}
    assert {"argocd/argocd-cm-patch.yaml", "argocd/application.yaml", "flux/helmrelease.yaml"} <= names


@pytest.mark.parametrize("path", GITOPS_YAML, ids=lambda p: p.relative_to(GITOPS).as_posix())
def test_every_gitops_yaml_file_parses_into_kubernetes_objects(path: Path) -> None:
    documents = load_yaml_documents(path)
    assert documents
    for document in documents:
        assert isinstance(document, dict)
        assert {"apiVersion", "kind", "metadata"} <= document.keys()
        assert document["metadata"].get("name")


def test_flux_installs_the_kustomize_base_and_the_chart_from_git() -> None:
    objects = [doc for path in GITOPS.glob("flux/*.yaml") for doc in load_yaml_documents(path)]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    sources = {obj["metadata"]["name"] for obj in by_kind["GitRepository"]}
    kustomizations = {obj["metadata"]["name"]: obj["spec"] for obj in by_kind["Kustomization"]}
    operator = kustomizations["feedbackloop-operator"]
    assert (operator["path"], operator["wait"], operator["sourceRef"]["name"] in sources) == (
        "./manifests",
        True,
        True,
    )
    dependents = [spec for spec in kustomizations.values() if spec.get("dependsOn")]
    assert dependents and all(
        {"name": "feedbackloop-operator"} in spec["dependsOn"] and spec["wait"] for spec in dependents
    )
    assert (REPO / operator["path"] / "kustomization.yaml").is_file()
    (release,) = by_kind["HelmRelease"]
    chart = release["spec"]["chart"]["spec"]
    assert chart["chart"] == "./helm/feedbackloop-operator"
    assert (REPO / chart["chart"] / "Chart.yaml").is_file()
    assert chart["sourceRef"]["kind"] == "GitRepository" and chart["sourceRef"]["name"] in sources
    assert release["spec"]["install"]["crds"] == release["spec"]["upgrade"]["crds"] == "CreateReplace"
    chart_values = yaml.safe_load((REPO / chart["chart"] / "values.yaml").read_text())
    assert release["spec"]["values"]["crds"].keys() <= chart_values["crds"].keys()
    assert release["spec"]["values"]["crds"]["keep"] is True


def test_a_stage_is_progressing_and_its_rejection_a_note_on_a_healthy_loop(lua_module: Any) -> None:
    spec = shadow_spec()
    live = decided(staging(live=False), stage_serving(V2_URI), spec=spec, minutes=2)
    assert condition(live, ConditionType.ROLLED_OUT) == ("Unknown", Reason.STAGE_RUNNING)
    health, message = argo_health(lua_module, feedback_loop(live, spec=spec))
    assert health == "Progressing"
    assert message.startswith(
        f"judging v2 beside the champion on live labels (Staging): {Reason.STAGE_RUNNING}"
    )
    lost = decided(live, shadow_reads(150, 40, 5, 5), spec=spec, minutes=20)
    removed = decided(lost, stage_serving(None), spec=spec, minutes=21)
    assert removed.rollout is None
    health, message = argo_health(lua_module, feedback_loop(removed, spec=spec))
    assert health == "Healthy"
    assert f"candidate rejected by its stage: {Reason.STAGE_LOST}: v2 removed from beside v1" in message
