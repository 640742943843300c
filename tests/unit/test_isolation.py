"""Isolation from a failing Prometheus: the circuit breaker's states, the condition an open circuit gives
every loop on its URL, the reconcile's time budget reaching the adapter, and the settings for both."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta

import pytest

from core_inputs import POLICY, T0, healthy_dependencies, loop_state, spec_dict
from feedbackloop.api import ConditionType
from feedbackloop.config import ConfigError, load_config
from feedbackloop.core.circuit import Circuit, CircuitState, Verdict
from feedbackloop.core.decide import decide
from feedbackloop.core.observations import PROBE_QUERY, Probe, QueryOutcome, QueryResult
from reconcile_fakes import World

COOL_DOWN = timedelta(seconds=30)


def failed_times(circuit: Circuit, times: int) -> Circuit:
    for _ in range(times):
        circuit = circuit.failed(T0, "no answer within 5s")
    return circuit


def test_the_circuit_opens_after_threshold_failures_in_a_row_and_refuses_until_the_cool_down_ends() -> None:
    circuit = failed_times(Circuit(3, COOL_DOWN), 2)
    assert circuit.state is CircuitState.CLOSED
    assert circuit.admit(T0)[1] is True

    circuit = failed_times(circuit, 1)
    assert (circuit.state, circuit.retry_at) == (CircuitState.OPEN, T0 + COOL_DOWN)
    assert circuit.admit(T0 + COOL_DOWN - timedelta(seconds=1)) == (circuit, False)
    assert circuit.refusal == (
        "circuit open after 3 consecutive failures (last: no answer within 5s);"
        " next try at 2026-11-28T12:00:30Z"
    )


def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    circuit = failed_times(Circuit(3, COOL_DOWN), 2).succeeded()
    circuit = failed_times(circuit, 2)
    assert (circuit.state, circuit.failures) == (CircuitState.CLOSED, 2)


def test_after_the_cool_down_exactly_one_trial_goes_and_its_outcome_closes_or_reopens() -> None:
    opened = failed_times(Circuit(3, COOL_DOWN), 3)
    later = T0 + COOL_DOWN
    trial, admitted = opened.admit(later)
    assert (trial.state, admitted) == (CircuitState.HALF_OPEN, True)
    assert trial.admit(later)[1] is False  # only one trial at a time

    assert trial.record(Verdict.SUCCEEDED, later).state is CircuitState.CLOSED
    reopened = trial.record(Verdict.FAILED, later, "connection refused")
    assert (reopened.state, reopened.retry_at, reopened.failures) == (CircuitState.OPEN, later + COOL_DOWN, 4)
    assert "last: connection refused" in reopened.refusal


def test_an_inconclusive_trial_hands_the_trial_to_the_next_request() -> None:
    trial, _ = failed_times(Circuit(3, COOL_DOWN), 3).admit(T0 + COOL_DOWN)
    after = trial.record(Verdict.INCONCLUSIVE, T0 + COOL_DOWN)
    assert after.state is CircuitState.OPEN
    assert after.admit(T0 + COOL_DOWN)[1] is True


def test_a_late_failure_while_open_keeps_the_refusal_unchanged() -> None:
    opened = failed_times(Circuit(3, COOL_DOWN), 3)
    assert opened.failed(T0 + timedelta(seconds=5), "later").refusal == opened.refusal


def test_an_open_circuit_is_its_own_ready_reason_with_the_retry_time() -> None:
    refusal = failed_times(Circuit(3, COOL_DOWN), 3).refusal
    probe = Probe.of_query(QueryResult(QueryOutcome.CIRCUIT_OPEN, message=refusal))
    decision = decide(loop_state(), healthy_dependencies(prometheus=probe), POLICY, T0)
    ready = decision.status.condition(ConditionType.READY)
    assert ready is not None
    assert (ready.status, ready.reason) == ("False", "PrometheusCircuitOpen")
    assert "next try at 2026-11-28T12:00:30Z" in ready.message


def test_a_failed_probe_that_is_not_a_circuit_stays_unreachable() -> None:
    probe = Probe.of_query(QueryResult(QueryOutcome.TIMEOUT, message="no answer within 5s"))
    assert (probe.ok, probe.circuit_open, probe.message) == (False, False, "no answer within 5s")
    assert Probe.of_query(QueryResult.of(1)) == Probe(ok=True)


class RecordingPrometheus:
    """Answers every query with a value and records each batch and its deadline."""

    def __init__(self) -> None:
        self.batches: list[tuple[tuple[str, ...], float]] = []

    def query_all(
        self, url: str, queries: Sequence[str], timeout_seconds: float, deadline: float
    ) -> tuple[QueryResult, ...]:
        self.batches.append((tuple(queries), deadline))
        return tuple(QueryResult.of(500 if "samples" in query else 0.9) for query in queries)


def test_one_reconcile_sends_its_queries_and_probe_as_one_batch_within_its_budget() -> None:
    world = World("churn", spec_dict(), T0)
    recording = RecordingPrometheus()
    world.reconciler.prometheus = recording
    world.reconciler.budget_seconds = 7
    started = time.monotonic()
    world.reconcile()
    [(queries, deadline)] = recording.batches
    assert len(queries) == 3 and queries[-1] == PROBE_QUERY
    assert started + 7 <= deadline <= time.monotonic() + 7


def test_config_defaults_and_bounds_of_the_isolation_settings() -> None:
    config = load_config({})
    assert (config.reconcile_budget_seconds, config.prometheus_failure_threshold) == (20, 3)
    assert (config.prometheus_cool_down_seconds, config.prometheus_concurrency) == (30, 4)
    assert load_config({"FBL_RECONCILE_BUDGET_SECONDS": "2.5"}).reconcile_budget_seconds == 2.5
    for name, value in [
        ("FBL_RECONCILE_BUDGET_SECONDS", "0"),
        ("FBL_RECONCILE_BUDGET_SECONDS", "nan"),
        ("FBL_RECONCILE_BUDGET_SECONDS", "soon"),
        ("FBL_PROMETHEUS_FAILURE_THRESHOLD", "0"),
        ("FBL_PROMETHEUS_COOL_DOWN_SECONDS", "7200"),
        ("FBL_PROMETHEUS_CONCURRENCY", "0"),
    ]:
        with pytest.raises(ConfigError, match=name):
            load_config({name: value})
