"""The loop index: what a reconcile reads instead of the API server, kept small."""

from __future__ import annotations

import copy
from typing import Any

from feedbackloop.index import LoopIndex


def _loop(name: str, uid: str, job: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "feedbackloop.dev/v1alpha1",
        "kind": "FeedbackLoop",
        "metadata": {
            "name": name,
            "namespace": "ml",
            "uid": uid,
            "generation": 3,
            "resourceVersion": "42",
            "creationTimestamp": "2026-12-02T10:00:00Z",
            "annotations": {"feedbackloop.dev/rollback-to": "v1"},
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"target": {"deployment": "serve", "container": "server"}, "note": "naïve ✓"},
        "status": {"activeRetrain": {"job": job}} if job else {},
    }


def test_a_loop_reads_back_as_put_without_managed_fields_or_kind() -> None:
    index = LoopIndex()
    body = _loop("churn", "u-1")
    key = index.put(body)
    assert key == ("ml", "churn")
    read = index.get(key)
    expected_meta = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
    assert read == {"metadata": expected_meta, "spec": body["spec"], "status": {}}


def test_each_read_is_a_copy_the_caller_may_change() -> None:
    index = LoopIndex()
    body = _loop("churn", "u-1")
    original = copy.deepcopy(body)
    key = index.put(body)
    first = index.get(key)
    assert first is not None
    first["spec"]["target"]["deployment"] = "changed"
    body["spec"]["target"]["deployment"] = "changed after put"
    second = index.get(key)
    assert second is not None
    assert second["spec"] == original["spec"]


def test_keys_and_uids_without_decoding_and_removal() -> None:
    index = LoopIndex()
    index.put(_loop("a", "u-a"))
    index.put(_loop("b", "u-b", job="a-retrain-1"))
    index.put(_loop("a", "u-a2"))  # recreated under the same name: the newest uid wins
    assert sorted(index.loop_keys()) == [("ml", "a"), ("ml", "b")]
    assert sorted(index.uids()) == [(("ml", "a"), "u-a2"), (("ml", "b"), "u-b")]
    assert ("ml", "b") in index and len(index) == 2
    assert dict(index.items())[("ml", "b")]["status"] == {"activeRetrain": {"job": "a-retrain-1"}}
    index.remove(("ml", "b"))
    assert ("ml", "b") not in index
    assert index.get(("ml", "b")) is None
    assert len(index) == 1
