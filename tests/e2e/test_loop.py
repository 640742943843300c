"""The whole loop, shortened: drift → breach → one retrain Job → gates → Shadow stage → rollout → analysis;
then a candidate trained on inverted labels passes its gates and is refused by its Shadow stage. The same
scenario as `make demo` (tests/e2e/loop_demo.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import loop_demo
import pytest

pytestmark = pytest.mark.e2e


def job_trigger(job: dict[str, Any]) -> str:
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    return str(next(e["value"] for e in env if e["name"] == "FBL_TRIGGER"))


@pytest.mark.timeout(900)
def test_the_loop_closes_and_a_poisoned_candidate_is_refused(tmp_path: Path) -> None:
    result = loop_demo.run(loop_demo.E2E, tmp_path / "demo-out")
    summary, status = result.summary, result.loop["status"]

    # Accuracy recovered on the drifted concept, above the threshold and above v1's.
    assert summary["accuracy_before_drift"] > loop_demo.THRESHOLD
    assert summary["accuracy_after_drift_v1"] < loop_demo.THRESHOLD
    assert summary["accuracy_after_rollout"] > loop_demo.THRESHOLD
    assert summary["accuracy_after_rollout"] > summary["accuracy_after_drift_v1"]

    # Exactly one retrain Job per trigger: the breach, then the manual request.
    assert sorted(job_trigger(job) for job in result.jobs) == ["Breach", "Manual"]
    assert summary["retrains"] == 2

    # v2's artifacts verify byte for byte against its manifest.
    assert result.v2_check == "Verified"

    history = {entry["version"]: entry for entry in status["history"]}
    v2, v3 = history["v2"], history["v3"]
    assert (v2["trigger"], v2["outcome"]) == ("Breach", "RolledOut")
    assert (
        v2["startedAt"]
        <= v2["retrainedAt"]
        <= v2["validatedAt"]
        <= v2["rolloutStartedAt"]
        <= v2["rolledOutAt"]
    )
    assert (v3["trigger"], v3["outcome"]) == ("Manual", "Rejected")
    assert status["currentModel"]["version"] == "v2"
    assert status["rejectedVersions"] == ["v3"]

    # v2 won its Shadow stage on live labels before it replaced v1.
    assert v2["stage"].startswith("Shadow Win: accuracy"), v2
    # The candidate trained on inverted labels passed its offline gates (its holdout came from the same
    # feedback), and lost its Shadow stage on fresh labels: no user was ever served by it.
    assert (v3["gates"], v3["reason"]) == ("Passed", "StageLost"), v3
    assert v3["stage"].startswith("Shadow Lose: accuracy"), v3
    assert "rolloutStartedAt" not in v3
    assert result.deployment_version == "v2"

    reasons = {event["reason"] for event in result.events}
    expected = {
        "RetrainStarted",
        "GatesPassed",
        "StageStarted",
        "StageWon",
        "AnalysisSuccessful",
        "StageLost",
    }
    assert expected <= reasons, reasons

    # Two replicas behind round-robin, each label sent to a random one: every label joined, no request lost,
    # through a rollout of both pods.
    assert summary["replicas"] == 2
    assert summary["server_pods_used"] >= 4  # two v1 pods, then two v2 pods
    assert summary["traffic_errors"] == 0
    assert summary["unmatched_labels"] == 0
    assert summary["labels_joined"] == summary["labels_sent"] > 1000

    out = tmp_path / "demo-out"
    assert (out / "timeline.png").stat().st_size > 10_000
    assert summary["loop_closed"] is True
    assert {"v1", "v2", "v3"} <= set(result.reports)
    assert all(Path(path).exists() for path in result.reports.values())
