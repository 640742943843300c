"""The server's candidate settings, the split's routing and the record of a split's answer (issue 19)."""

from __future__ import annotations

import orjson
import pytest
from feedbackloop_serve.app import routes_to_candidate
from feedbackloop_serve.settings import CandidateSettings, SettingsError, load_settings
from feedbackloop_serve.sink import decode_record, encode_record

BASE = {"MODEL_URI": "s3://models/churn/v1/", "MODEL_SHA256": "0" * 64}
CANDIDATE = {"CANDIDATE_MODEL_URI": "s3://models/churn/v2/", "CANDIDATE_MODEL_SHA256": "A" * 64}


def test_no_candidate_by_default_and_each_mode_parses() -> None:
    assert load_settings(BASE).candidate is None
    shadow = load_settings({**BASE, **CANDIDATE, "CANDIDATE_MODE": "shadow"}).candidate
    assert shadow == CandidateSettings("s3://models/churn/v2/", "a" * 64, "shadow", 0.0, None)
    split = load_settings(
        {
            **BASE,
            **CANDIDATE,
            "CANDIDATE_MODE": "split",
            "CANDIDATE_WEIGHT": "0.2",
            "CANDIDATE_REQUEST_KEY": "X-User",
        }
    ).candidate
    assert split == CandidateSettings("s3://models/churn/v2/", "a" * 64, "split", 0.2, "x-user")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CANDIDATE_MODE": "shadow"}, "CANDIDATE_MODE is set without CANDIDATE_MODEL_URI"),
        (
            {**CANDIDATE, "CANDIDATE_MODEL_URI": "http://x/"},
            "CANDIDATE_MODEL_URI='http://x/' is not an s3://",
        ),
        ({**CANDIDATE, "CANDIDATE_MODEL_SHA256": "beef"}, "CANDIDATE_MODEL_SHA256 must be 64 hex characters"),
        ({**CANDIDATE, "CANDIDATE_MODE": "canary"}, "CANDIDATE_MODE='canary' must be shadow or split"),
        ({**CANDIDATE}, "CANDIDATE_MODE='' must be shadow or split"),
        ({**CANDIDATE, "CANDIDATE_MODE": "split"}, "CANDIDATE_WEIGHT='' must be a number between 0 and 1"),
        ({**CANDIDATE, "CANDIDATE_MODE": "split", "CANDIDATE_WEIGHT": "1"}, "CANDIDATE_WEIGHT='1' must be"),
        (
            {**CANDIDATE, "CANDIDATE_MODE": "split", "CANDIDATE_WEIGHT": "nan"},
            "CANDIDATE_WEIGHT='nan' must be",
        ),
        (
            {
                **CANDIDATE,
                "CANDIDATE_MODE": "split",
                "CANDIDATE_WEIGHT": "0.5",
                "CANDIDATE_REQUEST_KEY": "a b",
            },
            "CANDIDATE_REQUEST_KEY='a b' is not an HTTP header name",
        ),
        (
            {**CANDIDATE, "CANDIDATE_MODE": "shadow", "CANDIDATE_WEIGHT": "0.5"},
            "CANDIDATE_WEIGHT applies to CANDIDATE_MODE=split only",
        ),
    ],
)
def test_bad_candidate_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings({**BASE, **env})


def test_a_split_by_key_is_stable_near_its_weight_and_reshuffled_by_the_next_candidate() -> None:
    keys = [f"user-{i}" for i in range(20_000)]
    chosen = [routes_to_candidate(0.2, key, "v2") for key in keys]
    assert chosen == [routes_to_candidate(0.2, key, "v2") for key in keys]  # one user, one model
    share = sum(chosen) / len(keys)
    assert abs(share - 0.2) < 4 * (0.2 * 0.8 / len(keys)) ** 0.5
    next_stage = [routes_to_candidate(0.2, key, "v3") for key in keys]
    overlap = sum(a and b for a, b in zip(chosen, next_stage, strict=True)) / sum(chosen)
    assert overlap < 0.3  # about 0.2: the next stage's candidate meets mostly other users
    # A larger weight keeps every user the smaller one gave the candidate.
    assert all(routes_to_candidate(0.5, key, "v2") for key, was in zip(keys, chosen, strict=True) if was)


def test_a_split_candidates_record_names_its_role_and_a_champions_record_is_unchanged() -> None:
    champion = encode_record({"x": 1.0}, 1, "v1", 5)
    assert orjson.loads(champion) == {"row": {"x": 1.0}, "prediction": 1, "version": "v1", "at": 5}
    candidate = decode_record(encode_record({"x": 1.0}, 0, "v2", 6, "candidate"))
    assert (candidate["version"], candidate["role"]) == ("v2", "candidate")
