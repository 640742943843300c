"""The abort annotation and suspend during an analysis, on the real control plane."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.api import ABORT_ANNOTATION, RETRAIN_REQUEST_ANNOTATION
from harness import wait_until
from loop_scenario import LOOP, Scenario, served, spec_for, trainer_report, wait_status, write_candidate
from operator_process import OperatorProcess


def analyzing_v2(scenario: Scenario, store: ArtifactStore, **changes: Any) -> None:
    """v2 retrained, validated, rolled out and now under analysis."""
    uri = write_candidate(store, scenario.namespace, "v2", accuracy=0.93)
    spec = spec_for(scenario, **{"retrain.podAnnotations": trainer_report(store, uri), **changes})
    scenario.apply_loop(spec, annotations={RETRAIN_REQUEST_ANNOTATION: "go"})
    wait_status(scenario, lambda s: s.get("rollout", {}).get("phase") == "Analyzing", timeout=60)


def test_abort_mid_analysis_serves_the_exact_previous_env_again(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess], store: ArtifactStore
) -> None:
    original = served(scenario)
    start_operator()
    # Ten measurements 10s apart: a healthy v2 would still be under analysis when the abort lands.
    analyzing_v2(scenario, store, **{"rollout.analysis.count": 10})

    scenario.kubectl("annotate", "fbl", LOOP, f"{ABORT_ANNOTATION}=stop-1")
    degraded = scenario.wait_condition("Degraded", "True", "Aborted", timeout=15)
    assert degraded["message"] == f"v2: aborted by {ABORT_ANNOTATION}='stop-1' while Analyzing"
    status = wait_status(scenario, lambda s: "rollout" not in s, timeout=30)
    assert served(scenario) == original
    rolled_out = scenario.condition("RolledOut")
    assert (rolled_out["status"], rolled_out["reason"]) == ("False", "RolledBack")
    assert status["handledAbortRequest"] == "stop-1"
    assert status["currentModel"]["version"] == "v1"
    assert "v2" not in status.get("rejectedVersions", [])
    assert next(e for e in status["history"] if e["version"] == "v2")["outcome"] == "Aborted"
    aborted = [e for e in scenario.events() if e["reason"] == "Aborted"]
    assert [(e["type"], e["message"]) for e in aborted] == [
        ("Warning", f"Degraded=True: {degraded['message']}")
    ]

    # Nothing is in flight now: a new abort is recorded and answered, and changes nothing.
    scenario.kubectl("annotate", "fbl", LOOP, f"{ABORT_ANNOTATION}=stop-2", "--overwrite")
    wait_status(scenario, lambda s: s.get("handledAbortRequest") == "stop-2", timeout=15)
    ignored = wait_until_event(scenario, "AbortIgnored")
    assert ignored["message"] == f"{ABORT_ANNOTATION}='stop-2': no rollout in flight, nothing to abort"
    assert served(scenario) == original


def test_suspend_during_analysis_lets_the_analysis_decide(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess], store: ArtifactStore
) -> None:
    start_operator()
    analyzing_v2(scenario, store)
    scenario.kubectl("patch", "fbl", LOOP, "--type=merge", "-p", '{"spec": {"suspend": true}}')

    status = wait_status(scenario, lambda s: s.get("currentModel", {}).get("version") == "v2", timeout=45)
    assert "rollout" not in status
    assert status["phase"] == "Suspended"
    assert scenario.condition("RolledOut")["reason"] == "AnalysisSuccessful"


def wait_until_event(scenario: Scenario, reason: str) -> dict[str, Any]:
    events = wait_until(scenario.events, lambda found: any(e["reason"] == reason for e in found), timeout=15)
    return next(e for e in events if e["reason"] == reason)
