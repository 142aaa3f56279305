"""The pure parts the handlers used to hold: the error status, the clearing of it, the durations and GPU
count fed to the operator's metrics, and the ownership filter."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubetune.reconcile import accounting
from kubetune.reconcile import conditions as c
from kubetune.reconcile.errors import error_status, without_error
from kubetune.reconcile.ownership import owned, owned_by
from tests.api.conftest import load_example, with_changes

NOW = "2026-11-29T10:00:00Z"


def _condition(kind: str, status: str, reason: str, at: str) -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": "", "lastTransitionTime": at,
            "observedGeneration": 1}  # fmt: skip


# ------------------------------------------------------------------------------------------ error status


def test_an_error_on_a_new_object_gives_it_a_pending_status_saying_it_will_be_retried() -> None:
    resource = {"metadata": {"name": "a", "generation": 3}}
    status = error_status(resource, KeyError("spec"), now=NOW)
    assert status["phase"] == "Pending"
    assert status["observedGeneration"] == 3
    (reconciled,) = status["conditions"]
    assert reconciled["type"] == c.RECONCILED and reconciled["status"] == "False"
    assert reconciled["reason"] == c.RECONCILE_ERROR
    assert reconciled["message"] == "reconcile failed and will be retried: KeyError: 'spec'"
    assert reconciled["lastTransitionTime"] == NOW and reconciled["observedGeneration"] == 3


def test_an_error_keeps_the_phase_and_conditions_and_does_not_touch_the_resource() -> None:
    running = _condition(c.RUNNING, "True", c.TRAINING, "2026-11-29T09:00:00Z")
    resource = {"metadata": {"name": "a"}, "status": {"phase": "Running", "conditions": [running]}}
    before = copy.deepcopy(resource)
    status = error_status(resource, RuntimeError("the API said 500\nretry later"), now=NOW)
    assert resource == before
    assert status["phase"] == "Running" and status["observedGeneration"] == 1
    assert [cond["type"] for cond in status["conditions"]] == [c.RUNNING, c.RECONCILED]
    assert status["conditions"][0] == running
    assert "\n" not in status["conditions"][1]["message"]  # one line


def test_a_repeated_error_keeps_its_transition_time() -> None:
    first = {
        "metadata": {"name": "a"},
        "status": error_status({"metadata": {"name": "a"}}, OSError("x"), now=NOW),
    }
    again = error_status(first, OSError("y"), now="2026-11-29T11:00:00Z")
    (reconciled,) = again["conditions"]
    assert reconciled["lastTransitionTime"] == NOW and reconciled["message"].endswith("OSError: y")


def test_a_successful_reconcile_clears_the_error_condition_only() -> None:
    running = _condition(c.RUNNING, "True", c.TRAINING, NOW)
    failed = _condition(c.RECONCILED, "False", c.RECONCILE_ERROR, NOW)
    status = {"phase": "Running", "conditions": [running, failed]}
    assert without_error(status) == {"phase": "Running", "conditions": [running]}
    assert status["conditions"] == [running, failed]  # a new status, not an edited one
    assert without_error({"phase": "Pending"}) == {"phase": "Pending"}


# -------------------------------------------------------------------------------------------- durations


def test_the_queue_wait_runs_from_the_dataset_passing_to_the_first_running_pod() -> None:
    validated = _condition(c.DATASET_VALIDATED, "True", c.DATASET_VALID, "2026-11-29T10:00:00Z")
    before = {
        "conditions": [validated, _condition(c.RUNNING, "False", c.PENDING_PODS, "2026-11-29T10:00:00Z")]
    }
    after = {"conditions": [validated, _condition(c.RUNNING, "True", c.TRAINING, "2026-11-29T10:02:30Z")]}
    assert accounting.durations(before, after) == accounting.Durations(queue_wait_seconds=150.0)


def test_no_queue_wait_for_a_retried_pod_or_while_training_continues() -> None:
    validated = _condition(c.DATASET_VALIDATED, "True", c.DATASET_VALID, "2026-11-29T10:00:00Z")
    stopped = _condition(c.RUNNING, "False", c.PENDING_PODS, "2026-11-29T10:05:00Z")
    running = _condition(c.RUNNING, "True", c.TRAINING, "2026-11-29T10:06:00Z")
    retried = {"restarts": 1, "conditions": [validated, stopped]}
    assert accounting.durations(retried, {"conditions": [validated, running]}) == accounting.Durations()
    still = {"conditions": [validated, running]}
    assert accounting.durations(still, still) == accounting.Durations()


def test_the_training_time_runs_from_running_to_training_complete() -> None:
    running = _condition(c.RUNNING, "True", c.TRAINING, "2026-11-29T10:00:00Z")
    done = _condition(c.RUNNING, "False", c.TRAINING_COMPLETE, "2026-11-29T11:00:00Z")
    result = accounting.durations({"conditions": [running]}, {"conditions": [done]})
    assert result == accounting.Durations(training_seconds=3600.0)
    failed = _condition(c.RUNNING, "False", c.OUT_OF_MEMORY, "2026-11-29T11:00:00Z")
    assert accounting.durations({"conditions": [running]}, {"conditions": [failed]}) == accounting.Durations()


def test_a_clock_going_backwards_counts_as_no_time_and_unknown_times_as_nothing() -> None:
    validated = _condition(c.DATASET_VALIDATED, "True", c.DATASET_VALID, "2026-11-29T10:05:00Z")
    running = _condition(c.RUNNING, "True", c.TRAINING, "2026-11-29T10:00:00Z")
    assert accounting.durations({}, {"conditions": [validated, running]}).queue_wait_seconds == 0.0
    assert accounting.durations({}, {"conditions": [running]}) == accounting.Durations()


# ------------------------------------------------------------------------------------------------- GPUs

EXAMPLE = load_example("01-lora-basic/finetunejob.yaml")


@pytest.mark.parametrize(
    ("resources", "gpus"),
    [(None, 1), ({"gpus": 2}, 2), ({"gpus": 4, "nodes": 2}, 8), ({"gpus": 0}, 0)],
)
def test_gpus_requested_are_per_node_times_nodes(resources: dict[str, Any] | None, gpus: int) -> None:
    resource = copy.deepcopy(EXAMPLE)
    resource["spec"].pop("resources", None)
    if resources is not None:
        resource["spec"]["resources"] = resources
        if not resources.get("gpus"):
            resource["spec"]["method"] = "lora"  # qlora needs a GPU
    assert accounting.gpus_requested(accounting.job_spec(resource)) == gpus


def test_an_invalid_spec_requests_no_gpus() -> None:
    resource = with_changes(EXAMPLE, {"spec.resources.gpus": "many"})
    assert accounting.job_spec(resource) is None
    assert accounting.gpus_requested(None) == 0


# -------------------------------------------------------------------------------------------- ownership


def _child(name: str, *uids: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "ownerReferences": [{"uid": uid} for uid in uids]}}


def test_only_children_naming_the_owners_uid_are_its_own() -> None:
    owner = {"metadata": {"name": "bot", "uid": "uid-new"}}
    children = [_child("mine", "uid-new"), _child("predecessors", "uid-old"), _child("orphan"),
                _child("shared", "uid-other", "uid-new"), {"metadata": {"name": "bare"}}]  # fmt: skip
    assert [child["metadata"]["name"] for child in owned(children, owner)] == ["mine", "shared"]
    assert not owned_by(_child("orphan"), None)
    assert not owned_by({"metadata": {"ownerReferences": [{}]}}, None)
