"""Run checkov and kube-score on the rendered chart; any finding not skipped in the templates fails.

`make chart-scan` (part of `make lint`) runs it. The chart is rendered with its defaults and with every option
on, so a finding in an optional object counts too. An accepted finding is skipped where it arises, with a
reason: a `checkov.io/skipN: CKV_K8S_N=reason` annotation, or a `kube-score/ignore` annotation and a comment.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "feedbackloop-operator"
# Every optional object on, cluster-wide and per namespace; the NetworkPolicy with one peer of each kind.
FULL_VALUES: dict[str, Any] = {
    "metrics": {"serviceMonitor": {"enabled": True}},
    "grafanaDashboard": {"enabled": True},
    "artifactStore": {
        "endpoint": "http://minio.minio:9000",
        "credentials": {"existingSecret": "artifact-reader"},
    },
    "networkPolicy": {
        "enabled": True,
        "apiServer": {"cidrs": ["10.0.0.10/32"]},
        "prometheus": [
            {
                "to": [
                    {
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
                    }
                ],
                "ports": [9090],
            }
        ],
        "artifactStore": [{"to": [{"ipBlock": {"cidr": "10.20.0.0/24"}}], "ports": [9000]}],
        "metricsFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
    },
}
CHECKOV_NO_REASON = (
    "No comment provided"  # what checkov reports for `checkov.io/skipN: CKV_ID` without `=reason`
)
GRADE_ALL_OK = 10  # kube-score's grades: 1 critical, 5 warning, 7 almost OK, 10 OK
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "full": FULL_VALUES,
    "namespaced": {**FULL_VALUES, "watchNamespaces": ["team-a", "team-b"]},
}


class RenderError(RuntimeError):
    """helm template failed; the message carries its stderr."""


def render(helm: Path, out: Path) -> list[Path]:
    """One file per variant, in out/rendered/, with helm's cache and config in `out`, not in ~."""
    files = []
    env = {
        **os.environ,
        **{f"HELM_{kind}_HOME": str(out / "helm" / kind) for kind in ("CACHE", "CONFIG", "DATA")},
    }
    (out / "rendered").mkdir()
    for variant, values in VARIANTS.items():
        values_file = out / f"{variant}.values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        release = f"fbl-{variant}"  # a release and namespace per variant, so no two objects share a name
        done = subprocess.run(
            [str(helm), "template", release, str(CHART), "-n", release, "-f", str(values_file)],
            capture_output=True,
            text=True,
            env=env,
        )
        if done.returncode != 0:
            raise RenderError(f"helm template ({variant}) exited {done.returncode}: {done.stderr}")
        path = out / "rendered" / f"{variant}.yaml"
        path.write_text(done.stdout)
        files.append(path)
    return files


def run_checkov(checkov: Path, directory: Path) -> bool:
    done = subprocess.run(
        [
            str(checkov), "--directory", str(directory), "--framework", "kubernetes",
            "--output", "json", "--skip-download", "--compact",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},  # no policy metadata download: local checks only
    )  # fmt: skip
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        print(f"checkov exited {done.returncode} without a JSON report:\n{done.stderr}{done.stdout}")
        return False
    reports = report if isinstance(report, list) else [report]
    totals = {"passed": 0, "failed": 0, "skipped": 0, "parsing_errors": 0, "resource_count": 0}
    unexplained = 0  # a skip must say why: `checkov.io/skipN: CKV_ID=reason`
    for one in reports:
        for key in totals:
            totals[key] += int(one.get("summary", {}).get(key, 0))
        results = one.get("results", {})
        for check in results.get("skipped_checks", []):
            reason = check.get("check_result", {}).get("suppress_comment", "").strip()
            reason = "" if reason == CHECKOV_NO_REASON else reason
            print(
                f"checkov skipped {check['check_id']} on {check['resource']}: {reason or 'NO REASON GIVEN'}"
            )
            unexplained += not reason
        for check in results.get("failed_checks", []):
            print(
                f"checkov FAILED {check['check_id']} {check['check_name']} on {check['resource']} "
                f"({Path(check['file_path']).name})"
            )
    print(
        "checkov {version}: {resource_count} resources, passed {passed}, failed {failed}, skipped {skipped}, "
        "parsing errors {parsing_errors}".format(
            version=reports[0].get("summary", {}).get("checkov_version", "?"), **totals
        )
    )
    return (
        totals["failed"] == 0 and totals["parsing_errors"] == 0 and unexplained == 0 and done.returncode == 0
    )


def run_kube_score(kube_score: Path, files: list[Path], kubernetes_version: str) -> bool:
    done = subprocess.run(
        [
            str(kube_score), "score", "--output-format", "json", "--exit-one-on-warning",
            "--kubernetes-version", kubernetes_version, *map(str, files),
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    try:
        scored = json.loads(done.stdout)
    except json.JSONDecodeError:
        print(f"kube-score exited {done.returncode} without a JSON report:\n{done.stderr}{done.stdout}")
        return False
    counts = {"ok": 0, "findings": 0, "ignored": 0, "optional": 0, "not applicable": 0}
    for obj in sorted(scored, key=lambda o: str(o["object_name"])):
        for check in obj["checks"]:
            check_id, comments = check["check"]["id"], check.get("comments") or []
            if check["skipped"] and check["check"]["optional"]:
                counts["optional"] += 1  # not enabled: kube-score's optional checks are off unless asked for
            elif check["skipped"] and [c["summary"] for c in comments] == [
                f"Skipped because {check_id} is ignored"
            ]:
                counts["ignored"] += 1
                print(f"kube-score ignored {check_id} on {obj['object_name']}")
            elif check["skipped"]:
                counts["not applicable"] += 1
            elif check["grade"] == GRADE_ALL_OK:
                counts["ok"] += 1
            else:  # kube-score itself lets "almost OK" pass; here it is a finding like any other
                counts["findings"] += 1
                for comment in comments or [{"summary": "", "path": ""}]:
                    print(
                        f"kube-score FAILED {check_id} (grade {check['grade']}) on {obj['object_name']}: "
                        f"{comment.get('path') or ''} {comment['summary']}"
                    )
    print(
        f"kube-score (--kubernetes-version {kubernetes_version}): "
        + ", ".join(f"{v} {k}" for k, v in counts.items())
    )
    return done.returncode == 0 and counts["findings"] == 0


def kubernetes_minor() -> str:
    versions = dict(
        line.split("=", 1)
        for line in (REPO / "tests" / "cluster" / "versions.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    return ".".join(versions["K8S_VERSION"].split(".")[:2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--helm", type=Path, required=True)
    parser.add_argument("--checkov", type=Path, required=True)
    parser.add_argument("--kube-score", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chart-scan-") as tmp:
        try:
            files = render(args.helm, Path(tmp))
        except RenderError as err:
            print(err)
            return 1
        checkov_ok = run_checkov(args.checkov, files[0].parent)
        kube_score_ok = run_kube_score(args.kube_score, files, kubernetes_minor())
    if checkov_ok and kube_score_ok:
        return 0
    print(
        "chart-scan: fix the finding, or skip it in the template with a one-line reason (helm/scan_chart.py)"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
