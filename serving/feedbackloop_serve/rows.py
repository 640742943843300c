"""Request models built from the loaded model at load time, so FastAPI validates requests, answers 422s that
name the field, and documents the real fields at /docs. Pure: pydantic only.

Every accepted value is one the feedback sink's Parquet schema can hold: numeric features are finite float64,
categorical ones are text, and a label is one of the model's classes (or a finite number for a regressor).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Annotated, Any, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    create_model,
    model_validator,
)

NUMERIC = "numeric"
CATEGORICAL = "categorical"
ANY = "any"
MAX_BATCH = 10_000
MAX_TEXT = 1024  # a categorical value or a label as text
MAX_ID = 256  # longer than any id the server issues; a longer one is malformed, not a store lookup

FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
NumericValue = FiniteFloat | None


# A union of types pydantic checks natively: a Python validator here made a 10,000-row body 6x slower to
# validate and held the GIL for ~100 ms. Its per-member errors are folded into one by `errors_of`.
CategoricalValue = Annotated[StrictStr, Field(max_length=MAX_TEXT)] | StrictInt | FiniteFloat | None
CATEGORICAL_MESSAGE = f"Input should be a string of at most {MAX_TEXT} characters or a finite number"
_UNION_MEMBERS = frozenset({"constrained-str", "str", "int", "float", "none"})


def errors_of(err: ValidationError, categorical: Collection[str]) -> list[dict[str, Any]]:
    """FastAPI's 422 entries, located under `body`; a categorical value's union errors become one."""
    detail: list[dict[str, Any]] = []
    for error in err.errors(include_url=False):
        loc = ["body", *error["loc"]]
        if len(loc) >= 3 and loc[-1] in _UNION_MEMBERS and loc[-2] in categorical:
            entry = {"loc": loc[:-1], "msg": CATEGORICAL_MESSAGE, "type": "string_type"}
        else:
            entry = {"loc": loc, "msg": error["msg"], "type": error["type"]}
        if entry not in detail:
            detail.append(entry)
    return detail


def _one_of(single: str, batch: str) -> dict[str, Any]:
    """A body is either one item or a batch of them, never both."""

    def exactly_one(cls: type[BaseModel], data: Any) -> Any:
        if isinstance(data, dict) and (single in data) == (batch in data):
            raise ValueError(f"give exactly one of '{single}' or '{batch}'")
        return data

    return {"exactly_one": model_validator(mode="before")(classmethod(exactly_one))}  # type: ignore[arg-type]


def _optional_list(item: Any) -> Any:
    return list[item] | None


class RequestModels:
    """The pydantic models of /predict and /feedback for one loaded model."""

    def __init__(
        self,
        features: Sequence[str],
        feature_types: dict[str, str],
        task: str,
        classes: Sequence[Any] | None,
    ) -> None:
        forbid = ConfigDict(extra="forbid")
        self.row = _row_model(features, feature_types)
        optional_row: Any = self.row | None
        self.predict = create_model(
            "PredictRequest",
            __config__=forbid,
            __validators__=_one_of("row", "rows"),
            row=(optional_row, None),
            rows=(_optional_list(self.row), Field(None, min_length=1, max_length=MAX_BATCH)),
        )
        label = _label_type(task, classes)
        prediction_id = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID)]
        self.feedback_item = create_model(
            "FeedbackItem", __config__=forbid, id=(prediction_id, ...), label=(label, ...)
        )
        self.feedback = create_model(
            "FeedbackRequest",
            __config__=forbid,
            __validators__=_one_of("id", "feedback"),
            id=(prediction_id | None, None),
            label=(label | None, None),
            feedback=(_optional_list(self.feedback_item), Field(None, min_length=1, max_length=MAX_BATCH)),
        )


def _row_model(features: Sequence[str], feature_types: dict[str, str]) -> type[BaseModel]:
    # Fields are f0, f1, … aliased to the feature names: a feature may be named like a pydantic attribute.
    fields: dict[str, Any] = {
        f"f{index}": (
            NumericValue if feature_types.get(name) == NUMERIC else CategoricalValue,
            Field(..., alias=name),
        )
        for index, name in enumerate(features)
    }
    return create_model("Row", __config__=ConfigDict(extra="forbid"), **fields)


def _label_type(task: str, classes: Sequence[Any] | None) -> Any:
    if task == "regression" or not classes:
        return FiniteFloat
    known = list(classes)

    def one_of_the_classes(value: Any) -> Any:
        if value not in known or isinstance(value, bool) != isinstance(known[0], bool):
            listed = ", ".join(repr(c) for c in known[:20])
            raise ValueError(f"the label must be one of the model's classes: {listed}")
        return value

    schema = cast(dict[str, Any], {"enum": known})
    if all(isinstance(c, bool) for c in known):
        base: Any = StrictBool
    elif all(isinstance(c, int) for c in known):
        base = StrictInt
    elif all(isinstance(c, float) for c in known):
        base = FiniteFloat
    else:
        base = Annotated[StrictStr, Field(max_length=MAX_TEXT)]
    return Annotated[base, AfterValidator(one_of_the_classes), Field(json_schema_extra=schema)]
