"""FBL_SHARD_SELECTOR: the equality-based label selectors a replica's loops are chosen by."""

from __future__ import annotations

import pytest

from feedbackloop.config import ConfigError, load_config
from feedbackloop.core.shard import SelectorError, parse_selector


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ("", {}, True),
        ("feedbackloop.dev/shard=a", {"feedbackloop.dev/shard": "a"}, True),
        ("feedbackloop.dev/shard=a", {"feedbackloop.dev/shard": "b"}, False),
        ("feedbackloop.dev/shard==a", {"feedbackloop.dev/shard": "a"}, True),
        ("feedbackloop.dev/shard!=a", {}, True),
        ("feedbackloop.dev/shard!=a", {"feedbackloop.dev/shard": "a"}, False),
        ("!feedbackloop.dev/shard", {}, True),
        ("!feedbackloop.dev/shard", {"feedbackloop.dev/shard": "a"}, False),
        ("tier, team=ml", {"tier": "x", "team": "ml"}, True),
        ("tier, team=ml", {"team": "ml"}, False),
    ],
)
def test_a_selector_matches_as_kubectl_would(selector: str, labels: dict[str, str], matches: bool) -> None:
    assert parse_selector(selector).matches(labels) is matches


@pytest.mark.parametrize("selector", ["a=b=c", "!a=b", "bad key=x", "a=$(id)", "team in (a,b)"])
def test_a_selector_that_does_not_parse_is_refused_naming_the_term(selector: str) -> None:
    with pytest.raises(SelectorError, match=r"is not|takes no value"):
        parse_selector(selector)


def test_the_operator_refuses_a_bad_shard_selector_at_start() -> None:
    with pytest.raises(ConfigError, match="FBL_SHARD_SELECTOR"):
        load_config({"FBL_SHARD_SELECTOR": "a=b=c"})
    assert str(load_config({"FBL_SHARD_SELECTOR": "shard=a"}).shard) == "shard=a"


def test_lease_timings_that_let_two_leaders_overlap_are_refused() -> None:
    with pytest.raises(ConfigError, match="FBL_LEASE"):
        load_config({"FBL_LEASE_DURATION_SECONDS": "5", "FBL_LEASE_RENEW_DEADLINE_SECONDS": "5"})
