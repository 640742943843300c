"""The local pod runner's kubelet rules (tests/cluster/kubelet_rules.py): no process, no API server."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kubelet_rules as rules
import pytest
from kubelet_rules import ContainerConfigError, ContainerView, ProbeTracker

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:01:00Z"


def view(
    name: str = "main",
    *,
    done: bool = False,
    exit_code: int | None = None,
    started: bool = True,
    ready: bool = True,
) -> ContainerView:
    status = rules.container_status(
        {"name": name, "image": "img"},
        restart_count=0,
        started=started and not done,
        ready=ready,
        state={"running": {"startedAt": NOW}},
        last_state={},
        pid=None,
    )
    return ContainerView(name, done, exit_code, started, ready, status)


def pod(**spec: Any) -> dict[str, Any]:
    metadata = {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "a"}, "annotations": {}}
    return {"metadata": metadata, "spec": {"containers": [{"name": "main"}], **spec}, "status": {}}


def conditions(status: Mapping[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


# --------------------------------------------------------------------------------------------- exits
@pytest.mark.parametrize(("returncode", "exit_code"), [(0, 0), (3, 3), (-9, 137), (-15, 143)])
def test_a_signal_is_reported_as_128_plus_its_number(returncode: int, exit_code: int) -> None:
    assert rules.exit_code_of(returncode) == exit_code


@pytest.mark.parametrize(
    ("policy", "init", "exit_code", "restarts"),
    [
        ("Always", False, 0, True),
        ("Always", False, 1, True),
        (None, False, 0, True),
        ("OnFailure", False, 0, False),
        ("OnFailure", False, 1, True),
        ("Never", False, 1, False),
        ("Never", False, 0, False),
        ("Always", True, 0, False),
        ("Always", True, 1, True),
        ("OnFailure", True, 2, True),
        ("Never", True, 1, False),
    ],
)
def test_restart_policy(policy: str | None, init: bool, exit_code: int, restarts: bool) -> None:
    assert rules.restart_wanted(policy, init, exit_code) is restarts


def test_back_off_doubles_from_half_a_second_and_caps_at_ten() -> None:
    streak, delays = 0, []
    for _ in range(7):
        streak, delay = rules.next_back_off(streak, ran_seconds=1.0)
        delays.append(delay)

    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert streak == 7


def test_back_off_starts_over_after_a_run_of_ten_seconds() -> None:
    assert rules.next_back_off(6, ran_seconds=10.0) == (0, 0.5)
    assert rules.next_back_off(6, ran_seconds=9.9) == (7, 10.0)


def test_a_restarted_container_waits_in_crash_loop_back_off_with_its_exit_as_last_state() -> None:
    terminated = rules.terminated_state(1, NOW, LATER, "local://42", "boom")

    outcome = rules.after_exit(
        container="main",
        pod="p",
        init=False,
        restart_policy="Always",
        exit_code=1,
        terminated=terminated,
        allow_restart=True,
        ran_seconds=0.2,
        crash_streak=1,
    )

    assert not outcome.done
    assert outcome.delay == 1.0
    assert outcome.crash_streak == 2
    assert outcome.last_state == {"terminated": terminated}
    assert outcome.state == {
        "waiting": {
            "reason": "CrashLoopBackOff",
            "message": "back-off 1s restarting failed container=main pod=p",
        }
    }


def test_a_start_error_waits_as_run_container_error() -> None:
    terminated = rules.start_error_state('exec: "nope": executable file not found in $PATH', NOW)

    outcome = rules.after_exit(
        container="main",
        pod="p",
        init=False,
        restart_policy="OnFailure",
        exit_code=terminated["exitCode"],
        terminated=terminated,
        allow_restart=True,
        ran_seconds=0.0,
        crash_streak=0,
    )

    assert terminated == {
        "exitCode": 128,
        "reason": "StartError",
        "message": 'exec: "nope": executable file not found in $PATH',
        "startedAt": NOW,
        "finishedAt": NOW,
    }
    assert outcome.state["waiting"]["reason"] == "RunContainerError"
    assert outcome.delay == 0.5


@pytest.mark.parametrize(("policy", "allow_restart"), [("Never", True), ("Always", False)])
def test_an_exit_without_restart_is_final_and_keeps_the_last_state(policy: str, allow_restart: bool) -> None:
    terminated = rules.terminated_state(0, NOW, LATER, "local://7", "")

    outcome = rules.after_exit(
        container="main",
        pod="p",
        init=False,
        restart_policy=policy,
        exit_code=0,
        terminated=terminated,
        allow_restart=allow_restart,
        ran_seconds=3.0,
        crash_streak=4,
    )

    assert outcome == rules.AfterExit(True, {"terminated": terminated}, None, 4, None)


def test_terminated_state_reasons_and_message() -> None:
    completed = rules.terminated_state(0, NOW, LATER, "local://1", "")
    # No OOMKilled here: the runner sets no memory limit, so 137 is a plain Error.
    killed = rules.terminated_state(137, NOW, LATER, "local://1", "bye")

    assert completed == {
        "exitCode": 0,
        "reason": "Completed",
        "startedAt": NOW,
        "finishedAt": LATER,
        "containerID": "local://1",
    }
    assert (killed["reason"], killed["message"]) == ("Error", "bye")


def test_restart_count_grows_at_each_start_after_a_termination() -> None:
    assert rules.restart_count_at_start(0, terminations=0) == 0
    assert rules.restart_count_at_start(0, terminations=1) == 1
    assert rules.restart_count_at_start(4, terminations=5) == 5


@pytest.mark.parametrize(
    ("message", "policy", "exit_code", "falls_back"),
    [
        ("", "FallbackToLogsOnError", 1, True),
        (" \n", "FallbackToLogsOnError", 2, True),
        ("written", "FallbackToLogsOnError", 1, False),
        ("", "FallbackToLogsOnError", 0, False),
        ("", "File", 1, False),
        ("", None, 1, False),
    ],
)
def test_termination_message_falls_back_to_logs_only_for_an_empty_message_of_a_failure(
    message: str, policy: str | None, exit_code: int, falls_back: bool
) -> None:
    assert rules.falls_back_to_logs(message, policy, exit_code) is falls_back


# ------------------------------------------------------------------------------------------- phase and status
@pytest.mark.parametrize(
    ("init", "main", "phase"),
    [
        ([], [view(started=False)], "Pending"),
        ([], [view()], "Running"),
        ([], [view(done=True, exit_code=0)], "Succeeded"),
        ([], [view(done=True, exit_code=1)], "Failed"),
        ([], [view("a", done=True, exit_code=0), view("b")], "Running"),
        ([], [view("a", done=True, exit_code=0), view("b", done=True, exit_code=2)], "Failed"),
        ([view("i", done=False)], [view(started=False)], "Pending"),
        ([view("i", done=True, exit_code=1)], [view(started=False)], "Failed"),
        ([view("i", done=True, exit_code=0)], [view()], "Running"),
    ],
)
def test_pod_phase(init: list[ContainerView], main: list[ContainerView], phase: str) -> None:
    assert rules.pod_phase(init, main) == phase


def test_init_containers_run_one_at_a_time_and_a_failed_one_stops_the_pod() -> None:
    first, second, main = view("i1"), view("i2"), view("main")
    done_first = view("i1", done=True, exit_code=0)
    failed_first = view("i1", done=True, exit_code=1)

    assert rules.runnable([first, second], [main]) == [first]
    assert rules.runnable([done_first, second], [main]) == [second]
    assert rules.runnable([failed_first, second], [main]) == []
    assert rules.runnable([], [main]) == [main]


def test_container_status_shape() -> None:
    status = rules.container_status(
        {"name": "main", "image": "local.invalid/x:1"},
        restart_count=2,
        started=True,
        ready=False,
        state={"running": {"startedAt": NOW}},
        last_state={"terminated": {"exitCode": 1}},
        pid=99,
    )

    assert status == {
        "name": "main",
        "image": "local.invalid/x:1",
        "imageID": "",
        "restartCount": 2,
        "started": True,
        "ready": False,
        "state": {"waiting": None, "running": {"startedAt": NOW}, "terminated": None},
        "lastState": {"terminated": {"exitCode": 1}},
        "containerID": "local://99",
    }


@pytest.mark.parametrize(
    ("init", "succeeded", "running", "startup_passed", "readiness", "ready"),
    [
        (True, True, False, False, None, True),
        (True, False, True, True, True, False),
        (False, False, True, True, None, True),
        (False, False, True, True, False, False),
        (False, False, True, False, True, False),
        (False, True, False, True, None, False),
    ],
)
def test_container_readiness(
    init: bool, succeeded: bool, running: bool, startup_passed: bool, readiness: bool | None, ready: bool
) -> None:
    assert rules.container_ready(init, succeeded, running, startup_passed, readiness) is ready


def test_a_running_ready_pod_reports_every_condition_true_and_its_address() -> None:
    computed = rules.pod_status(
        pod(),
        [],
        [view()],
        terminal=False,
        lost_message=None,
        pod_ip="127.0.3.4",
        start_time=NOW,
        transitions={},
        now=NOW,
    )

    status = computed.status
    assert status["phase"] == "Running"
    assert {c["status"] for c in status["conditions"]} == {"True"}
    assert [c["type"] for c in status["conditions"]] == [
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "Ready",
        "PodScheduled",
    ]
    assert (status["podIP"], status["podIPs"]) == ("127.0.3.4", [{"ip": "127.0.3.4"}])
    assert (status["hostIP"], status["startTime"]) == ("127.0.0.1", NOW)
    assert "initContainerStatuses" not in status
    assert not computed.terminal


def test_a_condition_keeps_its_transition_time_until_its_status_changes() -> None:
    args: dict[str, Any] = {"terminal": False, "lost_message": None, "pod_ip": None, "start_time": NOW}
    first = rules.pod_status(pod(), [], [view(ready=False)], transitions={}, now=NOW, **args)
    same = rules.pod_status(pod(), [], [view(ready=False)], transitions=first.transitions, now=LATER, **args)
    moved = rules.pod_status(pod(), [], [view()], transitions=same.transitions, now=LATER, **args)

    def ready_since(computed: rules.PodStatus) -> str:
        return str(
            next(c["lastTransitionTime"] for c in computed.status["conditions"] if c["type"] == "Ready")
        )

    assert (ready_since(first), ready_since(same), ready_since(moved)) == (NOW, NOW, LATER)
    assert conditions(same.status)["Ready"] == ("False", "ContainersNotReady")
    assert next(c for c in same.status["conditions"] if c["type"] == "Ready")["message"] == (
        "containers with unready status: [main]"
    )


def test_a_succeeded_pod_is_terminal_and_not_ready_as_completed() -> None:
    computed = rules.pod_status(
        pod(),
        [],
        [view(done=True, exit_code=0, ready=False)],
        terminal=False,
        lost_message=None,
        pod_ip="127.0.3.4",
        start_time=NOW,
        transitions={},
        now=NOW,
    )

    assert computed.status["phase"] == "Succeeded"
    assert computed.terminal
    found = conditions(computed.status)
    assert found["PodReadyToStartContainers"] == ("False", None)
    assert found["ContainersReady"] == ("False", "PodCompleted")
    assert found["Ready"] == ("False", "PodCompleted")


def test_incomplete_init_containers_leave_the_pod_uninitialized() -> None:
    computed = rules.pod_status(
        pod(),
        [view("setup")],
        [view(started=False, ready=False)],
        terminal=False,
        lost_message=None,
        pod_ip=None,
        start_time=NOW,
        transitions={},
        now=NOW,
    )

    initialized = next(c for c in computed.status["conditions"] if c["type"] == "Initialized")
    assert computed.status["phase"] == "Pending"
    assert (initialized["status"], initialized["reason"]) == ("False", "ContainersNotInitialized")
    assert initialized["message"] == "containers with incomplete status: [setup]"
    assert [s["name"] for s in computed.status["initContainerStatuses"]] == ["setup"]
    assert "podIP" not in computed.status


def test_a_readiness_gate_not_true_keeps_the_pod_unready() -> None:
    gated = pod(readinessGates=[{"conditionType": "example.com/gate"}])
    args: dict[str, Any] = {"terminal": False, "lost_message": None, "pod_ip": None, "start_time": NOW}
    closed = rules.pod_status(gated, [], [view()], transitions={}, now=NOW, **args)
    gated["status"] = {"conditions": [{"type": "example.com/gate", "status": "True"}], "startTime": LATER}
    opened = rules.pod_status(gated, [], [view()], transitions={}, now=NOW, **args)

    assert conditions(closed.status)["ContainersReady"] == ("True", None)
    assert conditions(closed.status)["Ready"] == ("False", "ReadinessGatesNotReady")
    assert conditions(opened.status)["Ready"] == ("True", None)
    assert opened.status["startTime"] == LATER


def test_a_lost_pod_is_failed_with_the_runner_restarted_reason() -> None:
    computed = rules.pod_status(
        pod(),
        [],
        [view(done=True, exit_code=137, ready=False)],
        terminal=True,
        lost_message="lost",
        pod_ip="127.0.3.4",
        start_time=NOW,
        transitions={},
        now=NOW,
    )

    assert (computed.status["phase"], computed.status["reason"]) == ("Failed", "RunnerRestarted")
    assert computed.status["message"] == "lost"


def test_containers_of_a_lost_pod_keep_a_final_state_or_become_status_unknown() -> None:
    status = {
        "initContainerStatuses": [
            {"name": "setup", "containerID": "local://5", "state": {"terminated": {"exitCode": 0}}}
        ],
        "containerStatuses": [
            {"name": "main", "containerID": "local://6", "restartCount": 3, "state": {"running": {}}}
        ],
    }

    lost = rules.lost_containers(status, ["setup", "main", "never-seen"], NOW)

    assert rules.previous_container_ids(status) == ["local://5", "local://6"]
    assert lost["setup"] == rules.LostContainer(0, 0, {"terminated": {"exitCode": 0}})
    assert (lost["main"].restart_count, lost["main"].exit_code) == (3, 137)
    assert lost["main"].state["terminated"]["reason"] == "ContainerStatusUnknown"
    assert lost["main"].state["terminated"]["finishedAt"] == NOW
    assert lost["never-seen"].exit_code == 137


# --------------------------------------------------------------------------------------------- probes
def test_probe_thresholds_and_period() -> None:
    tracker = ProbeTracker.create(
        {"initialDelaySeconds": 5, "periodSeconds": 0.2}, started=100.0, initial=True
    )

    assert not tracker.due(104.9)
    assert tracker.due(105.0)
    tracker.record(False, 105.0)
    tracker.record(False, 106.0)
    assert (tracker.result, tracker.failed, tracker.next_due) == (True, False, 107.0)
    tracker.record(False, 107.0)
    assert (tracker.result, tracker.failed) == (False, True)
    tracker.record(True, 108.0)
    assert (tracker.result, tracker.failed) == (True, False)


def test_probes_start_unready_except_liveness_and_init_containers_have_none() -> None:
    spec = {"name": "main", "readinessProbe": {"periodSeconds": 1}, "livenessProbe": {"periodSeconds": 3}}

    trackers = rules.probe_trackers(spec, init=False, clock=10.0)

    assert {kind: t.result for kind, t in trackers.items()} == {"readiness": False, "liveness": True}
    assert rules.probe_trackers(spec, init=True, clock=10.0) == {}


def test_a_named_port_resolves_through_the_container_spec() -> None:
    container = {"name": "main", "ports": [{"name": "http", "containerPort": 8080}]}

    assert rules.resolve_port("http", container) == 8080
    assert rules.resolve_port("9090", container) == 9090
    with pytest.raises(ValueError, match="no port named 'grpc'"):
        rules.resolve_port("grpc", container)


# --------------------------------------------------------------------------------------------- grace periods
def test_grace_periods() -> None:
    assert (
        rules.probe_kill_grace({"terminationGracePeriodSeconds": 7}, {"terminationGracePeriodSeconds": 60})
        == 7
    )
    assert rules.probe_kill_grace({}, {"terminationGracePeriodSeconds": 60}) == 60
    assert rules.probe_kill_grace({}, {}) == 30
    assert rules.probe_kill_grace({}, {"terminationGracePeriodSeconds": 0}) == 2
    assert rules.deletion_grace({"metadata": {"deletionGracePeriodSeconds": 0}, "spec": {}}) == 0
    assert rules.deletion_grace({"metadata": {}, "spec": {"terminationGracePeriodSeconds": 12}}) == 12
    assert rules.deletion_grace({"metadata": {}, "spec": {}}) == 30
    assert rules.sigterm_window(10, 3.5) == 6.5
    assert rules.sigterm_window(10, 9.5) == 2
    assert rules.runs_pre_stop({"sleep": {"seconds": 1}}, 5)
    assert not rules.runs_pre_stop({"sleep": {"seconds": 1}}, 0)
    assert not rules.runs_pre_stop(None, 5)


# --------------------------------------------------------------------------------------------- environment
def test_the_runner_environment_drops_credentials_and_project_settings() -> None:
    environ = {
        "PATH": "/bin",
        "KUBECONFIG": "k",
        "FBL_X": "1",
        "AWS_SECRET_ACCESS_KEY": "s",
        "MODEL_URI": "m",
    }

    assert rules.runner_env(environ) == {"PATH": "/bin"}


def test_container_env_resolves_each_kind_of_reference() -> None:
    sources = {
        ("Secret", "creds"): {"token": "t0k", "bad key": "x"},
        ("ConfigMap", "cfg"): {"mode": "fast"},
    }
    asked: list[tuple[str, str]] = []

    def lookup(kind: str, name: str) -> Mapping[str, str] | None:
        asked.append((kind, name))
        return sources.get((kind, name))

    container = {
        "name": "main",
        "resources": {"limits": {"memory": "1Gi"}, "requests": {"cpu": "250m"}},
        "envFrom": [
            {"secretRef": {"name": "creds"}, "prefix": "S_"},
            {"configMapRef": {"name": "absent", "optional": True}},
        ],
        "env": [
            {"name": "PLAIN", "value": "v-$(S_token)-$$(S_token)-$(UNSET)"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
            {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "no", "optional": True}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {
                "name": "MEM",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
            {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
        ],
    }

    env = rules.container_env(pod(), container, "127.0.9.9", "local-1", lookup)

    assert env == {
        "S_token": "t0k",
        "PLAIN": "v-t0k-$(S_token)-$(UNSET)",
        "TOKEN": "t0k",
        "MODE": "fast",
        "IP": "127.0.9.9",
        "APP": "a",
        "NODE": "local-1",
        "MEM": "1024",
        "CPU": "250",
        "CPUS": "8",
    }
    assert sorted(asked) == [("ConfigMap", "absent"), ("ConfigMap", "cfg"), ("Secret", "creds")]


@pytest.mark.parametrize(
    ("item", "error"),
    [
        ({"envFrom": [{"secretRef": {"name": "gone"}}]}, 'secret "gone" not found'),
        (
            {"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "no"}}}]},
            "couldn't find key no in ConfigMap ns/cfg",
        ),
        (
            {"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}}]},
            "unsupported fieldPath status.phase",
        ),
    ],
)
def test_a_missing_required_reference_is_a_config_error(item: dict[str, Any], error: str) -> None:
    def lookup(kind: str, name: str) -> Mapping[str, str] | None:
        return {"mode": "fast"} if (kind, name) == ("ConfigMap", "cfg") else None

    with pytest.raises(ContainerConfigError, match=error):
        rules.container_env(pod(), {"name": "main", **item}, "127.0.9.9", "local-1", lookup)


def test_launch_rewrites_the_termination_message_path_and_puts_the_project_python_first() -> None:
    spec = {
        "name": "main",
        "command": ["python", "-c", "$(SCRIPT)"],
        "args": ["/dev/termination-log", "$(OUT)"],
    }
    defined = {"SCRIPT": "print(1)", "OUT": "/dev/termination-log", "HOME": "/pod"}

    plan = rules.launch(
        spec, defined, "/state/main.log", {"HOME": "/root", "X": "1"}, "p", "/venv/bin", "/bin"
    )

    assert plan.argv == ["python", "-c", "print(1)", "/state/main.log", "/state/main.log"]
    assert plan.path == "/venv/bin:/bin"
    assert plan.env == {
        "HOME": "/pod",
        "X": "1",
        "HOSTNAME": "p",
        "SCRIPT": "print(1)",
        "OUT": "/state/main.log",
        "PATH": "/venv/bin:/bin",
    }


def test_launch_honours_a_custom_message_path_and_a_defined_path() -> None:
    spec = {
        "name": "main",
        "command": ["run", "/var/run/result"],
        "terminationMessagePath": "/var/run/result",
    }

    plan = rules.launch(spec, {"PATH": "/opt/bin"}, "/state/m", {}, "h", "/venv/bin", "/bin")

    assert plan.argv == ["run", "/state/m"]
    assert plan.path == "/venv/bin:/opt/bin"


# -------------------------------------------------------------------------------------------- node and events
def test_node_status_is_ready_on_the_loopback_address() -> None:
    status = rules.node_status("local-1", LATER, NOW, "6.1.0")

    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["lastHeartbeatTime"], ready["lastTransitionTime"]) == ("True", LATER, NOW)
    assert status["addresses"] == [
        {"type": "InternalIP", "address": "127.0.0.1"},
        {"type": "Hostname", "address": "local-1"},
    ]
    assert status["allocatable"] == {"cpu": "8", "memory": "16Gi", "pods": "50"}
    assert status["nodeInfo"]["kernelVersion"] == "6.1.0"


def test_a_warning_event_names_its_container_field_path() -> None:
    event = rules.warning_event(
        namespace="ns",
        pod="p",
        uid="u-1",
        container="setup",
        init=True,
        reason="FailedPreStopHook",
        message="PreStopHook failed",
        node_name="local-1",
        now=NOW,
    )

    assert event["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": "ns",
        "name": "p",
        "uid": "u-1",
        "fieldPath": "spec.initContainers{setup}",
    }
    assert (event["type"], event["source"], event["metadata"]) == (
        "Warning",
        {"component": "kubelet", "host": "local-1"},
        {"generateName": "p."},
    )
