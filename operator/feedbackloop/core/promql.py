"""Render a user's PromQL templates: only validated label values are substituted, as quoted PromQL strings.

A query is the user's own text. The only values spliced into it are `{{name}}` placeholders, each replaced by
a double-quoted PromQL string whose content matched SAFE_LABEL_VALUE, and is escaped by Go's rules anyway.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from feedbackloop.core.loop import LoopState

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
SAFE_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
SAFE_LABEL_VALUE = re.compile(r"^[a-zA-Z0-9_.:/-]{0,128}$")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


class UnsafeQueryError(ValueError):
    """A template names an unknown variable, or a value is not a safe label value."""


def quote_label_value(value: str) -> str:
    """A PromQL double-quoted string literal for a validated label value."""
    if not SAFE_LABEL_VALUE.match(value):
        raise UnsafeQueryError(
            f"label value {value!r} is not allowed: use letters, digits and _ . : / - (at most 128)"
        )
    return '"' + "".join(_ESCAPES.get(char, char) for char in value) + '"'


def template_variables(namespace: str, loop: str, labels: Mapping[str, str]) -> dict[str, str]:
    """User labels plus the built-ins `namespace` and `loop`; the built-ins win."""
    for name in labels:
        if not SAFE_LABEL_NAME.match(name):
            raise UnsafeQueryError(f"label name {name!r} is not a valid PromQL label name")
    return {**labels, "namespace": namespace, "loop": loop}


def render_query(template: str, variables: Mapping[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            known = ", ".join(sorted(variables)) or "none"
            raise UnsafeQueryError(f"unknown placeholder {{{{{name}}}}} (known: {known})")
        return quote_label_value(variables[name])

    rendered = PLACEHOLDER.sub(substitute, template)
    if "{{" in rendered or "}}" in rendered:
        raise UnsafeQueryError("malformed placeholder: use {{name}} with a label name")
    return rendered


@dataclass(frozen=True)
class RenderedQuery:
    name: str
    query: str
    samples_query: str | None


NO_VERSION = "none"


def render_queries(loop: LoopState) -> tuple[RenderedQuery, ...]:
    """Every monitoring metric's queries for this loop, as they will be sent."""
    assert loop.spec is not None
    variables = template_variables(loop.ref.namespace, loop.ref.name, loop.spec.monitoring.labels)
    # {{model_version}} scopes a query to the version being analysed, else to the one serving; before either
    # is known it is NO_VERSION, which no series carries, so the metric has no data rather than a bad spec.
    rollout, current = loop.status.rollout, loop.status.current_model
    version = rollout.version if rollout else current.version if current else None
    variables["model_version"] = version if version and SAFE_LABEL_VALUE.match(version) else NO_VERSION
    return tuple(
        RenderedQuery(
            name=metric.name,
            query=render_query(metric.query, variables),
            samples_query=render_query(metric.samples_query, variables) if metric.samples_query else None,
        )
        for metric in loop.spec.monitoring.metrics
    )
