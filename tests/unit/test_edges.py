"""Pure edges around the I/O: configuration, Prometheus result shapes, merge patches, stored status."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from feedbackloop.adapters.prometheus import classify
from feedbackloop.config import ConfigError, load_config
from feedbackloop.core.observations import QueryOutcome
from feedbackloop.core.patch import merge_patch
from feedbackloop.core.status import parse_status
from feedbackloop.failpoints import Failpoint


def test_config_defaults() -> None:
    config = load_config({})
    assert config.trainer_images == ("feedbackloop-operator:0.1.0",)
    assert config.max_concurrent_retrains == 2
    assert config.namespaces == ()
    assert config.s3_endpoint_url is None
    assert config.policy.trainer_images == config.trainer_images


def test_config_reads_lists_and_endpoint() -> None:
    config = load_config(
        {
            "FBL_TRAINER_IMAGES": "reg/trainer:1, reg/trainer:2",
            "FBL_WATCH_NAMESPACES": "ml,ml-staging",
            "AWS_ENDPOINT_URL_S3": "http://s3:9000",
            "FBL_MAX_CONCURRENT_RETRAINS": "5",
        }
    )
    assert config.trainer_images == ("reg/trainer:1", "reg/trainer:2")
    assert config.namespaces == ("ml", "ml-staging")
    assert config.s3_endpoint_url == "http://s3:9000"
    assert config.max_concurrent_retrains == 5


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FBL_MAX_CONCURRENT_RETRAINS": "many"}, "FBL_MAX_CONCURRENT_RETRAINS='many' is not an integer"),
        ({"FBL_MAX_CONCURRENT_RETRAINS": "0"}, "between 1 and 1000"),
        ({"FBL_TRAINER_IMAGES": "bad image;rm -rf"}, "FBL_TRAINER_IMAGES"),
        ({"FBL_WATCH_NAMESPACES": "Not_A_Namespace"}, "FBL_WATCH_NAMESPACES"),
        ({"FBL_S3_ENDPOINT_URL": "s3.local:9000"}, "FBL_S3_ENDPOINT_URL"),
        ({"FBL_TICK_SECONDS": "0.01"}, "FBL_TICK_SECONDS"),
        (
            {"FBL_FAILPOINT": "after-everything"},
            "FBL_FAILPOINT: 'after-everything' is not one of after-counter",
        ),
    ],
)
def test_config_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(env)


@pytest.mark.parametrize(
    ("value", "failpoint"),
    [
        ("", None),
        ("after-job-create", Failpoint.AFTER_JOB_CREATE),
        ("during-rollback", Failpoint.DURING_ROLLBACK),
        ("crash-before-job-create", Failpoint.AFTER_COUNTER_WRITE),  # the earlier name still works
    ],
)
def test_config_reads_the_failpoint(value: str, failpoint: Failpoint | None) -> None:
    assert load_config({"FBL_FAILPOINT": value}).failpoint is failpoint


@pytest.mark.parametrize(
    ("result", "outcome", "value"),
    [
        ([1700000000.0, "0.5"], QueryOutcome.VALUE, 0.5),
        ([{"metric": {}, "value": [1700000000.0, "0.25"]}], QueryOutcome.VALUE, 0.25),
        ([{"metric": {}, "value": [1700000000.0, "NaN"]}], QueryOutcome.NAN, None),
        ([{"metric": {}, "value": [1700000000.0, "+Inf"]}], QueryOutcome.INFINITE, None),
        ([{"metric": {}, "value": [1700000000.0, "-Inf"]}], QueryOutcome.INFINITE, None),
        ([], QueryOutcome.EMPTY, None),
        ([{"value": [0, "1"]}, {"value": [0, "2"]}], QueryOutcome.MULTIPLE_SERIES, None),
        ([{"metric": {}, "values": [[0, "1"]]}], QueryOutcome.ERROR, None),
        ({"unexpected": True}, QueryOutcome.ERROR, None),
        ([0, "abc"], QueryOutcome.ERROR, None),
        # A malformed 200 from a server that only claims to be Prometheus: an error outcome, never a crash.
        ([{"metric": {}, "value": 5}], QueryOutcome.ERROR, None),
        ([{"metric": {}, "value": [0]}], QueryOutcome.ERROR, None),
        ([{"metric": {}, "value": [0, {"x": 1}]}], QueryOutcome.ERROR, None),
        ([{"metric": {}, "value": [0, 0.5]}], QueryOutcome.ERROR, None),
        (["not a sample"], QueryOutcome.ERROR, None),
    ],
)
def test_prometheus_result_shapes(result: object, outcome: QueryOutcome, value: float | None) -> None:
    classified = classify(result)
    assert (classified.outcome, classified.value) == (outcome, value)


def test_merge_patch_is_minimal_and_deletes_with_null() -> None:
    old = {"a": 1, "b": {"c": 2, "d": 3}, "gone": True, "list": [1, 2]}
    new = {"a": 1, "b": {"c": 2, "d": 4}, "list": [1, 2, 3], "added": "x"}
    assert merge_patch(old, new) == {"b": {"d": 4}, "gone": None, "list": [1, 2, 3], "added": "x"}
    assert merge_patch(new, new) == {}


def test_malformed_stored_status_parts_are_dropped_not_fatal() -> None:
    status = parse_status({"retrainCount": 4, "lastEvaluation": {"time": "not a time"}, "conditions": "nope"})
    assert status.retrain_count == 4
    assert status.last_evaluation is None
    assert status.conditions == ()


def test_a_malformed_tick_stops_the_operator_with_the_friendly_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """kopf fixes the timer interval when the handlers are imported: the setting is checked before that."""
    from feedbackloop.__main__ import main

    monkeypatch.setenv("FBL_TICK_SECONDS", "fast")
    assert main() == 2
    assert "invalid configuration: FBL_TICK_SECONDS='fast' is not a number" in capsys.readouterr().err


def test_the_operator_reads_settings_only_through_config() -> None:
    """One validated place for FBL_* settings; the kubectl plugin, its own program, reads its user's env."""
    package = Path(__file__).resolve().parents[2] / "operator" / "feedbackloop"
    readers = {
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if re.search(r"\bos\.(environ|getenv)\b", path.read_text())
    }
    assert {reader for reader in readers if not reader.startswith("kubectl_plugin/")} == {"config.py"}
