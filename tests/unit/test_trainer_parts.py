"""The trainer's pure parts: settings, metrics, the paired bootstrap, McNemar, slices, drift reference."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from feedbackloop_train import data, evaluate, reference, report
from feedbackloop_train.model import (
    build_pipeline,
    categorical_columns,
    frame_of,
    load_estimator_class,
    prepare,
)
from feedbackloop_train.settings import TrainerError, load_settings

BASE_ENV = {
    "FBL_VERSION": "v3",
    "FBL_ARTIFACT_URI": "s3://models/p/ml/churn/v3",
    "FBL_TRAINING_DATA_URI": "s3://data/train/",
    "FBL_LABEL_COLUMN": "churned",
}


def test_settings_defaults_and_normalisation() -> None:
    settings = load_settings(BASE_ENV)
    assert settings.artifact_uri == "s3://models/p/ml/churn/v3/"
    assert (settings.task, settings.holdout_strategy, settings.holdout_fraction) == (
        "classification",
        "Random",
        0.2,
    )
    assert settings.estimator_params == {}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"FBL_ESTIMATOR_PARAMS": "{not json"}, "FBL_ESTIMATOR_PARAMS is not JSON"),
        ({"FBL_ESTIMATOR_PARAMS": "[1]"}, "must be a JSON object"),
        ({"FBL_HOLDOUT_FRACTION": "1.5"}, "must be between 0 and 1"),
        ({"FBL_TASK": "ranking"}, "must be classification or regression"),
        ({"FBL_TRAINING_DATA_URI": "http://x/y"}, "is not an s3://bucket/prefix URI"),
        ({"FBL_CURRENT_MODEL_URI": "s3://models/p/v1/"}, "without FBL_CURRENT_MODEL_SHA256"),
        ({"FBL_LABEL_COLUMN": ""}, "FBL_LABEL_COLUMN is not set"),
    ],
)
def test_settings_errors_name_the_variable(change: dict[str, str], message: str) -> None:
    with pytest.raises(TrainerError, match=message):
        load_settings({**BASE_ENV, **change})


@pytest.mark.parametrize(
    ("dotted", "message"),
    [
        ("os.system", "only sklearn"),
        ("sklearn.nope.Thing", "does not exist"),
        ("sklearn.metrics.accuracy_score", "not a scikit-learn estimator"),
    ],
)
def test_estimator_allow_list(dotted: str, message: str) -> None:
    with pytest.raises(TrainerError, match=message):
        load_estimator_class(dotted)


def test_scores_for_both_tasks() -> None:
    truth = np.array([0, 1, 1, 0])
    predicted = evaluate.Predictions(
        np.array([0, 1, 0, 0]), np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]]), np.array([0, 1])
    )
    scores = evaluate.score("classification", truth, predicted)
    assert scores["accuracy"] == 0.75
    assert scores["roc_auc"] == 1.0
    regression = evaluate.score(
        "regression", np.array([1.0, 2.0]), evaluate.Predictions(np.array([1.0, 4.0]), None, None)
    )
    assert regression == {"rmse": pytest.approx(np.sqrt(2)), "mae": 1.0, "r2": pytest.approx(-7.0)}


def test_paired_bootstrap_and_mcnemar_are_seeded_and_sensible() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 2000)
    better = np.where(rng.random(2000) < 0.9, truth, 1 - truth)
    worse = np.where(rng.random(2000) < 0.7, truth, 1 - truth)
    first = evaluate.compare(
        "classification",
        truth,
        evaluate.Predictions(better, None, None),
        evaluate.Predictions(worse, None, None),
        seed=1,
    )
    again = evaluate.compare(
        "classification",
        truth,
        evaluate.Predictions(better, None, None),
        evaluate.Predictions(worse, None, None),
        seed=1,
    )
    stats = first["accuracy"]
    assert first == again
    assert 0.15 < stats["delta"] < 0.25
    assert 0 < stats["ciLow"] < stats["delta"] < stats["ciHigh"]
    assert stats["mcnemarPValue"] < 1e-6
    same = evaluate.compare(
        "classification",
        truth,
        evaluate.Predictions(better, None, None),
        evaluate.Predictions(better, None, None),
        seed=1,
    )
    assert same["accuracy"]["mcnemarPValue"] == 1.0


def test_worst_slices_find_the_broken_segment() -> None:
    rows = 400
    frame = pd.DataFrame({"plan": ["basic", "pro"] * (rows // 2), "tenure": np.arange(rows)})
    truth = pd.Series(np.ones(rows, dtype=int))
    predicted = np.where(frame["plan"] == "basic", 0, 1)  # every basic-plan row is wrong
    analysis = report.analyse("classification", frame, ["plan", "tenure"], truth, predicted)
    worst = analysis["worstSlices"][0]
    assert (worst["feature"], worst["value"], worst["support"], worst["metric"]) == (
        "plan",
        "basic",
        200,
        0.0,
    )
    assert worst["delta"] == pytest.approx(-0.5)
    assert analysis["confusionMatrix"]["matrix"] == [[0, 0], [200, 200]]


def test_numeric_slices_are_quartiles_with_readable_bounds() -> None:
    rows = 400
    frame = pd.DataFrame({"tenure": np.arange(rows, dtype=float), "constant": np.ones(rows)})
    truth = pd.Series(np.ones(rows, dtype=int))
    predicted = np.where(frame["tenure"] < 100, 0, 1)  # the newest customers are all wrong
    analysis = report.analyse("classification", frame, ["tenure", "constant"], truth, predicted)
    found = [(s["feature"], s["value"], s["support"], s["metric"]) for s in analysis["worstSlices"]]
    assert found == [("tenure", "<= 99.75", 100, 0.0)]  # better-than-overall quartiles are no weakness
    assert analysis["slices"] == 4  # a constant column makes one slice of every row, which is dropped


def test_reference_bins_are_closed_on_the_right() -> None:
    edges, codes = reference.quantile_bins(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), 2)
    assert edges.tolist() == [3.0]
    assert codes.tolist() == [0, 0, 0, 1, 1]


def test_reference_distributions_sum_to_one() -> None:
    frame = pd.DataFrame({"x": np.arange(100, dtype=float), "c": ["a"] * 70 + ["b"] * 30})
    ref = reference.build_reference(frame, ["x", "c"])
    assert ref["features"]["c"] == {"type": "categorical", "proportions": {"a": 0.7, "b": 0.3}}
    numeric = ref["features"]["x"]
    assert len(numeric["proportions"]) == len(numeric["edges"]) + 1
    assert sum(numeric["proportions"]) == pytest.approx(1.0)


def test_per_class_counts_agree_with_scikit_learn() -> None:
    from sklearn.metrics import classification_report, confusion_matrix

    rng = np.random.default_rng(5)
    truth = pd.Series(rng.choice(["a", "b", "c"], 500))
    predicted = pd.Series(np.where(rng.random(500) < 0.7, truth, rng.choice(["a", "b", "c", "d"], 500)))
    ours = report._per_class(truth, predicted)
    labels = ours["confusionMatrix"]["labels"]
    expected = classification_report(truth, predicted, labels=labels, output_dict=True, zero_division=0)
    assert labels == ["a", "b", "c", "d"]
    assert ours["confusionMatrix"]["matrix"] == confusion_matrix(truth, predicted, labels=labels).tolist()
    for label in labels:
        for key in ("precision", "recall", "f1-score", "support"):
            assert ours["perClass"][label][key] == pytest.approx(expected[label][key])


@pytest.mark.parametrize(
    "estimator",
    [
        "sklearn.ensemble.HistGradientBoostingClassifier",
        "sklearn.ensemble.RandomForestClassifier",
        "sklearn.tree.DecisionTreeClassifier",
        "sklearn.linear_model.LogisticRegression",
    ],
)
@pytest.mark.parametrize("classes", [2, 3])
def test_one_prediction_pass_gives_the_models_own_labels(estimator: str, classes: int) -> None:
    rng = np.random.default_rng(3)
    features = rng.normal(size=(3000, 4))
    target = np.digitize(features[:, 0] + rng.normal(0, 0.7, 3000), [-0.5, 0.5][: classes - 1])
    model = load_estimator_class(estimator)().fit(features[:2000], target[:2000])
    assert evaluate._predicts_by_argmax(model)

    found = evaluate.predict(model, features[2000:])

    assert found.probabilities is not None
    np.testing.assert_array_equal(found.labels, model.predict(features[2000:]))


def test_a_rounded_tie_is_decided_by_the_models_predict() -> None:
    # Binary HGB predicts 1 for any raw score > 0, but a score of 1e-20 rounds to probabilities 0.5/0.5.
    model = load_estimator_class("sklearn.ensemble.HistGradientBoostingClassifier")(max_iter=1, max_depth=2)
    model.fit(np.array([[0.0], [1.0]] * 10), np.array([0, 1] * 10))
    model._predictors[0][0].nodes["value"][:] = 0.0
    model._baseline_prediction = np.array([[1e-20]])
    rows = np.array([[0.0], [1.0]])
    assert list(model.predict(rows)) == [1, 1]
    assert list(np.argmax(model.predict_proba(rows), axis=1)) == [0, 0]

    found = evaluate.predict(model, rows)

    assert list(found.labels) == [1, 1]


def test_classifiers_with_their_own_decision_rule_predict_separately() -> None:
    rng = np.random.default_rng(4)
    features = rng.normal(size=(400, 2))
    target = (features[:, 0] > 0).astype(int)
    threshold = load_estimator_class("sklearn.model_selection.FixedThresholdClassifier")
    logistic = load_estimator_class("sklearn.linear_model.LogisticRegression")
    # predict() is "probability of 1 >= 0.9" here, which argmax would get wrong for many rows.
    model = threshold(logistic(), threshold=0.9).fit(features, target)
    assert not evaluate._predicts_by_argmax(model)

    found = evaluate.predict(model, features)

    np.testing.assert_array_equal(found.labels, model.predict(features))
    assert found.probabilities is not None
    assert (found.labels != np.argmax(found.probabilities, axis=1)).any()


def test_feedback_written_twice_counts_once_per_prediction() -> None:
    at = pd.Timestamp("2026-11-28T12:00:00Z")
    rows = pd.DataFrame(
        {
            "x": [1.0, 1.0, 2.0],
            "fbl_label": [0, 0, 1],
            "fbl_prediction_id": ["a", "a", "b"],
            "fbl_labelled_at": [at, at, at + pd.Timedelta(seconds=1)],
        }
    )
    feedback = data._feedback_rows(rows, "churned", None, "s3://data/feedback/")
    assert feedback.to_dict(orient="list") == {"x": [1.0, 2.0], "churned": [0, 1]}


def test_a_request_frame_is_what_prepare_makes_of_the_same_rows() -> None:
    train = pd.DataFrame(
        {"x": [1.0, 2.0, 3.0, 4.0] * 10, "plan": ["a", "b", "a", "c"] * 10, "y": [0, 1, 0, 1] * 10}
    )
    pipeline = build_pipeline(
        "sklearn.linear_model.LogisticRegression", {}, "classification", train, ["x", "plan"]
    )
    columns: dict[str, list[Any]] = {"x": [1.5, None, 3.0], "plan": ["a", None, 7]}
    expected = prepare(pd.DataFrame(columns), pipeline, ["x", "plan"])
    built = frame_of(columns, {"x"}, categorical_columns(pipeline))
    pd.testing.assert_frame_equal(built, expected, check_dtype=True)
    assert built["plan"].tolist() == ["a", "__missing__", "7"]
