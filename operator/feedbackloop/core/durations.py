"""Go-style durations (`90s`, `1h30m`, `250ms`), the syntax the CRD's pattern and CEL `duration()` accept."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_WHOLE = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h))+$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> timedelta:
    if not isinstance(text, str) or not _WHOLE.match(text):
        raise ValueError(f"invalid duration {text!r}: use Go syntax such as 30s, 10m or 1h30m")
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(text))
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Shortest Go-style text for a duration; the inverse of parse_duration for whole milliseconds."""
    millis = round(value.total_seconds() * 1000)
    if millis == 0:
        return "0s"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    if seconds or millis:
        text += f"{seconds}.{millis:03d}".rstrip("0").rstrip(".") + "s" if millis else f"{seconds}s"
    return text
