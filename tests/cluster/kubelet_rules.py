"""The kubelet's rules as the local pod runner (pod_runner.py) applies them, with no I/O.

Restart policy, crash-loop back-off, probe thresholds, grace periods, termination messages, container
environments, container and pod status and the pod's phase and conditions are decided here from plain
values: no processes, no API calls, no clock (callers pass `now` and monotonic `clock` values in) and no
threads. pod_runner.py does the I/O and asks these functions what to do and what to report.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from kubernetes.utils import parse_quantity

HOST_IP = "127.0.0.1"
NODE_RESOURCES = {"cpu": "8", "memory": "16Gi", "pods": "50"}
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 10.0
# A container that ran this long before exiting starts its back-off again from the first step.
BACKOFF_RESET_AFTER_SECONDS = 10.0
DEFAULT_GRACE_SECONDS = 30
# As the kubelet's floor: even a forced delete (grace 0) gives a process 2 s to handle SIGTERM.
MINIMUM_GRACE_SECONDS = 2
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
LOST_EXIT_CODE = 137
START_ERROR_EXIT_CODE = 128
DROPPED_ENV = frozenset({"KUBECONFIG"})
DROPPED_ENV_PREFIXES = ("FBL_", "AWS_", "MODEL_")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
REFERENCE = re.compile(r"\$\$|\$\(([^)]*)\)")
SUBSCRIPTED_FIELD = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
# The probes a container gets, in the order they are created, with the result each starts from.
PROBE_KINDS = (("startup", False), ("readiness", False), ("liveness", True))

# (kind, name) -> the Secret's or ConfigMap's data, None when it does not exist.
SourceLookup = Callable[[str, str], Mapping[str, str] | None]


class ContainerConfigError(Exception):
    """The container cannot be configured yet (a missing Secret, ConfigMap or key); the kubelet retries."""


# --------------------------------------------------------------------------------------------- small rules
def exit_code_of(returncode: int) -> int:
    """A process killed by signal N reports 128 + N, as a container runtime does."""
    return returncode if returncode >= 0 else 128 - returncode


def expand_references(text: str, values: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: `$$` is a literal `$`, an undefined reference stays as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return values.get(match.group(1), match.group(0))

    return REFERENCE.sub(replace, text)


def resolve_port(port: int | str, container: Mapping[str, Any]) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"container {container['name']} has no port named {port!r}")


# --------------------------------------------------------------------------------------------- probes
@dataclass
class ProbeTracker:
    """One probe of one container instance: when it is due and the result its thresholds settle on."""

    spec: dict[str, Any]
    next_due: float
    result: bool
    streak_outcome: bool | None = None
    streak: int = 0

    @classmethod
    def create(cls, spec: dict[str, Any], started: float, initial: bool) -> ProbeTracker:
        return cls(spec=spec, next_due=started + float(spec.get("initialDelaySeconds") or 0), result=initial)

    def due(self, clock: float) -> bool:
        return clock >= self.next_due

    def record(self, outcome: bool, clock: float) -> None:
        self.next_due = clock + max(1.0, float(self.spec.get("periodSeconds") or 10))
        if outcome == self.streak_outcome:
            self.streak += 1
        else:
            self.streak_outcome, self.streak = outcome, 1
        key, default = ("successThreshold", 1) if outcome else ("failureThreshold", 3)
        if self.streak >= int(self.spec.get(key) or default):
            self.result = outcome

    @property
    def failed(self) -> bool:
        return self.streak_outcome is False and self.streak >= int(self.spec.get("failureThreshold") or 3)


def probe_trackers(spec: Mapping[str, Any], init: bool, clock: float) -> dict[str, ProbeTracker]:
    """The probes of a container instance started at `clock`; init containers are never probed."""
    if init:
        return {}
    return {
        kind: ProbeTracker.create(spec[f"{kind}Probe"], clock, initial)
        for kind, initial in PROBE_KINDS
        if spec.get(f"{kind}Probe")
    }


# --------------------------------------------------------------------------------------------- grace periods
def probe_kill_grace(probe: Mapping[str, Any], pod_spec: Mapping[str, Any]) -> int:
    """A failed probe's kill: the probe's own grace period, else the pod's, never below the floor."""
    grace = probe.get("terminationGracePeriodSeconds")
    if grace is None:
        grace = pod_spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
    return max(int(grace), MINIMUM_GRACE_SECONDS)


def deletion_grace(pod: Mapping[str, Any]) -> int:
    """A deleted pod's grace period: the deletion's, else the pod spec's, else 30 s."""
    grace = pod["metadata"].get("deletionGracePeriodSeconds")
    if grace is None:
        grace = pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
    return int(grace)


def runs_pre_stop(hook: Mapping[str, Any] | None, budget: int) -> bool:
    # As the kubelet: a forced delete (grace 0) leaves no time for a hook.
    return bool(hook) and budget > 0


def sigterm_window(grace: int, hook_seconds: float) -> float:
    """What is left of the grace period after the preStop hook, never less than the floor."""
    return max(grace - hook_seconds, MINIMUM_GRACE_SECONDS)


# --------------------------------------------------------------------------------------------- environment
def runner_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The runner's environment without its credentials and the project's own settings."""
    return {
        key: value
        for key, value in environ.items()
        if key not in DROPPED_ENV and not key.startswith(DROPPED_ENV_PREFIXES)
    }


def container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    pod_ip: str,
    node_name: str,
    lookup: SourceLookup,
) -> dict[str, str]:
    """The container's own variables, resolved and expanded as the kubelet does; `lookup` is asked once
    per Secret or ConfigMap. Raises ContainerConfigError for a required reference that is missing."""
    namespace = pod["metadata"]["namespace"]
    sources: dict[tuple[str, str], Mapping[str, str] | None] = {}

    def source(kind: str, name: str) -> Mapping[str, str] | None:
        if (kind, name) not in sources:
            sources[kind, name] = lookup(kind, name)
        return sources[kind, name]

    values: dict[str, str] = {}
    for item in container.get("envFrom") or []:
        kind = "Secret" if "secretRef" in item else "ConfigMap"
        ref = item.get("secretRef") or item.get("configMapRef") or {}
        data = source(kind, ref["name"])
        if data is None:
            if ref.get("optional"):
                continue
            raise ContainerConfigError(f'{kind.lower()} "{ref["name"]}" not found')
        prefix = item.get("prefix", "")
        values.update({prefix + k: v for k, v in data.items() if ENV_NAME.match(prefix + k)})
    for item in container.get("env") or []:
        if "valueFrom" not in item:
            values[item["name"]] = expand_references(item.get("value", ""), values)
            continue
        value = value_from(item["valueFrom"], pod, container, pod_ip, node_name, namespace, source)
        if value is not None:
            values[item["name"]] = value
    return values


def value_from(
    reference: Mapping[str, Any],
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    pod_ip: str,
    node_name: str,
    namespace: str,
    source: SourceLookup,
) -> str | None:
    """One `valueFrom`; None for an optional reference that is missing."""
    for key, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
        if key in reference:
            ref = reference[key]
            data = source(kind, ref["name"])
            if data is None:
                if ref.get("optional"):
                    return None
                raise ContainerConfigError(f'{kind.lower()} "{ref["name"]}" not found')
            if ref["key"] not in data:
                if ref.get("optional"):
                    return None
                raise ContainerConfigError(
                    f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}"
                )
            return data[ref["key"]]
    if "fieldRef" in reference:
        return field_value(reference["fieldRef"]["fieldPath"], pod, pod_ip, node_name)
    if "resourceFieldRef" in reference:
        return resource_value(reference["resourceFieldRef"], container)
    raise ContainerConfigError(f"unsupported valueFrom {sorted(reference)}")


def field_value(path: str, pod: Mapping[str, Any], pod_ip: str, node_name: str) -> str:
    metadata, spec = pod["metadata"], pod["spec"]
    fields = {
        "metadata.name": metadata["name"],
        "metadata.namespace": metadata["namespace"],
        "metadata.uid": metadata["uid"],
        "spec.nodeName": node_name,
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": HOST_IP,
        "status.hostIPs": HOST_IP,
    }
    if path in fields:
        return str(fields[path])
    subscripted = SUBSCRIPTED_FIELD.match(path)
    if subscripted:
        return str((metadata.get(subscripted.group(1)) or {}).get(subscripted.group(2), ""))
    raise ContainerConfigError(f"unsupported fieldPath {path}")


def resource_value(ref: Mapping[str, Any], container: Mapping[str, Any]) -> str:
    """A resourceFieldRef: the container's limit or request, else the node's allocatable, over the divisor."""
    kind, _, resource = str(ref["resource"]).partition(".")
    resources = container.get("resources") or {}
    amount = (resources.get(kind) or {}).get(resource)
    if amount is None and kind == "requests":
        amount = (resources.get("limits") or {}).get(resource)
    if amount is None:
        amount = NODE_RESOURCES.get(resource, "0") if kind == "limits" else "0"
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(math.ceil(parse_quantity(amount) / divisor))


@dataclass(frozen=True)
class Launch:
    """How to run a container as a host process: its arguments, environment and search PATH."""

    argv: list[str]
    env: dict[str, str]
    path: str


def launch(
    spec: Mapping[str, Any],
    defined: Mapping[str, str],
    host_message_path: str,
    base_env: Mapping[str, str],
    hostname: str,
    python_bin_dir: str,
    inherited_path: str,
) -> Launch:
    """The container's argv and env: the termination message path (as a whole value or argument) becomes
    the per-pod host file, `$(VAR)` references expand, and the project's Python comes first on PATH."""
    message_path = spec.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH
    defined = {k: host_message_path if v == message_path else v for k, v in defined.items()}
    argv = [
        host_message_path if arg == message_path else arg
        for arg in (expand_references(a, defined) for a in [*spec.get("command", []), *spec.get("args", [])])
    ]
    path = os.pathsep.join([python_bin_dir, defined.get("PATH", inherited_path)])
    env = {**base_env, "HOSTNAME": hostname, **defined}
    env["PATH"] = path
    return Launch(argv, env, path)


# --------------------------------------------------------------------------------------------- exits
def restart_count_at_start(restart_count: int, terminations: int) -> int:
    """A start after any earlier termination (a StartError too) counts as a restart."""
    return restart_count + 1 if terminations else restart_count


def restart_wanted(restart_policy: str | None, init: bool, exit_code: int) -> bool:
    """Whether an exited container runs again: an init container only after a failure unless Never."""
    policy = restart_policy or "Always"
    if init:
        return exit_code != 0 and policy != "Never"
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


def next_back_off(crash_streak: int, ran_seconds: float) -> tuple[int, float]:
    """(the new crash streak, the delay before the next start): 0.5 s doubling to 10 s, and a container
    that ran at least 10 s starts over from the first step."""
    streak = 0 if ran_seconds >= BACKOFF_RESET_AFTER_SECONDS else crash_streak + 1
    return streak, min(BACKOFF_FIRST_SECONDS * 2 ** max(streak - 1, 0), BACKOFF_MAX_SECONDS)


def falls_back_to_logs(message: str, policy: str | None, exit_code: int) -> bool:
    """FallbackToLogsOnError: the log's tail replaces an empty termination message of a failed exit."""
    return not message.strip() and (policy or "File") == "FallbackToLogsOnError" and exit_code != 0


def terminated_state(
    exit_code: int, started_at: str, finished_at: str, container_id: str, message: str
) -> dict[str, Any]:
    terminated: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": "Completed" if exit_code == 0 else "Error",
        "startedAt": started_at,
        "finishedAt": finished_at,
        "containerID": container_id,
    }
    if message:
        terminated["message"] = message
    return terminated


def start_error_state(message: str, now: str) -> dict[str, Any]:
    """The process could not start: terminated with StartError and exit code 128, as with runc."""
    return {
        "exitCode": START_ERROR_EXIT_CODE,
        "reason": "StartError",
        "message": message,
        "startedAt": now,
        "finishedAt": now,
    }


@dataclass(frozen=True)
class AfterExit:
    """What an exit makes of a container: done for good, or waiting `delay` seconds to start again."""

    done: bool
    state: dict[str, Any]
    # None: the previous lastState stays.
    last_state: dict[str, Any] | None
    crash_streak: int
    delay: float | None


def after_exit(
    *,
    container: str,
    pod: str,
    init: bool,
    restart_policy: str | None,
    exit_code: int,
    terminated: dict[str, Any],
    allow_restart: bool,
    ran_seconds: float,
    crash_streak: int,
) -> AfterExit:
    """The restart policy and back-off applied to one exit (`terminated` is its terminated state)."""
    if not (restart_wanted(restart_policy, init, exit_code) and allow_restart):
        return AfterExit(True, {"terminated": terminated}, None, crash_streak, None)
    streak, delay = next_back_off(crash_streak, ran_seconds)
    reason = "CrashLoopBackOff" if terminated["reason"] != "StartError" else "RunContainerError"
    message = f"back-off {delay:g}s restarting failed container={container} pod={pod}"
    waiting = {"waiting": {"reason": reason, "message": message}}
    return AfterExit(False, waiting, {"terminated": terminated}, streak, delay)


# --------------------------------------------------------------------------------------------- lost pods
def previous_container_ids(status: Mapping[str, Any]) -> list[str]:
    """The container IDs a pod status reports; any non-empty one means some runner started the pod."""
    return [
        s.get("containerID", "")
        for key in ("initContainerStatuses", "containerStatuses")
        for s in status.get(key) or []
    ]


@dataclass(frozen=True)
class LostContainer:
    restart_count: int
    exit_code: int
    state: dict[str, Any]


def lost_container(previous: Mapping[str, Any], now: str) -> LostContainer:
    """A container of a pod a previous runner started: terminated as it was, else ContainerStatusUnknown."""
    restart_count = int(previous.get("restartCount") or 0)
    if "terminated" in (previous.get("state") or {}):
        terminated = previous["state"]["terminated"]
        return LostContainer(restart_count, int(terminated.get("exitCode") or 0), {"terminated": terminated})
    state = {
        "terminated": {
            "exitCode": LOST_EXIT_CODE,
            "reason": "ContainerStatusUnknown",
            "message": "The container could not be located when the pod runner restarted",
            "startedAt": None,
            "finishedAt": now,
        }
    }
    return LostContainer(restart_count, LOST_EXIT_CODE, state)


def lost_containers(status: Mapping[str, Any], names: Sequence[str], now: str) -> dict[str, LostContainer]:
    statuses = {
        s["name"]: s for key in ("initContainerStatuses", "containerStatuses") for s in status.get(key) or []
    }
    return {name: lost_container(statuses.get(name, {}), now) for name in names}


# --------------------------------------------------------------------------------------------- pod status
class Outcome(Protocol):
    @property
    def done(self) -> bool: ...

    @property
    def succeeded(self) -> bool: ...

    @property
    def ever_started(self) -> bool: ...


C = TypeVar("C", bound=Outcome)


def runnable(init_containers: Sequence[C], containers: Sequence[C]) -> list[C]:
    """The containers to start, watch or restart now: the first init container that has not succeeded,
    else all the others; none once an init container failed for good."""
    pending_init = [c for c in init_containers if not c.succeeded]
    if any(c.done for c in pending_init):
        return []
    return list(pending_init[:1] or containers)


def pod_phase(init_containers: Sequence[Outcome], containers: Sequence[Outcome]) -> str:
    if any(c.done and not c.succeeded for c in init_containers):
        return "Failed"
    if not all(c.succeeded for c in init_containers):
        return "Pending"
    if containers and all(c.done for c in containers):
        return "Succeeded" if all(c.succeeded for c in containers) else "Failed"
    return "Running" if any(c.ever_started for c in containers) else "Pending"


def container_ready(
    init: bool, succeeded: bool, running: bool, startup_passed: bool, readiness: bool | None
) -> bool:
    """An init container is ready once it succeeded; another runs, passed its startup probe and its
    readiness probe (`None` when it has none)."""
    if init:
        return succeeded
    return running and startup_passed and (readiness is None or readiness)


def container_status(
    spec: Mapping[str, Any],
    *,
    restart_count: int,
    started: bool,
    ready: bool,
    state: Mapping[str, Any],
    last_state: Mapping[str, Any],
    pid: int | None,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "name": str(spec["name"]),
        "image": spec.get("image", ""),
        "imageID": "",
        "restartCount": restart_count,
        "started": started,
        "ready": ready,
        "state": {"waiting": None, "running": None, "terminated": None, **state},
        "lastState": dict(last_state),
    }
    if pid is not None:
        status["containerID"] = f"local://{pid}"
    return status


@dataclass(frozen=True)
class ContainerView:
    """What the pod status needs to know of one container."""

    name: str
    done: bool
    exit_code: int | None
    ever_started: bool
    ready: bool
    status: dict[str, Any]

    @property
    def succeeded(self) -> bool:
        return self.done and self.exit_code == 0


# kind -> (status, lastTransitionTime)
Transitions = Mapping[str, tuple[str, str]]


def condition(
    kind: str,
    true: bool,
    previous: tuple[str, str] | None,
    now: str,
    reason: str | None = None,
    message: str | None = None,
) -> tuple[dict[str, Any], tuple[str, str]]:
    """A pod condition and its (status, lastTransitionTime): the time moves only when the status does."""
    status = "True" if true else "False"
    if previous is None or previous[0] != status:
        previous = (status, now)
    body = {
        "type": kind,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": previous[1],
        "reason": None if true else reason,
        "message": None if true else message,
    }
    return body, previous


@dataclass(frozen=True)
class PodStatus:
    status: dict[str, Any]
    # Once terminal, the runner starts nothing more for the pod.
    terminal: bool
    transitions: dict[str, tuple[str, str]]


def pod_status(
    pod: Mapping[str, Any],
    init_containers: Sequence[ContainerView],
    containers: Sequence[ContainerView],
    *,
    terminal: bool,
    lost_message: str | None,
    pod_ip: str | None,
    start_time: str,
    transitions: Transitions,
    now: str,
) -> PodStatus:
    """The pod's status as the kubelet writes it: phase, conditions, addresses and container statuses."""
    phase = pod_phase(init_containers, containers)
    terminal = terminal or phase in TERMINAL_PHASES
    if lost_message:
        phase = "Failed"
    incomplete = [c.name for c in init_containers if not c.succeeded]
    unready = [c.name for c in containers if not c.ready]
    current = {c["type"]: c.get("status") for c in (pod.get("status") or {}).get("conditions") or []}
    gates = [g["conditionType"] for g in pod["spec"].get("readinessGates") or []]
    gates_open = all(current.get(gate) == "True" for gate in gates)
    if phase in TERMINAL_PHASES:
        not_ready: tuple[str, str | None] = ("PodCompleted", None)
    elif unready:
        not_ready = ("ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]")
    else:
        not_ready = ("ReadinessGatesNotReady", "the pod's readiness gates are not all True")
    containers_ready = not incomplete and not unready and phase == "Running"
    wanted: list[tuple[str, bool, str | None, str | None]] = [
        ("PodReadyToStartContainers", not terminal, None, None),
        (
            "Initialized",
            not incomplete,
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(incomplete)}]",
        ),
        ("ContainersReady", containers_ready, *not_ready),
        ("Ready", containers_ready and gates_open, *not_ready),
        ("PodScheduled", True, None, None),
    ]
    moved = dict(transitions)
    conditions = []
    for kind, true, reason, message in wanted:
        body, moved[kind] = condition(kind, true, moved.get(kind), now, reason, message)
        conditions.append(body)
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": HOST_IP,
        "hostIPs": [{"ip": HOST_IP}],
        "startTime": (pod.get("status") or {}).get("startTime") or start_time,
        "containerStatuses": [c.status for c in containers],
    }
    if init_containers:
        status["initContainerStatuses"] = [c.status for c in init_containers]
    if pod_ip:
        status["podIP"], status["podIPs"] = pod_ip, [{"ip": pod_ip}]
    if lost_message:
        status["reason"], status["message"] = "RunnerRestarted", lost_message
    return PodStatus(status, terminal, moved)


# --------------------------------------------------------------------------------------------- node
def node_status(node_name: str, heartbeat: str, ready_since: str, kernel_release: str) -> dict[str, Any]:
    """The Node's status: always Ready and without pressure, on the runner's address."""

    def node_condition(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": heartbeat,
            "lastTransitionTime": ready_since,
        }

    return {
        "capacity": NODE_RESOURCES,
        "allocatable": NODE_RESOURCES,
        "conditions": [
            node_condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure"),
            node_condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
            node_condition("PIDPressure", "False", "KubeletHasSufficientPID", "enough PIDs"),
            node_condition("Ready", "True", "KubeletReady", "the local pod runner is posting ready status"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": HOST_IP},
            {"type": "Hostname", "address": node_name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "machineID": "local",
            "systemUUID": "local",
            "bootID": "local",
            "kernelVersion": kernel_release,
            "osImage": "local processes",
            "containerRuntimeVersion": "local://1",
            "kubeletVersion": "local-runner",
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    }


def warning_event(
    *,
    namespace: str,
    pod: str,
    uid: str,
    container: str,
    init: bool,
    reason: str,
    message: str,
    node_name: str,
    now: str,
) -> dict[str, Any]:
    """A Warning event on one container, as the kubelet records it."""
    field_path = f"spec.{'initContainers' if init else 'containers'}{{{container}}}"
    involved = {"apiVersion": "v1", "kind": "Pod", "namespace": namespace, "name": pod}
    return {
        "metadata": {"generateName": f"{pod}."},
        "involvedObject": {**involved, "uid": uid, "fieldPath": field_path},
        "type": "Warning",
        "reason": reason,
        "message": message,
        "source": {"component": "kubelet", "host": node_name},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "reportingComponent": "kubelet",
        "reportingInstance": node_name,
    }
