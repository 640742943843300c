"""Request models built from the loaded model at load time, so FastAPI validates requests, answers 422s that
name the field, and documents the real fields at /docs. Pure: pydantic only.

Every accepted value is one the feedback sink's Parquet schema can hold: numeric features are finite float64,
categorical ones are text, and a label is one of the model's classes (or a finite number for a regressor).
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Sequence
from typing import Annotated, Any, Literal, cast

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

# The bounds only state in the schema what "finite float64" means; every finite float passes them.
FiniteFloat = Annotated[
    float, Field(strict=True, allow_inf_nan=False, ge=-sys.float_info.max, le=sys.float_info.max)
]
Int64 = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
NumericValue = FiniteFloat | None


# A union of types pydantic checks natively: a Python validator here made a 10,000-row body 6x slower to
# validate and held the GIL for ~100 ms. Its per-member errors are folded into one by `errors_of`.
CategoricalValue = Annotated[StrictStr, Field(max_length=MAX_TEXT)] | Int64 | FiniteFloat | None
CATEGORICAL_MESSAGE = f"Input should be a string of at most {MAX_TEXT} characters or a finite number"
_UNION_MEMBERS = frozenset(
    {"constrained-str", "str", "constrained-int", "int", "constrained-float", "float", "none"}
)


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


def _one_of(single: Sequence[str], batch: str) -> tuple[dict[str, Any], ConfigDict]:
    """A body is either one item (all of `single`) or a batch of them, never both: the validator and the
    config that states the same rule in the JSON schema, so generated clients and fuzzers know it."""

    def exactly_one(cls: type[BaseModel], data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        has_single = [name in data for name in single]
        if (batch in data) == any(has_single) or (any(has_single) and not all(has_single)):
            if len(single) == 1:
                raise ValueError(f"give exactly one of '{single[0]}' or '{batch}'")
            names = " and ".join(f"'{name}'" for name in single)
            raise ValueError(f"give either {names}, or '{batch}'")
        return data

    def state_the_rule(schema: dict[str, Any]) -> None:
        for field in (*single, batch):
            schema["properties"][field].pop("default", None)
        schema["oneOf"] = [
            {"required": list(single), "not": {"required": [batch]}},
            {"required": [batch], "not": {"anyOf": [{"required": [name]} for name in single]}},
        ]

    validators = {"exactly_one": model_validator(mode="before")(classmethod(exactly_one))}  # type: ignore[arg-type]
    return validators, ConfigDict(extra="forbid", json_schema_extra=state_the_rule)


class RequestModels:
    """The pydantic models of /predict and /feedback for one loaded model."""

    def __init__(
        self,
        features: Sequence[str],
        feature_types: dict[str, str],
        task: str,
        classes: Sequence[Any] | None,
        nullable: Collection[str] | None = None,
    ) -> None:
        """`nullable`: the numeric features that may be null (default: all of them)."""
        forbid = ConfigDict(extra="forbid")
        self.row = _row_model(features, feature_types, features if nullable is None else nullable)
        # Absent fields default to None; the schema says "absent", never null (the validator refuses null).
        validators, config = _one_of(["row"], "rows")
        self.predict = create_model(
            "PredictRequest",
            __config__=config,
            __validators__=validators,
            row=(self.row, None),
            rows=(list[self.row], Field(None, min_length=1, max_length=MAX_BATCH)),  # type: ignore[name-defined]
        )
        label = _label_type(task, classes)
        prediction_id = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID)]
        self.feedback_item = create_model(
            "FeedbackItem", __config__=forbid, id=(prediction_id, ...), label=(label, ...)
        )
        validators, config = _one_of(["id", "label"], "feedback")
        self.feedback = create_model(
            "FeedbackRequest",
            __config__=config,
            __validators__=validators,
            id=(prediction_id, None),
            label=(label, None),
            feedback=(list[self.feedback_item], Field(None, min_length=1, max_length=MAX_BATCH)),  # type: ignore[name-defined]
        )
        self.predict_response = _predict_response(label, classes if task != "regression" else None)
        self.feedback_response = FeedbackResponse

    @property
    def models(self) -> tuple[type[BaseModel], ...]:
        """Every model the OpenAPI document names."""
        return (self.predict, self.feedback, self.predict_response, self.feedback_response)


def _row_model(
    features: Sequence[str], feature_types: dict[str, str], nullable: Collection[str]
) -> type[BaseModel]:
    # Fields are f0, f1, … aliased to the feature names: a feature may be named like a pydantic attribute.
    def value_type(name: str) -> Any:
        if feature_types.get(name) != NUMERIC:
            return CategoricalValue
        return NumericValue if name in nullable else FiniteFloat

    fields: dict[str, Any] = {
        f"f{index}": (value_type(name), Field(..., alias=name)) for index, name in enumerate(features)
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
        base = StrictInt  # the class check refuses every other integer, with a message naming the classes
    elif all(isinstance(c, float) for c in known):
        base = FiniteFloat
    else:
        base = Annotated[StrictStr, Field(max_length=MAX_TEXT)]
    return Annotated[base, AfterValidator(one_of_the_classes), Field(json_schema_extra=schema)]


def _omits_none(*names: str) -> ConfigDict:
    """Optional fields the server leaves out rather than sending null: their schemas drop the null."""

    def drop_null(schema: dict[str, Any]) -> None:
        for name in names:
            field = schema["properties"][name]
            options = field.pop("anyOf", [])
            field.update(next((o for o in options if o != {"type": "null"}), {}))
            field.pop("default", None)

    return ConfigDict(json_schema_extra=drop_null)


RefusalReason = Literal["malformed", "bad_signature", "expired", "unknown", "duplicate", "full"]


class FeedbackResult(BaseModel):
    model_config = _omits_none("reason", "error")
    id: str
    status: Literal["accepted", "error"]
    reason: RefusalReason | None = None
    error: str | None = Field(None, description="the reason in words; present with status 'error'")


class FeedbackResponse(BaseModel):
    accepted: Annotated[int, Field(ge=0, description="labels joined to their prediction")]
    results: list[FeedbackResult]


def _predict_response(label: Any, classes: Sequence[Any] | None) -> type[BaseModel]:
    fields: dict[str, Any] = {
        "id": (str | None, Field(..., description="the id to send with the label; null if no store")),
        "prediction": (label, ...),
    }
    if classes:
        names = {"propertyNames": {"enum": [str(c) for c in classes]}}
        probabilities = Annotated[dict[str, float], Field(json_schema_extra=names)]
        fields["probabilities"] = (probabilities | None, Field(None, description="each class's probability"))
    prediction = create_model(
        "Prediction", __config__=_omits_none("probabilities") if classes else None, **fields
    )
    return create_model(
        "PredictResponse",
        model_version=(str, ...),
        predictions=(list[prediction], ...),
    )
