"""Fault injection on the real control plane, Prometheus and S3 (`make chaos` runs each fault 3 times).

The promise for every fault: no duplicate Job, no promotion on bad or missing evidence, no status lost, and
the loop converges once the fault ends. Each test records what it found in an Injection (chaos.py), so the
summary table counts outcomes even when a promise breaks.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import ssl
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from http_stubs import RecordingServer
from prometheus_client.parser import text_string_to_metric_families

import chaos
import harness
from fault_proxy import FaultProxy
from feedbackloop.adapters.artifacts import ArtifactStore
from feedbackloop.api import ENV_MODEL_URI, RETRAIN_REQUEST_ANNOTATION
from feedbackloop.core import contract
from feedbackloop.failpoints import Failpoint
from harness import wait_until
from loop_scenario import Scenario, deployment, served, spec_for, trainer_report, wait_status, write_candidate
from operator_process import ModelExporter, OperatorProcess

CONVERGE = 150  # seconds a loop may take to settle once a fault ends


def _lost_status(
    scenario: Scenario, status: dict[str, Any], request: str | None, version: str | None = None
) -> int:
    """Status parts that disagree with the cluster or went missing: each one counts."""
    lost = 0
    env, _ = served(scenario)
    if (status.get("currentModel") or {}).get("uri") != env.get(ENV_MODEL_URI):
        lost += 1
    if request is not None and status.get("handledRetrainRequest") != request:
        lost += 1
    if version is not None and version not in {entry["version"] for entry in status.get("history", [])}:
        lost += 1
    return lost


# ---------------------------------------------------------------- the operator killed at each failpoint


@pytest.mark.parametrize("point", list(Failpoint))
def test_operator_killed_at_a_failpoint(
    point: Failpoint,
    attempt: int,
    scenario: Scenario,
    start_operator: Callable[..., OperatorProcess],
    store: ArtifactStore,
    exporter: ModelExporter,
    inject: Callable[[str], chaos.Injection],
) -> None:
    injection = inject(f"operator SIGKILL at {point}")
    rollback = point is Failpoint.DURING_ROLLBACK
    candidate = write_candidate(store, scenario.namespace, "v2", accuracy=0.93)
    original = served(scenario)
    crashing = start_operator(FBL_FAILPOINT=point.value)
    scenario.apply_loop(
        spec_for(scenario, **{"retrain.podAnnotations": trainer_report(store, candidate)}),
        annotations={RETRAIN_REQUEST_ANNOTATION: "go"},
    )
    if rollback:
        wait_status(scenario, lambda s: "rollout" in s)
        exporter.set(scenario.model, accuracy=0.5)  # v2 does badly: the analysis fails and rolls back
    assert crashing.wait_exit(timeout=CONVERGE) == 137
    injection.fault_ended()

    start_operator()
    if rollback:
        status = wait_status(scenario, lambda s: "rollout" not in s and "v2" in s.get("rejectedVersions", []))
        injection.bad_promotions = int(served(scenario) != original)
    else:
        status = wait_status(
            scenario, lambda s: (s.get("currentModel") or {}).get("version") == "v2" and "rollout" not in s
        )
        injection.bad_promotions = int(served(scenario)[0].get(ENV_MODEL_URI) != candidate)
    time.sleep(3)  # more reconciles: still one Job, and nothing moves
    status = scenario.loop()["status"]
    injection.duplicate_jobs = chaos.duplicate_jobs(scenario.jobs(), status["retrainCount"], first_number=2)
    injection.lost_status = _lost_status(scenario, status, request="go", version="v2")
    assert (injection.duplicate_jobs, injection.bad_promotions, injection.lost_status) == (0, 0, 0)
    assert status["retrainCount"] == 2
    assert scenario.job_names() == ["churn-retrain-2"]
    expected = "RolledBack" if rollback else "AnalysisSuccessful"
    assert scenario.condition("RolledOut")["reason"] == expected
    injection.converged_now()


# ---------------------------------------------------------------- Prometheus faults


def _no_data_result(_path: str) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/json"}, json.dumps({"status": "success", "data": {}}).encode()


def _forget_series(exporter: ModelExporter, model: str) -> None:
    with contextlib.suppress(KeyError):  # already removed: the "empty" fault removes its series
        exporter.remove(model)


PROMETHEUS_FAULTS = ("down", "5xx", "slow", "empty", "NaN", "no data.result")


def test_prometheus_faults_hold_and_never_retrain_or_promote(
    attempt: int,
    endpoints: harness.Endpoints,
    scenario: Scenario,
    start_operator: Callable[..., OperatorProcess],
    exporter: ModelExporter,
    inject: Callable[[str], chaos.Injection],
) -> None:
    """Every Prometheus fault at once, a loop and a series each (behind a proxy of its own where the fault is
    on the wire): one hold window serves them all."""
    host, port = endpoints.prometheus_url.removeprefix("http://").split(":")
    stub = RecordingServer(_no_data_result)
    with contextlib.ExitStack() as stack:
        stack.callback(stub.close)
        models = {fault: f"{scenario.model}-{index}" for index, fault in enumerate(PROMETHEUS_FAULTS)}
        for model in models.values():
            stack.callback(_forget_series, exporter, model)
        proxies = {fault: stack.enter_context(FaultProxy(host, int(port))) for fault in PROMETHEUS_FAULTS}
        urls = {fault: proxy.url("http") for fault, proxy in proxies.items()}
        loops = {fault: f"prom-{index}" for index, fault in enumerate(PROMETHEUS_FAULTS)}
        injections = {fault: inject(f"Prometheus {fault}") for fault in PROMETHEUS_FAULTS}
        specs = {}
        for fault in PROMETHEUS_FAULTS:
            exporter.set(models[fault], accuracy=0.95)
            spec = spec_for(
                scenario,
                **{"prometheus.url": urls[fault], "prometheus.timeout": "2s"},
                **{"monitoring.labels": {"model": models[fault]}},
            )
            spec["monitoring"]["metrics"][0]["for"] = "10s"
            specs[fault] = spec
        # A short cool-down: the open circuit's 30 s default would dominate the time to converge.
        start_operator(
            FBL_PROMETHEUS_URLS=",".join([*urls.values(), stub.url]), FBL_PROMETHEUS_COOL_DOWN_SECONDS="5"
        )
        for fault in PROMETHEUS_FAULTS:
            scenario.apply_loop(specs[fault], name=loops[fault])
        for fault in PROMETHEUS_FAULTS:
            scenario.wait_condition("Healthy", "True", name=loops[fault], timeout=60)
        original = served(scenario)

        proxies["down"].set_mode("reset")
        proxies["5xx"].set_mode("reset")  # ends kept-alive connections, so every request sees the 503
        proxies["5xx"].set_mode("http_status", status=503)
        proxies["slow"].set_mode("delay", seconds=4)
        exporter.remove(models["empty"])
        exporter.set(models["NaN"], accuracy=math.nan)
        faulty_url = {**specs["no data.result"]["prometheus"], "url": stub.url}
        scenario.apply_loop(
            {**specs["no data.result"], "prometheus": faulty_url}, name=loops["no data.result"]
        )
        for fault in ("down", "5xx", "slow", "no data.result"):
            # The model really degrades while Prometheus cannot say so: no data is no breach (noData: Hold).
            exporter.set(models[fault], accuracy=0.5)
        held = {fault: scenario.wait_condition("Healthy", "Unknown", name=loops[fault]) for fault in loops}
        time.sleep(22)  # `for` plus an interval and then some: a retrain would have started by now
        jobs_during = scenario.job_names()
        still_held = {fault: scenario.condition("Healthy", name=loops[fault]) for fault in loops}

        for fault in PROMETHEUS_FAULTS:
            exporter.set(models[fault], accuracy=0.95)
            proxies[fault].set_mode("pass")
        scenario.apply_loop(specs["no data.result"], name=loops["no data.result"])
        for injection in injections.values():
            injection.fault_ended()
        for fault in PROMETHEUS_FAULTS:
            healthy = scenario.wait_condition("Healthy", "True", name=loops[fault], timeout=CONVERGE)
            if healthy["reason"] == "WithinThresholds":
                injections[fault].converged_now()

    for fault, injection in injections.items():
        status = scenario.loop(loops[fault])["status"]
        injection.duplicate_jobs = sum(job.startswith(f"{loops[fault]}-") for job in jobs_during)
        injection.bad_promotions = int(served(scenario) != original)
        injection.lost_status = _lost_status(scenario, status, request=None)
        if (injection.duplicate_jobs, injection.bad_promotions, injection.lost_status) != (0, 0, 0):
            injection.converged = False
    assert jobs_during == [], f"a retrain started on no data: {jobs_during}"
    assert {fault: c["status"] for fault, c in still_held.items()} == dict.fromkeys(loops, "Unknown")
    assert all(c["reason"] != "WithinThresholds" for c in held.values()), held
    assert all(injection.converged for injection in injections.values()), injections


def test_a_prometheus_fault_during_analysis_is_inconclusive_never_success(
    attempt: int,
    endpoints: harness.Endpoints,
    scenario: Scenario,
    start_operator: Callable[..., OperatorProcess],
    store: ArtifactStore,
    inject: Callable[[str], chaos.Injection],
) -> None:
    injection = inject("Prometheus 5xx during analysis")
    candidate = write_candidate(store, scenario.namespace, "v2", accuracy=0.93)
    original = served(scenario)
    host, port = endpoints.prometheus_url.removeprefix("http://").split(":")
    with FaultProxy(host, int(port)) as proxy:
        start_operator(FBL_PROMETHEUS_URLS=proxy.url("http"), FBL_PROMETHEUS_COOL_DOWN_SECONDS="5")
        spec = spec_for(
            scenario,
            **{
                "retrain.podAnnotations": trainer_report(store, candidate),
                "prometheus.url": proxy.url("http"),
            },
        )
        scenario.apply_loop(spec, annotations={RETRAIN_REQUEST_ANNOTATION: "go"})
        wait_status(scenario, lambda s: "rollout" in s)
        proxy.set_mode("reset")  # ends kept-alive connections, so every measurement sees the 503
        proxy.set_mode("http_status", status=503)
        # No data about v2 is no evidence for it: the analysis ends inconclusive and v2 goes.
        status = wait_status(scenario, lambda s: "rollout" not in s, timeout=CONVERGE)
        proxy.set_mode("pass")
        injection.fault_ended()
        scenario.wait_condition("Healthy", "True", timeout=CONVERGE)

    status = scenario.loop()["status"]
    degraded = scenario.condition("Degraded")
    injection.bad_promotions = int(served(scenario) != original or status["currentModel"]["version"] != "v1")
    injection.duplicate_jobs = chaos.duplicate_jobs(scenario.jobs(), status["retrainCount"], first_number=2)
    injection.lost_status = _lost_status(scenario, status, request="go", version="v2")
    assert (degraded["status"], degraded["reason"]) == ("True", "AnalysisInconclusive"), degraded
    assert scenario.condition("RolledOut")["reason"] == "RolledBack"
    assert "v2" in status["rejectedVersions"]
    assert (injection.duplicate_jobs, injection.bad_promotions, injection.lost_status) == (0, 0, 0)
    injection.converged_now()


# ---------------------------------------------------------------- S3 faults

S3_FAULTS = ("down", "wrong operator credentials", "a flipped byte in model.joblib", "a missing manifest")


@pytest.mark.parametrize("fault", S3_FAULTS)
def test_an_s3_fault_never_promotes(
    fault: str,
    attempt: int,
    endpoints: harness.Endpoints,
    scenario: Scenario,
    start_operator: Callable[..., OperatorProcess],
    store: ArtifactStore,
    s3: Any,
    inject: Callable[[str], chaos.Injection],
) -> None:
    injection = inject(f"S3 {fault}")
    candidate = write_candidate(store, scenario.namespace, "v2", accuracy=0.93)
    report = trainer_report(store, candidate)  # what the trainer saw: the manifest before any fault
    original = served(scenario)
    url = urlsplit(endpoints.s3_endpoint_url)
    with FaultProxy(str(url.hostname), int(url.port or 80)) as proxy:
        env = {"FBL_S3_ENDPOINT_URL": proxy.url("http")}
        if fault == "wrong operator credentials":
            env["AWS_SECRET_ACCESS_KEY"] = "not-the-operators-secret"
        elif fault == "a flipped byte in model.joblib":
            bucket, key = contract.version_file(candidate, contract.MODEL_FILE)
            body = store.get_bytes(bucket, key)
            s3.put_object(Bucket=bucket, Key=key, Body=bytes([body[0] ^ 1]) + body[1:])
        elif fault == "a missing manifest":
            bucket, key = contract.version_file(candidate, contract.MANIFEST_FILE)
            s3.delete_object(Bucket=bucket, Key=key)
        elif fault == "down":
            proxy.set_mode("reset")
        operator = start_operator(**env)
        scenario.apply_loop(
            spec_for(scenario, **{"retrain.podAnnotations": report}),
            annotations={RETRAIN_REQUEST_ANNOTATION: "go"},
        )

        if fault in ("down", "wrong operator credentials"):
            reason = "ArtifactStoreUnreachable" if fault == "down" else "AccessDenied"
            ready = scenario.wait_condition("Ready", "False", reason)
            assert "not-the-operators-secret" not in json.dumps(ready)
            time.sleep(12)  # an evaluation or more: nothing starts while the store cannot be read
            assert scenario.job_names() == []
            injection.bad_promotions = int(served(scenario) != original)
            if fault == "down":
                proxy.set_mode("pass")
            else:
                operator.stop()
                start_operator(FBL_S3_ENDPOINT_URL=proxy.url("http"))  # the right credentials again
            injection.fault_ended()
            status = wait_status(
                scenario,
                lambda s: (s.get("currentModel") or {}).get("version") == "v2" and "rollout" not in s,
                timeout=CONVERGE,
            )
            injection.bad_promotions += int(served(scenario)[0].get(ENV_MODEL_URI) != candidate)
            version = "v2"
        else:
            reason = "ArtifactDigestMismatch" if "flipped" in fault else "ManifestMissing"
            injection.fault_ended()  # the fault stays: converging is rejecting the candidate, with its reason
            rejected = scenario.wait_condition("Retraining", "False", reason, timeout=CONVERGE)
            assert "v2" in rejected["message"] or "manifest" in rejected["message"]
            time.sleep(3)
            status = scenario.loop()["status"]
            injection.bad_promotions = int(served(scenario) != original)
            assert "candidateModel" not in status
            version = "v2"

    injection.duplicate_jobs = chaos.duplicate_jobs(scenario.jobs(), status["retrainCount"], first_number=2)
    injection.lost_status = _lost_status(scenario, status, request="go", version=version)
    assert (injection.duplicate_jobs, injection.bad_promotions, injection.lost_status) == (0, 0, 0)
    assert scenario.job_names() == ["churn-retrain-2"]
    injection.converged_now()


# ---------------------------------------------------------------- the retrain Job

# kwok keeps a pod with an outcome it has no stage for running: a Job that is deleted before it ends.
KEEP_RUNNING = "run"


JOB_FAULT_REASONS = {
    "OOMKilled": ("RetrainJobFailed", "exit code 137 (OOMKilled)"),
    "deleted mid-run": ("RetrainJobMissing", "deleted before it finished"),
    "past its deadline": ("RetrainJobDeadlineExceeded", "Job churn-retrain-2"),
}


@pytest.mark.parametrize("fault", list(JOB_FAULT_REASONS))
def test_a_retrain_job_fault_ends_the_retrain_with_its_reason(
    fault: str,
    attempt: int,
    scenario: Scenario,
    start_operator: Callable[..., OperatorProcess],
    inject: Callable[[str], chaos.Injection],
) -> None:
    injection = inject(f"retrain Job {fault}")
    outcome = "oom" if fault == "OOMKilled" else KEEP_RUNNING
    original = served(scenario)
    start_operator()
    spec = spec_for(
        scenario,
        **{"retrain.podAnnotations": {harness.KWOK_OUTCOME_ANNOTATION: outcome}, "retrain.backoffLimit": 0},
    )
    scenario.apply_loop(spec, annotations={RETRAIN_REQUEST_ANNOTATION: "go"})
    if fault == "deleted mid-run":
        scenario.wait_condition("Retraining", "True", "RetrainRunning")
        scenario.kubectl("delete", "job", "churn-retrain-2", "--wait=false")
    elif fault == "past its deadline":
        # The CRD's minimum deadline is 60 s; the Job's own field is mutable, so the test shortens it.
        scenario.wait_condition("Retraining", "True", "RetrainRunning")
        scenario.kubectl("patch", "job", "churn-retrain-2", "-p", '{"spec":{"activeDeadlineSeconds":1}}')
    injection.fault_ended()
    reason, said = JOB_FAULT_REASONS[fault]
    ended = scenario.wait_condition("Retraining", "False", reason, timeout=CONVERGE)
    # OOMKilled: the kubelet's reason from the container state, since OOMKilled pods write no message.
    assert said in ended["message"], ended
    time.sleep(3)
    status = scenario.loop()["status"]
    assert "activeRetrain" not in status
    entry = next(e for e in status["history"] if e["version"] == "v2")
    assert (entry["outcome"], entry["reason"]) == ("RetrainFailed", reason)
    injection.duplicate_jobs = chaos.duplicate_jobs(scenario.jobs(), status["retrainCount"], first_number=2)
    injection.bad_promotions = int(served(scenario) != original)
    injection.lost_status = _lost_status(scenario, status, request="go", version="v2")
    assert (injection.duplicate_jobs, injection.bad_promotions, injection.lost_status) == (0, 0, 0)
    injection.converged_now()


# ---------------------------------------------------------------- other writers mid-rollout


def test_other_writers_mid_rollout_lose_nothing_and_the_rollout_finishes(
    attempt: int,
    scenario: Scenario,
    start_operator: Callable[..., OperatorProcess],
    store: ArtifactStore,
    inject: Callable[[str], chaos.Injection],
) -> None:
    injection = inject("other writers mid-rollout")
    candidate = write_candidate(store, scenario.namespace, "v2", accuracy=0.93)
    start_operator()
    spec = spec_for(scenario, **{"retrain.podAnnotations": trainer_report(store, candidate)})
    spec["rollout"]["analysis"]["count"] = 3
    scenario.apply_loop(spec, annotations={RETRAIN_REQUEST_ANNOTATION: "go"})
    wait_status(scenario, lambda s: "rollout" in s)

    # Another controller changes a field of its own in the pod template: a new ReplicaSet, mid-analysis.
    scenario.kubectl(
        "patch", "deployment", "churn-server", "--type=merge", "--field-manager=autoscaler",
        "-p", json.dumps({"spec": {"template": {"metadata": {"labels": {"tier": "gold"}}}}}),
    )  # fmt: skip
    # GitOps re-applies the loop with an edit of its own (a new generation), annotations as they were.
    spec["monitoring"]["metrics"][0]["threshold"]["min"] = 0.84
    scenario.apply_loop(spec, annotations={RETRAIN_REQUEST_ANNOTATION: "go"})
    injection.fault_ended()

    status = wait_status(
        scenario,
        lambda s: (s.get("currentModel") or {}).get("version") == "v2" and "rollout" not in s,
        timeout=CONVERGE,
    )
    template = deployment(scenario)["spec"]["template"]
    env, version = served(scenario)
    injection.bad_promotions = int((env.get(ENV_MODEL_URI), version) != (candidate, "v2"))
    injection.duplicate_jobs = chaos.duplicate_jobs(scenario.jobs(), status["retrainCount"], first_number=2)
    injection.lost_status = _lost_status(scenario, status, request="go", version="v2")
    assert template["metadata"]["labels"]["tier"] == "gold"  # the other manager's write is kept
    assert status["observedGeneration"] == scenario.loop()["metadata"]["generation"]
    assert scenario.condition("RolledOut")["reason"] == "AnalysisSuccessful"
    assert (injection.duplicate_jobs, injection.bad_promotions, injection.lost_status) == (0, 0, 0)
    injection.converged_now()


# ---------------------------------------------------------------- deletion mid-flight


def _in_flight(scenario: Scenario, store: ArtifactStore, candidate: str, moment: str) -> None:
    """The loop with its retrain Job running (mid-retrain) or with v2 being analysed (mid-rollout)."""
    if moment == "mid-retrain":
        annotations = {harness.KWOK_OUTCOME_ANNOTATION: KEEP_RUNNING}
        scenario.apply_loop(
            spec_for(scenario, **{"retrain.podAnnotations": annotations}),
            annotations={RETRAIN_REQUEST_ANNOTATION: "go"},
        )
        scenario.wait_condition("Retraining", "True", "RetrainRunning")
    else:
        spec = spec_for(scenario, **{"retrain.podAnnotations": trainer_report(store, candidate)})
        spec["rollout"]["analysis"]["count"] = 20  # still analysing when the loop goes
        scenario.apply_loop(spec, annotations={RETRAIN_REQUEST_ANNOTATION: "go"})
        wait_status(scenario, lambda s: "rollout" in s)


def _series_of_the_loop(operator: OperatorProcess, scenario: Scenario) -> list[str]:
    text = urllib.request.urlopen(operator.metrics_url, timeout=5).read().decode()  # noqa: S310 - loopback
    mine = (f'namespace="{scenario.namespace}"', 'loop="churn"')
    return [line for line in text.splitlines() if not line.startswith("#") and all(m in line for m in mine)]


@pytest.mark.parametrize("moment", ["mid-retrain", "mid-rollout"])
def test_a_loop_deleted_mid_flight_leaves_nothing_behind(
    moment: str,
    attempt: int,
    scenario: Scenario,
    start_operator: Callable[..., OperatorProcess],
    store: ArtifactStore,
    inject: Callable[[str], chaos.Injection],
) -> None:
    injection = inject(f"loop deleted {moment}")
    candidate = write_candidate(store, scenario.namespace, "v2", accuracy=0.93)
    operator = start_operator()
    _in_flight(scenario, store, candidate, moment)
    scenario.kubectl("delete", "feedbackloop", "churn", "--wait=true", "--timeout=60s")
    injection.fault_ended()

    # The Job goes with its owner (the garbage collector); the loop left no finalizer to wait on.
    gone = wait_until(lambda: scenario.job_names(), lambda names: names == [], timeout=60)
    env, version = served(scenario)
    serving = (env.get(ENV_MODEL_URI), version)
    pairs = {(scenario.initial_uri, "v1"), (candidate, "v2")}
    left = _series_of_the_loop(operator, scenario)
    injection.duplicate_jobs = len(gone)
    injection.bad_promotions = int(serving not in pairs)  # the served URI and version still belong together
    injection.lost_status = len(left)
    assert gone == []
    assert serving in pairs, env
    assert left == [], left
    assert operator.popen is not None and operator.popen.poll() is None
    injection.converged_now()


NAMESPACE_GONE = 120  # seconds: the namespace controller deletes everything in it, retrain pods once released
QUIET = (
    20  # seconds after the namespace went: more than an evaluation interval and a failed reconcile's retry
)


def _namespace_exists(scenario: Scenario) -> bool:
    found = scenario.cluster.kubectl(
        "get", "namespace", scenario.namespace, "--ignore-not-found", "-o", "name"
    )
    return bool(found.stdout.strip())


def _left_in(scenario: Scenario) -> str:
    """What still holds a Terminating namespace, for the failure message."""
    kinds = "feedbackloops,jobs,pods,deployments,leases"
    found = scenario.kubectl(
        "get",
        kinds,
        "-o",
        "custom-columns=KIND:.kind,NAME:.metadata.name,FINALIZERS:.metadata.finalizers",
        check=False,
    )
    namespace = scenario.cluster.kubectl("get", "namespace", scenario.namespace, "-o", "json", check=False)
    return f"{found.stdout}{found.stderr}{namespace.stdout[-2000:]}"


@pytest.mark.parametrize("moment", ["mid-retrain", "mid-rollout"])
def test_a_namespace_deleted_mid_flight_leaves_nothing_behind(
    moment: str,
    attempt: int,
    scenario: Scenario,
    start_operator: Callable[..., OperatorProcess],
    store: ArtifactStore,
    inject: Callable[[str], chaos.Injection],
) -> None:
    injection = inject(f"namespace deleted {moment}")
    candidate = write_candidate(store, scenario.namespace, "v2", accuracy=0.93)
    # The operator's Lease outside the namespace that goes (its own namespace, as when installed): the
    # harness keeps it in the test's namespace, whose deletion would leave the operator no Lease to write.
    operator = start_operator(FBL_LEASE_NAMESPACE="default")
    lease = operator.env["FBL_LEASE_NAME"]
    try:
        _in_flight(scenario, store, candidate, moment)
        logged = len(operator.log())
        scenario.cluster.kubectl("delete", "namespace", scenario.namespace, "--wait=false")
        injection.fault_ended()

        # The namespace goes once nothing in it is held: the operator releases its retrain pods' finalizer.
        still = wait_until(
            lambda: _namespace_exists(scenario), lambda exists: not exists, timeout=NAMESPACE_GONE
        )
        assert not still, _left_in(scenario)
        left = _series_of_the_loop(operator, scenario)
        time.sleep(QUIET)
        since = operator.log()[logged:]
        loud = [line for line in since.splitlines() if " WARNING " in line or " ERROR " in line]
        after = operator.log()[logged + len(since) :]
        injection.duplicate_jobs = len(scenario.job_names()) if _namespace_exists(scenario) else 0
        injection.lost_status = len(left)
        assert left == [], left
        assert operator.popen is not None and operator.popen.poll() is None, since[-3000:]
        # Writes that met a namespace on its way out end quietly: no warning, no traceback, no retry.
        assert "Traceback" not in since, since[-3000:]
        assert loud == [], "\n".join(loud)
        assert scenario.namespace not in after, after[-3000:]
        injection.converged_now()
    finally:
        scenario.cluster.kubectl("delete", "lease", lease, "-n", "default", "--ignore-not-found", check=False)


# ---------------------------------------------------------------- the control plane


# make chaos holds etcd down for the 60 s; CI for 20 s, which already outlasts every client timeout.
ETCD_OUTAGE_SECONDS = float(os.environ.get("CHAOS_ETCD_OUTAGE_SECONDS", "20"))


def _api_ready(endpoints: harness.Endpoints) -> bool:
    try:
        return harness._http_ok(f"{endpoints.api_server_url}/readyz", endpoints.admin_token, _ca(endpoints))
    except Exception:
        return False


def _ca(endpoints: harness.Endpoints) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(endpoints.ca_file))


def _evaluations(operator: OperatorProcess, scenario: Scenario) -> float:
    """The loop's evaluations so far, from the operator's own metrics (status is written only on change)."""
    text = urllib.request.urlopen(operator.metrics_url, timeout=5).read().decode()  # noqa: S310 - loopback
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "feedbackloop_metric_evaluations"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels.get("namespace") == scenario.namespace
    )


def _retrain_handled_after_the_fault(
    operator: OperatorProcess,
    scenario: Scenario,
    injection: chaos.Injection,
    request: str,
    timeout: float,
) -> dict[str, Any]:
    """The loop is evaluated again and its watch works: a retrain asked for now gets exactly one Job."""
    before = _evaluations(operator, scenario)
    assert (
        wait_until(lambda: _evaluations(operator, scenario), lambda n: n > before, timeout=timeout) > before
    )
    scenario.annotate_retrain(request)
    scenario.wait_jobs(["churn-retrain-2"], timeout=timeout)
    status = wait_status(scenario, lambda s: s.get("handledRetrainRequest") == request, timeout=timeout)
    time.sleep(2)
    injection.duplicate_jobs = chaos.duplicate_jobs(scenario.jobs(), status["retrainCount"], first_number=2)
    injection.lost_status = _lost_status(scenario, status, request=request)
    return status


@pytest.mark.disrupts_control_plane
@pytest.mark.parametrize("outage", ["kube-apiserver restarted", "etcd stopped"])
def test_a_control_plane_outage_is_survived_without_a_crash(
    outage: str,
    attempt: int,
    cluster: harness.Cluster,
    endpoints: harness.Endpoints,
    scenario: Scenario,
    start_operator: Callable[..., OperatorProcess],
    inject: Callable[[str], chaos.Injection],
) -> None:
    name = outage if outage != "etcd stopped" else f"etcd stopped {ETCD_OUTAGE_SECONDS:g} s"
    injection = inject(name)
    operator = start_operator()
    scenario.apply_loop(spec_for(scenario))
    scenario.wait_condition("Healthy", "True")
    original = served(scenario)

    if outage == "kube-apiserver restarted":
        cluster.restart_component("kube-apiserver", grace=0)
    else:
        cluster.stop_component("etcd", grace=0)
        time.sleep(ETCD_OUTAGE_SECONDS)
        cluster.start_component("etcd")
    assert wait_until(lambda: _api_ready(endpoints), bool, timeout=60)
    injection.fault_ended()

    assert operator.popen is not None and operator.popen.poll() is None, operator.log()[-3000:]
    # One evaluation interval (10 s) and a tick after recovery at most, with room for a slow machine.
    _retrain_handled_after_the_fault(operator, scenario, injection, "after-outage", timeout=30)
    injection.bad_promotions = int(
        served(scenario) != original
    )  # the Job has not finished: nothing to promote
    assert operator.popen.poll() is None  # still the same process: no crash loop
    assert (injection.duplicate_jobs, injection.bad_promotions, injection.lost_status) == (0, 0, 0)
    injection.converged_now()


WATCH_INACTIVITY_SECONDS = 15  # the test's; the operator's default is 70 (a bookmark comes every ~60 s)


def test_a_silently_stalled_watch_is_restarted(
    attempt: int,
    tmp_path: Path,
    endpoints: harness.Endpoints,
    scenario: Scenario,
    start_operator: Callable[..., OperatorProcess],
    inject: Callable[[str], chaos.Injection],
) -> None:
    injection = inject("API watch silently stalled")
    host, port = endpoints.api_server_url.removeprefix("https://").rsplit(":", 1)
    with FaultProxy(host, int(port)) as proxy:
        kubeconfig = tmp_path / "through-proxy.kubeconfig"
        harness.write_kubeconfig(
            kubeconfig, proxy.url("https"), endpoints.ca_file, "admin", endpoints.admin_token
        )
        start_operator(KUBECONFIG=str(kubeconfig), FBL_WATCH_INACTIVITY_SECONDS=str(WATCH_INACTIVITY_SECONDS))
        scenario.apply_loop(spec_for(scenario))
        scenario.wait_condition("Healthy", "True")
        original = served(scenario)

        proxy.set_mode("blackhole")  # every open connection, the watches among them, goes silent for good
        proxy.set_mode("pass")  # new connections work: only the open streams are dead, as after a NAT reset
        injection.fault_ended()
        started = time.monotonic()
        scenario.annotate_retrain("while-stalled")
        scenario.wait_jobs(["churn-retrain-2"], timeout=WATCH_INACTIVITY_SECONDS + 45)
        took = time.monotonic() - started
        status = wait_status(scenario, lambda s: s.get("handledRetrainRequest") == "while-stalled")
        assert proxy.counters().stalled_existing > 0  # the fault really hit open connections

    injection.duplicate_jobs = chaos.duplicate_jobs(scenario.jobs(), status["retrainCount"], first_number=2)
    injection.bad_promotions = int(served(scenario) != original)
    injection.lost_status = _lost_status(scenario, status, request="while-stalled")
    assert took < WATCH_INACTIVITY_SECONDS + 30, f"the stalled watch went unnoticed for {took:.0f} s"
    assert (injection.duplicate_jobs, injection.bad_promotions, injection.lost_status) == (0, 0, 0)
    injection.converged_now()
