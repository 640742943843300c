"""Which loops an operator replica owns: FBL_SHARD_SELECTOR, a label selector as Flux shards controllers.

The equality-based subset of Kubernetes label selectors: `key=value`, `key==value`, `key!=value`, `key`
(present) and `!key` (absent), comma-separated, all of which must hold.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_PREFIX = r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
_KEY = re.compile(_PREFIX + r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_TERM = re.compile(r"^(?P<absent>!)?(?P<key>[^=!]+?)(?:(?P<op>==|=|!=)(?P<value>.*))?$")


class SelectorError(ValueError):
    """The selector does not parse; the message names the term."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # "=", "!=", "exists", "!exists"
    value: str = ""

    def matches(self, labels: Mapping[str, str]) -> bool:
        match self.operator:
            case "=":
                return labels.get(self.key) == self.value
            case "!=":
                return labels.get(self.key) != self.value
            case "exists":
                return self.key in labels
            case _:
                return self.key not in labels


@dataclass(frozen=True)
class ShardSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        return all(r.matches(labels or {}) for r in self.requirements)

    @property
    def label_selector(self) -> str:
        """As the API server takes it in `labelSelector`; empty selects everything."""
        return ",".join(_text(r) for r in self.requirements)

    def __str__(self) -> str:
        return self.label_selector or "<all loops>"


def parse_selector(text: str) -> ShardSelector:
    requirements = []
    for raw in text.split(","):
        term = raw.strip()
        if not term:
            continue
        found = _TERM.match(term)
        if found is None or not _KEY.match(found["key"].strip()):
            raise SelectorError(f"{term!r} is not a label requirement (key=value, key!=value, key or !key)")
        key, op, value = found["key"].strip(), found["op"], (found["value"] or "").strip()
        if found["absent"] and op:
            raise SelectorError(f"{term!r}: '!key' takes no value")
        if op and not _VALUE.match(value):
            raise SelectorError(f"{term!r}: {value!r} is not a label value")
        if found["absent"]:
            requirements.append(Requirement(key, "!exists"))
        elif op is None:
            requirements.append(Requirement(key, "exists"))
        else:
            requirements.append(Requirement(key, "!=" if op == "!=" else "=", value))
    return ShardSelector(tuple(requirements))


def _text(requirement: Requirement) -> str:
    match requirement.operator:
        case "exists":
            return requirement.key
        case "!exists":
            return f"!{requirement.key}"
        case op:
            return f"{requirement.key}{op}{requirement.value}"
