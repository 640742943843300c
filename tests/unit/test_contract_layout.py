"""Where a version's files live: one rule for the operator, trainer, server and plugin."""

from __future__ import annotations

import pytest

from feedbackloop.core import contract


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://models/churn/ml/churn/v3/", ("models", "churn/ml/churn/v3/model.joblib")),
        ("s3://models/churn/ml/churn/v3", ("models", "churn/ml/churn/v3/model.joblib")),
        ("s3://models/", ("models", "model.joblib")),
    ],
)
def test_a_versions_file_is_under_its_prefix_with_or_without_the_trailing_slash(
    uri: str, expected: tuple[str, str]
) -> None:
    assert contract.version_file(uri, contract.MODEL_FILE) == expected


def test_the_version_root_uri_ends_with_exactly_one_slash() -> None:
    assert contract.version_root_uri("s3://models/ml/churn/v3") == "s3://models/ml/churn/v3/"
    assert contract.version_root_uri("s3://models/ml/churn/v3/") == "s3://models/ml/churn/v3/"


def test_a_version_file_needs_an_s3_uri() -> None:
    with pytest.raises(ValueError, match="not an s3:// URI"):
        contract.version_file("https://models/ml/churn/v3/", contract.MODEL_FILE)
