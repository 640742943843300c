"""The model server's pure parts: PSI over a sliding window, request models, prediction ids, encoding."""

from __future__ import annotations

import base64
import io
import string
import sys
from datetime import UTC, datetime
from pathlib import Path

import jsonschema_rs
import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feedbackloop_serve.auth import BearerToken
from feedbackloop_serve.drift import DriftWindow, psi
from feedbackloop_serve.ids import CheckedId, IdKeyError, IdRefusal, IdSigner, parse_keys
from feedbackloop_serve.rows import CATEGORICAL, NUMERIC, RequestModels, errors_of
from feedbackloop_serve.served import LoadedModel
from feedbackloop_serve.settings import SettingsError, load_settings
from feedbackloop_serve.sink import FeedbackSchema, StreamRow, batch_key, label_type
from pydantic import ValidationError
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline

REFERENCE = {
    "features": {
        "x": {"type": "numeric", "edges": [0.0, 1.0], "proportions": [0.25, 0.5, 0.25], "missing": 0.0},
        "plan": {"type": "categorical", "proportions": {"basic": 0.5, "pro": 0.5}},
    }
}


def test_psi_is_zero_for_the_same_shares_and_grows_with_the_shift() -> None:
    same = psi(np.array([0.25, 0.5, 0.25]), np.array([0.25, 0.5, 0.25]))
    small = psi(np.array([0.25, 0.5, 0.25]), np.array([0.3, 0.45, 0.25]))
    large = psi(np.array([0.25, 0.5, 0.25]), np.array([0.0, 0.1, 0.9]))
    assert same == 0.0
    assert 0 < small < 0.1 < large
    # Worked by hand: (0.3-0.25)ln(0.3/0.25) + (0.45-0.5)ln(0.45/0.5).
    assert small == pytest.approx(0.05 * np.log(1.2) - 0.05 * np.log(0.9))


def test_the_window_bins_values_like_the_trainer_and_forgets_old_rows() -> None:
    window = DriftWindow(REFERENCE, window=100)
    # Edges are closed on the right: 0.0 falls in the first bin and 1.0 in the second, giving 25/50/25.
    window.observe(
        [{"x": v, "plan": p} for v, p in [(0.0, "basic"), (0.5, "pro"), (1.0, "basic"), (2.0, "pro")] * 25]
    )
    calm = window.psi()
    assert calm["x"] == pytest.approx(0.0)
    assert calm["plan"] == pytest.approx(0.0)
    window.observe([{"x": 5.0, "plan": "enterprise"}] * 100)  # replaces every earlier row
    drifted = window.psi()
    assert drifted["x"] > 2 and drifted["plan"] > 2
    window.observe(
        [{"x": v, "plan": p} for v, p in [(0.0, "basic"), (0.5, "pro"), (1.0, "basic"), (2.0, "pro")] * 25]
    )
    assert window.psi()["x"] == pytest.approx(0.0)


def test_missing_and_unusable_values_are_left_out_of_numeric_bins() -> None:
    window = DriftWindow(REFERENCE, window=200)
    window.observe([{"x": None, "plan": None}] * 100 + [{"x": float("nan"), "plan": "basic"}] * 10)
    found = window.psi()
    assert "x" not in found  # no usable numeric values yet: no PSI rather than a made-up one
    assert found["plan"] > 1  # missing is a category of its own, unseen in training


def test_request_models_name_each_bad_field_and_accept_only_what_the_sink_can_hold() -> None:
    models = RequestModels(["x", "plan"], {"x": NUMERIC, "plan": CATEGORICAL}, "classification", [0, 1])
    good = models.predict.model_validate({"rows": [{"x": 1, "plan": "pro"}, {"x": None, "plan": 3}]})
    rows = good.rows  # type: ignore[attr-defined]
    assert [(row.f0, row.f1) for row in rows] == [(1.0, "pro"), (None, 3)]
    with pytest.raises(ValidationError) as bad:
        models.predict.model_validate(
            {"rows": [{"x": "1", "plan": {}, "extra": 1}, {"x": 1e308 * 10, "plan": True}]}
        )
    assert [(tuple(e["loc"]), e["type"]) for e in errors_of(bad.value, {"plan"})] == [
        (("body", "rows", 0, "x"), "float_type"),
        (("body", "rows", 0, "plan"), "string_type"),
        (("body", "rows", 0, "extra"), "extra_forbidden"),
        (("body", "rows", 1, "x"), "finite_number"),
        (("body", "rows", 1, "plan"), "string_type"),
    ]
    with pytest.raises(ValidationError) as label:
        models.feedback.model_validate(
            {"feedback": [{"id": "a", "label": 10**19}, {"id": "b", "label": True}]}
        )
    assert [e["loc"] for e in label.value.errors()] == [("feedback", 0, "label"), ("feedback", 1, "label")]
    schema = models.feedback.model_json_schema()
    assert schema["$defs"]["FeedbackItem"]["properties"]["label"] == {
        "enum": [0, 1],
        "title": "Label",
        "type": "integer",
    }


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"id": "a"},
        {"label": 1},
        {"id": "a", "label": 1, "feedback": [{"id": "b", "label": 0}]},
        {"id": None, "label": None},
        {"feedback": []},
    ],
)
def test_a_feedback_body_is_one_label_or_a_batch_never_a_mix(body: dict[str, object]) -> None:
    models = RequestModels(["x"], {"x": NUMERIC}, "classification", [0, 1])
    with pytest.raises(ValidationError):
        models.feedback.model_validate(body)
    # The schema states the same rule, so a generated client or a fuzzer sees it too.
    assert jsonschema_accepts(models.feedback.model_json_schema(), body) is False


def test_the_schema_bounds_what_the_sink_can_hold() -> None:
    models = RequestModels(["x", "plan"], {"x": NUMERIC, "plan": CATEGORICAL}, "classification", [0, 1])
    for row in ({"x": 10**400, "plan": "a"}, {"x": 1.0, "plan": 10**400}, {"x": 1.0, "plan": "p" * 1025}):
        with pytest.raises(ValidationError):
            models.predict.model_validate({"row": row})
        assert jsonschema_accepts(models.predict.model_json_schema(), {"row": row}) is False
    edge = {"row": {"x": sys.float_info.max, "plan": 2**63 - 1}}
    assert models.predict.model_validate(edge).row is not None  # type: ignore[attr-defined]
    assert jsonschema_accepts(models.predict.model_json_schema(), edge) is True


def test_the_responses_are_documented_from_the_models_classes() -> None:
    classifier = RequestModels(["x"], {"x": NUMERIC}, "classification", ["no", "yes"])
    shares = {"no": 0.2, "yes": 0.8}
    predicted = {
        "model_version": "v1",
        "predictions": [{"id": None, "prediction": "yes", "probabilities": shares}],
    }
    schema = classifier.predict_response.model_json_schema()
    assert jsonschema_accepts(schema, predicted) is True
    predicted["predictions"][0]["prediction"] = "maybe"  # type: ignore[index]
    assert jsonschema_accepts(schema, predicted) is False
    regressor = RequestModels(["x"], {"x": NUMERIC}, "regression", None).predict_response.model_json_schema()
    assert "probabilities" not in regressor["$defs"]["Prediction"]["properties"]
    refused = {"accepted": 0, "results": [{"id": "a", "status": "error", "reason": "expired", "error": "…"}]}
    assert jsonschema_accepts(classifier.feedback_response.model_json_schema(), refused) is True
    refused["results"][0]["reason"] = None  # type: ignore[index]
    assert jsonschema_accepts(classifier.feedback_response.model_json_schema(), refused) is False


def jsonschema_accepts(schema: dict[str, object], document: object) -> bool:
    return bool(jsonschema_rs.Draft202012Validator(schema).is_valid(document))


def test_prediction_ids_are_checked_without_a_store_lookup() -> None:
    old, new = {"k1": b"1" * 32}, {"k2": b"2" * 32, "k1": b"1" * 32}
    signer = IdSigner(new, ttl_ms=60_000)
    issued = signer.issue(now_ms=1_000_000)
    assert issued.startswith("k2.") and len(issued) <= 64
    assert signer.check(issued, now_ms=1_030_000) == CheckedId(1_000_000)
    assert signer.check(issued, now_ms=1_060_001) is IdRefusal.EXPIRED
    kid, payload, tag = issued.split(".")
    tampered = f"{kid}.{flip_first(payload)}.{tag}"
    assert signer.check(tampered, now_ms=1_000_000) is IdRefusal.BAD_SIGNATURE
    assert IdSigner({"k2": b"3" * 32}, 60_000).check(issued, 1_000_000) is IdRefusal.BAD_SIGNATURE  # forged
    assert signer.check("not-an-id", 1_000_000) is IdRefusal.MALFORMED
    # Rotation: ids signed with the old key still verify while it is listed second.
    assert signer.check(IdSigner(old, 60_000).issue(1_000_000), 1_000_000) == CheckedId(1_000_000)


BASE64URL = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def flip_first(text: str) -> str:
    # The first base64 character carries six payload bits; the last may carry unused ones.
    return ("B" if text[0] == "A" else "A") + text[1:]


def test_a_prediction_id_has_one_spelling() -> None:
    signer = IdSigner({"k": b"1" * 32}, ttl_ms=60_000)
    kid, payload, tag = signer.issue(now_ms=1_000_000).split(".")
    # 20 payload bytes are 27 characters whose last has two unused low bits; setting one changes no byte.
    respelt = payload[:-1] + BASE64URL[BASE64URL.index(payload[-1]) ^ 1]
    assert base64.urlsafe_b64decode(respelt + "=") == base64.urlsafe_b64decode(payload + "=")
    assert signer.check(f"{kid}.{respelt}.{tag}", 1_000_000) is IdRefusal.MALFORMED
    assert signer.check(f"{kid}.{payload}.{tag}", 1_000_000) == CheckedId(1_000_000)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no key listed"),
        ("k1:c2hvcnQ=", "use at least 32"),
        ("bad id!:" + "A" * 44, "key id"),
        ("k:@@", "base64"),
    ],
)
def test_id_key_settings_name_the_problem_never_the_key(text: str, problem: str) -> None:
    with pytest.raises(IdKeyError, match=problem):
        parse_keys(text)


SCHEMA = FeedbackSchema(["x", "plan"], {"x": NUMERIC, "plan": CATEGORICAL}, pa.int64())


def stream_row(n: int, label: object = 1, x: object = 1.5) -> StreamRow:
    record = orjson.dumps(
        {"row": {"x": x, "plan": "pro"}, "prediction": 0, "version": "v1", "at": 1_764_000_000_000}
    )
    return StreamRow(
        f"1764000000{n:03d}-0".encode(), f"id-{n}", record, orjson.dumps(label), 1_764_000_001_000
    )


def test_a_row_the_schema_cannot_hold_is_set_aside_and_the_others_are_written() -> None:
    rows = [stream_row(0), stream_row(1, label=10**19), stream_row(2, x="not a number"), stream_row(3)]
    encoded = SCHEMA.encode(rows)
    assert [row.prediction_id for row in encoded.rows] == ["id-0", "id-3"]
    assert [(row.prediction_id, why.split(":")[0]) for row, why in encoded.set_aside] == [
        ("id-1", "OverflowError"),
        ("id-2", "ValueError"),
    ]
    table = pq.read_table(io.BytesIO(encoded.body))
    assert table["fbl_prediction_id"].to_pylist() == ["id-0", "id-3"]
    assert table["x"].to_pylist() == [1.5, 1.5]
    assert table["fbl_labelled_at"].to_pylist()[0] == datetime(2025, 11, 24, 16, 0, 1, tzinfo=UTC)


def test_a_batch_is_written_under_a_key_its_entries_decide() -> None:
    rows = [stream_row(n) for n in range(3)]
    key = batch_key("fb/", rows)
    assert key == batch_key("fb/", list(reversed(rows)))
    assert key != batch_key("fb/", rows[:2])
    assert key.startswith("fb/2025/11/24/160000-") and key.endswith(".parquet")


@pytest.mark.parametrize(
    ("task", "classes", "expected"),
    [
        ("classification", [0, 1], pa.int64()),
        ("classification", ["no", "yes"], pa.string()),
        ("classification", [False, True], pa.bool_()),
        ("regression", None, pa.float64()),
    ],
)
def test_the_label_column_takes_the_type_of_the_models_classes(
    task: str, classes: list[object] | None, expected: pa.DataType
) -> None:
    assert label_type(task, classes) == expected


def test_the_load_probe_finds_which_numeric_features_a_model_scores_when_missing() -> None:
    frame = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0]})
    target = [0.0, 1.0, 2.0, 3.0]

    def loaded(estimator: object) -> LoadedModel:
        return LoadedModel(
            uri="s3://b/m/v1/", version="v1", sha256="0" * 64, name="m", estimator=estimator,
            features=["a", "b"], feature_types={"a": NUMERIC, "b": NUMERIC}, task="regression",
            classes=None, reference=None,
        )  # fmt: skip

    assert loaded(Ridge().fit(frame, target)).nullable == frozenset()
    assert loaded(HistGradientBoostingRegressor(max_iter=5).fit(frame, target)).nullable == {"a", "b"}
    imputes_a = ColumnTransformer([("a", SimpleImputer(), ["a"]), ("b", "passthrough", ["b"])])
    assert loaded(make_pipeline(imputes_a, Ridge()).fit(frame, target)).nullable == {"a"}
    schema = RequestModels(["a", "b"], {"a": NUMERIC, "b": NUMERIC}, "regression", None, nullable={"a"})
    properties = schema.row.model_json_schema()["properties"]
    assert properties["a"]["anyOf"][1] == {"type": "null"}
    assert properties["b"]["type"] == "number"


def test_a_bearer_token_is_checked_in_constant_time_and_rotates_with_its_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first-token-0123456789\n")
    token = BearerToken(path)
    assert token.admits("Bearer first-token-0123456789")
    assert token.admits("bearer first-token-0123456789")
    assert not token.admits(None)
    assert not token.admits("Basic first-token-0123456789")
    assert not token.admits("Bearer first-token-012345678")
    replacement = tmp_path / "new"
    replacement.write_text("second-token-0123456789")
    replacement.replace(path)
    assert token.admits("Bearer second-token-0123456789")
    path.unlink()  # the kubelet's symlink swap caught half-way: the last token stays, the server stays shut
    assert token.admits("Bearer second-token-0123456789")
    assert not token.admits("Bearer ")


def test_a_short_or_missing_token_file_is_a_settings_error_that_never_shows_the_token(tmp_path: Path) -> None:
    base = {"MODEL_URI": "s3://models/churn/v1/", "MODEL_SHA256": "0" * 64}
    (tmp_path / "t").write_text("s3cr3t")
    with pytest.raises(SettingsError, match=r"FBL_SERVE_TOKEN_FILE: .* holds 6 bytes") as short:
        load_settings({**base, "FBL_SERVE_TOKEN_FILE": str(tmp_path / "t")})
    assert "s3cr3t" not in str(short.value)
    with pytest.raises(SettingsError, match="FBL_SERVE_TOKEN_FILE: cannot read"):
        load_settings({**base, "FBL_SERVE_TOKEN_FILE": str(tmp_path / "absent")})
    assert load_settings(base).token_file is None
