"""The model being served, as plain values: what the loader verified and loaded, and what scoring needs."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from feedbackloop_serve.rows import NUMERIC
from feedbackloop_train.model import categorical_columns


@dataclass(frozen=True)
class LoadedModel:
    uri: str
    version: str
    sha256: str
    name: str
    estimator: Any
    features: list[str]
    feature_types: dict[str, str]
    task: str
    classes: list[Any] | None
    reference: dict[str, Any] | None

    @cached_property
    def numeric(self) -> frozenset[str]:
        return frozenset(name for name, kind in self.feature_types.items() if kind == NUMERIC)

    @cached_property
    def categorical(self) -> frozenset[str]:
        return categorical_columns(self.estimator)
