"""The base of every typed API value: camelCase on the wire, snake_case in Python, immutable.

Spec objects and the top-level status are pydantic models. The values inside the status are frozen pydantic
dataclasses (`@dataclass(frozen=True, config=API_CONFIG)`), so `dataclasses.replace` updates them: mypy checks
its field names and types, and pydantic validates the result.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

# Unknown fields are ignored, not fatal: a newer CRD may carry fields this operator does not know yet.
API_CONFIG = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class ApiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)
