"""The reference model server's counters, kept in simulated time and sampled on a scrape grid.

Names, labels and increments are the server's (feedbackloop_serve.metrics and app._count): fbl_predictions per
row predicted, and per joined label fbl_feedback, with fbl_feedback_correct (classification, inc(0) included,
so the ratio exists from the first label) or fbl_feedback_abs_error and fbl_feedback_squared_error
(regression), each labelled with the model name and the version that made the prediction. Pure: the OTLP
encoding is plain JSON, sent by feedbackloop_backtest.prometheus.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

from feedbackloop.api import ROLE_CHAMPION

PREDICTIONS = "fbl_predictions"
FEEDBACK = "fbl_feedback"
FEEDBACK_CORRECT = "fbl_feedback_correct"
FEEDBACK_ABS_ERROR = "fbl_feedback_abs_error"
FEEDBACK_SQUARED_ERROR = "fbl_feedback_squared_error"


@dataclass
class CounterSeries:
    """One counter series: its increments as (time, running total), in time order."""

    name: str
    model: str
    version: str
    times: list[float] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)

    def inc(self, time: float, amount: float) -> None:
        if self.times and time < self.times[-1]:
            raise ValueError(f"{self.name}: increment at {time} before {self.times[-1]}")
        total = (self.totals[-1] if self.totals else 0.0) + amount
        if self.times and self.times[-1] == time:
            self.totals[-1] = total
        else:
            self.times.append(time)
            self.totals.append(total)

    @property
    def created(self) -> float:
        return self.times[0]

    def value_at(self, time: float) -> float | None:
        """The counter as a scrape at `time` reads it; None before the series exists."""
        index = bisect.bisect_right(self.times, time)
        return self.totals[index - 1] if index else None


@dataclass
class ServerCounters:
    """Every counter series of one model server, across the versions it served."""

    model: str
    task: str
    series: dict[tuple[str, str], CounterSeries] = field(default_factory=dict)

    def _series(self, name: str, version: str) -> CounterSeries:
        key = (name, version)
        if key not in self.series:
            self.series[key] = CounterSeries(name, self.model, version)
        return self.series[key]

    def predicted(self, time: float, version: str, rows: int) -> None:
        self._series(PREDICTIONS, version).inc(time, rows)

    def labelled(self, time: float, version: str, label: Any, prediction: Any) -> None:
        """One label joined to the prediction `version` made, as app._count counts it."""
        self._series(FEEDBACK, version).inc(time, 1)
        if self.task == "regression":
            error = float(label) - float(prediction)
            self._series(FEEDBACK_ABS_ERROR, version).inc(time, abs(error))
            self._series(FEEDBACK_SQUARED_ERROR, version).inc(time, error * error)
        else:
            self._series(FEEDBACK_CORRECT, version).inc(time, 1 if label == prediction else 0)

    def samples(
        self, grid: list[float], live: set[str]
    ) -> list[tuple[CounterSeries, list[tuple[float, float]]]]:
        """Each series' value at each grid time, from its creation on, for the versions in `live` (those a
        server still exposes): a version no longer served and with no label on its way goes stale."""
        out = []
        for key in sorted(self.series):
            counter = self.series[key]
            if counter.version not in live:
                continue
            points = [(t, v) for t in grid if (v := counter.value_at(t)) is not None]
            if points:
                out.append((counter, points))
        return out


def otlp_payload(samples: list[tuple[CounterSeries, list[tuple[float, float]]]]) -> dict[str, Any]:
    """OTLP/JSON metrics: each counter a monotonic cumulative sum (Prometheus stores it as `<name>_total`)."""
    metrics: dict[str, list[dict[str, Any]]] = {}
    for counter, points in samples:
        attributes = [
            {"key": "model", "value": {"stringValue": counter.model}},
            {"key": "model_version", "value": {"stringValue": counter.version}},
            # The backtest serves one model at a time, as the reference server's champion does.
            {"key": "role", "value": {"stringValue": ROLE_CHAMPION}},
        ]
        start = str(_nanos(counter.created))
        metrics.setdefault(counter.name, []).extend(
            {
                "attributes": attributes,
                "startTimeUnixNano": start,
                "timeUnixNano": str(_nanos(time)),
                "asDouble": value,
            }
            for time, value in points
        )
    return {
        "resourceMetrics": [
            {
                "resource": {"attributes": []},
                "scopeMetrics": [
                    {
                        "scope": {"name": "feedbackloop-backtest"},
                        "metrics": [
                            {
                                "name": name,
                                "sum": {
                                    "aggregationTemporality": 2,  # cumulative
                                    "isMonotonic": True,
                                    "dataPoints": points,
                                },
                            }
                            for name, points in sorted(metrics.items())
                        ],
                    }
                ],
            }
        ]
    }


def _nanos(seconds: float) -> int:
    return round(seconds * 1000) * 1_000_000  # whole milliseconds: Prometheus keeps no finer


def scrape_grid(after: float, until: float, origin: float, interval: float) -> list[float]:
    """The scrape times in (after, until], on the grid origin + k * interval."""
    first = math.floor((after - origin) / interval) + 1
    times = []
    k = first
    while (t := origin + k * interval) <= until:
        times.append(t)
        k += 1
    return times
