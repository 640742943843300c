"""Request rows checked against the model's features, with errors in FastAPI's 422 shape. Pure: no I/O."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

NUMERIC = "numeric"
CATEGORICAL = "categorical"
ANY = "any"
MAX_BATCH = 10_000


@dataclass(frozen=True)
class FieldError:
    loc: tuple[str | int, ...]
    msg: str
    type: str

    def as_dict(self) -> dict[str, Any]:
        return {"loc": list(self.loc), "msg": self.msg, "type": self.type}


def rows_of(body: Any) -> tuple[list[Any], list[FieldError]]:
    """{"rows": [...]} is a batch, {"row": {...}} is one row."""
    if not isinstance(body, Mapping):
        return [], [FieldError(("body",), "Input should be an object with 'row' or 'rows'", "model_type")]
    if ("row" in body) == ("rows" in body):
        return [], [FieldError(("body",), "Give exactly one of 'row' or 'rows'", "value_error")]
    if "row" in body:
        return [body["row"]], []
    rows = body["rows"]
    if not isinstance(rows, list) or not rows:
        return [], [FieldError(("body", "rows"), "Input should be a non-empty list", "list_type")]
    if len(rows) > MAX_BATCH:
        return [], [FieldError(("body", "rows"), f"At most {MAX_BATCH} rows per request", "too_long")]
    return rows, []


def check_rows(
    rows: Sequence[Any], features: Sequence[str], types: Mapping[str, str], single: bool
) -> list[FieldError]:
    """Every missing, extra or wrongly typed field of every row; empty when all rows are usable."""
    errors: list[FieldError] = []
    known = set(features)
    for index, row in enumerate(rows):
        where: tuple[str | int, ...] = ("body", "row") if single else ("body", "rows", index)
        if not isinstance(row, Mapping):
            errors.append(FieldError(where, "Input should be an object of feature values", "model_type"))
            continue
        for name in features:
            if name not in row:
                errors.append(FieldError((*where, name), "Field required", "missing"))
                continue
            problem = _type_problem(row[name], types.get(name, ANY))
            if problem:
                errors.append(FieldError((*where, name), problem[0], problem[1]))
        for name in row:
            if name not in known:
                errors.append(
                    FieldError((*where, str(name)), "Extra inputs are not permitted", "extra_forbidden")
                )
    return errors


def _type_problem(value: Any, kind: str) -> tuple[str, str] | None:
    if value is None:
        return None  # null is a missing value; whether the model copes is for predict() to say
    if kind == NUMERIC:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "Input should be a valid number", "float_type"
        if isinstance(value, float) and not math.isfinite(value):
            return "Input should be a finite number", "finite_number"
        return None
    if isinstance(value, str | int | float | bool):
        return None
    return "Input should be a string or a number", "string_type"
