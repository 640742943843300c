#!/usr/bin/env python3
"""A tiny kubelet for one Kubernetes Node that kwok does not manage: it really runs the pods bound to it.

kwok only pretends to run pods. This runner registers its own Node (no kwok annotation), keeps its Lease
and Ready condition fresh, watches the pods bound to it and runs each container as a host process:

- The image is ignored. `command + args` (with `$(VAR)` expansion) run with the project's Python
  environment's bin directory first on PATH, in `<state_dir>/pods/<namespace>_<pod>_<uid8>/`, logging
  stdout and stderr to `<state_dir>/<namespace>_<pod>_<container>.log`.
- Each pod gets its own loopback address 127.0.x.y (never 127.0.0.1) as status.podIP; hostIP is 127.0.0.1.
  Servers must bind that address (a `status.podIP` fieldRef) so the same port works in two pods.
- env: the runner's environment minus KUBECONFIG and FBL_* / AWS_* / MODEL_*, then `envFrom`
  (secretRef, configMapRef) and `env` (value, secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef).
  A missing required reference leaves the container waiting with CreateContainerConfigError, retried.
- terminationMessagePath is remapped to a per-pod host file; env values and arguments equal to that path
  are rewritten to it. FallbackToLogsOnError uses the log tail when the file is empty and the exit fails.
- Probes (startup, readiness, liveness): httpGet, tcpSocket, exec, and grpc approximated by a TCP connect.
- restartPolicy Always / OnFailure / Never with a short back-off (0.5 s doubling to 10 s); init containers
  run in order before the others.
- Deletion, for all containers at once: each runs its `lifecycle.preStop` hook, then gets SIGTERM to its
  process group and SIGKILL when the grace period (deletionGracePeriodSeconds, else
  terminationGracePeriodSeconds) is over; then the final delete with grace 0. The hook's time counts
  against the grace period, but SIGTERM always gets at least 2 s. Hooks: `sleep`, `exec` (a host process
  like the container, with its env, in its pod directory) and `httpGet` (host defaults to the pod IP; any
  response will do, as for the kubelet). A hook that fails is logged with a FailedPreStopHook event; one
  still running at the end of the grace period is cut short (an exec hook's process group killed); neither
  stops the deletion. A pod removed at once (grace 0) runs no hook.

The kubelet's rules (restart policy, back-off, probe thresholds, grace periods, env resolution, container and
pod status) are pure functions in kubelet_rules.py; this module does the I/O around them.

A runner that starts finds pods a previous instance had started (a container has a container ID): it kills
any of their process groups still alive in their pod directory and marks them Failed (reason
RunnerRestarted, containers terminated with ContainerStatusUnknown), as a lost node would. A ReplicaSet then
replaces them and a Job counts a failure. Bound pods that were never started are started normally.

Not supported: images and their entrypoints (a container needs `command`), volumes and volumeMounts,
workingDir, securityContext, resource limits, postStart hooks, sidecar init containers, pod
activeDeadlineSeconds, hostAliases and DNS. Every process is its own session and process group, dies with
the runner (PR_SET_PDEATHSIG) and is killed by `stop()`.

Shell:  pod_runner.py --kubeconfig K --node NAME --state-dir DIR    runs until SIGTERM or SIGINT
Python: with PodRunner(kubeconfig, "local-1", state_dir) as runner: ...
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import http.client
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import kubelet_rules as rules
from kubelet_rules import (
    HOST_IP,
    TERMINAL_PHASES,
    ContainerConfigError,
    ContainerView,
    ProbeTracker,
    exit_code_of,
    resolve_port,
)
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

LOG = logging.getLogger("pod_runner")

NODE_LABEL_TYPE = "local-runner"
NODE_LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_SECONDS = 40
HEARTBEAT_SECONDS = 10.0
TICK_SECONDS = 0.5
CONFIG_RETRY_SECONDS = 2.0
VANISHED_POD_GRACE_SECONDS = 5.0
MAX_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES = 80
STRATEGIC_MERGE = "application/strategic-merge-patch+json"
MERGE_PATCH = "application/merge-patch+json"
PR_SET_PDEATHSIG = 1

# Loaded once here: a dlopen in a child forked from a threaded parent could deadlock on the loader lock.
_LIBC = ctypes.CDLL("libc.so.6", use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_runner() -> None:
    # PR_SET_PDEATHSIG fires when the forking *thread* ends, so each pod's worker thread spawns its processes.
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def rfc3339_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def terminate_groups(
    processes: Iterable[subprocess.Popen[bytes]],
    grace: float,
    hurry: threading.Event | None = None,
    hurried_grace: float = VANISHED_POD_GRACE_SECONDS,
) -> None:
    """SIGTERM each process group, SIGKILL what is left after `grace` (shortened once `hurry` is set)."""
    processes = list(processes)
    for process in processes:
        signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    hurried = False
    while any(process.poll() is None for process in processes) and time.monotonic() < deadline:
        if hurry is not None and hurry.is_set() and not hurried:
            deadline, hurried = min(deadline, time.monotonic() + hurried_grace), True
        time.sleep(0.1)
    for process in processes:
        # Also the leader's children left in its group after the leader itself exited.
        signal_group(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)


def read_capped(path: Path, limit: int = MAX_MESSAGE_BYTES) -> str:
    try:
        with path.open("rb") as handle:
            return handle.read(limit).decode(errors="replace")
    except OSError:
        return ""


def log_tail(path: Path, offset: int, lines: int = FALLBACK_LOG_LINES, limit: int = MAX_MESSAGE_BYTES) -> str:
    """The last `lines` lines written since `offset`, at most `limit` bytes."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(offset, size - 64 * limit))
            data = handle.read()
    except OSError:
        return ""
    tail = b"\n".join(data.splitlines()[-lines:])
    return tail[-limit:].decode(errors="replace")


class LoopbackPool:
    """Addresses 127.0.x.y, one per live pod. It hands them out in turn from a random start, so two runners
    on one machine rarely collide and a freed address is the last to come back."""

    SIZE = 1 << 16

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: set[str] = set()
        self._next = secrets.randbelow(self.SIZE)

    @staticmethod
    def _usable(index: int) -> bool:
        high, low = divmod(index, 256)
        return 1 <= low <= 254 and (high, low) != (0, 1)

    def allocate(self, preferred: str | None = None) -> str:
        with self._lock:
            if preferred and preferred not in self._used and self._is_ours(preferred):
                self._used.add(preferred)
                return preferred
            for _ in range(self.SIZE):
                index, self._next = self._next, (self._next + 1) % self.SIZE
                address = f"127.0.{index // 256}.{index % 256}"
                if self._usable(index) and address not in self._used:
                    self._used.add(address)
                    return address
        raise RuntimeError("no loopback address left for a pod")

    def release(self, address: str | None) -> None:
        with self._lock:
            self._used.discard(address or "")

    def _is_ours(self, address: str) -> bool:
        parts = address.split(".")
        if len(parts) != 4 or parts[:2] != ["127", "0"] or not all(p.isdigit() for p in parts[2:]):
            return False
        return self._usable(int(parts[2]) * 256 + int(parts[3]))


# --------------------------------------------------------------------------------------------- probes
def http_get(
    action: dict[str, Any], container: dict[str, Any], pod_ip: str, timeout: float, agent: str
) -> int:
    """An httpGet action's request as the kubelet sends it, for probes and hooks; returns the status."""
    host, port = action.get("host") or pod_ip, resolve_port(action["port"], container)
    connection: http.client.HTTPConnection
    if str(action.get("scheme") or "HTTP").upper() == "HTTPS":
        # The kubelet does not verify a probe's or a hook's certificate either.
        unverified = ssl._create_unverified_context()  # noqa: S323
        connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=unverified)
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {"User-Agent": agent, "Accept": "*/*"}
    headers.update({h["name"]: h["value"] for h in action.get("httpHeaders") or []})
    try:
        connection.request("GET", action.get("path") or "/", headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def run_probe(
    probe: dict[str, Any], container: dict[str, Any], pod_ip: str, env: dict[str, str], cwd: Path
) -> bool:
    """One probe attempt, as the kubelet makes it: HTTP 200-399, a TCP connect, or an exec exiting 0."""
    timeout = float(probe.get("timeoutSeconds") or 1)
    try:
        if "httpGet" in probe:
            status = http_get(probe["httpGet"], container, pod_ip, timeout, "kube-probe/local-runner")
            return 200 <= status < 400
        if "tcpSocket" in probe or "grpc" in probe:
            action = probe.get("tcpSocket") or probe["grpc"]
            address = (action.get("host") or pod_ip, resolve_port(action["port"], container))
            with socket.create_connection(address, timeout=timeout):
                return True
        if "exec" in probe:
            command = probe["exec"].get("command") or []
            completed = subprocess.run(
                command, env=env, cwd=cwd, timeout=timeout, capture_output=True, check=False
            )
            return completed.returncode == 0
    except (OSError, http.client.HTTPException, ValueError, subprocess.TimeoutExpired):
        return False
    return False


# --------------------------------------------------------------------------------------------- hooks
class HookError(Exception):
    """A lifecycle hook ran and failed: the kubelet logs it, records an event and goes on."""


def run_hook(
    hook: dict[str, Any],
    container: Container,
    pod_ip: str,
    cwd: Path,
    deadline: float,
    cancel: threading.Event,
) -> bool:
    """One lifecycle handler (sleep, exec or httpGet) until it ends, `deadline` passes or `cancel` is set.
    True when it completed in time; raises HookError when it failed."""
    if "sleep" in hook:
        return sleep_hook(float(hook["sleep"].get("seconds") or 0), deadline, cancel)
    if "exec" in hook:
        return exec_hook(hook["exec"].get("command") or [], container.env, cwd, deadline, cancel)
    if "httpGet" in hook:
        return http_hook(hook["httpGet"], container.spec, pod_ip, deadline)
    raise HookError(f"invalid handler: {sorted(hook)}")


def sleep_hook(seconds: float, deadline: float, cancel: threading.Event) -> bool:
    remaining = deadline - time.monotonic()
    return not cancel.wait(max(0.0, min(seconds, remaining))) and seconds <= remaining


def exec_hook(
    command: list[str], env: dict[str, str], cwd: Path, deadline: float, cancel: threading.Event
) -> bool:
    """The command as a host process of its own, like the container: with its env, in its pod directory."""
    if not command:
        raise HookError("exec hook without a command")
    with tempfile.TemporaryFile() as output:
        try:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_runner,
            )
        except OSError as err:
            raise HookError(f"exec hook {command} cannot start: {err}") from err
        while process.poll() is None and time.monotonic() < deadline and not cancel.is_set():
            time.sleep(0.1)
        completed = process.poll() is not None
        # In a container the hook would end with it; a host process must not outlive the container.
        signal_group(process.pid, signal.SIGKILL)
        returncode = process.wait()
        if not completed:
            return False
        if returncode != 0:
            output.seek(0)
            message = output.read()[-MAX_MESSAGE_BYTES:].decode(errors="replace")
            raise HookError(f"exec hook {command} exited with {exit_code_of(returncode)}: {message!r}")
    return True


def http_hook(action: dict[str, Any], container: dict[str, Any], pod_ip: str, deadline: float) -> bool:
    """Any HTTP response completes the hook: the kubelet only fails one that gets none."""
    try:
        http_get(
            action, container, pod_ip, max(deadline - time.monotonic(), 0.1), "kube-lifecycle/local-runner"
        )
    except (OSError, http.client.HTTPException, ValueError) as err:
        if time.monotonic() >= deadline:
            return False
        raise HookError(f"http hook {action.get('path') or '/'}: {err}") from err
    return True


# --------------------------------------------------------------------------------------------- containers
@dataclass
class Container:
    """One container of a pod: its current process, the state the pod status reports, its restarts."""

    spec: dict[str, Any]
    init: bool
    log_path: Path
    termination_path: Path
    popen: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    ever_started: bool = False
    done: bool = False
    exit_code: int | None = None
    restart_count: int = 0
    terminations: int = 0
    crash_streak: int = 0
    next_start: float = 0.0
    started_at: str = ""
    started_clock: float = 0.0
    log_offset: int = 0
    env: dict[str, str] = field(default_factory=dict)
    startup_passed: bool = False
    probes: dict[str, ProbeTracker] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        return self.popen is not None

    @property
    def succeeded(self) -> bool:
        return self.done and self.exit_code == 0

    @property
    def ready(self) -> bool:
        readiness = self.probes.get("readiness")
        return rules.container_ready(
            self.init,
            self.succeeded,
            self.running,
            self.startup_passed,
            None if readiness is None else readiness.result,
        )

    def view(self) -> ContainerView:
        status = rules.container_status(
            self.spec,
            restart_count=self.restart_count,
            started=self.running and self.startup_passed,
            ready=self.ready,
            state=self.state,
            last_state=self.last_state,
            pid=self.pid,
        )
        return ContainerView(self.name, self.done, self.exit_code, self.ever_started, self.ready, status)


# --------------------------------------------------------------------------------------------- pods
class PodWorker:
    """Runs one pod: a thread that starts, probes, restarts and stops its containers and writes its status.

    The watch thread hands it each new version of the pod; everything else happens on this thread, which
    is also the parent of the pod's processes (PR_SET_PDEATHSIG follows the forking thread)."""

    def __init__(self, runner: PodRunner, pod: dict[str, Any]) -> None:
        self.runner = runner
        self.uid: str = pod["metadata"]["uid"]
        self.namespace: str = pod["metadata"]["namespace"]
        self.name: str = pod["metadata"]["name"]
        self._latest = pod
        self._vanished = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.pod_dir = runner.state_dir / "pods" / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        self.pod_ip: str | None = None
        self.start_time = rfc3339_now()
        self.terminal = False
        self.lost_message: str | None = None
        self._ip_allocated = False
        self._transitions: dict[str, tuple[str, str]] = {}
        self._pushed: str | None = None
        spec = pod["spec"]
        self.init_containers = [self._container(c, init=True) for c in spec.get("initContainers") or []]
        self.containers = [self._container(c, init=False) for c in spec.get("containers") or []]
        self.thread = threading.Thread(
            target=self._run, name=f"pod {self.namespace}/{self.name}", daemon=True
        )

    def _container(self, spec: dict[str, Any], init: bool) -> Container:
        log_path = self.runner.log_path(self.namespace, self.name, spec["name"])
        return Container(spec, init, log_path, self.pod_dir / f"{spec['name']}.termination-log")

    @property
    def all_containers(self) -> list[Container]:
        return [*self.init_containers, *self.containers]

    # ---------------------------------------------------------------- called from other threads
    def update(self, pod: dict[str, Any]) -> None:
        with self._lock:
            self._latest = pod
        self._wake.set()

    def vanish(self) -> None:
        with self._lock:
            self._vanished = True
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    # ---------------------------------------------------------------- the worker thread
    def _run(self) -> None:
        finished = False
        try:
            finished = self._loop()
        except Exception:
            LOG.exception("pod %s/%s: worker failed", self.namespace, self.name)
        finally:
            terminate_groups([c.popen for c in self.all_containers if c.popen is not None], grace=0)
            self.runner.pool.release(self.pod_ip if self._ip_allocated else None)
            self.runner.worker_done(self, finished)

    def _loop(self) -> bool:
        """Returns True once the pod needs nothing more from this node (terminal or finally deleted)."""
        if not self._prepare():
            return True
        while True:
            self._wake.clear()
            with self._lock:
                pod, vanished = self._latest, self._vanished
            if self.runner.stopping.is_set():
                self._kill_all(self.runner.stop_grace_seconds)
                return False
            if vanished:
                self._kill_all(VANISHED_POD_GRACE_SECONDS)
                return True
            if pod["metadata"].get("deletionTimestamp"):
                self._delete(pod)
                return True
            if not self.terminal:
                self._step(time.monotonic())
            self._sync_status(pod)
            if self.terminal and self._pushed is not None:
                return True
            self._wake.wait(TICK_SECONDS)

    def _prepare(self) -> bool:
        """Whether the pod is ours to run: False when the API already reports it terminal."""
        pod = self._latest
        status = pod.get("status") or {}
        previous_ids = rules.previous_container_ids(status)
        if status.get("phase") in TERMINAL_PHASES:
            return False
        if any(previous_ids):
            self._adopt_lost(previous_ids)
            return True
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        if pod["spec"].get("hostNetwork"):
            self.pod_ip = HOST_IP
        else:
            self.pod_ip = self.runner.pool.allocate(preferred=status.get("podIP"))
            self._ip_allocated = True
        LOG.info("pod %s/%s: address %s", self.namespace, self.name, self.pod_ip)
        return True

    def _adopt_lost(self, container_ids: list[str]) -> None:
        """A previous runner started this pod: kill what is left of it, report it Failed."""
        for container_id in container_ids:
            pid = container_id.removeprefix("local://")
            with contextlib.suppress(OSError, ValueError):
                if Path(f"/proc/{pid}/cwd").resolve() == self.pod_dir.resolve():
                    signal_group(int(pid), signal.SIGKILL)
        status = self._latest.get("status") or {}
        lost = rules.lost_containers(status, [c.name for c in self.all_containers], rfc3339_now())
        for container in self.all_containers:
            found = lost[container.name]
            container.restart_count, container.exit_code = found.restart_count, found.exit_code
            container.state, container.done = found.state, True
        self.pod_ip = (self._latest.get("status") or {}).get("podIP")
        self.lost_message = "the local pod runner restarted and lost this pod's processes"
        self.terminal = True
        LOG.info("pod %s/%s: started by a previous runner, marking it Failed", self.namespace, self.name)

    def _step(self, clock: float) -> None:
        for container in rules.runnable(self.init_containers, self.containers):
            if container.popen is not None:
                returncode = container.popen.poll()
                if returncode is None:
                    self._probe(container, clock)
                else:
                    self._record_exit(container, returncode)
            elif not container.done and clock >= container.next_start:
                self._start(container)

    # ---------------------------------------------------------------- starting a container
    def _start(self, container: Container) -> None:
        pod = self._latest
        spec = container.spec
        try:
            defined = self.runner.container_env(pod, spec, self.pod_ip or "")
        except ContainerConfigError as err:
            container.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(err)}}
            container.next_start = time.monotonic() + CONFIG_RETRY_SECONDS
            return
        plan = rules.launch(
            spec,
            defined,
            str(container.termination_path),
            self.runner.base_env(),
            pod["spec"].get("hostname") or self.name,
            str(self.runner.python_bin_dir),
            os.environ.get("PATH", ""),
        )
        argv, env, path = plan.argv, plan.env, plan.path
        container.restart_count = rules.restart_count_at_start(
            container.restart_count, container.terminations
        )
        if not argv:
            self._start_failed(container, "the local pod runner cannot run an image entrypoint: set command")
            return
        executable = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=path)
        if executable is None:
            self._start_failed(container, f'exec: "{argv[0]}": executable file not found in $PATH')
            return
        container.termination_path.write_bytes(b"")
        container.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with container.log_path.open("ab") as log:
                container.log_offset = log.tell()
                container.popen = subprocess.Popen(
                    argv,
                    executable=executable,
                    cwd=self.pod_dir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_runner,
                )
        except OSError as err:
            self._start_failed(container, str(err))
            return
        clock = time.monotonic()
        container.pid, container.env = container.popen.pid, env
        container.ever_started = True
        container.started_at, container.started_clock = rfc3339_now(), clock
        container.state = {"running": {"startedAt": container.started_at}}
        container.probes = rules.probe_trackers(spec, container.init, clock)
        container.startup_passed = "startup" not in container.probes
        LOG.info("pod %s/%s: started %s as pid %d", self.namespace, self.name, container.name, container.pid)

    def _start_failed(self, container: Container, message: str) -> None:
        """The process could not start: terminated with StartError and exit code 128, as with runc."""
        now = rfc3339_now()
        container.started_at = now
        container.started_clock = time.monotonic()
        terminated = rules.start_error_state(message, now)
        self._finish(container, terminated["exitCode"], terminated, allow_restart=True)

    # ---------------------------------------------------------------- probes and exits
    def _probe(self, container: Container, clock: float) -> None:
        def attempt(tracker: ProbeTracker) -> None:
            tracker.record(
                run_probe(tracker.spec, container.spec, self.pod_ip or HOST_IP, container.env, self.pod_dir),
                clock,
            )

        startup = container.probes.get("startup")
        if not container.startup_passed and startup is not None:
            if startup.due(clock):
                attempt(startup)
                container.startup_passed = startup.result
                if startup.failed:
                    self._kill_and_record(container, startup.spec, "startup")
            return
        for kind in ("liveness", "readiness"):
            tracker = container.probes.get(kind)
            if tracker is not None and tracker.due(clock):
                attempt(tracker)
        liveness = container.probes.get("liveness")
        if liveness is not None and liveness.failed:
            self._kill_and_record(container, liveness.spec, "liveness")

    def _kill_and_record(self, container: Container, probe: dict[str, Any], kind: str) -> None:
        LOG.info(
            "pod %s/%s: %s probe of %s failed, killing it", self.namespace, self.name, kind, container.name
        )
        grace = rules.probe_kill_grace(probe, self._latest["spec"])
        assert container.popen is not None
        terminate_groups([container.popen], grace, self.runner.stopping, self.runner.stop_grace_seconds)
        self._record_exit(container, container.popen.returncode)

    def _record_exit(self, container: Container, returncode: int | None, allow_restart: bool = True) -> None:
        assert container.popen is not None
        signal_group(container.popen.pid, signal.SIGKILL)  # what the container left behind in its group
        container.popen = None
        # None: a process that outlived SIGKILL (uninterruptible sleep), reported as killed.
        exit_code = exit_code_of(-signal.SIGKILL if returncode is None else returncode)
        message = read_capped(container.termination_path)
        policy = container.spec.get("terminationMessagePolicy")
        if rules.falls_back_to_logs(message, policy, exit_code):
            message = log_tail(container.log_path, container.log_offset)
        terminated = rules.terminated_state(
            exit_code, container.started_at, rfc3339_now(), f"local://{container.pid}", message
        )
        LOG.info("pod %s/%s: %s exited with %d", self.namespace, self.name, container.name, exit_code)
        self._finish(container, exit_code, terminated, allow_restart)

    def _finish(
        self, container: Container, exit_code: int, terminated: dict[str, Any], allow_restart: bool
    ) -> None:
        container.terminations += 1
        clock = time.monotonic()
        outcome = rules.after_exit(
            container=container.name,
            pod=self.name,
            init=container.init,
            restart_policy=self._latest["spec"].get("restartPolicy"),
            exit_code=exit_code,
            terminated=terminated,
            allow_restart=allow_restart,
            ran_seconds=clock - container.started_clock,
            crash_streak=container.crash_streak,
        )
        container.state, container.crash_streak = outcome.state, outcome.crash_streak
        if outcome.last_state is not None:
            container.last_state = outcome.last_state
        if outcome.done:
            container.done, container.exit_code = True, exit_code
        if outcome.delay is not None:
            container.next_start = clock + outcome.delay

    # ---------------------------------------------------------------- stopping
    def _kill_all(self, grace: float) -> None:
        running = [c for c in self.all_containers if c.popen is not None]
        terminate_groups([c.popen for c in running if c.popen is not None], grace)
        for container in running:
            assert container.popen is not None
            self._record_exit(container, container.popen.returncode, allow_restart=False)

    def _delete(self, pod: dict[str, Any]) -> None:
        """Graceful deletion as the kubelet does it: each container's preStop hook, SIGTERM, SIGKILL at the
        end of the grace period, then the final delete."""
        grace = rules.deletion_grace(pod)
        running = [c for c in self.all_containers if c.popen is not None]
        if running:
            LOG.info("pod %s/%s: deleting, grace %ss", self.namespace, self.name, grace)
            self._stop_side_by_side(running, grace)
            for container in running:
                assert container.popen is not None
                self._record_exit(container, container.popen.returncode, allow_restart=False)
            self._sync_status(pod)
        self.runner.final_delete(self.namespace, self.name, self.uid)

    def _stop_side_by_side(self, containers: list[Container], grace: int) -> None:
        """As the kubelet, one thread per container: a slow hook delays no other container's SIGTERM."""
        stoppers = [
            threading.Thread(
                target=self._stop, args=(c, grace), name=f"{self.thread.name} stop {c.name}", daemon=True
            )
            for c in containers
        ]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()

    def _stop(self, container: Container, grace: int) -> None:
        """One container: its preStop hook within the grace period, then SIGTERM with what is left of it
        (never less than the minimum), then SIGKILL."""
        spent = self._pre_stop(container, grace)
        assert container.popen is not None
        window = rules.sigterm_window(grace, spent)
        terminate_groups([container.popen], window, self.runner.stopping, self.runner.stop_grace_seconds)

    def _pre_stop(self, container: Container, budget: int) -> float:
        """Runs the container's preStop hook for at most `budget` seconds; returns the seconds it took."""
        hook = (container.spec.get("lifecycle") or {}).get("preStop")
        if hook is None or not rules.runs_pre_stop(hook, budget):
            return 0.0
        started = time.monotonic()
        pod_ip, deadline = self.pod_ip or HOST_IP, started + budget
        try:
            if not run_hook(hook, container, pod_ip, self.pod_dir, deadline, self.runner.stopping):
                LOG.warning(
                    "pod %s/%s: preStop hook of %s cut short", self.namespace, self.name, container.name
                )
        except HookError as err:
            LOG.warning(
                "pod %s/%s: preStop hook of %s failed: %s", self.namespace, self.name, container.name, err
            )
            # The kubelet's message, which leaves out the hook's output: it could hold secrets.
            self.runner.record_event(self, container, "FailedPreStopHook", "PreStopHook failed")
        return time.monotonic() - started

    # ---------------------------------------------------------------- status
    def _status(self, pod: dict[str, Any]) -> dict[str, Any]:
        computed = rules.pod_status(
            pod,
            [c.view() for c in self.init_containers],
            [c.view() for c in self.containers],
            terminal=self.terminal,
            lost_message=self.lost_message,
            pod_ip=self.pod_ip,
            start_time=self.start_time,
            transitions=self._transitions,
            now=rfc3339_now(),
        )
        self.terminal, self._transitions = computed.terminal, computed.transitions
        return computed.status

    def _sync_status(self, pod: dict[str, Any]) -> None:
        status = self._status(pod)
        serialized = json.dumps(status, sort_keys=True)
        if serialized == self._pushed:
            return
        try:
            self.runner.core.patch_namespaced_pod_status(
                self.name, self.namespace, {"status": status}, _content_type=STRATEGIC_MERGE
            )
        except ApiException as err:
            self._pushed = None
            if err.status != 404:
                LOG.warning("pod %s/%s: status update failed: %s", self.namespace, self.name, err.reason)
            return
        self._pushed = serialized


# --------------------------------------------------------------------------------------------- the runner
class PodRunner:
    """A kubelet for one Node whose pods run as host processes. `start()` returns at once; `stop()` kills
    every process it started and ends its threads."""

    def __init__(
        self,
        kubeconfig: Path,
        node_name: str,
        state_dir: Path,
        python_bin_dir: Path | None = None,
        *,
        stop_grace_seconds: float = 5.0,
    ) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.node_name = node_name
        self.state_dir = Path(state_dir).resolve()
        self.python_bin_dir = Path(python_bin_dir or Path(sys.executable).parent)
        self.stop_grace_seconds = stop_grace_seconds
        self.pool = LoopbackPool()
        self.stopping = threading.Event()
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=configuration)
        # One connection per pod worker, plus the watch and the heartbeat.
        configuration.connection_pool_maxsize = 64
        self.api_client = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api_client)
        self.coordination = client.CoordinationV1Api(self.api_client)
        self._lock = threading.Lock()
        self._workers: dict[str, PodWorker] = {}
        self._finished: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._watch: watch.Watch | None = None
        self._started = False
        self._stopped = False
        self._node_uid = ""
        self._ready_since = rfc3339_now()

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> PodRunner:
        with self._lock:
            if self._started or self._stopped:
                raise RuntimeError("a PodRunner starts once")
            self._started = True
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._register_node()
        self._renew_lease()
        for target, name in ((self._heartbeat_loop, "heartbeat"), (self._watch_loop, "pod watch")):
            thread = threading.Thread(target=target, name=f"{self.node_name} {name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        LOG.info("node %s: running pods from %s", self.node_name, self.state_dir)
        return self

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self.stopping.set()
            workers = list(self._workers.values())
        if self._watch is not None:
            self._watch.stop()
        for worker in workers:
            worker.wake()
        for worker in workers:
            worker.thread.join(self.stop_grace_seconds + 15)
        for thread in self._threads:
            thread.join(15)
        self.api_client.close()
        LOG.info("node %s: stopped", self.node_name)

    def __enter__(self) -> PodRunner:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def log_path(self, namespace: str, pod: str, container: str) -> Path:
        return self.state_dir / f"{namespace}_{pod}_{container}.log"

    def base_env(self) -> dict[str, str]:
        """The runner's environment without its credentials and the project's own settings."""
        return rules.runner_env(os.environ)

    def wait_schedulable(self, timeout: float = 60.0) -> bool:
        """Whether the node became Ready without the not-ready taint (which the node controller lifts)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            node = self.core.read_node(self.node_name)
            taints = {t.key for t in node.spec.taints or []}
            ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
            if ready and "node.kubernetes.io/not-ready" not in taints:
                return True
            time.sleep(0.5)
        return False

    # ---------------------------------------------------------------- node and lease
    def _node_status(self) -> dict[str, Any]:
        return rules.node_status(self.node_name, rfc3339_now(), self._ready_since, os.uname().release)

    def _register_node(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": NODE_LABEL_TYPE,
        }
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node_name, "labels": labels}}
        try:
            node = self.core.create_node(body)
        except ApiException as err:
            if err.status != 409:
                raise
            # An existing node of this name is ours now: our labels, and no kwok annotation.
            patch = {"metadata": {"labels": labels, "annotations": {"kwok.x-k8s.io/node": None}}}
            node = self.core.patch_node(self.node_name, patch, _content_type=MERGE_PATCH)
        self._node_uid = node.metadata.uid
        self.core.patch_node_status(
            self.node_name, {"status": self._node_status()}, _content_type=STRATEGIC_MERGE
        )

    def _renew_lease(self) -> None:
        spec = {
            "holderIdentity": self.node_name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": micro_time_now(),
        }
        try:
            self.coordination.patch_namespaced_lease(
                self.node_name, NODE_LEASE_NAMESPACE, {"spec": spec}, _content_type=MERGE_PATCH
            )
        except ApiException as err:
            if err.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": self._node_uid}
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.node_name,
                    "namespace": NODE_LEASE_NAMESPACE,
                    "ownerReferences": [owner],
                },
                "spec": spec,
            }
            self.coordination.create_namespaced_lease(NODE_LEASE_NAMESPACE, lease)

    def _heartbeat_loop(self) -> None:
        while not self.stopping.wait(HEARTBEAT_SECONDS):
            try:
                self.core.patch_node_status(
                    self.node_name, {"status": self._node_status()}, _content_type=STRATEGIC_MERGE
                )
                self._renew_lease()
            except ApiException as err:
                if err.status == 404:
                    LOG.warning("node %s: gone, registering it again", self.node_name)
                    with contextlib.suppress(Exception):
                        self._register_node()
                else:
                    LOG.warning("node %s: heartbeat failed: %s", self.node_name, err.reason)
            except Exception as err:
                LOG.warning("node %s: heartbeat failed: %s", self.node_name, err)

    # ---------------------------------------------------------------- pods
    def _watch_loop(self) -> None:
        selector = f"spec.nodeName={self.node_name}"
        while not self.stopping.is_set():
            try:
                listing = json.loads(
                    self.core.list_pod_for_all_namespaces(
                        field_selector=selector, _preload_content=False
                    ).data
                )
                version = listing["metadata"]["resourceVersion"]
                present = {pod["metadata"]["uid"] for pod in listing["items"]}
                for pod in listing["items"]:
                    self._on_pod(pod)
                with self._lock:
                    gone = [w for uid, w in self._workers.items() if uid not in present]
                for worker in gone:
                    worker.vanish()
                while not self.stopping.is_set():
                    self._watch = watch.Watch()
                    events = self._watch.stream(
                        self.core.list_pod_for_all_namespaces,
                        field_selector=selector,
                        resource_version=version,
                        allow_watch_bookmarks=True,
                        timeout_seconds=60,
                    )
                    for event in events:
                        pod = event["raw_object"]
                        version = pod["metadata"].get("resourceVersion", version)
                        if event["type"] in {"ADDED", "MODIFIED"}:
                            self._on_pod(pod)
                        elif event["type"] == "DELETED":
                            self._on_deleted(pod)
            except Exception as err:
                if self.stopping.is_set():
                    return
                # A 410 (expired resourceVersion) or a broken connection: list again and watch from there.
                LOG.info("node %s: pod watch restarts after %s", self.node_name, err)
                self.stopping.wait(1.0)

    def _on_pod(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            if self.stopping.is_set() or uid in self._finished:
                return
            worker = self._workers.get(uid)
            if worker is None:
                if (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
                    self._finished.add(uid)
                    return
                worker = self._workers[uid] = PodWorker(self, pod)
                worker.thread.start()
                return
        worker.update(pod)

    def _on_deleted(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            self._finished.discard(uid)
            worker = self._workers.get(uid)
        if worker is not None:
            worker.vanish()

    def worker_done(self, worker: PodWorker, finished: bool) -> None:
        """A worker ended. A pod it finished is ignored until it is deleted, so it never runs twice."""
        with self._lock:
            if finished:
                self._finished.add(worker.uid)
            self._workers.pop(worker.uid, None)

    def final_delete(self, namespace: str, name: str, uid: str) -> None:
        """The kubelet's last word on a deleted pod: remove the object, if it is still the same pod."""
        options = client.V1DeleteOptions(
            grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
        )
        try:
            self.core.delete_namespaced_pod(name, namespace, body=options)
        except ApiException as err:
            if err.status not in {404, 409}:
                raise

    def record_event(self, worker: PodWorker, container: Container, reason: str, message: str) -> None:
        """A Warning event on one container, as the kubelet records it; one that fails is only logged."""
        event = rules.warning_event(
            namespace=worker.namespace,
            pod=worker.name,
            uid=worker.uid,
            container=container.name,
            init=container.init,
            reason=reason,
            message=message,
            node_name=self.node_name,
            now=rfc3339_now(),
        )
        try:
            self.core.create_namespaced_event(worker.namespace, event)
        except ApiException as err:
            LOG.warning("node %s: event %s not recorded: %s", self.node_name, reason, err.reason)

    # ---------------------------------------------------------------- env
    def container_env(self, pod: dict[str, Any], container: dict[str, Any], pod_ip: str) -> dict[str, str]:
        """The container's own variables, resolved and expanded as the kubelet does."""
        namespace = pod["metadata"]["namespace"]

        def lookup(kind: str, name: str) -> dict[str, str] | None:
            return self._read_source(kind, namespace, name)

        return rules.container_env(pod, container, pod_ip, self.node_name, lookup)

    def _read_source(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        try:
            if kind == "Secret":
                secret = self.core.read_namespaced_secret(name, namespace)
                return {
                    k: base64.b64decode(v).decode(errors="surrogateescape")
                    for k, v in (secret.data or {}).items()
                }
            config_map = self.core.read_namespaced_config_map(name, namespace)
            binary = {
                k: base64.b64decode(v).decode(errors="surrogateescape")
                for k, v in (config_map.binary_data or {}).items()
            }
            return {**binary, **(config_map.data or {})}
        except ApiException as err:
            if err.status == 404:
                return None
            raise ContainerConfigError(f"cannot read {kind} {namespace}/{name}: {err.reason}") from err


# --------------------------------------------------------------------------------------------- shell
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kubeconfig", type=Path, default=os.environ.get("KUBECONFIG"), required=False)
    parser.add_argument("--node", required=True, help="the Node to register and run pods for")
    parser.add_argument("--state-dir", type=Path, required=True, help="pod directories and container logs")
    parser.add_argument("--python-bin-dir", type=Path, help="first on PATH (default: this Python's bin)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.kubeconfig is None:
        parser.error("--kubeconfig (or KUBECONFIG) is required")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(threadName)s: %(message)s")
    stop_requested = threading.Event()

    def request_stop(*_: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with PodRunner(args.kubeconfig, args.node, args.state_dir, args.python_bin_dir):
        while not stop_requested.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
