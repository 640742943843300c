"""retrain.data.sinceBreach, minRows and widerRows: a breach retrain trains on the rows labelled since the
breach began, and on a wider window beside it (docs/policy.md), from the trigger through the Job's env to the
trainer's rows and the candidate's status."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest

from core_inputs import POLICY, REF, T0, healthy_dependencies, loop_state, spec_dict
from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.api import MetricVerdict, Trigger
from feedbackloop.core import contract
from feedbackloop.core.builders import JobSettings, build_retrain_job
from feedbackloop.core.decide import decide
from feedbackloop.core.observations import ArtifactCheck, ArtifactObservation, JobObservation, JobState
from feedbackloop.core.spec import DEFAULT_MIN_ROWS, SpecError, parse_spec
from feedbackloop.core.status import (
    ActiveRetrain,
    Evaluation,
    FeedbackLoopStatus,
    MetricEvaluation,
    ThresholdStatus,
)
from feedbackloop.core.triggers import pending_triggers
from feedbackloop_backtest.s3memory import MemoryS3Client
from feedbackloop_backtest.world import parquet_bytes
from feedbackloop_train import evaluate
from feedbackloop_train.data import Dataset, load_dataset
from feedbackloop_train.main import fit_wider_window
from feedbackloop_train.model import build_pipeline, fit, prepare
from feedbackloop_train.settings import TrainerError, load_settings

SETTINGS = JobSettings(image="trainer:1", s3_endpoint_url=None, s3_region="us-east-1")


def _env(breach_since: Any, **changes: Any) -> dict[str, str]:
    spec = parse_spec(spec_dict(**changes))
    active = ActiveRetrain(
        job="churn-retrain-3",
        version="v3",
        number=3,
        trigger=Trigger.BREACH,
        started_at=T0,
        breach_since=breach_since,
    )
    job = build_retrain_job(REF, spec, active, None, SETTINGS, T0)
    return {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_defaults_are_on_with_500_rows_and_a_wider_window_of_eight_times_that() -> None:
    data = parse_spec(spec_dict()).retrain_spec().data
    assert (data.since_breach, data.min_rows) == (True, DEFAULT_MIN_ROWS) == (True, 500)
    assert (data.wider_rows, data.effective_wider_rows) == (None, 4000)
    assert (
        parse_spec(spec_dict(**{"retrain.data.minRows": 800})).retrain_spec().data.effective_wider_rows
        == 6400
    )
    with pytest.raises(SpecError, match=r"spec\.retrain\.data\.minRows"):
        parse_spec(spec_dict(**{"retrain.data.minRows": 0}))


@pytest.mark.parametrize("wider", [500, 100, -1])
def test_a_wider_window_not_wider_than_min_rows_is_refused_naming_the_field(wider: int) -> None:
    with pytest.raises(SpecError, match=r"widerRows"):
        parse_spec(spec_dict(**{"retrain.data.widerRows": wider}))


def test_a_breach_retrain_passes_the_breach_start_and_min_rows() -> None:
    env = _env(T0 - timedelta(hours=3), **{"retrain.data.minRows": 800})
    assert env[contract.ENV_DATA_SINCE] == "2026-11-28T09:00:00Z"
    assert env[contract.ENV_MIN_ROWS] == "800"
    assert env[contract.ENV_WIDER_ROWS] == "6400"
    assert contract.ENV_WIDER_ROWS not in _env(T0, **{"retrain.data.widerRows": 0})
    assert _env(T0, **{"retrain.data.widerRows": 501})[contract.ENV_WIDER_ROWS] == "501"


@pytest.mark.parametrize(
    ("since", "changes"),
    [
        (None, {}),  # a schedule or manual retrain: no breach start
        (T0, {"retrain.data.sinceBreach": False}),  # turned off
        (T0, {"retrain.data.feedback": None}),  # no feedback to window
    ],
)
def test_no_window_without_a_breach_feedback_or_the_knob(since: Any, changes: dict[str, Any]) -> None:
    env = _env(since, **changes)
    assert contract.ENV_DATA_SINCE not in env
    assert contract.ENV_MIN_ROWS not in env
    assert contract.ENV_WIDER_ROWS not in env


def _breaching(name: str, since: Any) -> MetricEvaluation:
    return MetricEvaluation(
        name=name,
        value=0.5,
        threshold=ThresholdStatus(min=0.8),
        verdict=MetricVerdict.BREACHED,
        reason="ThresholdBreached",
        breaching_since=since,
    )


def test_the_breach_trigger_carries_the_earliest_start_of_the_metrics_that_fired() -> None:
    metrics = [
        {"name": "accuracy", "query": "q1", "threshold": {"min": 0.8}},
        {"name": "recall", "query": "q2", "threshold": {"min": 0.8}},
    ]
    spec = parse_spec(spec_dict(**{"monitoring.metrics": metrics}))
    evaluation = Evaluation(
        time=T0,
        metrics=(
            _breaching("accuracy", T0 - timedelta(hours=1)),
            _breaching("recall", T0 - timedelta(hours=2)),
        ),
    )
    (trigger,) = pending_triggers(spec, evaluation, None, None, T0, T0)
    assert trigger.kind is Trigger.BREACH
    assert trigger.since == T0 - timedelta(hours=2)


# ---------------------------------------------------------------- the trainer


def _store(feedback_rows: int, labelled_since: int) -> ArtifactStore:
    """100 training rows, then `feedback_rows` feedback rows a minute apart, the last `labelled_since` of
    them labelled at or after T0."""
    client = MemoryS3Client()
    store = ArtifactStore(client)
    client.create_bucket("data")
    training = pd.DataFrame({"x": [float(i) for i in range(100)], "y": [i % 2 for i in range(100)]})
    store.put_bytes("data", "train/part.parquet", parquet_bytes(training))
    first = T0 - timedelta(minutes=feedback_rows - labelled_since)
    feedback = pd.DataFrame(
        {
            "x": [1000.0 + i for i in range(feedback_rows)],
            "fbl_label": [i % 2 for i in range(feedback_rows)],
            "fbl_labelled_at": [pd.Timestamp(first + timedelta(minutes=i)) for i in range(feedback_rows)],
            "fbl_prediction_id": [f"p{i}" for i in range(feedback_rows)],
        }
    )
    store.put_bytes("data", "feedback/part.parquet", parquet_bytes(feedback))
    return store


def _settings(**env: str) -> Any:
    return load_settings(
        {
            "FBL_VERSION": "v3",
            "FBL_ARTIFACT_URI": "s3://models/ml/churn/v3/",
            "FBL_TRAINING_DATA_URI": "s3://data/train/",
            "FBL_FEEDBACK_DATA_URI": "s3://data/feedback/",
            "FBL_LABEL_COLUMN": "y",
            "FBL_HOLDOUT_STRATEGY": "Recent",
            **env,
        }
    )


def test_the_trainer_keeps_only_the_rows_labelled_since_the_breach() -> None:
    settings = _settings(FBL_DATA_SINCE="2026-11-28T12:00:00Z", FBL_MIN_ROWS="50")
    dataset = load_dataset(_store(300, 120), settings)
    rows = pd.concat([dataset.train, dataset.holdout])
    assert len(rows) == 120
    assert rows["x"].min() == 1000.0 + 180  # no training row, no feedback from before the breach
    assert dataset.rows["sinceBreach"] == 120


def test_the_trainer_tops_up_to_min_rows_with_the_newest_earlier_rows() -> None:
    settings = _settings(FBL_DATA_SINCE="2026-11-28T12:00:00Z", FBL_MIN_ROWS="250")
    dataset = load_dataset(_store(200, 30), settings)
    rows = pd.concat([dataset.train, dataset.holdout])
    assert len(rows) == 250
    assert sorted(rows["x"])[:50] == [float(i) for i in range(50, 100)]  # the newest training rows
    assert dataset.rows["sinceBreach"] == 30


def test_the_wider_window_is_the_newest_wider_rows_rows_and_shares_the_since_breach_holdout() -> None:
    settings = _settings(FBL_DATA_SINCE="2026-11-28T12:00:00Z", FBL_MIN_ROWS="50", FBL_WIDER_ROWS="200")
    dataset = load_dataset(_store(300, 120), settings)
    assert dataset.wider_extra is not None
    assert len(dataset.wider_extra) == 80  # 200 rows in all: the 120 since the breach and the 80 before them
    assert list(dataset.wider_extra["x"]) == [1000.0 + i for i in range(100, 180)]
    assert dataset.rows["widerExtra"] == 80
    assert set(dataset.holdout["x"]) <= {1000.0 + i for i in range(180, 300)}  # since the breach only


def test_no_wider_window_when_the_window_already_holds_that_many_rows_or_it_is_off() -> None:
    wide = _settings(FBL_DATA_SINCE="2026-11-28T12:00:00Z", FBL_MIN_ROWS="50", FBL_WIDER_ROWS="100")
    assert load_dataset(_store(300, 120), wide).wider_extra is None
    off = _settings(FBL_DATA_SINCE="2026-11-28T12:00:00Z", FBL_MIN_ROWS="50")
    assert load_dataset(_store(300, 120), off).wider_extra is None
    everything = _settings(FBL_WIDER_ROWS="200")  # no breach start: all rows, nothing wider to add
    assert load_dataset(_store(300, 120), everything).wider_extra is None


def test_the_wider_window_stops_at_the_oldest_row() -> None:
    settings = _settings(FBL_DATA_SINCE="2026-11-28T12:00:00Z", FBL_MIN_ROWS="50", FBL_WIDER_ROWS="100000")
    dataset = load_dataset(_store(300, 120), settings)
    assert dataset.wider_extra is not None
    assert (
        len(dataset.wider_extra) == 100 + 180
    )  # every training row and every feedback row before the breach


def test_without_a_breach_start_the_trainer_uses_everything() -> None:
    dataset = load_dataset(_store(200, 30), _settings())
    assert len(dataset.train) + len(dataset.holdout) == 300


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FBL_DATA_SINCE": "yesterday"}, "FBL_DATA_SINCE='yesterday' is not an RFC 3339 time"),
        ({"FBL_MIN_ROWS": "many"}, "FBL_MIN_ROWS='many' is not a number"),
        ({"FBL_MIN_ROWS": "-1"}, "FBL_MIN_ROWS=-1 must not be negative"),
        ({"FBL_WIDER_ROWS": "lots"}, "FBL_WIDER_ROWS='lots' is not a number"),
        ({"FBL_WIDER_ROWS": "-5"}, "FBL_WIDER_ROWS=-5 must not be negative"),
    ],
)
def test_bad_window_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(TrainerError, match=message):
        _settings(**env)


# ---------------------------------------------------------------- the trainer's choice between the windows


def _concept_rows(n: int, flipped: bool, seed: int, noise: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.random(n)
    y = (x > 0.5).astype(int)
    if flipped:
        y = 1 - y
    y = np.where(rng.random(n) < noise, 1 - y, y)
    return pd.DataFrame({"x": x, "y": y})


def _dataset(older: pd.DataFrame, recent: pd.DataFrame, holdout: pd.DataFrame) -> Dataset:
    rows = {"train": len(recent), "holdout": len(holdout), "widerExtra": len(older)}
    return Dataset(train=recent, holdout=holdout, label="y", features=["x"], rows=rows, wider_extra=older)


def _fit_since(dataset: Dataset) -> tuple[Any, Any]:
    settings = _settings()
    pipeline = build_pipeline(settings.estimator_class, {}, "classification", dataset.train, ["x"])
    fit(pipeline, dataset.train, ["x"], "y")
    return pipeline, evaluate.predict(pipeline, prepare(dataset.holdout, pipeline, ["x"]))


def test_after_a_concept_flip_the_since_breach_model_is_kept() -> None:
    dataset = _dataset(
        _concept_rows(2000, flipped=False, seed=1),
        _concept_rows(200, flipped=True, seed=2),
        _concept_rows(200, flipped=True, seed=3),
    )
    since_model, since_predictions = _fit_since(dataset)
    chosen, predictions, rows, record = fit_wider_window(_settings(), dataset, since_model, since_predictions)
    assert record is not None
    assert record["chosen"] == contract.WINDOW_SINCE_BREACH
    assert chosen is since_model and predictions is since_predictions and len(rows) == 200
    assert record["scores"][contract.WINDOW_SINCE_BREACH] > 0.9 > record["scores"][contract.WINDOW_WIDER]
    assert record["trainRows"] == {contract.WINDOW_SINCE_BREACH: 200, contract.WINDOW_WIDER: 2200}


def test_without_a_drift_and_with_noisy_labels_the_wider_model_wins() -> None:
    dataset = _dataset(
        _concept_rows(4000, flipped=False, seed=1, noise=0.3),
        _concept_rows(30, flipped=False, seed=2, noise=0.3),
        _concept_rows(2000, flipped=False, seed=3),
    )
    since_model, since_predictions = _fit_since(dataset)
    chosen, _, rows, record = fit_wider_window(_settings(), dataset, since_model, since_predictions)
    assert record is not None
    assert record["chosen"] == contract.WINDOW_WIDER
    assert record["scores"][contract.WINDOW_WIDER] > record["scores"][contract.WINDOW_SINCE_BREACH]
    assert chosen is not since_model and len(rows) == 4030


def test_no_wider_window_no_second_model() -> None:
    recent = _concept_rows(200, flipped=False, seed=2)
    dataset = Dataset(train=recent, holdout=recent, label="y", features=["x"], rows={})
    since_model, since_predictions = _fit_since(dataset)
    assert fit_wider_window(_settings(), dataset, since_model, since_predictions) == (
        since_model,
        since_predictions,
        recent,
        None,
    )


# ---------------------------------------------------------------- the candidate's status

ACTIVE = ActiveRetrain(
    job="churn-retrain-9", version="v9", number=9, trigger=Trigger.BREACH, started_at=T0, job_created=True
)


def _accepted(metrics: dict[str, Any]) -> Any:
    loop = loop_state(status=FeedbackLoopStatus(active_retrain=ACTIVE, retrain_count=9))
    artifacts = ArtifactObservation(
        ArtifactCheck.VERIFIED,
        uri="s3://models/churn/ml/churn/v9/",
        model_sha256="b" * 64,
        metrics={"candidate": {"accuracy": 0.9}, **metrics},
        manifest_sha256="f" * 64,
    )
    job = JobObservation("churn-retrain-9", JobState.SUCCEEDED, contract.success_message("f" * 64))
    return decide(loop, healthy_dependencies(job=job, artifacts=artifacts), POLICY, T0).status


def test_the_candidate_says_which_window_it_was_fitted_on() -> None:
    wider = _accepted({"window": {"chosen": "wider"}})
    assert wider.candidate_model.training_window == "wider"
    assert (
        wider.history[-1].message
        == "fitted on the wider window: it beat the since-breach rows on the holdout"
    )
    assert _accepted({"window": {"chosen": "sinceBreach"}}).candidate_model.training_window == "sinceBreach"
    # Anything else the trainer writes there is not repeated in status.
    for odd in ({"window": {"chosen": "everything"}}, {"window": "wider"}, {}):
        assert _accepted(odd).candidate_model.training_window is None
