"""retrain.reuse: a breach retrain scores the loop's earlier, non-rejected versions beside its new model and
proposes the best (docs/policy.md): the operator's list from status.history, the trainer's verification
before loading, and the candidate that names the version it reuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest

from core_inputs import POLICY, REF, T0, healthy_dependencies, loop_state, spec_dict
from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.api import Outcome, Trigger
from feedbackloop.core import contract
from feedbackloop.core.builders import JobSettings, build_retrain_job
from feedbackloop.core.decide import decide
from feedbackloop.core.observations import ArtifactCheck, ArtifactObservation, JobObservation, JobState
from feedbackloop.core.reuse import reusable_versions
from feedbackloop.core.spec import SpecError, parse_spec
from feedbackloop.core.status import ActiveRetrain, FeedbackLoopStatus, HistoryEntry, ModelRef
from feedbackloop_backtest.s3memory import MemoryS3Client
from feedbackloop_backtest.world import parquet_bytes
from feedbackloop_train.main import train
from feedbackloop_train.settings import TrainerError, TrainSettings, load_settings

SETTINGS = JobSettings(image="trainer:1", s3_endpoint_url=None, s3_region="us-east-1")


def _entry(version: str, outcome: Outcome, model: str, manifest: str | None = None) -> HistoryEntry:
    return HistoryEntry(
        version=version,
        trigger=Trigger.BREACH,
        outcome=outcome,
        sha256=model * 64,
        manifest_sha256=(manifest or model) * 64 if manifest != "" else None,
    )


def _status(*entries: HistoryEntry, current: str = "v9", current_sha: str = "9", **changes: Any) -> Any:
    return FeedbackLoopStatus(
        history=entries,
        current_model=ModelRef(version=current, uri="s3://models/x/", sha256=current_sha * 64),
        **changes,
    )


# ---------------------------------------------------------------- the operator's list


def test_the_newest_rolled_out_or_recommended_versions_with_a_digest_newest_first() -> None:
    status = _status(
        _entry("v2", Outcome.ROLLED_OUT, "2"),
        _entry("v3", Outcome.REJECTED, "3"),
        _entry("v4", Outcome.RECOMMENDED, "4"),
        _entry("v5", Outcome.ROLLED_OUT, "5"),
        _entry("v6", Outcome.RETRAIN_FAILED, "6"),
        _entry("v7", Outcome.ROLLED_OUT, "7", manifest=""),  # no digest recorded: not trusted
        _entry("v8", Outcome.ROLLING_OUT, "8"),  # in flight
    )
    found = reusable_versions(status, limit=5)
    assert [v.version for v in found] == ["v5", "v4", "v2"]
    assert found[0].manifest_sha256 == "5" * 64
    assert [v.version for v in reusable_versions(status, limit=2)] == ["v5", "v4"]


def test_rejected_rolled_back_serving_and_duplicate_models_are_left_out() -> None:
    status = _status(
        _entry("v2", Outcome.ROLLED_OUT, "2"),
        _entry("v2", Outcome.ROLLED_BACK, "2"),  # a later rollback-to of v2 that failed analysis
        _entry("v3", Outcome.ROLLED_OUT, "3"),
        _entry("v4", Outcome.ROLLED_OUT, "4"),
        _entry(
            "v5", Outcome.ROLLED_OUT, "4", manifest="5"
        ),  # v4's model reused as v5: one model, newest kept
        _entry("v6", Outcome.ROLLED_OUT, "6"),  # the version serving
        _entry("v7", Outcome.ROLLED_OUT, "9", manifest="7"),  # the model serving, under another version
        current="v6",
        current_sha="9",
        rejected_versions=("v3",),
    )
    assert [v.version for v in reusable_versions(status, limit=10)] == ["v5"]


def _env(trigger: Trigger, status: FeedbackLoopStatus, **changes: Any) -> dict[str, Any]:
    spec = parse_spec(spec_dict(**{"retrain.reuse.enabled": True, **changes}))
    active = ActiveRetrain(job="churn-retrain-9", version="v9", number=9, trigger=trigger, started_at=T0)
    reuse = spec.retrain_spec().reuse
    found = reusable_versions(status, reuse.max_versions)
    job = build_retrain_job(REF, spec, active, None, SETTINGS, T0, found)
    return {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


HISTORY = _status(*(_entry(f"v{n}", Outcome.ROLLED_OUT, str(n)) for n in range(2, 9)))


def test_a_breach_retrain_gets_the_newest_max_versions() -> None:
    env = _env(Trigger.BREACH, HISTORY, **{"retrain.reuse.maxVersions": 2})
    assert json.loads(env[contract.ENV_REUSE_VERSIONS]) == [
        {"version": "v8", "manifestSha256": "8" * 64},
        {"version": "v7", "manifestSha256": "7" * 64},
    ]
    default = json.loads(_env(Trigger.BREACH, HISTORY)[contract.ENV_REUSE_VERSIONS])
    assert [v["version"] for v in default] == ["v8", "v7", "v6", "v5", "v4"]


@pytest.mark.parametrize(
    ("trigger", "changes", "status"),
    [
        (Trigger.SCHEDULE, {}, HISTORY),  # only when a breach persists
        (Trigger.MANUAL, {}, HISTORY),
        (Trigger.BREACH, {"retrain.reuse.enabled": False}, HISTORY),
        (Trigger.BREACH, {}, FeedbackLoopStatus()),  # nothing to reuse
    ],
)
def test_no_reuse_list_otherwise(trigger: Trigger, changes: dict[str, Any], status: Any) -> None:
    assert contract.ENV_REUSE_VERSIONS not in _env(trigger, status, **changes)


def test_spec_defaults_and_bounds() -> None:
    reuse = parse_spec(spec_dict()).retrain_spec().reuse
    assert (reuse.enabled, reuse.max_versions) == (False, 5)  # off until the benchmark shows a gain
    for bad in (0, 21):
        with pytest.raises(SpecError, match=r"spec\.retrain\.reuse\.maxVersions"):
            parse_spec(spec_dict(**{"retrain.reuse.maxVersions": bad}))


# ---------------------------------------------------------------- the operator records what it verified

ACTIVE = ActiveRetrain(
    job="churn-retrain-9", version="v9", number=9, trigger=Trigger.BREACH, started_at=T0, job_created=True
)


def _accepted(metrics: dict[str, Any], model_sha: str, history: tuple[HistoryEntry, ...] = ()) -> Any:
    loop = loop_state(
        spec=spec_dict(**{"retrain.reuse.enabled": True}),
        status=FeedbackLoopStatus(active_retrain=ACTIVE, retrain_count=9, history=history),
    )
    artifacts = ArtifactObservation(
        ArtifactCheck.VERIFIED,
        uri="s3://models/churn/ml/churn/v9/",
        model_sha256=model_sha,
        metrics={"candidate": {"accuracy": 0.9}, **metrics},
        manifest_sha256="f" * 64,
    )
    job = JobObservation("churn-retrain-9", JobState.SUCCEEDED, contract.success_message("f" * 64))
    return decide(loop, healthy_dependencies(job=job, artifacts=artifacts), POLICY, T0).status


def test_history_keeps_the_verified_digests_a_later_retrain_trusts() -> None:
    status = _accepted({}, "b" * 64)
    entry = status.history[-1]
    assert (entry.version, entry.sha256, entry.manifest_sha256, entry.reused_version) == (
        "v9",
        "b" * 64,
        "f" * 64,
        None,
    )
    assert status.candidate_model.reused_version is None


def test_a_reuse_is_recorded_when_the_model_is_the_one_history_knows() -> None:
    history = (_entry("v4", Outcome.ROLLED_OUT, "4"),)
    status = _accepted({"reusedVersion": "v4"}, "4" * 64, history)
    assert status.candidate_model.reused_version == "v4"
    assert (
        _accepted(
            {"reusedVersion": "v4", "window": {"chosen": "wider"}}, "4" * 64, history
        ).candidate_model.training_window
        is None
    )
    assert status.history[-1].reused_version == "v4"
    assert status.history[-1].message == "reused v4: it beat the fresh model on the holdout"
    # A claim whose model is not the recorded one, or names no version, is not believed.
    assert _accepted({"reusedVersion": "v4"}, "b" * 64, history).candidate_model.reused_version is None
    assert _accepted({"reusedVersion": "../v4"}, "4" * 64, history).candidate_model.reused_version is None


# ---------------------------------------------------------------- the trainer


def test_the_env_list_is_checked_and_cannot_leave_the_loops_prefix() -> None:
    base = {
        "FBL_VERSION": "v3",
        "FBL_ARTIFACT_URI": "s3://models/ml/churn/v3/",
        "FBL_TRAINING_DATA_URI": "s3://data/train/",
        "FBL_LABEL_COLUMN": "y",
    }
    good = [{"version": "v1", "manifestSha256": "a" * 64}, {"version": "v3", "manifestSha256": "b" * 64}]
    settings = load_settings({**base, contract.ENV_REUSE_VERSIONS: json.dumps(good)})
    assert settings.reuse == (contract.ReusableVersion("v1", "a" * 64),)  # never its own version
    for bad in (
        "not json",
        json.dumps({"version": "v1"}),
        json.dumps([{"version": "../other/v1", "manifestSha256": "a" * 64}]),
        json.dumps([{"version": "v1", "manifestSha256": "A" * 64}]),
        json.dumps([{"version": f"v{n}", "manifestSha256": "a" * 64} for n in range(21)]),
    ):
        with pytest.raises(TrainerError, match=contract.ENV_REUSE_VERSIONS):
            load_settings({**base, contract.ENV_REUSE_VERSIONS: bad})
    assert (
        contract.sibling_version_uri("s3://models/p/ml/churn/v3/", "v3", "v1") == "s3://models/p/ml/churn/v1/"
    )
    for version in ("..", "v1/../../x", "v1\n"):
        with pytest.raises(ValueError, match="version name"):
            contract.sibling_version_uri("s3://models/p/ml/churn/v3/", "v3", version)


def _frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.random(rows), rng.random(rows)
    return pd.DataFrame({"a": a, "b": b, "y": ((a > 0.5) ^ (b > 0.5)).astype(int)})  # xor: depth 1 cannot


def _trainer(tmp_path: Path) -> ArtifactStore:
    client = MemoryS3Client()
    client.create_bucket("data")
    client.create_bucket("models")
    store = ArtifactStore(client)
    store.put_bytes("data", "train/part.parquet", parquet_bytes(_frame(2000, 1)))
    return store


def _settings(version: str, depth: int, reuse: list[dict[str, str]] | None = None) -> TrainSettings:
    env = {
        "FBL_VERSION": version,
        "FBL_ARTIFACT_URI": f"s3://models/ml/churn/{version}/",
        "FBL_TRAINING_DATA_URI": "s3://data/train/",
        "FBL_LABEL_COLUMN": "y",
        "FBL_ESTIMATOR_CLASS": "sklearn.tree.DecisionTreeClassifier",
        "FBL_ESTIMATOR_PARAMS": json.dumps({"max_depth": depth, "random_state": 0}),
    }
    if reuse is not None:
        env[contract.ENV_REUSE_VERSIONS] = json.dumps(reuse)
    return load_settings(env)


def _written(store: ArtifactStore, version: str) -> tuple[dict[str, Any], ArtifactObservation]:
    uri = f"s3://models/ml/churn/{version}/"
    verified = store.verify_version(uri, version)
    assert verified.check is ArtifactCheck.VERIFIED, verified.message
    return json.loads(store.get_bytes("models", f"ml/churn/{version}/manifest.json")), verified


def test_an_earlier_version_that_beats_the_new_model_becomes_the_candidate(tmp_path: Path) -> None:
    store = _trainer(tmp_path)
    train(_settings("v2", depth=8), store, tmp_path)
    _, v2 = _written(store, "v2")
    reuse = [{"version": "v2", "manifestSha256": v2.manifest_sha256}]
    train(_settings("v3", depth=1, reuse=reuse), store, tmp_path)
    manifest, v3 = _written(store, "v3")
    assert v3.metrics["reusedVersion"] == "v2"
    assert v3.model_sha256 == v2.model_sha256  # the earlier version's bytes, verified by the operator as v3's
    assert v3.metrics["candidate"]["accuracy"] == v3.metrics["reuse"]["versions"]["v2"] > 0.9
    assert v3.metrics["reuse"]["fresh"] < 0.8
    assert manifest["reusedFrom"] == {
        "version": "v2",
        "uri": "s3://models/ml/churn/v2/",
        "manifestSha256": v2.manifest_sha256,
    }
    assert manifest["estimator"]["params"]["max_depth"] == 8
    assert (
        manifest["files"]["reference.json"]
        == json.loads(store.get_bytes("models", "ml/churn/v2/manifest.json"))["files"]["reference.json"]
    )


def test_a_weaker_earlier_version_is_scored_but_not_chosen(tmp_path: Path) -> None:
    store = _trainer(tmp_path)
    train(_settings("v2", depth=1), store, tmp_path)
    _, v2 = _written(store, "v2")
    train(
        _settings("v3", depth=8, reuse=[{"version": "v2", "manifestSha256": v2.manifest_sha256}]),
        store,
        tmp_path,
    )
    _, v3 = _written(store, "v3")
    assert "reusedVersion" not in v3.metrics
    assert v3.model_sha256 != v2.model_sha256
    assert v3.metrics["reuse"]["versions"]["v2"] < v3.metrics["reuse"]["fresh"]


def test_nothing_unverified_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _trainer(tmp_path)
    train(_settings("v2", depth=8), store, tmp_path)
    _, v2 = _written(store, "v2")
    loaded: list[Any] = []
    real_load = joblib.load

    def recording_load(source: Any) -> Any:
        loaded.append(source)
        return real_load(source)

    monkeypatch.setattr("feedbackloop_train.reuse.joblib.load", recording_load)
    # A manifest other than the one status.history recorded: nothing of v2 is read further.
    train(_settings("v3", depth=1, reuse=[{"version": "v2", "manifestSha256": "0" * 64}]), store, tmp_path)
    _, v3 = _written(store, "v3")
    assert "reusedVersion" not in v3.metrics
    assert "status.history recorded 000000000000" in v3.metrics["reuse"]["skipped"]["v2"]
    # The recorded manifest, but a model swapped under it: refused before joblib.load.
    store.put_bytes("models", "ml/churn/v2/model.joblib", b"not the model the manifest lists")
    train(
        _settings("v4", depth=1, reuse=[{"version": "v2", "manifestSha256": v2.manifest_sha256}]),
        store,
        tmp_path,
    )
    _, v4 = _written(store, "v4")
    assert "reusedVersion" not in v4.metrics
    assert "sha256" in v4.metrics["reuse"]["skipped"]["v2"]
    # A version that does not exist is skipped too; the retrain goes on.
    train(_settings("v5", depth=1, reuse=[{"version": "v7", "manifestSha256": "1" * 64}]), store, tmp_path)
    assert "v7" in _written(store, "v5")[1].metrics["reuse"]["skipped"]
    assert loaded == []


def test_the_backtest_world_reports_and_serves_a_reused_version(tmp_path: Path) -> None:
    from feedbackloop_backtest.world import World

    spec = parse_spec(
        spec_dict(**{"retrain.trainer.label": "y", "retrain.data.feedback": None, "artifacts.prefix": ""})
    )
    world = World(spec, tmp_path)
    world.stage_training(_frame(2000, 1))

    def env(version: str, depth: int, reuse: list[dict[str, str]] | None = None) -> dict[str, str]:
        settings = _settings(version, depth, reuse)
        found = {
            "FBL_VERSION": version,
            "FBL_JOB_NAME": f"churn-retrain-{version[1:]}",
            "FBL_ARTIFACT_URI": settings.artifact_uri,
            "FBL_TRAINING_DATA_URI": spec.retrain_spec().data.training,
            "FBL_LABEL_COLUMN": "y",
            "FBL_ESTIMATOR_CLASS": settings.estimator_class,
            "FBL_ESTIMATOR_PARAMS": json.dumps(settings.estimator_params),
        }
        if reuse is not None:
            found[contract.ENV_REUSE_VERSIONS] = json.dumps(reuse)
        return found

    assert world.run_trainer(env("v2", 8)).reused is None
    v2 = world.store.verify_version("s3://models/ml/churn/v2/", "v2")
    run = world.run_trainer(env("v3", 1, [{"version": "v2", "manifestSha256": v2.manifest_sha256}]))
    assert (run.job.state, run.reused) == (JobState.SUCCEEDED, "v2")
    v3 = world.store.verify_version("s3://models/ml/churn/v3/", "v3")
    served = world.load(ModelRef(version="v3", uri=v3.uri, sha256=v3.model_sha256), "churn")
    assert served.version == "v3"
