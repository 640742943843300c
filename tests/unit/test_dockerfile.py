"""The image's key properties, read from the Dockerfile: no container engine runs here to build it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def stages() -> list[list[str]]:
    """Instructions per build stage, continuation lines joined, comments dropped."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    found: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            found.append([])
        found[-1].append(line)
    return found


def test_two_stages_from_one_pinned_slim_base() -> None:
    built = stages()
    assert len(built) == 2
    bases = [stage[0].split()[1] for stage in built]
    assert bases[0] == bases[1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", bases[0]), bases[0]


def test_the_runtime_installs_only_the_built_wheels_and_no_compiler() -> None:
    runtime = " ".join(stages()[-1])
    assert "COPY --from=wheels /wheels /wheels" in runtime
    assert "--no-index --find-links=/wheels" in runtime
    assert "rm -rf /wheels" in runtime
    for tool in ("gcc", "g++", "build-essential", "clang", "make ", "apt-get install"):
        assert tool not in runtime, tool


def test_the_runtime_runs_as_a_numeric_non_root_user() -> None:
    users = [line.split()[1] for line in stages()[-1] if line.upper().startswith("USER ")]
    assert len(users) == 1
    uid, _, gid = users[0].partition(":")
    assert uid.isdigit() and int(uid) >= 10000
    assert gid == "" or (gid.isdigit() and int(gid) > 0)


def test_one_image_has_the_operator_trainer_and_server_entry_points() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"feedbackloop-operator", "feedbackloop-train", "feedbackloop-serve"} <= set(scripts)
    runtime = stages()[-1]
    assert runtime[-1] == 'CMD ["feedbackloop-operator"]'
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert f"feedbackloop-operator=={version}" in " ".join(runtime)
