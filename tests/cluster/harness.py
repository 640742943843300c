#!/usr/bin/env python3
"""A real, throwaway Kubernetes control plane with Prometheus and an S3 server, on loopback.

Starts etcd, kube-apiserver (RBAC on), kube-controller-manager, kube-scheduler, kwok with fake nodes,
Prometheus and versitygw from the binaries that `tests/cluster/build.sh` caches, each on a free port,
inside one directory, each logging to `<dir>/logs/<component>.log`. COMPONENTS lists them in start order with
their command line, readiness check and timeout; `cluster.stop_component(name)` and `start_component(name)`
stop one and run it again as it was (same ports, credentials and data), for fault-injection tests.

Shell:  harness.py up [--dir .cluster]     start in the background, write <dir>/env, return
        harness.py down [--dir .cluster]   stop a background cluster
        harness.py run [--dir .cluster]    run in the foreground until Ctrl-C
pytest: `Cluster.start(directory)` / `cluster.stop()` (see tests/conftest.py).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LOCALHOST = "127.0.0.1"
ADMIN_USER = "fbl-admin"
PLAIN_USER = "fbl-user"
S3_REGION = "us-east-1"
DEFAULT_FAKE_NODES = 2
# Debian's package (build.sh installs it); the harness runs the binary itself, never the service.
REDIS_SERVER = Path("/usr/bin/redis-server")
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
# A pod annotated `<this>: fail` terminates with exit code 1 and the message in KWOK_MESSAGE_ANNOTATION; with
# `<this>: oom`, with exit code 137 and reason OOMKilled, as the kubelet reports it; a Job pod without it
# completes with that message, if any (what a trainer reports on success).
KWOK_OUTCOME_ANNOTATION = "kwok.feedbackloop.dev/outcome"
KWOK_MESSAGE_ANNOTATION = "kwok.feedbackloop.dev/message"
# A pod whose MODEL_URI contains this marker never becomes ready: a rollout that cannot progress.
NEVER_READY_MARKER = "never-ready"
NEVER_READY_EXPRESSION = (
    '.spec.containers.[] | .env // [] | .[] | select(.name == "MODEL_URI") | .value'
    f' | contains("{NEVER_READY_MARKER}")'
)
KWOK_FAIL_TEMPLATE = (
    "{{ $now := Now }}\n"
    "containerStatuses:\n"
    "{{ range $index, $item := .spec.containers }}\n"
    "- image: {{ $item.image | Quote }}\n"
    "  name: {{ $item.name | Quote }}\n"
    "  ready: false\n"
    "  restartCount: 0\n"
    "  started: false\n"
    "  state:\n"
    "    terminated:\n"
    "      exitCode: 1\n"
    "      reason: Error\n"
    f'      message: {{{{ index $.metadata.annotations "{KWOK_MESSAGE_ANNOTATION}" | Quote }}}}\n'
    "      startedAt: {{ $now | Quote }}\n"
    "      finishedAt: {{ $now | Quote }}\n"
    "{{ end }}\n"
    "phase: Failed\n"
)
KWOK_OOM_TEMPLATE = KWOK_FAIL_TEMPLATE.replace("exitCode: 1\n", "exitCode: 137\n").replace(
    "reason: Error\n", "reason: OOMKilled\n"
)
KWOK_SUCCESS_MESSAGE = (
    "{{ with $root.metadata.annotations }}"
    f'{{{{ with index . "{KWOK_MESSAGE_ANNOTATION}" }}}}'
    "      message: {{ . | Quote }}\n"
    "{{ end }}{{ end }}"
)
CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "job-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "node-lifecycle-controller",
    "ttl-after-finished-controller",
    "clusterrole-aggregation-controller",
)


T = TypeVar("T")


def wait_until(
    probe: Callable[[], T], done: Callable[[T], bool], timeout: float, interval: float = 0.25
) -> T:
    """Poll `probe` until `done(result)`; return the last result, which the caller asserts on."""
    deadline = time.monotonic() + timeout
    result = probe()
    while not done(result) and time.monotonic() < deadline:
        time.sleep(interval)
        result = probe()
    return result


class ClusterStartError(RuntimeError):
    """A component did not start; the message carries the tail of its log."""


def read_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for line in (HERE / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            versions[key] = value
    return versions


def cache_bin_dir() -> Path:
    root = os.environ.get("FBL_CACHE_DIR") or str(Path.home() / ".cache" / "feedbackloop")
    return Path(root) / "bin"


def binary_paths() -> dict[str, Path]:
    v = read_versions()
    bins = cache_bin_dir()
    paths = {
        "etcd": bins / f"etcd-{v['ETCD_VERSION']}",
        "kube-apiserver": bins / f"kube-apiserver-{v['K8S_VERSION']}",
        "kube-controller-manager": bins / f"kube-controller-manager-{v['K8S_VERSION']}",
        "kube-scheduler": bins / f"kube-scheduler-{v['K8S_VERSION']}",
        "kubectl": bins / f"kubectl-{v['K8S_VERSION']}",
        "kwok": bins / f"kwok-{v['KWOK_VERSION']}",
        "versitygw": bins / f"versitygw-{v['VERSITYGW_VERSION']}",
    }
    paths["kwok-stages"] = bins.parent / f"kwok-stages-{v['KWOK_VERSION']}.yaml"
    paths["prometheus"] = bins / f"prometheus-{v['PROMETHEUS_VERSION']}"
    paths["helm"] = bins / f"helm-{v['HELM_VERSION']}"
    paths["promtool"] = bins / f"promtool-{v['PROMETHEUS_VERSION']}"
    paths["redis-server"] = REDIS_SERVER
    return paths


def missing_binaries() -> list[str]:
    return [name for name, path in binary_paths().items() if not os.access(path, os.R_OK)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


# Loaded once here: loading a library inside preexec_fn (the forked child) can deadlock a threaded parent.
_LIBC = ctypes.CDLL("libc.so.6", use_errno=True)


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: a child is killed if the harness dies, so a crash never leaves servers behind.
    _LIBC.prctl(1, signal.SIGKILL)


def tail(path: Path, lines: int = 40) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(content[-lines:])


def run_checked(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload,no-any-return]


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    # What it was started with: a restart runs the same command line (ports, data directory) and env.
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None


@dataclass
class Endpoints:
    """What a client needs; also what `<dir>/env` exports."""

    directory: Path
    kubeconfig: Path
    limited_kubeconfig: Path
    api_server_url: str
    admin_token: str
    user_token: str
    ca_file: Path
    prometheus_url: str
    s3_endpoint_url: str
    s3_access_key: str
    s3_secret_key: str
    bin_dir: Path
    prometheus_targets_file: Path
    redis_url: str = ""

    def env(self) -> dict[str, str]:
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "LIMITED_KUBECONFIG": str(self.limited_kubeconfig),
            "PROMETHEUS_URL": self.prometheus_url,
            "S3_ENDPOINT_URL": self.s3_endpoint_url,
            "AWS_ACCESS_KEY_ID": self.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_key,
            "AWS_DEFAULT_REGION": S3_REGION,
            "FBL_CLUSTER_DIR": str(self.directory),
            "FBL_PROMETHEUS_TARGETS_FILE": str(self.prometheus_targets_file),
            "REDIS_URL": self.redis_url,
        }

    def write_env_file(self, path: Path) -> None:
        lines = [f"export {key}={_shell_quote(value)}" for key, value in self.env().items()]
        lines.append(f'export PATH={_shell_quote(str(self.bin_dir))}:"$PATH"')
        path.write_text("\n".join(lines) + "\n")

    @classmethod
    def from_env_file(cls, path: Path) -> Endpoints:
        values: dict[str, str] = {}
        for line in path.read_text().splitlines():
            if line.startswith("export ") and "=" in line:
                key, _, raw = line.removeprefix("export ").partition("=")
                values[key] = _shell_unquote(raw)
        directory = Path(values["FBL_CLUSTER_DIR"])
        meta = json.loads((directory / "endpoints.json").read_text())
        return cls(
            directory=directory,
            kubeconfig=Path(values["KUBECONFIG"]),
            limited_kubeconfig=Path(values["LIMITED_KUBECONFIG"]),
            api_server_url=meta["api_server_url"],
            admin_token=meta["admin_token"],
            user_token=meta["user_token"],
            ca_file=Path(meta["ca_file"]),
            prometheus_url=values["PROMETHEUS_URL"],
            s3_endpoint_url=values["S3_ENDPOINT_URL"],
            s3_access_key=values["AWS_ACCESS_KEY_ID"],
            s3_secret_key=values["AWS_SECRET_ACCESS_KEY"],
            bin_dir=directory / "bin",
            prometheus_targets_file=Path(values["FBL_PROMETHEUS_TARGETS_FILE"]),
            redis_url=values["REDIS_URL"],
        )


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _shell_unquote(value: str) -> str:
    if value.startswith("'") and value.endswith("'"):
        return value[1:-1].replace("'\\''", "'")
    return value


# -------------------------------------------------------------------- components
@dataclass(frozen=True)
class Component:
    """One server of the cluster: its command line, how to tell it is ready and how long to wait for that.

    Builders take the Cluster, whose `port(key)` gives the same free port on every call. `prepare` runs
    once, before the first start (config files, credentials); a restart reuses the first start's argv and
    env, so the ports, credentials and data directory stay the same."""

    name: str
    argv: Callable[[Cluster], list[str]]
    ready: Callable[[Cluster], bool]
    timeout: float
    env: Callable[[Cluster], dict[str, str]] | None = None
    prepare: Callable[[Cluster], None] | None = None
    # The readiness check's name in messages, when it is not the component itself.
    readiness: str = ""
    # Spawned together with the next component; both are ready before the one after that starts.
    with_next: bool = False
    # Waited for after all the others: nothing needs it to start, and it takes longest.
    ready_last: bool = False
    # The key of Cluster.timings that records when it was first ready.
    timing: str = ""

    @property
    def log(self) -> str:
        """Its stdout and stderr, relative to the cluster directory."""
        return f"logs/{self.name}.log"


def _endpoints(cluster: Cluster) -> Endpoints:
    assert cluster.endpoints is not None, "the cluster directory is laid out before any component starts"
    return cluster.endpoints


def _etcd_argv(cluster: Cluster) -> list[str]:
    port, peer = cluster.port("etcd"), cluster.port("etcd-peer")
    return [
        str(cluster.bins["etcd"]),
        "--name=fbl",
        f"--data-dir={cluster.directory / 'etcd'}",
        f"--listen-client-urls=http://{LOCALHOST}:{port}",
        f"--advertise-client-urls=http://{LOCALHOST}:{port}",
        f"--listen-peer-urls=http://{LOCALHOST}:{peer}",
        f"--initial-advertise-peer-urls=http://{LOCALHOST}:{peer}",
        f"--initial-cluster=fbl=http://{LOCALHOST}:{peer}",
        "--unsafe-no-fsync",
        "--quota-backend-bytes=4294967296",
        f"--listen-metrics-urls=http://{LOCALHOST}:{cluster.port('etcd-metrics')}",
    ]


def _etcd_ready(cluster: Cluster) -> bool:
    return _http_ok(f"http://{LOCALHOST}:{cluster.port('etcd')}/health")


def _apiserver_argv(cluster: Cluster) -> list[str]:
    pki = cluster.directory / "pki"
    return [
        str(cluster.bins["kube-apiserver"]),
        f"--etcd-servers=http://{LOCALHOST}:{cluster.port('etcd')}",
        f"--bind-address={LOCALHOST}",
        f"--advertise-address={LOCALHOST}",
        f"--secure-port={cluster.port('kube-apiserver')}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--cert-dir={pki}",
        "--service-cluster-ip-range=10.0.0.0/24",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--token-auth-file={pki / 'tokens.csv'}",
        "--authorization-mode=RBAC",
        "--endpoint-reconciler-type=none",
        "--allow-privileged=true",
        "--enable-priority-and-fairness=false",
        "--storage-media-type=application/json",
    ]


def _apiserver_ready(cluster: Cluster) -> bool:
    endpoints = _endpoints(cluster)
    context = ssl.create_default_context(cafile=str(endpoints.ca_file))
    return _http_ok(f"{endpoints.api_server_url}/readyz", token=endpoints.admin_token, context=context)


def _controller_manager_argv(cluster: Cluster) -> list[str]:
    kubeconfig, pki = _endpoints(cluster).kubeconfig, cluster.directory / "pki"
    return [
        str(cluster.bins["kube-controller-manager"]),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        # No front-proxy CA exists here; looking it up only fills the log with errors.
        "--authentication-skip-lookup=true",
        "--leader-elect=false",
        f"--bind-address={LOCALHOST}",
        f"--secure-port={cluster.port('kube-controller-manager')}",
        f"--cert-dir={pki / 'controller-manager'}",
        f"--controllers={','.join(CONTROLLERS)}",
        "--node-monitor-grace-period=1h",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}",
        "--use-service-account-credentials=false",
    ]


def _scheduler_argv(cluster: Cluster) -> list[str]:
    kubeconfig = _endpoints(cluster).kubeconfig
    return [
        str(cluster.bins["kube-scheduler"]),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        # No front-proxy CA exists here; looking it up only fills the log with errors.
        "--authentication-skip-lookup=true",
        "--leader-elect=false",
        f"--bind-address={LOCALHOST}",
        f"--secure-port={cluster.port('kube-scheduler')}",
        f"--cert-dir={cluster.directory / 'pki' / 'scheduler'}",
    ]


def _healthz(name: str) -> Callable[[Cluster], bool]:
    def ready(cluster: Cluster) -> bool:
        # The component's own self-signed serving certificate: nothing to verify it against.
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        return _http_ok(f"https://{LOCALHOST}:{cluster.port(name)}/healthz", context=insecure)

    return ready


def _prepare_kwok(cluster: Cluster) -> None:
    _write_kwok_stages(cluster, cluster.bins["kwok-stages"])
    _create_fake_nodes(cluster)


def _kwok_argv(cluster: Cluster) -> list[str]:
    return [
        str(cluster.bins["kwok"]),
        f"--kubeconfig={_endpoints(cluster).kubeconfig}",
        f"--config={cluster.directory / 'kwok-stages.yaml'}",
        "--node-lease-duration-seconds=40",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
        f"--server-address={LOCALHOST}:{cluster.port('kwok')}",
        "--node-ip=127.0.0.1",
        "--cidr=10.244.0.0/16",
    ]


def _write_kwok_stages(cluster: Cluster, upstream: Path) -> Path:
    """kwok's default stages plus one the tests use: a Job pod annotated to fail does, with a message."""
    stages = [stage for stage in yaml.safe_load_all(upstream.read_text()) if stage]
    outcome_key = f'.metadata.annotations["{KWOK_OUTCOME_ANNOTATION}"]'
    for stage in stages:
        expressions = stage["spec"]["selector"].get("matchExpressions", [])
        if stage["metadata"]["name"] == "pod-complete":
            expressions.append({"key": outcome_key, "operator": "DoesNotExist"})
            stage["spec"]["next"]["statusTemplate"] = stage["spec"]["next"]["statusTemplate"].replace(
                "reason: Completed\n", "reason: Completed\n" + KWOK_SUCCESS_MESSAGE
            )
        if stage["metadata"]["name"] == "pod-ready":
            expressions.append({"key": NEVER_READY_EXPRESSION, "operator": "NotIn", "values": ["true"]})
    stages.append(
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Stage",
            "metadata": {"name": "pod-fail-on-request"},
            "spec": {
                "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
                "selector": {
                    "matchAnnotations": {KWOK_OUTCOME_ANNOTATION: "fail"},
                    "matchExpressions": [
                        {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                        {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                    ],
                },
                "next": {"statusTemplate": KWOK_FAIL_TEMPLATE},
            },
        }
    )
    stages.append(
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Stage",
            "metadata": {"name": "pod-oom-on-request"},
            "spec": {
                "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
                "selector": {
                    "matchAnnotations": {KWOK_OUTCOME_ANNOTATION: "oom"},
                    "matchExpressions": [
                        {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                        {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                    ],
                },
                "next": {"statusTemplate": KWOK_OOM_TEMPLATE},
            },
        }
    )
    path = cluster.directory / "kwok-stages.yaml"
    path.write_text(yaml.safe_dump_all(stages, sort_keys=False))
    return path


def _create_fake_nodes(cluster: Cluster) -> None:
    # What a real node reports, ephemeral-storage included: a pod requesting it is unschedulable without.
    resources = {"cpu": "32", "memory": "256Gi", "ephemeral-storage": "100Gi", "pods": "110"}
    for index in range(cluster.fake_nodes):
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": f"kwok-node-{index}",
                "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": f"kwok-node-{index}",
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                },
            },
            "status": {"allocatable": resources, "capacity": resources},
        }
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(node))


def _kwok_nodes_ready(cluster: Cluster) -> bool:
    result = cluster.kubectl(
        "get",
        "nodes",
        "-l",
        "type=kwok",
        "-o",
        'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
        check=False,
    )
    statuses = result.stdout.split()
    return (
        result.returncode == 0 and len(statuses) == cluster.fake_nodes and all(s == "True" for s in statuses)
    )


def _pod_discovery_job(endpoints: Endpoints, prom_dir: Path) -> str:
    """Pods found through the API server and the usual prometheus.io/* annotations, as in a cluster."""
    token = prom_dir / "discovery-token"
    token.write_text(endpoints.admin_token)
    token.chmod(0o600)
    return (
        "  - job_name: kubernetes-pods\n"
        # The operator's per-loop metrics name their loop's namespace: keep it, not exported_namespace.
        "    honor_labels: true\n"
        "    kubernetes_sd_configs:\n"
        "      - role: pod\n"
        f"        api_server: {endpoints.api_server_url}\n"
        f"        tls_config: {{ca_file: '{endpoints.ca_file}'}}\n"
        f"        authorization: {{credentials_file: '{token}'}}\n"
        "    relabel_configs:\n"
        "      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]\n"
        "        regex: 'true'\n"
        "        action: keep\n"
        "      - source_labels: [__meta_kubernetes_pod_phase]\n"
        "        regex: Pending|Succeeded|Failed|Unknown\n"
        "        action: drop\n"
        "      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_path]\n"
        "        regex: (.+)\n"
        "        target_label: __metrics_path__\n"
        "      - source_labels: [__address__, __meta_kubernetes_pod_annotation_prometheus_io_port]\n"
        "        regex: '([^:]+)(?::\\d+)?;(\\d+)'\n"
        "        replacement: '$1:$2'\n"
        "        target_label: __address__\n"
        "      - source_labels: [__meta_kubernetes_namespace]\n"
        "        target_label: namespace\n"
        "      - source_labels: [__meta_kubernetes_pod_name]\n"
        "        target_label: pod\n"
    )


def _prepare_prometheus(cluster: Cluster) -> None:
    endpoints = _endpoints(cluster)
    port = cluster.port("prometheus")
    prom_dir = cluster.directory / "prometheus"
    endpoints.prometheus_targets_file.write_text("[]\n")
    (prom_dir / "prometheus.yml").write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: prometheus\n"
        "    static_configs:\n"
        f"      - targets: ['{LOCALHOST}:{port}']\n"
        # Tests register their own exporters here; Prometheus watches the file.
        "  - job_name: test-targets\n"
        "    file_sd_configs:\n"
        f"      - files: ['{endpoints.prometheus_targets_file}']\n"
        "        refresh_interval: 1s\n" + _pod_discovery_job(endpoints, prom_dir)
    )
    endpoints.prometheus_url = f"http://{LOCALHOST}:{port}"


def _prometheus_argv(cluster: Cluster) -> list[str]:
    prom_dir = cluster.directory / "prometheus"
    return [
        str(cluster.bins["prometheus"]),
        f"--config.file={prom_dir / 'prometheus.yml'}",
        f"--storage.tsdb.path={prom_dir / 'data'}",
        f"--web.listen-address={LOCALHOST}:{cluster.port('prometheus')}",
        "--web.enable-lifecycle",
        "--web.enable-admin-api",
        "--storage.tsdb.retention.time=1d",
    ]


def _prometheus_ready(cluster: Cluster) -> bool:
    return _http_ok(f"{_endpoints(cluster).prometheus_url}/-/ready")


def _prepare_versitygw(cluster: Cluster) -> None:
    endpoints = _endpoints(cluster)
    endpoints.s3_endpoint_url = f"http://{LOCALHOST}:{cluster.port('versitygw')}"
    endpoints.s3_access_key = "fbl" + secrets.token_hex(6)
    endpoints.s3_secret_key = secrets.token_urlsafe(24)


def _versitygw_env(cluster: Cluster) -> dict[str, str]:
    endpoints = _endpoints(cluster)
    return {
        **os.environ,
        "ROOT_ACCESS_KEY": endpoints.s3_access_key,
        "ROOT_SECRET_KEY": endpoints.s3_secret_key,
    }


def _versitygw_argv(cluster: Cluster) -> list[str]:
    return [
        str(cluster.bins["versitygw"]),
        "--port",
        f"{LOCALHOST}:{cluster.port('versitygw')}",
        "--region",
        S3_REGION,
        "posix",
        "--sidecar",
        str(cluster.directory / "s3" / "meta"),
        str(cluster.directory / "s3" / "data"),
    ]


def _versitygw_ready(cluster: Cluster) -> bool:
    # Any HTTP answer (an unsigned request gets 403) means the gateway is serving.
    return _http_answers(_endpoints(cluster).s3_endpoint_url)


def _prepare_redis(cluster: Cluster) -> None:
    """The model servers' shared prediction store, with a password and an append-only file."""
    password = cluster.credentials["redis"] = secrets.token_urlsafe(18)
    _endpoints(cluster).redis_url = f"redis://:{password}@{LOCALHOST}:{cluster.port('redis')}/0"


def _redis_argv(cluster: Cluster) -> list[str]:
    port, password = cluster.port("redis"), cluster.credentials["redis"]
    return [
        str(REDIS_SERVER),
        "--bind", LOCALHOST, "--port", str(port), "--requirepass", password,
        "--dir", str(cluster.directory / "redis"), "--appendonly", "yes", "--appendfsync", "everysec",
        "--save", "", "--daemonize", "no", "--loglevel", "warning",
    ]  # fmt: skip


def _redis_ready(cluster: Cluster) -> bool:
    return _redis_answers(cluster.port("redis"), cluster.credentials["redis"])


# Started in this order, each ready before the next starts (but for with_next and ready_last).
COMPONENTS: tuple[Component, ...] = (
    Component("etcd", _etcd_argv, _etcd_ready, timeout=60),
    Component("kube-apiserver", _apiserver_argv, _apiserver_ready, timeout=120, timing="apiserver_ready_s"),
    Component(
        "kube-controller-manager",
        _controller_manager_argv,
        _healthz("kube-controller-manager"),
        timeout=60,
        with_next=True,
    ),
    Component("kube-scheduler", _scheduler_argv, _healthz("kube-scheduler"), timeout=60),
    Component(
        "kwok",
        _kwok_argv,
        _kwok_nodes_ready,
        timeout=90,
        prepare=_prepare_kwok,
        readiness="kwok nodes",
        ready_last=True,
    ),
    Component("prometheus", _prometheus_argv, _prometheus_ready, timeout=60, prepare=_prepare_prometheus),
    Component(
        "versitygw",
        _versitygw_argv,
        _versitygw_ready,
        timeout=60,
        env=_versitygw_env,
        prepare=_prepare_versitygw,
    ),
    Component("redis", _redis_argv, _redis_ready, timeout=30, prepare=_prepare_redis),
)
COMPONENT_ORDER = {component.name: index for index, component in enumerate(COMPONENTS)}


def component_named(name: str) -> Component:
    if name not in COMPONENT_ORDER:
        raise ValueError(f"no component {name!r}; there are {list(COMPONENT_ORDER)}")
    return COMPONENTS[COMPONENT_ORDER[name]]


@dataclass
class Cluster:
    directory: Path
    fake_nodes: int = DEFAULT_FAKE_NODES
    processes: list[Process] = field(default_factory=list)
    endpoints: Endpoints | None = None
    timings: dict[str, float] = field(default_factory=dict)
    bins: dict[str, Path] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    # Generated for a component before its first start and kept for its restarts (the Redis password).
    credentials: dict[str, str] = field(default_factory=dict)
    # Components stop_component stopped, as they ran: start_component runs them the same way.
    stopped: dict[str, Process] = field(default_factory=dict)

    # ---------------------------------------------------------------- lifecycle
    @classmethod
    def start(cls, directory: Path, fake_nodes: int = DEFAULT_FAKE_NODES) -> Cluster:
        missing = missing_binaries()
        if missing:
            raise ClusterStartError(
                f"missing binaries {missing}; run tests/cluster/build.sh (cache: {cache_bin_dir()})"
            )
        cluster = cls(directory=directory.resolve(), fake_nodes=fake_nodes)
        try:
            cluster._start_all()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def stop(self) -> None:
        for proc in reversed(self.processes):
            _terminate(proc.popen)
        self.processes.clear()
        # A component stopped on its own stays stopped: nothing is left to start it against.
        self.stopped.clear()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def log_tails(self, lines: int = 30) -> str:
        logs = sorted((self.directory / "logs").glob("*.log"))
        return "\n".join(f"----- {log.name} (last {lines} lines) -----\n{tail(log, lines)}" for log in logs)

    def check_alive(self) -> None:
        dead = [p.name for p in self.processes if p.popen.poll() is not None]
        if dead:
            raise ClusterStartError(f"components exited: {dead}\n{self.log_tails()}")

    # ---------------------------------------------------------------- one component
    def port(self, key: str) -> int:
        """A free port for `key`, the same on every call: a restarted component listens where it did."""
        if key not in self.ports:
            self.ports[key] = free_port()
        return self.ports[key]

    def stop_component(self, name: str, grace: float = 10.0) -> None:
        """Stops one running component: SIGTERM, then SIGKILL after `grace` seconds (0: at once)."""
        process = next((p for p in self.processes if p.name == name), None)
        if process is None:
            raise ValueError(f"{name} is not running; running: {[p.name for p in self.processes]}")
        _terminate(process.popen, grace)
        self.processes.remove(process)
        self.stopped[name] = process

    def start_component(self, name: str) -> None:
        """Runs a component stop_component stopped again, with the same argv, env, ports and data directory,
        and waits until it is ready (ClusterStartError with its log's tail when it is not in time)."""
        process = self.stopped.pop(name, None)
        if process is None:
            raise ValueError(f"{name} was not stopped with stop_component")
        component = component_named(name)
        self._spawn(component, process.argv, process.env)
        # stop() goes in reverse start order: etcd still stops last.
        self.processes.sort(key=lambda p: COMPONENT_ORDER[p.name])
        self._await(component)

    def restart_component(self, name: str, grace: float = 10.0) -> None:
        """stop_component, then start_component: its data and ports survive, its process does not."""
        self.stop_component(name, grace)
        self.start_component(name)

    # ---------------------------------------------------------------- helpers for tests
    def kubectl(
        self, *args: str, limited: bool = False, check: bool = True, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        assert self.endpoints is not None
        kubeconfig = self.endpoints.limited_kubeconfig if limited else self.endpoints.kubeconfig
        return subprocess.run(
            [str(self.endpoints.bin_dir / "kubectl"), "--kubeconfig", str(kubeconfig), *args],
            check=check,
            capture_output=True,
            text=True,
            input=input_text,
            timeout=120,
        )

    # ---------------------------------------------------------------- start-up
    def _start_all(self) -> None:
        started = time.monotonic()
        self._lay_out()
        batch: list[Component] = []
        last: list[Component] = []
        for component in COMPONENTS:
            if component.prepare is not None:
                component.prepare(self)
            env = component.env(self) if component.env is not None else None
            self._spawn(component, component.argv(self), env)
            batch.append(component)
            if component.with_next:
                continue
            for spawned in batch:
                if spawned.ready_last:
                    last.append(spawned)
                else:
                    self._await(spawned, started)
            batch.clear()
        for spawned in last:
            self._await(spawned, started)
        self.timings["all_ready_s"] = time.monotonic() - started
        self._write_endpoints()

    def _lay_out(self) -> None:
        """The directory, PKI, tokens, kubeconfigs and endpoints: everything that needs no process."""
        self.bins = binary_paths()
        d = self.directory
        for sub in ("logs", "pki", "bin", "etcd", "prometheus", "s3/data", "s3/meta", "redis"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        for name in ("kubectl", "helm", "promtool"):
            link = d / "bin" / name
            if not link.exists():
                link.symlink_to(self.bins[name])

        pki = self._make_pki()
        admin_token, user_token = secrets.token_hex(16), secrets.token_hex(16)
        (pki / "tokens.csv").write_text(
            f'{admin_token},{ADMIN_USER},uid-admin,"system:masters"\n{user_token},{PLAIN_USER},uid-user\n'
        )
        api_url = f"https://{LOCALHOST}:{self.port('kube-apiserver')}"
        kubeconfig = d / "admin.kubeconfig"
        limited = d / "user.kubeconfig"
        write_kubeconfig(kubeconfig, api_url, pki / "ca.crt", ADMIN_USER, admin_token)
        write_kubeconfig(limited, api_url, pki / "ca.crt", PLAIN_USER, user_token)
        self.endpoints = Endpoints(
            directory=d,
            kubeconfig=kubeconfig,
            limited_kubeconfig=limited,
            api_server_url=api_url,
            admin_token=admin_token,
            user_token=user_token,
            ca_file=pki / "ca.crt",
            prometheus_url="",
            s3_endpoint_url="",
            s3_access_key="",
            s3_secret_key="",
            bin_dir=d / "bin",
            prometheus_targets_file=d / "prometheus" / "targets.json",
        )

    def _write_endpoints(self) -> None:
        endpoints = _endpoints(self)
        path = self.directory / "endpoints.json"
        path.write_text(
            json.dumps(
                {
                    "api_server_url": endpoints.api_server_url,
                    "admin_token": endpoints.admin_token,
                    "user_token": endpoints.user_token,
                    "ca_file": str(endpoints.ca_file),
                    "pids": {p.name: p.popen.pid for p in self.processes},
                    "timings": self.timings,
                },
                indent=2,
            )
        )
        path.chmod(0o600)
        endpoints.write_env_file(self.directory / "env")

    def _await(self, component: Component, since: float | None = None) -> None:
        self._wait(component.readiness or component.name, lambda: component.ready(self), component.timeout)
        if component.timing and since is not None:
            self.timings[component.timing] = time.monotonic() - since

    def _make_pki(self) -> Path:
        pki = self.directory / "pki"
        if (pki / "apiserver.crt").exists():
            return pki

        def openssl(*args: str) -> None:
            run_checked(["openssl", *args], cwd=pki)

        openssl("genrsa", "-out", "ca.key", "2048")
        openssl(
            "req", "-x509", "-new", "-nodes", "-key", "ca.key", "-subj", "/CN=fbl-test-ca",
            "-days", "30", "-out", "ca.crt",
        )  # fmt: skip
        openssl("genrsa", "-out", "apiserver.key", "2048")
        openssl(
            "req", "-new", "-key", "apiserver.key", "-subj", "/CN=kube-apiserver", "-out", "apiserver.csr"
        )
        (pki / "san.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,IP:10.0.0.1\n"
            "extendedKeyUsage=serverAuth\n"
        )
        openssl(
            "x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "30", "-extfile", "san.ext", "-out", "apiserver.crt",
        )  # fmt: skip
        openssl("genrsa", "-out", "sa.key", "2048")
        openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")
        for key in pki.glob("*.key"):
            key.chmod(0o600)
        return pki

    def _spawn(self, component: Component, args: list[str], env: dict[str, str] | None = None) -> None:
        log = self.directory / component.log
        handle = log.open("ab")
        popen = subprocess.Popen(
            args,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.directory,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        handle.close()
        self.processes.append(Process(component.name, popen, log, args, env))

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [p for p in self.processes if p.popen.poll() is not None]
            if dead:
                raise ClusterStartError(
                    f"{dead[0].name} exited with {dead[0].popen.returncode} while waiting for {what}:\n"
                    f"{tail(dead[0].log)}"
                )
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.2)
        raise ClusterStartError(f"{what} not ready after {timeout}s\n{self.log_tails()}")


def _terminate(popen: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if popen.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGTERM)
    try:
        popen.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(5)


def _http_ok(url: str, token: str | None = None, context: ssl.SSLContext | None = None) -> bool:
    request = urllib.request.Request(url)  # noqa: S310 - loopback URLs built by the harness
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=2, context=context) as response:  # noqa: S310
        return bool(response.status == 200)


def _redis_answers(port: int, password: str) -> bool:
    """AUTH then PING in the Redis protocol, without a client library in the harness."""
    try:
        with socket.create_connection((LOCALHOST, port), timeout=2) as connection:
            connection.sendall(f"AUTH {password}\r\nPING\r\n".encode())
            answer = b""
            while answer.count(b"\r\n") < 2:
                chunk = connection.recv(64)
                if not chunk:
                    return False
                answer += chunk
            return answer == b"+OK\r\n+PONG\r\n"
    except OSError:
        return False


def _http_answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)  # noqa: S310 - loopback URL built by the harness
    except urllib.error.HTTPError:
        return True
    return True


def write_kubeconfig(path: Path, server: str, ca: Path, user: str, token: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fbl", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "fbl", "context": {"cluster": "fbl", "user": user, "namespace": "default"}}],
        "current-context": "fbl",
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)


# -------------------------------------------------------------------- shell interface
def _run_foreground(directory: Path, fake_nodes: int, ready_file: Path | None) -> int:
    stop_requested = False

    def request_stop(*_: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        cluster = Cluster.start(directory, fake_nodes)
    except ClusterStartError as err:
        print(f"cluster failed to start: {err}", file=sys.stderr)
        if ready_file:
            ready_file.write_text("failed\n")
        return 1
    with cluster:
        assert cluster.endpoints is not None
        print(
            f"cluster ready in {cluster.timings['all_ready_s']:.1f}s "
            f"(apiserver /readyz at {cluster.timings['apiserver_ready_s']:.1f}s)"
        )
        print(f"  source {directory / 'env'}")
        for key, value in cluster.endpoints.env().items():
            if "SECRET" not in key:
                print(f"  {key}={value}")
        sys.stdout.flush()
        if ready_file:
            ready_file.write_text("ready\n")
        while not stop_requested:
            time.sleep(0.5)
            try:
                cluster.check_alive()
            except ClusterStartError as err:
                print(err, file=sys.stderr)
                return 1
    print("cluster stopped")
    return 0


def _up(directory: Path, fake_nodes: int) -> int:
    pid_file = directory / "harness.pid"
    if pid_file.exists() and _pid_alive(int(pid_file.read_text())):
        print(f"cluster already running (pid {pid_file.read_text().strip()}); source {directory / 'env'}")
        return 0
    directory.mkdir(parents=True, exist_ok=True)
    ready = directory / "ready"
    ready.unlink(missing_ok=True)
    (directory / "env").unlink(missing_ok=True)
    log = (directory / "harness.log").open("ab")
    supervisor = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "run", "--dir", str(directory),
         "--nodes", str(fake_nodes), "--ready-file", str(ready)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    pid_file.write_text(f"{supervisor.pid}\n")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if ready.exists():
            state = ready.read_text().strip()
            if state == "ready":
                print(tail(directory / "harness.log", 12))
                return 0
            break
        if supervisor.poll() is not None:
            break
        time.sleep(0.5)
    print(tail(directory / "harness.log", 60), file=sys.stderr)
    _down(directory)
    return 1


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _down(directory: Path) -> int:
    pid_file = directory / "harness.pid"
    if not pid_file.exists():
        print("no cluster running")
        return 0
    pid = int(pid_file.read_text())
    if _pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)
    pid_file.unlink()
    (directory / "ready").unlink(missing_ok=True)
    print("cluster down")
    return 0


@contextlib.contextmanager
def running_cluster(directory: Path, fake_nodes: int = DEFAULT_FAKE_NODES) -> Iterator[Cluster]:
    cluster = Cluster.start(directory, fake_nodes)
    try:
        yield cluster
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "run"])
    parser.add_argument("--dir", type=Path, default=REPO / ".cluster")
    parser.add_argument("--nodes", type=int, default=DEFAULT_FAKE_NODES, help="number of kwok fake nodes")
    parser.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    directory = args.dir.resolve()
    if args.command == "up":
        return _up(directory, args.nodes)
    if args.command == "down":
        return _down(directory)
    return _run_foreground(directory, args.nodes, args.ready_file)


if __name__ == "__main__":
    sys.exit(main())
