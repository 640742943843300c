"""Shards: operator processes each owning the loops their FBL_SHARD_SELECTOR matches (real API server)."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable

from harness import wait_until
from loop_scenario import Scenario, loop_spec, wait_status
from operator_process import OperatorProcess

SHARD_LABEL = "feedbackloop.dev/shard"


def owned(operator: OperatorProcess, namespace: str) -> set[str]:
    """The loops whose readiness this operator publishes: the ones it reconciles."""
    body = urllib.request.urlopen(operator.metrics_url, timeout=5).read().decode()  # noqa: S310 - loopback
    pattern = rf'^feedbackloop_loop_ready\{{loop="([^"]+)",namespace="{namespace}",'
    return set(re.findall(pattern, body, re.MULTILINE))


def test_each_shard_reconciles_only_its_loops_and_a_relabelled_loop_moves(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess]
) -> None:
    shard_a = start_operator(FBL_SHARD_SELECTOR=f"{SHARD_LABEL}=a")
    shard_b = start_operator(FBL_SHARD_SELECTOR=f"{SHARD_LABEL}!=a")
    for name, shard in (("one", "a"), ("two", "b"), ("three", "")):
        labels = {SHARD_LABEL: shard} if shard else {}
        scenario.apply_loop(loop_spec(scenario.model), name=name, labels=labels)
    for name in ("one", "two", "three"):
        wait_status(scenario, lambda s: s.get("observedGeneration") == 1, name=name)
    assert owned(shard_a, scenario.namespace) == {"one"}
    assert owned(shard_b, scenario.namespace) == {"two", "three"}

    scenario.kubectl("label", "fbl", "one", f"{SHARD_LABEL}=b", "--overwrite")
    moved = wait_until(
        lambda: (owned(shard_a, scenario.namespace), owned(shard_b, scenario.namespace)),
        lambda got: got == (set(), {"one", "two", "three"}),
        timeout=30,
        interval=0.5,
    )
    assert moved == (set(), {"one", "two", "three"})
