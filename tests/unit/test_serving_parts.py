"""The model server's pure parts: PSI over a sliding window, row checks, the feedback sink's buffer."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feedbackloop_serve.drift import DriftWindow, psi
from feedbackloop_serve.rows import check_rows, rows_of
from feedbackloop_serve.sink import FeedbackSink, label_type

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


def test_rows_are_checked_against_the_models_features() -> None:
    rows, errors = rows_of({"rows": [{"x": 1, "plan": "pro"}, {"x": "1", "plan": {}, "extra": 1}]})
    assert not errors
    found = check_rows(rows, ["x", "plan"], {"x": "numeric", "plan": "categorical"}, single=False)
    assert [(e.loc, e.type) for e in found] == [
        (("body", "rows", 1, "x"), "float_type"),
        (("body", "rows", 1, "plan"), "string_type"),
        (("body", "rows", 1, "extra"), "extra_forbidden"),
    ]


def sink_with(store: dict[str, bytes], fail: list[bool], max_rows: int = 100) -> FeedbackSink:
    def put(key: str, body: bytes) -> None:
        if fail and fail[0]:
            raise ConnectionError("store down")
        store[key] = body

    return FeedbackSink(
        put=put,
        prefix="fb/",
        features=["x", "plan"],
        feature_types={"x": "numeric", "plan": "categorical"},
        label_type=pa.int64(),
        flush_rows=10,
        max_rows=max_rows,
        source="pod",
    )


def labelled(n: int, start: int = 0) -> list[dict[str, object]]:
    at = datetime(2026, 11, 28, tzinfo=UTC)
    return [
        {
            "x": float(i),
            "plan": "pro",
            "fbl_label": 1,
            "fbl_prediction": 0,
            "fbl_model_version": "v1",
            "fbl_prediction_id": f"id-{i}",
            "fbl_predicted_at": at,
            "fbl_labelled_at": at,
        }
        for i in range(start, start + n)
    ]


def test_a_failed_flush_retries_the_same_object_and_loses_nothing() -> None:
    store: dict[str, bytes] = {}
    down = [True]
    sink = sink_with(store, down)
    for row in labelled(5):
        sink.add(row)
    with pytest.raises(ConnectionError):
        sink.flush()
    for row in labelled(3, start=5):
        sink.add(row)
    assert sink.buffered == 8
    down[0] = False
    assert sink.flush() == 8
    assert len(store) == 2  # the sealed batch under its first key, then the newer rows
    ids = [
        i
        for body in (store[k] for k in sorted(store))
        for i in pq.read_table(io.BytesIO(body))["fbl_prediction_id"].to_pylist()
    ]
    assert ids == [f"id-{i}" for i in range(8)]
    assert sink.buffered == 0


def test_past_the_bound_the_oldest_rows_are_dropped_and_counted() -> None:
    store: dict[str, bytes] = {}
    dropped: list[int] = []
    sink = sink_with(store, [True], max_rows=6)
    sink._on_dropped = dropped.append
    for row in labelled(4):
        sink.add(row)
    with pytest.raises(ConnectionError):
        sink.flush()  # 4 rows sealed, waiting
    for row in labelled(5, start=4):
        sink.add(row)
    assert sum(dropped) == 3
    assert sink.buffered == 6
    sink._put = lambda key, body: store.__setitem__(key, body)
    assert sink.flush() == 6
    ids = [
        i for k in sorted(store) for i in pq.read_table(io.BytesIO(store[k]))["fbl_prediction_id"].to_pylist()
    ]
    assert ids == [f"id-{i}" for i in range(3, 9)]


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
