"""What a loop's author cannot reach through the retrain Job: a Secret not opted in, pod metadata off the
allow-list, a retrain slot held by someone else's Job, a Job of the same name, a manifest swapped in S3."""

from __future__ import annotations

import dataclasses

import pytest

from core_inputs import POLICY, T0, healthy_dependencies, loop_state, spec_dict
from feedbackloop.api import ConditionType, Reason, Trigger
from feedbackloop.config import ConfigError, load_config
from feedbackloop.core import contract
from feedbackloop.core.decide import decide
from feedbackloop.core.decision import Decision
from feedbackloop.core.observations import (
    ArtifactCheck,
    ArtifactObservation,
    JobObservation,
    JobState,
    ListedJob,
)
from feedbackloop.core.plan import plan
from feedbackloop.core.retrain import count_running_retrains
from feedbackloop.core.retrain_policy import retrain_refusals
from feedbackloop.core.spec import parse_spec
from feedbackloop.core.status import ActiveRetrain, FeedbackLoopStatus
from reconcile_fakes import World

ACTIVE = ActiveRetrain(
    job="churn-retrain-1", version="v1", number=1, trigger=Trigger.MANUAL, started_at=T0, job_created=True
)


def ready(decision: Decision) -> tuple[str, str, str]:
    found = decision.status.condition(ConditionType.READY)
    assert found is not None
    return found.status, found.reason, found.message


def retraining(decision: Decision) -> tuple[str, str, str]:
    found = decision.status.condition(ConditionType.RETRAINING)
    assert found is not None
    return found.status, found.reason, found.message


# ---------------------------------------------------------------- the credentials Secret and pod metadata


def test_a_secret_without_the_prefix_is_not_opted_in_and_nothing_is_observed() -> None:
    loop = loop_state(spec_dict(**{"artifacts.credentialsSecret": "prod-database"}))
    decision = decide(loop, healthy_dependencies(retrain_request="r1"), POLICY, T0)
    assert ready(decision) == (
        "False",
        "SecretNotOptedIn",
        "spec.artifacts.credentialsSecret: Secret 'prod-database' is not opted in to FeedbackLoops: "
        "its name must start with 'feedbackloop-' (FBL_CREDENTIALS_SECRET_PREFIX)",
    )
    assert decision.actions == ()
    how = plan(loop, POLICY, T0)
    assert (how.queries, how.probe_dependencies) == (None, False)


def test_a_secret_with_the_prefix_is_usable_and_an_empty_prefix_allows_any() -> None:
    opted_in = parse_spec(spec_dict(**{"artifacts.credentialsSecret": "feedbackloop-s3"}))
    assert retrain_refusals(opted_in, POLICY) == []
    other = parse_spec(spec_dict(**{"artifacts.credentialsSecret": "prod-database"}))
    assert retrain_refusals(other, dataclasses.replace(POLICY, credentials_secret_prefix="")) == []


def test_every_pod_label_and_annotation_key_off_the_allow_list_is_named() -> None:
    spec = parse_spec(
        spec_dict(
            **{
                "retrain.podLabels": {"team.example.com/cost-centre": "ml", "allow-egress": "true"},
                "retrain.podAnnotations": {"iam.amazonaws.com/role": "admin"},
            }
        )
    )
    policy = dataclasses.replace(POLICY, pod_metadata_prefixes=("team.example.com/",))
    assert retrain_refusals(spec, policy) == [
        (
            Reason.POD_METADATA_NOT_ALLOWED,
            "spec.retrain.podLabels: key 'allow-egress' is not under an allowed prefix "
            "(allowed: 'team.example.com/'; FBL_POD_METADATA_PREFIXES)",
        ),
        (
            Reason.POD_METADATA_NOT_ALLOWED,
            "spec.retrain.podAnnotations: key 'iam.amazonaws.com/role' is not under an allowed prefix "
            "(allowed: 'team.example.com/'; FBL_POD_METADATA_PREFIXES)",
        ),
    ]


def test_by_default_no_pod_metadata_passes_and_the_loop_is_not_ready() -> None:
    loop = loop_state(spec_dict(**{"retrain.podAnnotations": {"example.com/anything": "x"}}))
    status, reason, message = ready(decide(loop, healthy_dependencies(), POLICY, T0))
    assert (status, reason) == ("False", "PodMetadataNotAllowed")
    assert "key 'example.com/anything'" in message and "allowed: none" in message


def test_the_settings_come_from_the_environment_with_safe_defaults() -> None:
    defaults = load_config({})
    assert (defaults.policy.credentials_secret_prefix, defaults.policy.pod_metadata_prefixes) == (
        "feedbackloop-",
        (),
    )
    env = {"FBL_CREDENTIALS_SECRET_PREFIX": "", "FBL_POD_METADATA_PREFIXES": "a.example/, b.example/x-"}
    configured = load_config(env).policy
    assert (configured.credentials_secret_prefix, configured.pod_metadata_prefixes) == (
        "",
        ("a.example/", "b.example/x-"),
    )
    with pytest.raises(ConfigError, match="FBL_CREDENTIALS_SECRET_PREFIX"):
        load_config({"FBL_CREDENTIALS_SECRET_PREFIX": "Upper_Case"})
    with pytest.raises(ConfigError, match="FBL_POD_METADATA_PREFIXES"):
        load_config({"FBL_POD_METADATA_PREFIXES": "/leading-slash"})


# ---------------------------------------------------------------- the retrain cap


def test_only_a_loops_active_retrain_under_its_own_uid_takes_a_slot() -> None:
    active = {("ml", "churn-retrain-3"): "uid-churn", ("ml", "fraud-retrain-1"): "uid-fraud"}
    jobs = [
        ListedJob("ml", "churn-retrain-3", "uid-churn", finished=False),  # counted
        ListedJob("ml", "fraud-retrain-1", "uid-fraud", finished=True),  # finished
        ListedJob("ml", "fraud-retrain-2", "uid-fraud", finished=False),  # not fraud's active retrain
        ListedJob("ml", "squatter-1", None, finished=False),  # labels copied, no controller
        ListedJob("other", "churn-retrain-3", "uid-churn", finished=False),  # another namespace
    ]
    assert count_running_retrains(jobs, active) == 1
    forged = [ListedJob("ml", "churn-retrain-3", "uid-someone-else", finished=False)]
    assert count_running_retrains(forged, active) == 0


# ---------------------------------------------------------------- a Job of the same name


def test_a_foreign_job_of_the_same_name_ends_the_retrain_and_is_not_followed() -> None:
    loop = loop_state(status=FeedbackLoopStatus(active_retrain=ACTIVE, retrain_count=1))
    foreign = JobObservation("churn-retrain-1", JobState.FOREIGN, "Job churn-retrain-1 is not ours")
    decision = decide(loop, healthy_dependencies(job=foreign), POLICY, T0)
    assert retraining(decision) == ("False", "JobNameTaken", "Job churn-retrain-1 is not ours")
    assert decision.status.active_retrain is None
    assert decision.status.candidate_model is None
    assert decision.status.history[-1].reason == "JobNameTaken"


def test_a_create_that_meets_a_foreign_job_is_not_marked_created_and_the_next_reconcile_ends_it() -> None:
    world = World("churn", spec_dict(**{"retrain.cooldown": "0s"}), T0)
    world.cluster.job_states["churn-retrain-1"] = JobState.FOREIGN
    world.annotate("feedbackloop.dev/retrain-requested", "r1")
    world.reconcile()
    assert world.status["activeRetrain"]["job"] == "churn-retrain-1"
    assert world.status["activeRetrain"]["jobCreated"] is False
    assert "churn-retrain-1" not in world.cluster.jobs

    world.reconcile(after_seconds=1)
    assert "activeRetrain" not in world.status
    condition = next(c for c in world.status["conditions"] if c["type"] == "Retraining")
    assert condition["reason"] == "JobNameTaken"


# ---------------------------------------------------------------- the manifest the trainer wrote


def succeeded(reported: str | None, served: str) -> Decision:
    loop = loop_state(status=FeedbackLoopStatus(active_retrain=ACTIVE, retrain_count=1))
    message = contract.success_message(reported) if reported else ""
    artifacts = ArtifactObservation(
        ArtifactCheck.VERIFIED,
        uri="s3://models/churn/ml/churn/v1/",
        model_sha256="b" * 64,
        metrics={"candidate": {"accuracy": 0.9}},
        manifest_sha256=served,
    )
    observed = healthy_dependencies(
        job=JobObservation("churn-retrain-1", JobState.SUCCEEDED, message), artifacts=artifacts
    )
    return decide(loop, observed, POLICY, T0)


def test_a_manifest_other_than_the_one_the_trainer_reported_is_tampered() -> None:
    decision = succeeded(reported="a" * 64, served="f" * 64)
    assert retraining(decision) == (
        "False",
        "ManifestTampered",
        "Job churn-retrain-1 wrote a manifest with sha256 aaaaaaaaaaaa…, "
        "s3://models/churn/ml/churn/v1/manifest.json has ffffffffffff…",
    )
    assert decision.status.candidate_model is None
    assert decision.status.history[-1].outcome == "RetrainFailed"


def test_a_trainer_that_reports_no_manifest_digest_gives_no_candidate() -> None:
    decision = succeeded(reported=None, served="f" * 64)
    assert retraining(decision)[:2] == ("False", "ManifestDigestUnreported")
    assert decision.status.candidate_model is None


def test_the_manifest_the_trainer_reported_becomes_the_candidate() -> None:
    decision = succeeded(reported="f" * 64, served="f" * 64)
    candidate = decision.status.candidate_model
    assert candidate is not None and (candidate.version, candidate.sha256) == ("v1", "b" * 64)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ('{"manifestSha256": "' + "0" * 64 + '"}', "0" * 64),
        ('{"manifestSha256": "' + "0" * 63 + '"}', None),
        ('{"manifestSha256": "' + "G" * 64 + '"}', None),
        ('["' + "0" * 64 + '"]', None),
        ("exit code 0: done", None),
        ("", None),
    ],
)
def test_only_a_well_formed_report_yields_a_digest(message: str, expected: str | None) -> None:
    assert contract.reported_manifest_sha256(message) == expected


def test_the_success_message_round_trips() -> None:
    digest = contract.sha256_hex(contract.manifest_bytes({"version": "v1"}))
    assert contract.reported_manifest_sha256(contract.success_message(digest)) == digest
