"""`kubectl feedbackloop promote` and `rollback`: the merge patch each sends, to an in-memory loop."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from core_inputs import PASSED_V2, V1, rolling_status
from feedbackloop.api import PROMOTE_ANNOTATION, REQUESTED_AT_ANNOTATION, ROLLBACK_ANNOTATION
from feedbackloop.core.status import FeedbackLoopStatus, to_status_dict
from feedbackloop.kubectl_plugin import cli, versions
from feedbackloop.kubectl_plugin.cluster import LoopApi
from feedbackloop.kubectl_plugin.errors import PluginError

TOKEN = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")
LABEL = 'FeedbackLoop "churn" in namespace "ml"'


class StoredLoop(LoopApi):
    """One FeedbackLoop held in memory; a merge patch changes its annotations as the API server would."""

    def __init__(self, annotations: dict[str, str], status: FeedbackLoopStatus) -> None:
        self.body: dict[str, Any] = {
            "metadata": {"name": "churn", "namespace": "ml", "annotations": dict(annotations)},
            "spec": {"mode": "Recommend"},
            "status": to_status_dict(status),
        }
        self.patches: list[dict[str, Any]] = []

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.body)

    def merge_patch(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.patches.append(copy.deepcopy(patch))
        stored = self.body["metadata"]["annotations"]
        for key, value in patch["metadata"]["annotations"].items():
            if value is None:
                stored.pop(key, None)
            else:
                stored[key] = value
        return copy.deepcopy(self.body)

    @property
    def annotations(self) -> dict[str, str]:
        found: dict[str, str] = self.body["metadata"]["annotations"]
        return found

    def handled(self, **changes: str) -> None:
        """The operator handled the requests: status.handled*Request as it records them."""
        self.body["status"].update(changes)


def kubectl_fbl(loop: StoredLoop, *argv: str) -> int:
    args = cli.build_parser().parse_args(list(argv))
    run: cli.Command = args.run
    return run(cli.Session(loops=loop, namespace="ml"), args)


def recommending(**changes: Any) -> FeedbackLoopStatus:
    return FeedbackLoopStatus(
        current_model=V1, candidate_model=PASSED_V2, recommended_version="v2", **changes
    )


def test_promote_sets_a_fresh_token_so_the_same_promote_again_is_a_new_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    loop = StoredLoop({}, recommending())
    assert kubectl_fbl(loop, "promote", "churn", "v2") == 0
    first = loop.annotations[REQUESTED_AT_ANNOTATION]
    assert TOKEN.fullmatch(first)
    assert loop.patches == [
        {"metadata": {"annotations": {PROMOTE_ANNOTATION: "v2", REQUESTED_AT_ANNOTATION: first}}}
    ]
    printed = capsys.readouterr()
    assert printed.out == (
        f"{LABEL}: promotion of v2 requested ({PROMOTE_ANNOTATION}=v2, {REQUESTED_AT_ANNOTATION}={first})\n"
    )
    assert printed.err == ""

    # Handled (and refused, say, while the loop was in Observe): the same version is asked for again.
    loop.handled(handledPromoteRequest=f"v2@{first}")
    assert kubectl_fbl(loop, "promote", "churn", "v2") == 0
    second = loop.annotations[REQUESTED_AT_ANNOTATION]
    assert TOKEN.fullmatch(second) and second != first
    assert loop.annotations == {PROMOTE_ANNOTATION: "v2", REQUESTED_AT_ANNOTATION: second}
    assert capsys.readouterr().err == ""


def test_a_request_removes_the_other_one_the_operator_handled_in_the_same_patch(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Back to v1 on Monday; the rollback-to is still on the loop when v2 is promoted.
    old = {ROLLBACK_ANNOTATION: "v1", REQUESTED_AT_ANNOTATION: "monday"}
    loop = StoredLoop(old, recommending(handled_rollback_request="v1@monday"))
    kubectl_fbl(loop, "promote", "churn", "v2")
    token = loop.annotations[REQUESTED_AT_ANNOTATION]
    assert loop.patches[-1]["metadata"]["annotations"] == {
        PROMOTE_ANNOTATION: "v2",
        REQUESTED_AT_ANNOTATION: token,
        ROLLBACK_ANNOTATION: None,
    }
    assert loop.annotations == {PROMOTE_ANNOTATION: "v2", REQUESTED_AT_ANNOTATION: token}
    printed = capsys.readouterr()
    assert printed.out == (
        f"{LABEL}: promotion of v2 requested ({PROMOTE_ANNOTATION}=v2, {REQUESTED_AT_ANNOTATION}={token}, "
        f"{ROLLBACK_ANNOTATION} removed)\n"
    )
    assert printed.err == ""

    # The operator handled the promote; a rollback (to v0, stored outside the status) removes it in turn.
    loop.handled(handledPromoteRequest=f"v2@{token}")
    kubectl_fbl(loop, "rollback", "churn", "v0", "--force")
    again = loop.annotations[REQUESTED_AT_ANNOTATION]
    assert again != token
    assert loop.annotations == {ROLLBACK_ANNOTATION: "v0", REQUESTED_AT_ANNOTATION: again}
    assert capsys.readouterr().err == ""


def test_a_request_replaces_the_other_one_still_waiting_and_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A promote waits for a retrain: left beside a new token it would go first and take the rollback with it.
    loop = StoredLoop({PROMOTE_ANNOTATION: "v2", REQUESTED_AT_ANNOTATION: "monday"}, recommending())
    kubectl_fbl(loop, "rollback", "churn", "v0", "--force")
    assert PROMOTE_ANNOTATION not in loop.annotations
    assert loop.annotations[ROLLBACK_ANNOTATION] == "v0"
    assert (
        capsys.readouterr().err
        == f"warning: {PROMOTE_ANNOTATION}='v2' was not handled yet: this request replaces it\n"
    )


def test_without_the_other_request_the_patch_names_only_the_request_and_its_token() -> None:
    request = versions.version_request(recommending(), {}, ROLLBACK_ANNOTATION, "v1", "t")
    assert request == versions.VersionRequest({ROLLBACK_ANNOTATION: "v1", REQUESTED_AT_ANNOTATION: "t"})


def test_the_rollout_in_flight_is_not_asked_for_again() -> None:
    status = rolling_status()  # v2 under promotion, still the validated candidate
    loop = StoredLoop({}, status)
    with pytest.raises(
        PluginError, match=r"already the promotion of v2 \(phase Progressing\); ask again once"
    ):
        kubectl_fbl(loop, "promote", "churn", "v2")
    assert loop.patches == []
    versions.check_not_in_flight(status, ROLLBACK_ANNOTATION, "v2")  # a rollback to it is another request
