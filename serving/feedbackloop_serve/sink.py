"""Labelled rows as Parquet in the trainer's schema, and the object key a batch of them is written under.

Pure: no I/O. Encoding tells a row the schema cannot hold (set aside, never retried) from a batch that can be
written; the key is a function of the batch's stream entries, so writing the same batch again rewrites the
same object instead of adding a duplicate.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from feedbackloop.core import contract
from feedbackloop_serve.rows import NUMERIC

_TIME = pa.timestamp("ms", tz="UTC")


@dataclass(frozen=True)
class StreamRow:
    """One joined label as it waits in the store's stream."""

    entry_id: bytes
    prediction_id: str
    record: bytes  # the stored prediction: {"row", "prediction", "version", "at"}
    label_json: bytes
    labelled_at_ms: int


@dataclass(frozen=True)
class Encoded:
    body: bytes
    rows: list[StreamRow]  # written
    set_aside: list[tuple[StreamRow, str]]  # rows the schema cannot hold, with why


class FeedbackSchema:
    def __init__(self, features: Sequence[str], feature_types: Mapping[str, str], label_type: pa.DataType):
        self.features = list(features)
        self.schema = pa.schema(
            [(name, _arrow_type(feature_types.get(name, ""))) for name in features]
            + [
                (contract.FEEDBACK_LABEL, label_type),
                (contract.FEEDBACK_PREDICTION, label_type),
                (contract.FEEDBACK_MODEL_VERSION, pa.string()),
                (contract.FEEDBACK_PREDICTION_ID, pa.string()),
                (contract.FEEDBACK_PREDICTED_AT, _TIME),
                (contract.FEEDBACK_LABELLED_AT, _TIME),
            ]
        )
        self._numeric = {name for name in features if feature_types.get(name) == NUMERIC}

    def encode(self, rows: Sequence[StreamRow]) -> Encoded:
        """One Parquet object of every row the schema holds; a bad row costs one more pass, not the batch."""
        try:
            return Encoded(self._parquet([self._record(row) for row in rows]), list(rows), [])
        except (ValueError, TypeError, KeyError, OverflowError, pa.ArrowException):
            pass
        good: list[StreamRow] = []
        good_records: list[dict[str, Any]] = []
        bad: list[tuple[StreamRow, str]] = []
        for row in rows:
            try:
                record = self._record(row)
                pa.Table.from_pylist([record], schema=self.schema)
            except (ValueError, TypeError, KeyError, OverflowError, pa.ArrowException) as err:
                bad.append((row, f"{type(err).__name__}: {err}"[:500]))
                continue
            good.append(row)
            good_records.append(record)
        return Encoded(self._parquet(good_records) if good_records else b"", good, bad)

    def _record(self, row: StreamRow) -> dict[str, Any]:
        stored = orjson.loads(row.record)
        values = stored["row"]
        record: dict[str, Any] = {
            name: _feature(values[name], name in self._numeric) for name in self.features
        }
        record[contract.FEEDBACK_LABEL] = orjson.loads(row.label_json)
        record[contract.FEEDBACK_PREDICTION] = stored["prediction"]
        record[contract.FEEDBACK_MODEL_VERSION] = stored["version"]
        record[contract.FEEDBACK_PREDICTION_ID] = row.prediction_id
        record[contract.FEEDBACK_PREDICTED_AT] = _time(stored["at"])
        record[contract.FEEDBACK_LABELLED_AT] = _time(row.labelled_at_ms)
        return record

    def _parquet(self, records: list[dict[str, Any]]) -> bytes:
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(records, schema=self.schema), buffer)
        return buffer.getvalue()


def batch_key(prefix: str, rows: Sequence[StreamRow]) -> str:
    """`<prefix><yyyy>/<mm>/<dd>/<HHMMSS>-<hash of the entry ids>.parquet`, dated by the first entry."""
    first_ms = int(rows[0].entry_id.split(b"-")[0])
    digest = hashlib.sha256(b"\n".join(sorted(row.entry_id for row in rows))).hexdigest()[:20]
    return f"{prefix}{_time(first_ms):%Y/%m/%d/%H%M%S}-{digest}.parquet"


def _feature(value: Any, numeric: bool) -> Any:
    if value is None:
        return None
    return float(value) if numeric else str(value)


def _time(milliseconds: int) -> datetime:
    return datetime.fromtimestamp(milliseconds / 1000, UTC)


def _arrow_type(kind: str) -> pa.DataType:
    # Categorical features, and features of unknown type, are kept as text, which the trainer reads.
    return pa.float64() if kind == NUMERIC else pa.string()


def label_type(task: str, classes: Sequence[Any] | None) -> pa.DataType:
    if task == "regression" or not classes:
        return pa.float64()
    if all(isinstance(c, bool) for c in classes):
        return pa.bool_()
    if all(isinstance(c, int) for c in classes):
        return pa.int64()
    if all(isinstance(c, float) for c in classes):
        return pa.float64()
    return pa.string()


def encode_record(
    row: dict[str, object], prediction: object, version: str, predicted_at_ms: int, role: str | None = None
) -> bytes:
    """The stored prediction; `role` only for a split's candidate, so a champion's record stays as it was."""
    record = {"row": row, "prediction": prediction, "version": version, "at": predicted_at_ms}
    if role is not None:
        record["role"] = role
    return orjson.dumps(record)


def decode_record(record: bytes) -> dict[str, object]:
    decoded: dict[str, object] = orjson.loads(record)
    return decoded
