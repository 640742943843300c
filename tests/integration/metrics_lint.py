"""`promtool check metrics`, Prometheus's own linter, over a /metrics exposition."""

from __future__ import annotations

import subprocess

import harness


def promtool_check_metrics(endpoints: harness.Endpoints, exposition: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(endpoints.bin_dir / "promtool"), "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_promtool_clean(endpoints: harness.Endpoints, exposition: str) -> None:
    """Exit code 0 and not one finding: a finding is printed even when promtool exits 0."""
    done = promtool_check_metrics(endpoints, exposition)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), done.stdout + done.stderr
