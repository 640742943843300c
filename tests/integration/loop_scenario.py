"""A namespace with a served model, its metrics and a FeedbackLoop, driven through kubectl."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import harness
from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.adapters.prometheus import PrometheusAdapter
from feedbackloop.api import (
    API_VERSION,
    ENV_MODEL_SHA256,
    ENV_MODEL_URI,
    MODEL_VERSION_ANNOTATION,
    RETRAIN_REQUEST_ANNOTATION,
)
from feedbackloop.core import contract
from harness import wait_until
from operator_process import ARTIFACT_BUCKET, ModelExporter, OperatorProcess

LOOP = "churn"
GITOPS_MANAGER = "gitops"
BUCKET = ARTIFACT_BUCKET
PREFIX = "loops/"
WAIT = 60
CREDENTIALS_SECRET = "feedbackloop-s3-credentials"  # its prefix opts it in (FBL_CREDENTIALS_SECRET_PREFIX)


FAST_ROLLOUT = {
    "progressDeadline": "60s",
    "analysis": {"interval": "10s", "count": 2, "failureLimit": 0, "inconclusiveLimit": 1},
    "rollbackOnFailure": True,
}
GATES = [{"metric": "accuracy", "min": 0.85}, {"metric": "accuracy", "minDeltaVsCurrent": 0.0}]


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="session")
def exporter(endpoints: harness.Endpoints) -> Iterator[ModelExporter]:
    running = ModelExporter(endpoints)
    yield running
    running.close()


@pytest.fixture(scope="session")
def store(s3: Any) -> ArtifactStore:
    existing = {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}
    if BUCKET not in existing:
        s3.create_bucket(Bucket=BUCKET)
    return ArtifactStore(s3)


@pytest.fixture
def start_operator(
    endpoints: harness.Endpoints, namespace: str, crd: dict[str, Any]
) -> Iterator[Callable[..., OperatorProcess]]:
    started: list[OperatorProcess] = []

    def start(**env: str) -> OperatorProcess:
        # The log sits with the cluster's logs, so a failing test prints its tail.
        log = endpoints.directory / "logs" / f"operator-{namespace}-{len(started)}.log"
        process = OperatorProcess(endpoints, log, [namespace], **env)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


def loop_spec(model: str, **changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "mode": "Auto",
        "target": {"deployment": "churn-server", "container": "server"},
        "prometheus": {"url": "", "timeout": "5s"},
        "monitoring": {
            "interval": "10s",
            "labels": {"model": model},
            "metrics": [
                {
                    "name": "accuracy",
                    "query": "max(fbl_test_accuracy{model={{model}}})",
                    "samplesQuery": "max(fbl_test_samples{model={{model}}})",
                    "minSamples": 10,
                    "threshold": {"min": 0.85},
                    "for": "15s",
                }
            ],
        },
        "retrain": {
            "trainer": {"label": "churned"},
            "data": {"training": "s3://data/churn/train/"},
        },
        "artifacts": {"bucket": BUCKET, "prefix": PREFIX, "credentialsSecret": CREDENTIALS_SECRET},
    }
    for path, value in changes.items():
        node = spec
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return spec


class Scenario:
    """One namespace with a served model, its metrics and a FeedbackLoop."""

    def __init__(self, cluster: harness.Cluster, endpoints: harness.Endpoints, namespace: str) -> None:
        self.cluster, self.endpoints, self.namespace = cluster, endpoints, namespace
        self.model = namespace  # unique per test, so exporter series never collide

    def kubectl(self, *args: str, **kwargs: Any) -> Any:
        return self.cluster.kubectl(*args, "-n", self.namespace, **kwargs)

    def deploy_server(self) -> None:
        self.initial_uri = contract.version_uri(BUCKET, PREFIX, self.namespace, LOOP, "v1")
        self.gitops_apply(self.initial_uri, "1" * 64, "v1")
        self.kubectl(
            "create", "secret", "generic", CREDENTIALS_SECRET,
            "--from-literal=AWS_ACCESS_KEY_ID=trainer", "--from-literal=AWS_SECRET_ACCESS_KEY=trainer-secret",
        )  # fmt: skip

    def gitops_apply(self, uri: str, sha256: str, version: str, force_conflicts: bool = False) -> None:
        """The served Deployment as in Git; forcing conflicts takes the model env back, as a sync would."""
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "churn-server"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "churn"}},
                "template": {
                    "metadata": {
                        "labels": {"app": "churn"},
                        "annotations": {MODEL_VERSION_ANNOTATION: version},
                    },
                    "spec": {
                        "containers": [
                            {
                                "name": "server",
                                "image": "feedbackloop-server:test",
                                "env": [
                                    {"name": ENV_MODEL_URI, "value": uri},
                                    {"name": ENV_MODEL_SHA256, "value": sha256},
                                ],
                            }
                        ]
                    },
                },
            },
        }
        # Another manager (as GitOps would) owns every field; the operator may take only the model env.
        force = ["--force-conflicts"] if force_conflicts else []
        self.kubectl(
            "apply",
            "--server-side",
            *force,
            f"--field-manager={GITOPS_MANAGER}",
            "-f",
            "-",
            input_text=json.dumps(deployment),
        )

    def apply_loop(
        self,
        spec: dict[str, Any],
        name: str = LOOP,
        annotations: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        # loop_spec's placeholder; a url deleted on purpose leaves the operator's default
        if spec["prometheus"].get("url") == "":
            spec["prometheus"]["url"] = self.endpoints.prometheus_url
        body = {
            "apiVersion": API_VERSION,
            "kind": "FeedbackLoop",
            "metadata": {"name": name, "annotations": annotations or {}, "labels": labels or {}},
            "spec": spec,
        }
        self.kubectl("apply", "-f", "-", input_text=json.dumps(body))

    def loop(self, name: str = LOOP) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.kubectl("get", "fbl", name, "-o", "json").stdout)
        return loaded

    def condition(self, kind: str, name: str = LOOP) -> dict[str, Any]:
        conditions = self.loop(name).get("status", {}).get("conditions", [])
        return next((c for c in conditions if c["type"] == kind), {})

    def wait_condition(
        self, kind: str, status: str, reason: str | None = None, name: str = LOOP, timeout: float = WAIT
    ) -> dict[str, Any]:
        found = wait_until(
            lambda: self.condition(kind, name),
            lambda c: c.get("status") == status and (reason is None or c.get("reason") == reason),
            timeout=timeout,
            interval=0.5,
        )
        assert (found.get("status"), found.get("reason")) == (status, reason or found.get("reason")), found
        return found

    def jobs(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(self.kubectl("get", "jobs", "-o", "json").stdout)["items"]
        return items

    def job_names(self) -> list[str]:
        return sorted(job["metadata"]["name"] for job in self.jobs())

    def wait_jobs(self, names: list[str], timeout: float = WAIT) -> list[str]:
        found = wait_until(self.job_names, lambda got: got == names, timeout=timeout, interval=0.5)
        assert found == names
        return found

    def annotate_retrain(self, request_id: str, name: str = LOOP) -> None:
        self.kubectl("annotate", "fbl", name, f"{RETRAIN_REQUEST_ANNOTATION}={request_id}", "--overwrite")

    def events(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(self.kubectl("get", "events", "-o", "json").stdout)["items"]
        return items


@pytest.fixture
def scenario(
    cluster: harness.Cluster,
    endpoints: harness.Endpoints,
    namespace: str,
    exporter: ModelExporter,
    store: ArtifactStore,
) -> Iterator[Scenario]:
    running = Scenario(cluster, endpoints, namespace)
    running.deploy_server()
    exporter.set(running.model, accuracy=0.95)
    # Start from a scraped series, so a test's first evaluation never races Prometheus's first scrape.
    query = f'max(fbl_test_accuracy{{model="{running.model}"}})'
    seen = wait_until(
        lambda: PrometheusAdapter().query(endpoints.prometheus_url, query, 5), lambda r: r.has_value, 30
    )
    assert seen.value == 0.95
    yield running
    exporter.remove(running.model)


def write_candidate(store: ArtifactStore, namespace: str, version: str, accuracy: float = 0.93) -> str:
    """What a trainer writes; kwok finishes Job pods at once, so the artifacts must exist beforehand."""
    uri = contract.version_uri(BUCKET, PREFIX, namespace, LOOP, version)
    metrics = {"schemaVersion": 1, "candidate": {"accuracy": accuracy}, "current": {"accuracy": 0.71}}
    store.write_version(
        uri,
        version,
        {
            "model.joblib": b"not really a model, never unpickled by the operator",
            "metrics.json": json.dumps(metrics).encode(),
        },
        {"job": {"name": f"{LOOP}-retrain-{version[1:]}"}},
    )
    return uri


def trainer_report(store: ArtifactStore, uri: str) -> dict[str, str]:
    """Pod annotations that make kwok complete the retrain pod with the termination message a trainer writes:
    the sha256 of the manifest now at `uri`."""
    bucket, key = contract.version_file(uri, contract.MANIFEST_FILE)
    digest = contract.sha256_hex(store.get_bytes(bucket, key))
    return {harness.KWOK_MESSAGE_ANNOTATION: contract.success_message(digest)}


def spec_for(scenario: Scenario, **changes: Any) -> dict[str, Any]:
    rollout = copy.deepcopy(FAST_ROLLOUT)  # dotted changes below edit it in place
    return loop_spec(scenario.model, rollout=rollout, **{"validation.gates": GATES, **changes})


def deployment(scenario: Scenario) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        scenario.kubectl("get", "deployment", "churn-server", "-o", "json", "--show-managed-fields").stdout
    )
    return loaded


def served(scenario: Scenario) -> tuple[dict[str, str], str | None]:
    template = deployment(scenario)["spec"]["template"]
    env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0].get("env", [])}
    return env, (template["metadata"].get("annotations") or {}).get(MODEL_VERSION_ANNOTATION)


def wait_status(
    scenario: Scenario, done: Callable[[dict[str, Any]], bool], timeout: float = 120, name: str = LOOP
) -> dict[str, Any]:
    status: dict[str, Any] = wait_until(
        lambda: scenario.loop(name).get("status", {}), done, timeout=timeout, interval=0.5
    )
    assert done(status), json.dumps(status, indent=1)[:3000]
    return status
