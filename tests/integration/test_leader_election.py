"""Two operator replicas on one Lease: one writes, the other stands by warm and takes over.

Lease timings are shortened (4s duration, 3s renew deadline, 0.5s retry) so a takeover takes seconds.
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from collections.abc import Callable

from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.api import ENV_MODEL_URI, RETRAIN_REQUEST_ANNOTATION
from harness import wait_until
from loop_scenario import LOOP, Scenario, served, spec_for, trainer_report, wait_status, write_candidate
from operator_process import OperatorProcess

LEASE = "feedbackloop-takeover"
FAST_LEASE = {
    "FBL_LEASE_NAME": LEASE,
    "FBL_LEASE_DURATION_SECONDS": "4",
    "FBL_LEASE_RENEW_DEADLINE_SECONDS": "3",
    "FBL_LEASE_RETRY_SECONDS": "0.5",
}


def holder(scenario: Scenario) -> str:
    lease = json.loads(scenario.kubectl("get", "lease", LEASE, "-o", "json").stdout)
    return str(lease["spec"].get("holderIdentity") or "")


def pid_of(identity: str) -> int | None:
    found = re.match(r"^.+_(\d+)_[0-9a-f]{8}$", identity)
    return int(found.group(1)) if found else None


def leader_and_standby(
    scenario: Scenario, operators: list[OperatorProcess]
) -> tuple[OperatorProcess, OperatorProcess]:
    by_pid = {operator.popen.pid: operator for operator in operators if operator.popen is not None}
    identity = wait_until(lambda: holder(scenario), lambda h: pid_of(h) in by_pid, timeout=30, interval=0.5)
    leader = by_pid[pid_of(identity) or 0]
    return leader, next(operator for operator in operators if operator is not leader)


def scrape(operator: OperatorProcess) -> str:
    return str(urllib.request.urlopen(operator.metrics_url, timeout=5).read().decode())  # noqa: S310 - loopback


def written(operator: OperatorProcess) -> float:
    found = re.search(r'^feedbackloop_status_writes_total\{result="written"\} (\S+)$', scrape(operator), re.M)
    return float(found.group(1)) if found else 0.0


def reconciles(operator: OperatorProcess) -> float:
    """Reconciles begun, whatever their outcome: a standby begins none."""
    pattern = r"^feedbackloop_reconcile_duration_seconds_count\{[^}]*\} (\S+)$"
    return sum(float(count) for count in re.findall(pattern, scrape(operator), re.M))


def test_the_standby_takes_over_a_rollout_when_the_leader_is_sigkilled(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess], store: ArtifactStore
) -> None:
    candidate = write_candidate(store, scenario.namespace, "v2", accuracy=0.93)
    operators = [start_operator(**FAST_LEASE), start_operator(**FAST_LEASE)]
    spec = spec_for(
        scenario,
        **{
            "retrain.podAnnotations": trainer_report(store, candidate),
            "rollout.analysis": {"interval": "10s", "count": 2, "failureLimit": 0, "inconclusiveLimit": 1},
        },
    )
    scenario.apply_loop(spec, annotations={RETRAIN_REQUEST_ANNOTATION: "go"})
    leader, standby = leader_and_standby(scenario, operators)
    wait_status(scenario, lambda s: s.get("handledRetrainRequest") == "go")
    # A warm standby: it watches and indexes, it neither reconciles nor writes.
    # The status write comes before the reconcile's duration is observed: wait for the count, not race it.
    assert wait_until(lambda: reconciles(leader), lambda count: count > 0, timeout=10) > 0
    assert (reconciles(standby), written(standby)) == (0.0, 0.0)

    wait_status(scenario, lambda s: s.get("rollout", {}).get("phase") in ("Progressing", "Analyzing"))
    leader.stop(signal.SIGKILL)
    killed_at = time.monotonic()

    taken = wait_until(lambda: holder(scenario), lambda h: pid_of(h) == standby.popen.pid, timeout=30)  # type: ignore[union-attr]
    assert pid_of(taken) == standby.popen.pid  # type: ignore[union-attr]
    took = time.monotonic() - killed_at
    assert took < 4 + 0.5 + 3  # duration + retry, and slack for this busy machine
    status = wait_status(scenario, lambda s: s.get("currentModel", {}).get("version") == "v2")
    assert "rollout" not in status
    assert scenario.job_names() == [f"{LOOP}-retrain-{status['retrainCount']}"]  # one Job for the retrain
    env, version = served(scenario)
    assert (env[ENV_MODEL_URI], version) == (status["currentModel"]["uri"], "v2")
    assert written(standby) > 0


def test_a_leader_cut_off_from_the_api_writes_nothing_once_another_holds_the_lease(
    scenario: Scenario, start_operator: Callable[..., OperatorProcess], store: ArtifactStore
) -> None:
    operators = [start_operator(**FAST_LEASE), start_operator(**FAST_LEASE)]
    scenario.apply_loop(spec_for(scenario))
    scenario.wait_condition("Ready", "True")
    leader, standby = leader_and_standby(scenario, operators)
    assert leader.popen is not None and standby.popen is not None
    frozen = (reconciles(leader), written(leader))
    leader.popen.send_signal(signal.SIGSTOP)  # frozen as by a partition: no renewals, no writes
    try:
        wait_until(lambda: holder(scenario), lambda h: pid_of(h) == standby.popen.pid, timeout=30)  # type: ignore[union-attr]
        before = written(standby)
        scenario.annotate_retrain("after-takeover")
    finally:
        leader.popen.send_signal(signal.SIGCONT)
    wait_status(scenario, lambda s: s.get("handledRetrainRequest") == "after-takeover")
    time.sleep(3)  # the old leader runs again, with its queue and its stale view of the loop
    assert (reconciles(leader), written(leader)) == frozen  # it knows it lost the Lease before acting
    assert written(standby) > before
    assert pid_of(holder(scenario)) == standby.popen.pid
