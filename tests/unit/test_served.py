"""MODEL_URI changed outside the operator after a rollout: InSync, one Event, the served model as champion."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from core_inputs import (
    PASSED_V2,
    POLICY,
    T0,
    V1,
    V2_URI,
    created_jobs,
    healthy_dependencies,
    loop_state,
    rolling_deployment,
    rolling_status,
    spec_dict,
)
from feedbackloop.api import ConditionType, EventType, Reason, RolloutPhase
from feedbackloop.config import ConfigError, load_config
from feedbackloop.core import contract
from feedbackloop.core.decide import decide
from feedbackloop.core.decision import ApplyModel, Decision
from feedbackloop.core.observations import DeployedModel, Observations, TargetObservation
from feedbackloop.core.status import FeedbackLoopStatus, ModelRef

V1_SHA, V2_SHA = "1" * 64, "2" * 64
# v2 passed its analysis and serves; V1 has no deployedAt: adopted from the Deployment, never rolled out here.
ROLLED_OUT_V2 = ModelRef(
    version="v2", uri=V2_URI, sha256=V2_SHA, metrics={"accuracy": 0.93}, deployed_at=T0 - timedelta(hours=1)
)
WHERE = "Deployment churn-server/server"


def serving(
    uri: str | None, sha256: str | None, annotation: str | None = "v2", **changes: Any
) -> Observations:
    """A probe tick that read the Deployment's model env and version annotation."""
    target = TargetObservation(True, True, ("server",), DeployedModel(uri, sha256, annotation))
    return healthy_dependencies(target=target, **changes)


def in_sync_status(current: ModelRef = ROLLED_OUT_V2) -> FeedbackLoopStatus:
    """A loop after its rollout, as the tick that compared it with the Deployment left it."""
    return tick(
        FeedbackLoopStatus(current_model=current, retrain_count=2), serving(current.uri, current.sha256)
    )


def tick(
    status: FeedbackLoopStatus, observed: Observations, minutes: float = 1, **spec: Any
) -> FeedbackLoopStatus:
    return run(status, observed, minutes, **spec).status


def run(status: FeedbackLoopStatus, observed: Observations, minutes: float = 1, **spec: Any) -> Decision:
    return decide(loop_state(spec_dict(**spec), status), observed, POLICY, T0 + timedelta(minutes=minutes))


def in_sync(decision: Decision) -> tuple[str, str, str]:
    found = decision.status.condition(ConditionType.IN_SYNC)
    assert found is not None
    return found.status, found.reason, found.message


def reverted() -> Decision:
    """GitOps applied its manifest again: v1's MODEL_URI, MODEL_SHA256 and version annotation are back."""
    return run(in_sync_status(), serving(V1.uri, V1_SHA, annotation="v1"), minutes=2)


def test_in_sync_after_the_rollout_names_what_serves() -> None:
    status = in_sync_status()
    found = status.condition(ConditionType.IN_SYNC)
    assert found is not None
    assert (found.status, found.reason) == ("True", "InSync")
    assert found.message == f"{WHERE} serves v2 ({V2_URI})"
    assert (status.current_model, status.expected_model) == (ROLLED_OUT_V2, None)


def test_a_reverted_model_env_is_out_of_sync_with_one_warning() -> None:
    decision = reverted()
    assert in_sync(decision) == (
        "False",
        "OutOfSync",
        f"{WHERE} serves v1 ({V1.uri}), not v2 ({V2_URI}) that this loop rolled out: changed outside the "
        "operator, not re-applied; the next retrain's champion is what serves",
    )
    assert [(e.type, e.reason) for e in decision.events] == [(EventType.WARNING, Reason.OUT_OF_SYNC)]
    assert decision.events[0].message == f"InSync=False: {in_sync(decision)[2]}"


def test_after_the_revert_current_model_is_what_serves_and_the_rollout_is_kept_as_expected() -> None:
    status = reverted().status
    # v1 is named by this loop's artifact layout; its metrics are not known, the digest is the served one.
    assert status.current_model == ModelRef(version="v1", uri=V1.uri, sha256=V1_SHA)
    assert status.expected_model == ROLLED_OUT_V2


def test_nothing_is_re_applied_on_drift_nor_on_later_ticks() -> None:
    first = reverted()
    later = run(first.status, serving(V1.uri, V1_SHA, annotation="v1"), minutes=3)
    assert not [a for a in (*first.actions, *later.actions) if isinstance(a, ApplyModel)]
    assert later.events == ()
    assert later.status == first.status


def test_the_next_retrain_job_names_the_served_model_as_its_champion() -> None:
    drifted = reverted().status
    decision = run(
        drifted, serving(V1.uri, V1_SHA, annotation="v1", retrain_request="after-revert"), minutes=3
    )
    (job,) = created_jobs(decision)
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[contract.ENV_CURRENT_MODEL_URI] == V1.uri
    assert env[contract.ENV_CURRENT_MODEL_SHA256] == V1_SHA
    assert env[contract.ENV_CURRENT_MODEL_VERSION] == "v1"
    assert decision.status.active_retrain is not None
    assert decision.status.active_retrain.version == "v3"  # the counter still counts past v2


def test_the_model_env_set_back_to_ours_clears_the_drift_with_one_normal_event() -> None:
    drifted = reverted().status
    decision = run(drifted, serving(V2_URI, V2_SHA), minutes=3)
    assert in_sync(decision) == ("True", "InSync", f"{WHERE} serves v2 ({V2_URI})")
    assert (decision.status.current_model, decision.status.expected_model) == (ROLLED_OUT_V2, None)
    assert [(e.type, e.reason) for e in decision.events] == [(EventType.NORMAL, Reason.IN_SYNC)]


def test_a_second_out_of_band_model_posts_one_more_warning_and_keeps_the_rollout_expected() -> None:
    drifted = reverted().status
    elsewhere = "s3://models/hand-made/churn/"
    decision = run(drifted, serving(elsewhere, "9" * 64), minutes=3)
    assert decision.status.current_model == ModelRef(version="unknown", uri=elsewhere, sha256="9" * 64)
    assert decision.status.expected_model == ROLLED_OUT_V2
    assert in_sync(decision)[:2] == ("False", "OutOfSync")
    assert [(e.type, e.reason) for e in decision.events] == [(EventType.WARNING, Reason.OUT_OF_SYNC)]
    assert f"serves unknown ({elsewhere}), not v2" in decision.events[0].message


def test_a_changed_digest_under_the_same_uri_is_drift_and_drops_the_metrics() -> None:
    decision = run(in_sync_status(), serving(V2_URI, "f" * 64), minutes=2)
    assert in_sync(decision)[:2] == ("False", "OutOfSync")
    assert decision.status.current_model == ModelRef(version="v2", uri=V2_URI, sha256="f" * 64)


def test_the_served_candidate_keeps_its_version_and_metrics() -> None:
    v3 = replace(PASSED_V2, version="v3", uri="s3://models/churn/ml/churn/v3/", sha256="3" * 64)
    v3 = replace(v3, metrics={"accuracy": 0.95})
    status = in_sync_status().model_copy(update={"candidate_model": v3})
    decision = run(status, serving(v3.uri, v3.sha256), minutes=2)
    assert decision.status.current_model == ModelRef(
        version="v3", uri=v3.uri, sha256=v3.sha256, metrics={"accuracy": 0.95}
    )


def test_the_model_env_removed_leaves_no_current_model_and_no_adoption_from_our_stale_annotation() -> None:
    drifted = run(in_sync_status(), serving(None, None), minutes=2)
    assert in_sync(drifted)[2].startswith(f"{WHERE} serves no MODEL_URI, not v2")
    assert drifted.status.current_model is None
    # A hand-set MODEL_URI under the annotation this loop wrote for v2: not adopted as v2.
    later = run(drifted.status, serving("s3://models/hand-made/churn/", None, annotation="v2"), minutes=3)
    assert later.status.current_model is not None
    assert later.status.current_model.version == "unknown"


def test_an_adopted_model_changed_by_its_owner_is_followed_without_drift() -> None:
    adopted = in_sync_status(V1)  # never rolled out here: no deployedAt
    decision = run(adopted, serving(V2_URI, V2_SHA), minutes=2)
    assert in_sync(decision) == (
        "True",
        "InSync",
        f"{WHERE} serves v2 ({V2_URI}), set outside this loop and adopted as its current model",
    )
    assert decision.status.current_model == ModelRef(version="v2", uri=V2_URI, sha256=V2_SHA)
    assert (decision.status.expected_model, decision.events) == (None, ())


def test_a_tick_without_a_deployment_read_changes_nothing() -> None:
    status = in_sync_status()
    decision = run(status, healthy_dependencies(target=None), minutes=2)
    assert decision.status.condition(ConditionType.IN_SYNC) == status.condition(ConditionType.IN_SYNC)
    assert decision.events == ()


def test_a_rollout_in_flight_is_not_drift_and_its_end_ends_the_drift() -> None:
    drifted = reverted().status
    rolling = rolling_status(previous=drifted.current_model, expected_model=ROLLED_OUT_V2)
    rolling = rolling.model_copy(update={"conditions": drifted.conditions})
    mid = run(rolling, rolling_deployment(V1.uri, complete=False), minutes=3)
    assert in_sync(mid)[:2] == ("False", "OutOfSync")  # as before the rollout, which re-applies its own v2
    assert [a.model.version for a in mid.actions if isinstance(a, ApplyModel) and a.model] == ["v2"]
    rolled_back = rolling_status(
        RolloutPhase.ROLLING_BACK, previous=drifted.current_model, expected_model=ROLLED_OUT_V2
    ).model_copy(update={"conditions": drifted.conditions})
    ended = run(rolled_back, rolling_deployment(V1.uri, complete=True), minutes=3)
    assert ended.status.rollout is None
    assert in_sync(ended) == ("True", "InSync", f"{WHERE} serves v1 ({V1.uri})")
    assert ended.status.expected_model is None


@pytest.mark.parametrize(("raw", "seconds"), [(None, 60.0), ("5", 5.0)])
def test_the_probe_interval_bounds_how_long_drift_goes_unnoticed(raw: str | None, seconds: float) -> None:
    env = {} if raw is None else {"FBL_PROBE_INTERVAL_SECONDS": raw}
    assert load_config(env).policy.probe_interval == timedelta(seconds=seconds)


@pytest.mark.parametrize("raw", ["0", "3601", "nan", "soon"])
def test_a_probe_interval_out_of_range_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="FBL_PROBE_INTERVAL_SECONDS"):
        load_config({"FBL_PROBE_INTERVAL_SECONDS": raw})
