#!/usr/bin/env python3
"""Warm start time of the test cluster: median over N starts, each in a fresh directory.

Prints the time until the apiserver's /readyz answers ok and until every component is ready,
and the ratio between them (the rest of the stack's cost relative to the apiserver alone).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import harness


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    apiserver: list[float] = []
    everything: list[float] = []
    teardown: list[float] = []
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="fbl-bench-") as tmp:
            cluster = harness.Cluster.start(Path(tmp))
            apiserver.append(cluster.timings["apiserver_ready_s"])
            everything.append(cluster.timings["all_ready_s"])
            stop_started = time.monotonic()
            cluster.stop()
            teardown.append(time.monotonic() - stop_started)
        print(f"run {run}: apiserver /readyz {apiserver[-1]:.2f}s, all ready {everything[-1]:.2f}s, "
              f"stop {teardown[-1]:.2f}s")  # fmt: skip
    med_api, med_all = statistics.median(apiserver), statistics.median(everything)
    med_stop = statistics.median(teardown)
    print(
        f"median of {args.runs}: apiserver /readyz {med_api:.2f}s (min {min(apiserver):.2f}, "
        f"max {max(apiserver):.2f}); all components ready {med_all:.2f}s; stop {med_stop:.2f}s; "
        f"all/apiserver ratio {med_all / med_api:.2f}"
    )


if __name__ == "__main__":
    main()
