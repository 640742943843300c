"""The base of every typed API value: camelCase on the wire, snake_case in Python, immutable."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    # Unknown fields are ignored, not fatal: a newer CRD may carry fields this operator does not know yet.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore")
