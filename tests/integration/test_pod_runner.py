"""The local pod runner against the real control plane: pods bound to its node really run as processes."""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import itertools
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from pod_runner import PodRunner

import harness
from harness import wait_until

pytestmark = pytest.mark.integration

RUNNER_SCRIPT = harness.HERE / "pod_runner.py"
IMAGE = "local.invalid/unused:1"
POD_IP_ENV = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
POD_NAME_ENV = {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
REPORTED_ENV = (
    "PLAIN", "TOKEN", "MODE", "COMBINED", "CFG_mode", "POD_IP", "POD_NAME", "POD_NAMESPACE",
    "POD_UID", "NODE_NAME", "HOST_IP", "OPTIONAL", "PODRUNNER_VISIBLE",
)  # fmt: skip
# Writes what the container sees to its termination message, as JSON.
REPORT_ENV = f"""
import json, os, sys
report = {{
    "env": {{name: os.environ.get(name) for name in {REPORTED_ENV!r}}},
    "argv": sys.argv[1:],
    "cwd": os.getcwd(),
    "message_path": os.environ["MESSAGE_PATH"],
    "leaked": sorted(k for k in os.environ if k == "KUBECONFIG" or k.startswith(("FBL_", "AWS_", "MODEL_"))),
}}
with open(os.environ["MESSAGE_PATH"], "w") as handle:
    handle.write(json.dumps(report))
"""
# An HTTP server on the pod's own address that, on SIGTERM, leaves a marker named after its pod.
TRAPPING_SERVER = """
import http.server, os, signal, sys
def stop(signum, frame):
    with open(os.path.join(os.environ["MARKER_DIR"], os.environ["POD_NAME"]), "w") as marker:
        marker.write(f"SIGTERM {os.getpid()}")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
address = (os.environ["POD_IP"], 8080)
http.server.ThreadingHTTPServer(address, http.server.SimpleHTTPRequestHandler).serve_forever()
"""
SLEEPER = "import time; time.sleep(600)"
# Appends the time to <OUT>/<NAME>.beats every 0.2 s and writes it to <OUT>/<NAME>.sigterm on SIGTERM, then
# exits (or, with KEEP_RUNNING, goes on until SIGKILL). With PORT it also serves HTTP on the pod's address and
# appends each request to <OUT>/<NAME>.requests as JSON.
WITNESS = """
import http.server, json, os, signal, sys, threading, time
out = os.path.join(os.environ["OUT"], os.environ["NAME"])
def on_sigterm(signum, frame):
    with open(out + ".sigterm", "w") as handle:
        handle.write(repr(time.time()))
    if not os.environ.get("KEEP_RUNNING"):
        sys.exit(0)
signal.signal(signal.SIGTERM, on_sigterm)
class Recorder(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        seen = {"path": self.path, "agent": self.headers["User-Agent"], "at": time.time()}
        with open(out + ".requests", "a") as handle:
            handle.write(json.dumps(seen) + "\\n")
        self.send_response(200)
        self.end_headers()
if os.environ.get("PORT"):
    server = http.server.ThreadingHTTPServer((os.environ["POD_IP"], int(os.environ["PORT"])), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
while True:
    with open(out + ".beats", "a") as handle:
        handle.write(f"{time.time()}\\n")
    time.sleep(0.2)
"""


# --------------------------------------------------------------------------------------------- helpers
def container(command: list[str], env: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    return {"name": "main", "image": IMAGE, "command": command, "env": env or [], **fields}


def pod_manifest(
    name: str, node: str, main: dict[str, Any], restart: str = "Never", **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 10,
            "containers": [main],
            **spec,
        },
    }


def read_pod(core_v1: client.CoreV1Api, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        response = core_v1.read_namespaced_pod(name, namespace, _preload_content=False)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    pod: dict[str, Any] = json.loads(response.data)
    return pod


def wait_pod(
    core_v1: client.CoreV1Api,
    namespace: str,
    name: str,
    done: Callable[[dict[str, Any]], bool],
    timeout: float = 60,
) -> dict[str, Any]:
    pod = wait_until(
        lambda: read_pod(core_v1, namespace, name), lambda p: p is not None and done(p), timeout, interval=0.5
    )
    assert pod is not None and done(pod), json.dumps(pod and pod.get("status"), indent=1)[:3000]
    return pod


def phase_is(*phases: str) -> Callable[[dict[str, Any]], bool]:
    return lambda pod: pod.get("status", {}).get("phase") in phases


def main_status(pod: dict[str, Any]) -> dict[str, Any]:
    statuses: list[dict[str, Any]] = pod.get("status", {}).get("containerStatuses") or []
    return statuses[0] if statuses else {}


def condition(pod: dict[str, Any], kind: str) -> dict[str, Any]:
    found = [c for c in pod.get("status", {}).get("conditions") or [] if c["type"] == kind]
    return found[0] if found else {}


def pid_of(pod: dict[str, Any]) -> int:
    container_id: str = main_status(pod)["containerID"]
    assert container_id.startswith("local://"), container_id
    return int(container_id.removeprefix("local://"))


def process_alive(pid: int) -> bool:
    """Alive and not a zombie waiting for a parent that is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def wait_gone(core_v1: client.CoreV1Api, namespace: str, name: str, timeout: float) -> None:
    pod = wait_until(lambda: read_pod(core_v1, namespace, name), lambda p: p is None, timeout, interval=0.5)
    assert pod is None, json.dumps(pod.get("status"), indent=1)[:2000]


def seconds(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def http_server(port_name: str = "http") -> dict[str, Any]:
    """`python -m http.server` on the pod's own address: `$(POD_IP)` expands from the fieldRef."""
    return container(
        ["python", "-m", "http.server", "--bind", "$(POD_IP)", "8080"],
        env=[POD_IP_ENV],
        ports=[{"name": port_name, "containerPort": 8080}],
    )


def witness(name: str, out: Path, pre_stop: dict[str, Any] | None = None, **env: str) -> dict[str, Any]:
    """A container running WITNESS, recording into `out` under its own name."""
    values = {"OUT": str(out), "NAME": name, **env}
    variables: list[dict[str, Any]] = [POD_IP_ENV, *({"name": k, "value": v} for k, v in values.items())]
    spec = container(["python", "-c", WITNESS], variables)
    spec["name"] = name
    if pre_stop is not None:
        spec["lifecycle"] = {"preStop": pre_stop}
    return spec


def start_witnesses(
    core_v1: client.CoreV1Api,
    namespace: str,
    node: str,
    name: str,
    out: Path,
    containers: list[dict[str, Any]],
) -> dict[str, Any]:
    """Runs the pod until every container has beaten once, so each has its SIGTERM handler in place."""
    manifest = pod_manifest(name, node, containers[0], restart="Always", containers=containers)
    core_v1.create_namespaced_pod(namespace, manifest)
    names = [c["name"] for c in containers]
    beating = wait_until(lambda: all((out / f"{n}.beats").exists() for n in names), bool, 30, interval=0.1)
    assert beating, f"{names} never started"
    return wait_pod(core_v1, namespace, name, lambda p: len(container_pids(p)) == len(names))


def container_pids(pod: dict[str, Any]) -> dict[str, int]:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return {
        s["name"]: int(s["containerID"].removeprefix("local://")) for s in statuses if "running" in s["state"]
    }


def sigterm_at(out: Path, name: str, timeout: float = 20) -> float:
    path = out / f"{name}.sigterm"
    text = wait_until(lambda: path.read_text() if path.exists() else "", bool, timeout, interval=0.1)
    assert text, f"{name} never got SIGTERM"
    return float(text)


def beats(out: Path, name: str) -> list[float]:
    return [float(line) for line in (out / f"{name}.beats").read_text().split()]


def death_times(pids: dict[str, int], timeout: float) -> dict[str, float]:
    """When each process was first seen gone, polled every 50 ms."""
    died: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(died) < len(pids) and time.monotonic() < deadline:
        died |= {
            name: time.time() for name, pid in pids.items() if name not in died and not process_alive(pid)
        }
        time.sleep(0.05)
    return died


def pod_dir_of(runner: PodRunner, namespace: str, name: str) -> Path:
    (found,) = (runner.state_dir / "pods").glob(f"{namespace}_{name}_*")
    return found


def force_delete_pods(core_v1: client.CoreV1Api, node: str) -> None:
    for pod in core_v1.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items:
        with contextlib.suppress(ApiException):
            core_v1.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)


@pytest.fixture(scope="module")
def runner(
    endpoints: harness.Endpoints, core_v1: client.CoreV1Api, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PodRunner]:
    node = f"local-{uuid.uuid4().hex[:8]}"
    pod_runner = PodRunner(endpoints.kubeconfig, node, tmp_path_factory.mktemp("pod-runner"))
    pod_runner.start()
    try:
        assert pod_runner.wait_schedulable(60), f"node {node} did not become schedulable"
        yield pod_runner
        # The namespaces of the tests are going away: let the runner finish their pods before it stops.
        selector = f"spec.nodeName={node}"
        wait_until(
            lambda: core_v1.list_pod_for_all_namespaces(field_selector=selector).items,
            lambda pods: not pods,
            timeout=45,
            interval=1,
        )
    finally:
        pod_runner.stop()
        force_delete_pods(core_v1, node)
        with contextlib.suppress(ApiException):
            core_v1.delete_node(node)


@pytest.fixture(scope="module")
def apps_v1(api_client: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(api_client)


@pytest.fixture(scope="module")
def batch_v1(api_client: client.ApiClient) -> client.BatchV1Api:
    return client.BatchV1Api(api_client)


# --------------------------------------------------------------------------------------------- env and exits
def test_env_resolves_values_secrets_config_maps_and_fields(
    runner: PodRunner, core_v1: client.CoreV1Api, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("KUBECONFIG", "FBL_LEAK_CHECK", "AWS_ACCESS_KEY_ID", "MODEL_URI"):
        monkeypatch.setenv(name, "must-not-reach-the-pod")
    monkeypatch.setenv("PODRUNNER_VISIBLE", "yes")
    core_v1.create_namespaced_secret(
        namespace, {"metadata": {"name": "creds"}, "data": {"token": base64.b64encode(b"s3cr3t").decode()}}
    )
    core_v1.create_namespaced_config_map(
        namespace, {"metadata": {"name": "settings"}, "data": {"mode": "fast"}}
    )
    env: list[dict[str, Any]] = [
        {"name": "PLAIN", "value": "plain value"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
        {"name": "COMBINED", "value": "$(PLAIN)/$(MODE)/$(UNDEFINED)"},
        POD_IP_ENV,
        POD_NAME_ENV,
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
        {
            "name": "OPTIONAL",
            "valueFrom": {"secretKeyRef": {"name": "creds", "key": "absent", "optional": True}},
        },
        {"name": "MESSAGE_PATH", "value": "/dev/termination-log"},
    ]
    main = container(
        ["python", "-c", REPORT_ENV, "$(POD_NAME)-$(MODE)", "$$(POD_NAME)"],
        env=env,
        envFrom=[{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
    )
    created = core_v1.create_namespaced_pod(namespace, pod_manifest("reporter", runner.node_name, main))

    pod = wait_pod(core_v1, namespace, "reporter", phase_is("Succeeded", "Failed"))

    status = pod["status"]
    terminated = main_status(pod)["state"]["terminated"]
    assert (status["phase"], terminated["exitCode"], terminated["reason"]) == ("Succeeded", 0, "Completed")
    pod_ip = ipaddress.ip_address(status["podIP"])
    assert pod_ip in ipaddress.ip_network("127.0.0.0/8") and str(pod_ip) != "127.0.0.1"
    assert status["podIPs"] == [{"ip": status["podIP"]}]
    assert status["hostIP"] == "127.0.0.1"
    report = json.loads(terminated["message"])
    assert report["env"] == {
        "PLAIN": "plain value",
        "TOKEN": "s3cr3t",
        "MODE": "fast",
        "COMBINED": "plain value/fast/$(UNDEFINED)",
        "CFG_mode": "fast",
        "POD_IP": status["podIP"],
        "POD_NAME": "reporter",
        "POD_NAMESPACE": namespace,
        "POD_UID": created.metadata.uid,
        "NODE_NAME": runner.node_name,
        "HOST_IP": "127.0.0.1",
        "OPTIONAL": None,
        "PODRUNNER_VISIBLE": "yes",
    }
    assert report["argv"] == ["reporter-fast", "$(POD_NAME)"]
    assert report["leaked"] == []
    pod_dir = Path(report["cwd"])
    assert pod_dir.parent == runner.state_dir / "pods" and pod_dir.name.startswith(f"{namespace}_reporter_")
    assert report["message_path"] == str(pod_dir / "main.termination-log")
    assert (
        runner.log_path(namespace, "reporter", "main") == runner.state_dir / f"{namespace}_reporter_main.log"
    )
    assert runner.log_path(namespace, "reporter", "main").exists()


def test_a_missing_secret_is_a_config_error_until_it_exists(
    runner: PodRunner, core_v1: client.CoreV1Api, namespace: str
) -> None:
    env: list[dict[str, Any]] = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late", "key": "token"}}},
        {"name": "MESSAGE_PATH", "value": "/dev/termination-log"},
    ]
    write_token = "import os; open(os.environ['MESSAGE_PATH'], 'w').write(os.environ['TOKEN'])"
    main = container(["python", "-c", write_token], env=env)
    core_v1.create_namespaced_pod(namespace, pod_manifest("waits", runner.node_name, main))

    pod = wait_pod(core_v1, namespace, "waits", lambda p: "waiting" in main_status(p).get("state", {}))
    waiting = main_status(pod)["state"]["waiting"]
    assert waiting == {"reason": "CreateContainerConfigError", "message": 'secret "late" not found'}
    assert pod["status"]["phase"] == "Pending"
    assert condition(pod, "Ready")["status"] == "False"

    core_v1.create_namespaced_secret(
        namespace, {"metadata": {"name": "late"}, "data": {"other": base64.b64encode(b"x").decode()}}
    )
    pod = wait_pod(
        core_v1,
        namespace,
        "waits",
        lambda p: (
            "couldn't find key" in main_status(p).get("state", {}).get("waiting", {}).get("message", "")
        ),
    )
    assert (
        main_status(pod)["state"]["waiting"]["message"]
        == f"couldn't find key token in Secret {namespace}/late"
    )

    core_v1.patch_namespaced_secret("late", namespace, {"stringData": {"token": "finally"}})
    pod = wait_pod(core_v1, namespace, "waits", phase_is("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Succeeded"
    assert main_status(pod)["state"]["terminated"]["message"] == "finally"


def test_exit_codes_and_termination_messages(
    runner: PodRunner, core_v1: client.CoreV1Api, namespace: str
) -> None:
    write_and_fail = (
        "import os, sys; open(os.environ['FBL_TERMINATION_MESSAGE_PATH'], 'w').write('boom'); sys.exit(3)"
    )
    told = container(
        ["python", "-c", write_and_fail],
        env=[{"name": "FBL_TERMINATION_MESSAGE_PATH", "value": "/dev/termination-log"}],
    )
    logs_only = container(
        ["python", "-c", "import sys\nfor i in range(100): print(f'line {i}', file=sys.stderr)\nsys.exit(2)"],
        terminationMessagePolicy="FallbackToLogsOnError",
    )
    # A custom terminationMessagePath is remapped as well, here where an argument equals it.
    custom_path = container(
        ["python", "-c", "import sys; open(sys.argv[1], 'w').write('custom')", "/var/run/result"],
        terminationMessagePath="/var/run/result",
    )
    for name, main in (("told", told), ("logs-only", logs_only), ("custom-path", custom_path)):
        core_v1.create_namespaced_pod(namespace, pod_manifest(name, runner.node_name, main))

    told_pod = wait_pod(core_v1, namespace, "told", phase_is("Succeeded", "Failed"))
    logs_pod = wait_pod(core_v1, namespace, "logs-only", phase_is("Succeeded", "Failed"))
    custom_pod = wait_pod(core_v1, namespace, "custom-path", phase_is("Succeeded", "Failed"))

    told_state = main_status(told_pod)["state"]["terminated"]
    assert told_pod["status"]["phase"] == "Failed"
    assert (told_state["exitCode"], told_state["reason"], told_state["message"]) == (3, "Error", "boom")
    assert main_status(told_pod)["restartCount"] == 0
    logs_state = main_status(logs_pod)["state"]["terminated"]
    assert logs_pod["status"]["phase"] == "Failed" and logs_state["exitCode"] == 2
    assert logs_state["message"].splitlines() == [f"line {i}" for i in range(20, 100)]
    custom_state = main_status(custom_pod)["state"]["terminated"]
    assert custom_pod["status"]["phase"] == "Succeeded"
    assert (custom_state["exitCode"], custom_state["reason"], custom_state["message"]) == (
        0,
        "Completed",
        "custom",
    )


def test_init_containers_run_first_in_the_pod_directory(
    runner: PodRunner, core_v1: client.CoreV1Api, namespace: str
) -> None:
    prepare = container(["python", "-c", "open('prepared.txt', 'w').write('from init')"])
    prepare["name"] = "prepare"
    main = container(
        [
            "python",
            "-c",
            "import sys; open(sys.argv[1], 'w').write(open('prepared.txt').read())",
            "/dev/termination-log",
        ]
    )
    manifest = pod_manifest("initialized", runner.node_name, main, initContainers=[prepare])
    core_v1.create_namespaced_pod(namespace, manifest)

    pod = wait_pod(core_v1, namespace, "initialized", phase_is("Succeeded", "Failed"))

    init_state = pod["status"]["initContainerStatuses"][0]["state"]["terminated"]
    assert (init_state["exitCode"], init_state["reason"]) == (0, "Completed")
    assert main_status(pod)["state"]["terminated"]["message"] == "from init"
    assert seconds(main_status(pod)["state"]["terminated"]["startedAt"]) >= seconds(init_state["finishedAt"])
    assert condition(pod, "Initialized")["status"] == "True"


# --------------------------------------------------------------------------------------------- probes
def test_readiness_probes_on_each_pods_own_address(
    runner: PodRunner, core_v1: client.CoreV1Api, namespace: str
) -> None:
    flag_check = "import os, sys; sys.exit(0 if os.path.exists('ready-flag') else 1)"
    probes: dict[str, dict[str, Any]] = {
        "ready": {"httpGet": {"path": "/", "port": "http"}, "initialDelaySeconds": 2},
        "unready": {"httpGet": {"path": "/missing", "port": "http"}},
        "tcp": {"tcpSocket": {"port": "http"}},
        "exec": {"exec": {"command": ["python", "-c", flag_check]}},
    }
    for name, probe in probes.items():
        server = http_server()
        server["readinessProbe"] = {**probe, "periodSeconds": 1, "failureThreshold": 1}
        core_v1.create_namespaced_pod(
            namespace, pod_manifest(name, runner.node_name, server, restart="Always")
        )

    def is_ready(pod: dict[str, Any]) -> bool:
        return condition(pod, "Ready").get("status") == "True"

    ready = wait_pod(core_v1, namespace, "ready", is_ready)
    tcp = wait_pod(core_v1, namespace, "tcp", is_ready)
    assert main_status(tcp)["ready"] is True
    exec_pod = read_pod(core_v1, namespace, "exec")
    assert exec_pod is not None and main_status(exec_pod)["ready"] is False
    (exec_dir,) = (runner.state_dir / "pods").glob(f"{namespace}_exec_*")
    (exec_dir / "ready-flag").write_text("")
    assert main_status(wait_pod(core_v1, namespace, "exec", is_ready))["ready"] is True
    log = runner.log_path(namespace, "unready", "main")
    probed = wait_until(
        lambda: log.read_text() if log.exists() else "", lambda text: text.count('"GET /missing') >= 3, 30
    )
    unready = read_pod(core_v1, namespace, "unready")

    assert probed.count('"GET /missing HTTP/1.1" 404') >= 3
    assert unready is not None
    addresses = {pod["status"]["podIP"] for pod in (ready, unready, tcp, exec_pod)}
    assert len(addresses) == 4, "all serve port 8080: each pod has its own IP"
    assert main_status(ready)["ready"] is True and main_status(ready)["started"] is True
    assert condition(ready, "ContainersReady")["status"] == "True"
    ready_since = seconds(condition(ready, "Ready")["lastTransitionTime"])
    assert ready_since - seconds(main_status(ready)["state"]["running"]["startedAt"]) >= 2, (
        "initialDelaySeconds"
    )
    assert unready["status"]["phase"] == "Running"
    assert main_status(unready)["ready"] is False
    assert condition(unready, "Ready") | {"lastTransitionTime": None} == {
        "type": "Ready",
        "status": "False",
        "reason": "ContainersNotReady",
        "message": "containers with unready status: [main]",
        "lastProbeTime": None,
        "lastTransitionTime": None,
    }


def test_failing_liveness_probe_restarts_the_process(
    runner: PodRunner, core_v1: client.CoreV1Api, namespace: str
) -> None:
    server = http_server()
    server["livenessProbe"] = {
        "httpGet": {"path": "/missing", "port": 8080},
        "initialDelaySeconds": 1,
        "periodSeconds": 1,
        "failureThreshold": 2,
    }
    core_v1.create_namespaced_pod(
        namespace, pod_manifest("unhealthy", runner.node_name, server, restart="Always")
    )
    first = wait_pod(core_v1, namespace, "unhealthy", lambda p: "running" in main_status(p).get("state", {}))

    restarted = wait_pod(
        core_v1,
        namespace,
        "unhealthy",
        lambda p: main_status(p).get("restartCount", 0) >= 1 and "running" in main_status(p)["state"],
    )

    status = main_status(restarted)
    assert status["lastState"]["terminated"]["exitCode"] == 128 + signal.SIGTERM
    assert status["lastState"]["terminated"]["reason"] == "Error"
    assert status["containerID"] != main_status(first)["containerID"]
    assert not process_alive(pid_of(first))
    assert restarted["status"]["phase"] == "Running"


# --------------------------------------------------------------------------------------------- deletion
def test_deletion_sends_sigterm_then_removes_the_pod(
    runner: PodRunner, core_v1: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    server = container(
        ["python", "-c", TRAPPING_SERVER],
        env=[POD_IP_ENV, POD_NAME_ENV, {"name": "MARKER_DIR", "value": str(tmp_path)}],
    )
    core_v1.create_namespaced_pod(
        namespace, pod_manifest("doomed", runner.node_name, server, restart="Always")
    )
    pod = wait_pod(core_v1, namespace, "doomed", lambda p: main_status(p).get("ready") is True)
    pid = pid_of(pod)
    assert process_alive(pid)

    core_v1.create_namespaced_pod(
        namespace, pod_manifest("forced", runner.node_name, server, restart="Always")
    )
    forced_pid = pid_of(wait_pod(core_v1, namespace, "forced", lambda p: main_status(p).get("ready") is True))

    started = time.monotonic()
    core_v1.delete_namespaced_pod("doomed", namespace, grace_period_seconds=20)
    wait_gone(core_v1, namespace, "doomed", timeout=30)
    assert time.monotonic() - started < 15, "the runner deletes once the process exits, not after the grace"
    # A forced delete removes the object at once; the process still gets SIGTERM and 2 s, as from a kubelet.
    core_v1.delete_namespaced_pod("forced", namespace, grace_period_seconds=0)

    assert (tmp_path / "doomed").read_text() == f"SIGTERM {pid}"
    assert wait_until(lambda: process_alive(pid), lambda alive: not alive, 5) is False
    assert wait_until(lambda: process_alive(forced_pid), lambda alive: not alive, 15) is False
    assert (tmp_path / "forced").read_text() == f"SIGTERM {forced_pid}"


def test_a_pre_stop_sleep_delays_sigterm_while_the_process_keeps_running(
    runner: PodRunner, core_v1: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    sleep = {"sleep": {"seconds": 2}}
    containers = [witness("first", tmp_path, sleep), witness("second", tmp_path, sleep)]
    start_witnesses(core_v1, namespace, runner.node_name, "sleepy", tmp_path, containers)

    begun = time.time()
    core_v1.delete_namespaced_pod("sleepy", namespace)
    terminated = {name: sigterm_at(tmp_path, name) for name in ("first", "second")}
    wait_gone(core_v1, namespace, "sleepy", timeout=15)

    for name, at in terminated.items():
        # Both containers sleep side by side: one after the other, the second would see SIGTERM after 4 s.
        assert 2.0 <= at - begun < 3.8, f"{name}: SIGTERM {at - begun:.2f}s after the delete"
        during = [beat for beat in beats(tmp_path, name) if begun <= beat <= at]
        gaps = [later - earlier for earlier, later in itertools.pairwise(during)]
        assert len(during) >= 8 and max(gaps) < 1.0, f"{name} stalled during its preStop sleep: {during}"
        assert during[0] - begun < 1.0 and at - during[-1] < 1.0


def test_an_exec_pre_stop_hook_runs_before_sigterm_and_a_failing_one_does_not_hold_it_up(
    runner: PodRunner, core_v1: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    record = "import os, time; open('pre-stop-ran', 'w').write(f\"{time.time()!r} {os.environ['NAME']}\")"
    fail = "import sys; print('draining failed'); sys.exit(3)"
    containers = [
        witness("main", tmp_path, {"exec": {"command": ["python", "-c", record]}}),
        witness("failing", tmp_path, {"exec": {"command": ["python", "-c", fail]}}),
    ]
    start_witnesses(core_v1, namespace, runner.node_name, "hooked", tmp_path, containers)
    pod_dir = pod_dir_of(runner, namespace, "hooked")

    begun = time.time()
    core_v1.delete_namespaced_pod("hooked", namespace)
    main_at, failing_at = sigterm_at(tmp_path, "main"), sigterm_at(tmp_path, "failing")
    wait_gone(core_v1, namespace, "hooked", timeout=15)

    ran_at, seen_name = (pod_dir / "pre-stop-ran").read_text().split()
    assert begun <= float(ran_at) <= main_at, "the hook runs first, in the pod directory"
    assert seen_name == "main", "the hook sees its container's env"
    assert failing_at - begun < 2.0, "a failed hook is followed by SIGTERM at once"
    selector = "involvedObject.name=hooked,reason=FailedPreStopHook"
    events = core_v1.list_namespaced_event(namespace, field_selector=selector).items
    assert [(e.type, e.message, e.involved_object.field_path, e.source.component) for e in events] == [
        ("Warning", "PreStopHook failed", "spec.containers{failing}", "kubelet")
    ]


def test_an_http_pre_stop_hook_reaches_the_container_on_its_named_port(
    runner: PodRunner, core_v1: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    server = witness("main", tmp_path, {"httpGet": {"path": "/drain", "port": "http"}}, PORT="8080")
    server["ports"] = [{"name": "http", "containerPort": 8080}]
    start_witnesses(core_v1, namespace, runner.node_name, "drained", tmp_path, [server])

    begun = time.time()
    core_v1.delete_namespaced_pod("drained", namespace)
    at = sigterm_at(tmp_path, "main")
    wait_gone(core_v1, namespace, "drained", timeout=15)

    requests = [json.loads(line) for line in (tmp_path / "main.requests").read_text().splitlines()]
    # The server listens on the pod's address only: the hook's host defaults to it.
    assert [(r["path"], r["agent"]) for r in requests] == [("/drain", "kube-lifecycle/local-runner")]
    assert begun <= requests[0]["at"] <= at


def test_hook_time_counts_against_the_grace_period_and_a_hung_hook_is_cut(
    runner: PodRunner, core_v1: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    # The hook beats too, into its pod directory, until it is killed.
    hang = (
        "import time\nwhile True:\n    print(time.time(), file=open('hook.beats', 'a'))\n    time.sleep(0.2)"
    )
    containers = [
        witness("counted", tmp_path, {"sleep": {"seconds": 1}}, KEEP_RUNNING="1"),
        witness("hung", tmp_path, {"exec": {"command": ["python", "-c", hang]}}, KEEP_RUNNING="1"),
    ]
    pod = start_witnesses(core_v1, namespace, runner.node_name, "stubborn", tmp_path, containers)
    pids = container_pids(pod)

    begun = time.time()
    core_v1.delete_namespaced_pod("stubborn", namespace, grace_period_seconds=3)
    died = death_times(pids, timeout=15)
    terminated = {name: sigterm_at(tmp_path, name) for name in pids}
    wait_gone(core_v1, namespace, "stubborn", timeout=15)

    since = {name: round(at - begun, 2) for name, at in terminated.items()}
    killed = {name: round(at - begun, 2) for name, at in died.items()}
    # A 1 s hook leaves 2 s of the grace period: SIGKILL arrives when the grace period ends.
    assert 1.0 <= since["counted"] < 2.2 and 3.0 <= killed["counted"] < 4.2, (since, killed)
    # A hook that outlasts the grace period is cut at its end; SIGTERM still gets the minimum 2 s.
    assert 3.0 <= since["hung"] < 4.2 and 5.0 <= killed["hung"] < 6.2, (since, killed)
    hook_beats = (pod_dir_of(runner, namespace, "stubborn") / "hook.beats").read_text().split()
    assert 2.5 <= float(hook_beats[-1]) - begun <= since["hung"], "the hook is killed before SIGTERM"
    assert max(beats(tmp_path, "hung")) >= terminated["hung"] + 1.5, "it ran on after SIGTERM until SIGKILL"


# --------------------------------------------------------------------------------------------- workloads
def test_deployment_becomes_available_and_rolls(
    runner: PodRunner,
    core_v1: client.CoreV1Api,
    apps_v1: client.AppsV1Api,
    namespace: str,
    tmp_path: Path,
) -> None:
    server = container(
        ["python", "-c", TRAPPING_SERVER],
        env=[
            POD_IP_ENV,
            POD_NAME_ENV,
            {"name": "MARKER_DIR", "value": str(tmp_path)},
            {"name": "V", "value": "1"},
        ],
        readinessProbe={"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
    )
    labels = {"app": "web"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": runner.node_name},
                    "terminationGracePeriodSeconds": 10,
                    "containers": [server],
                },
            },
        },
    }
    apps_v1.create_namespaced_deployment(namespace, deployment)

    def available() -> client.V1DeploymentStatus:
        return apps_v1.read_namespaced_deployment_status("web", namespace).status

    status = wait_until(available, lambda s: s.available_replicas == 1, 60, interval=0.5)
    assert status.available_replicas == 1
    (old,) = core_v1.list_namespaced_pod(namespace, label_selector="app=web").items
    old_pod = read_pod(core_v1, namespace, old.metadata.name)
    assert old_pod is not None and old_pod["spec"]["nodeName"] == runner.node_name
    old_pid = pid_of(old_pod)

    apps_v1.patch_namespaced_deployment(
        "web",
        namespace,
        [{"op": "replace", "path": "/spec/template/spec/containers/0/env/3/value", "value": "2"}],
    )

    def rolled() -> list[client.V1Pod]:
        pods: list[client.V1Pod] = core_v1.list_namespaced_pod(namespace, label_selector="app=web").items
        return pods

    pods = wait_until(
        rolled, lambda items: len(items) == 1 and items[0].metadata.name != old.metadata.name, 90, interval=1
    )
    assert [p.metadata.name != old.metadata.name for p in pods] == [True]
    status = wait_until(
        available, lambda s: s.updated_replicas == 1 and s.available_replicas == 1 and s.replicas == 1, 60
    )
    assert (status.updated_replicas, status.available_replicas, status.replicas) == (1, 1, 1)
    new_pod = read_pod(core_v1, namespace, pods[0].metadata.name)
    assert new_pod is not None and new_pod["status"]["phase"] == "Running"
    assert {e["name"]: e.get("value") for e in new_pod["spec"]["containers"][0]["env"]}["V"] == "2"
    assert main_status(new_pod)["ready"] is True and process_alive(pid_of(new_pod))
    assert (tmp_path / old.metadata.name).read_text() == f"SIGTERM {old_pid}"
    assert wait_until(lambda: process_alive(old_pid), lambda alive: not alive, 5) is False


def test_jobs_complete_on_exit_zero_and_fail_on_exit_one(
    runner: PodRunner, batch_v1: client.BatchV1Api, core_v1: client.CoreV1Api, namespace: str
) -> None:
    for name, code in (("passes", 0), ("fails", 1)):
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "nodeSelector": {"kubernetes.io/hostname": runner.node_name},
                        "containers": [container(["python", "-c", f"import sys; sys.exit({code})"])],
                    }
                },
            },
        }
        batch_v1.create_namespaced_job(namespace, job)

    def finished(name: str) -> dict[str, str]:
        conditions = batch_v1.read_namespaced_job_status(name, namespace).status.conditions or []
        return {c.type: c.status for c in conditions if c.type in {"Complete", "Failed"}}

    assert wait_until(lambda: finished("passes"), bool, 60, interval=0.5) == {"Complete": "True"}
    assert wait_until(lambda: finished("fails"), bool, 60, interval=0.5) == {"Failed": "True"}
    for name, code in (("passes", 0), ("fails", 1)):
        (pod,) = core_v1.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
        assert pod.spec.node_name == runner.node_name
        assert pod.status.container_statuses[0].state.terminated.exit_code == code


# --------------------------------------------------------------------------------------------- the node
def test_node_is_ready_and_heartbeats(
    runner: PodRunner, core_v1: client.CoreV1Api, api_client: client.ApiClient
) -> None:
    coordination = client.CoordinationV1Api(api_client)
    node = core_v1.read_node(runner.node_name)
    assert harness.KWOK_NODE_ANNOTATION not in (node.metadata.annotations or {})
    assert {k: node.metadata.labels[k] for k in ("kubernetes.io/hostname", "kubernetes.io/os", "type")} == {
        "kubernetes.io/hostname": runner.node_name,
        "kubernetes.io/os": "linux",
        "type": "local-runner",
    }
    assert node.status.allocatable == {"cpu": "8", "memory": "16Gi", "pods": "50"}
    assert [(a.type, a.address) for a in node.status.addresses if a.type == "InternalIP"] == [
        ("InternalIP", "127.0.0.1")
    ]
    (ready,) = [c for c in node.status.conditions if c.type == "Ready"]
    assert ready.status == "True"

    def lease_renewed() -> datetime:
        renewed: datetime = coordination.read_namespaced_lease(
            runner.node_name, "kube-node-lease"
        ).spec.renew_time
        return renewed

    first = lease_renewed()
    renewed = wait_until(lease_renewed, lambda moment: moment > first, timeout=25, interval=1)
    assert renewed > first
    (heartbeat,) = [c for c in core_v1.read_node(runner.node_name).status.conditions if c.type == "Ready"]
    assert heartbeat.status == "True" and heartbeat.last_heartbeat_time > ready.last_heartbeat_time


# --------------------------------------------------------------------------------------------- restarts
def test_cli_stop_kill_and_a_new_runner_failing_pods_it_lost(
    endpoints: harness.Endpoints, core_v1: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    node = f"local-{uuid.uuid4().hex[:8]}"
    state = tmp_path / "state"
    log = (tmp_path / "cli.log").open("ab")
    processes: list[subprocess.Popen[bytes]] = []

    def start_cli() -> subprocess.Popen[bytes]:
        command = [sys.executable, str(RUNNER_SCRIPT), "--kubeconfig", str(endpoints.kubeconfig)]
        process = subprocess.Popen(
            [*command, "--node", node, "--state-dir", str(state)], stdout=log, stderr=subprocess.STDOUT
        )
        processes.append(process)
        return process

    def run_sleeper(name: str) -> int:
        main = container(["python", "-c", SLEEPER])
        core_v1.create_namespaced_pod(namespace, pod_manifest(name, node, main, restart="Always"))
        return pid_of(wait_pod(core_v1, namespace, name, phase_is("Running")))

    def lost(name: str) -> dict[str, Any]:
        pod = wait_pod(core_v1, namespace, name, phase_is("Failed"))
        assert pod["status"]["reason"] == "RunnerRestarted"
        terminated = main_status(pod)["state"]["terminated"]
        assert (terminated["reason"], terminated["exitCode"]) == ("ContainerStatusUnknown", 137)
        return pod

    try:
        first = start_cli()
        first_pid = run_sleeper("first")
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0
        assert not process_alive(first_pid), "the CLI stops its pods on SIGTERM"
        assert read_pod(core_v1, namespace, "first")["status"]["phase"] == "Running"  # type: ignore[index]

        second = start_cli()
        lost("first")
        second_pid = run_sleeper("second")
        second.kill()
        second.wait(10)
        alive = wait_until(lambda: process_alive(second_pid), lambda alive: not alive, 10)
        assert alive is False, "PR_SET_PDEATHSIG kills a pod's process when its runner dies"

        with PodRunner(endpoints.kubeconfig, node, state) as third:
            lost("second")
            third_pid = run_sleeper("third")
            assert process_alive(third_pid)
        assert not process_alive(third_pid), "stop() kills what the runner started"
        third.stop()  # a second stop is a no-op
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        log.close()
        force_delete_pods(core_v1, node)
        with contextlib.suppress(ApiException):
            core_v1.delete_node(node)


# --------------------------------------------------------------------------------------------- discovery
METRICS_SERVER = """
import http.server, os
class Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"# TYPE runner_demo_value gauge\\nrunner_demo_value 42\\n"
        self.send_response(200 if self.path == "/custom-metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer((os.environ["POD_IP"], 9102), Metrics).serve_forever()
"""


def test_prometheus_discovers_annotated_pods_through_the_api_server(
    runner: PodRunner, core_v1: client.CoreV1Api, namespace: str, endpoints: harness.Endpoints
) -> None:
    pod = pod_manifest(
        "scraped",
        runner.node_name,
        container(["python", "-c", METRICS_SERVER], env=[POD_IP_ENV]),
        restart="Always",
    )
    pod["metadata"]["annotations"] = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9102",
        "prometheus.io/path": "/custom-metrics",
    }
    core_v1.create_namespaced_pod(namespace, pod)
    running = wait_pod(core_v1, namespace, "scraped", phase_is("Running"))
    ip = running["status"]["podIP"]

    def scraped() -> list[dict[str, Any]]:
        query = f'runner_demo_value{{namespace="{namespace}",pod="scraped"}}'
        answer = httpx.get(f"{endpoints.prometheus_url}/api/v1/query", params={"query": query}, timeout=5)
        found: list[dict[str, Any]] = answer.json()["data"]["result"]
        return found

    result = wait_until(scraped, bool, timeout=60, interval=1)
    assert result, "Prometheus never scraped the pod"
    assert result[0]["value"][1] == "42"
    assert result[0]["metric"]["instance"] == f"{ip}:9102"
    assert result[0]["metric"]["job"] == "kubernetes-pods"
