"""retrain.data.sinceBreach and minRows: a breach retrain trains on the rows labelled since the breach began
(docs/policy.md), from the trigger through the Job's env to the trainer's rows."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pandas as pd
import pytest

from core_inputs import REF, T0, spec_dict
from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.api import MetricVerdict, Trigger
from feedbackloop.core import contract
from feedbackloop.core.builders import JobSettings, build_retrain_job
from feedbackloop.core.spec import DEFAULT_MIN_ROWS, SpecError, parse_spec
from feedbackloop.core.status import ActiveRetrain, Evaluation, MetricEvaluation, ThresholdStatus
from feedbackloop.core.triggers import pending_triggers
from feedbackloop_backtest.s3memory import MemoryS3Client
from feedbackloop_backtest.world import parquet_bytes
from feedbackloop_train.data import load_dataset
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


def test_defaults_are_on_with_500_rows() -> None:
    data = parse_spec(spec_dict()).retrain_spec().data
    assert (data.since_breach, data.min_rows) == (True, DEFAULT_MIN_ROWS) == (True, 500)
    with pytest.raises(SpecError, match=r"spec\.retrain\.data\.minRows"):
        parse_spec(spec_dict(**{"retrain.data.minRows": 0}))


def test_a_breach_retrain_passes_the_breach_start_and_min_rows() -> None:
    env = _env(T0 - timedelta(hours=3), **{"retrain.data.minRows": 800})
    assert env[contract.ENV_DATA_SINCE] == "2026-11-28T09:00:00Z"
    assert env[contract.ENV_MIN_ROWS] == "800"


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


def test_without_a_breach_start_the_trainer_uses_everything() -> None:
    dataset = load_dataset(_store(200, 30), _settings())
    assert len(dataset.train) + len(dataset.holdout) == 300


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FBL_DATA_SINCE": "yesterday"}, "FBL_DATA_SINCE='yesterday' is not an RFC 3339 time"),
        ({"FBL_MIN_ROWS": "many"}, "FBL_MIN_ROWS='many' is not a number"),
        ({"FBL_MIN_ROWS": "-1"}, "FBL_MIN_ROWS=-1 must not be negative"),
    ],
)
def test_bad_window_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(TrainerError, match=message):
        _settings(**env)
