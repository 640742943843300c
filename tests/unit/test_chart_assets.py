"""The chart's values are documented and schema-checked, and the CRD has one source."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "feedbackloop-operator"
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][\w.-]*):")


def documented_paths(text: str) -> set[tuple[str, ...]]:
    """Paths of values.yaml keys whose line follows a `# --` comment block (helm-docs style)."""
    documented: set[tuple[str, ...]] = set()
    stack: list[tuple[int, str]] = []
    in_doc = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            in_doc = True
            continue
        if stripped.startswith("#"):
            continue  # a doc comment may run over several lines
        match = KEY_LINE.match(line)
        if not match:
            in_doc = False if not stripped.startswith("-") else in_doc
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        if in_doc:
            documented.add(tuple(key for _, key in stack))
        in_doc = False
    return documented


def leaf_paths(values: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(values, dict) and values:
        return [path for key, value in values.items() for path in leaf_paths(value, (*prefix, key))]
    return [prefix]


def test_every_value_has_a_doc_comment() -> None:
    text = (CHART / "values.yaml").read_text()
    documented = documented_paths(text)
    undocumented = [
        ".".join(path)
        for path in leaf_paths(yaml.safe_load(text))
        if not any(path[:n] in documented for n in range(1, len(path) + 1))
    ]
    assert undocumented == []
    assert ("image", "repository") in documented  # the parser itself finds nested keys


def test_the_doc_checker_catches_an_undocumented_value() -> None:
    text = "# -- documented\na: 1\nb:\n  # -- nested\n  c: 2\n  d: 3\n"
    documented = documented_paths(text)
    missing = [p for p in leaf_paths(yaml.safe_load(text)) if p not in documented]
    assert missing == [("b", "d")]


def schema_objects(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path or "<root>", schema)] if "properties" in schema else []
    for key, child in schema.get("properties", {}).items():
        found += schema_objects(child, f"{path}.{key}")
    return found


def test_schema_closes_every_object_and_covers_exactly_the_values() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    open_objects = [
        path for path, obj in schema_objects(schema) if obj.get("additionalProperties") is not False
    ]
    assert open_objects == []

    def compare(node: dict[str, Any], value: dict[str, Any], path: str) -> None:
        assert set(node["properties"]) == set(value), path
        for key, child in node["properties"].items():
            if "properties" in child:
                compare(child, value[key], f"{path}.{key}")

    compare(schema, values, "")


@pytest.mark.parametrize(
    "copy", ["helm/feedbackloop-operator/files/crds/feedbackloop.yaml", "manifests/crds/feedbackloop.yaml"]
)
def test_crd_copies_are_byte_identical_to_the_source(copy: str) -> None:
    # `make manifests` refreshes the copies; a stale one fails here.
    assert (REPO / copy).read_bytes() == (REPO / "crds" / "feedbackloop.yaml").read_bytes()


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; kubectl refuses them, so the CRD must not have any."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        assert key not in seen, f"key {key!r} repeated at line {key_node.start_mark.line + 1}"
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


@pytest.mark.parametrize("path", ["crds/feedbackloop.yaml", "manifests/operator.yaml"])
def test_the_crd_and_manifests_repeat_no_key_in_a_mapping(path: str) -> None:
    assert list(yaml.load_all((REPO / path).read_text(), Loader=_UniqueKeyLoader))


def _nulls(node: object, path: str = "") -> list[str]:
    """Where a value is null: in a flow mapping, an unquoted description with a comma makes one."""
    if isinstance(node, dict):
        return [p for key, value in node.items() for p in _nulls(value, f"{path}/{key}")] + [
            f"{path}/{key}" for key, value in node.items() if value is None
        ]
    if isinstance(node, list):
        return [p for index, value in enumerate(node) for p in _nulls(value, f"{path}[{index}]")]
    return []


def test_the_crd_has_no_null_value() -> None:
    assert _nulls(yaml.safe_load((REPO / "crds" / "feedbackloop.yaml").read_text())) == []


def test_the_null_check_catches_a_comma_in_an_unquoted_flow_description() -> None:
    assert _nulls(yaml.safe_load("m: {type: string, description: one line, or two.}")) == ["/m/or two."]


def test_the_unique_key_check_catches_a_repeated_key() -> None:
    with pytest.raises(AssertionError, match="maxLength"):
        yaml.load("a: {maxLength: 1, maxLength: 2}", Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader


def test_kustomization_lists_the_generated_files() -> None:
    kustomization = yaml.safe_load((REPO / "manifests" / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["namespace.yaml", "crds/feedbackloop.yaml", "operator.yaml"]
    namespace = yaml.safe_load((REPO / "manifests" / "namespace.yaml").read_text())
    assert namespace["metadata"]["name"] == kustomization["namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_chart_runs_a_console_script_the_package_installs() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    command = re.search(r"command: \[(?P<exe>[\w-]+)\]", deployment)
    assert command is not None
    assert command["exe"] in scripts
    assert scripts["kubectl-feedbackloop"] == "feedbackloop.kubectl_plugin:main"  # `kubectl feedbackloop`
