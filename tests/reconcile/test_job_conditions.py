"""Job status as Kubernetes < 1.31 writes it (Complete or Failed alone) and as 1.31+ writes it (SuccessCriteriaMet
before Complete, FailureTarget before Failed, the first while pods still terminate): the operator reads the same
outcome from each, and never reads a decided Job as running."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubetune.reconcile import conditions as c
from kubetune.reconcile.observed import job_view
from tests.reconcile.test_finetunejob_lifecycle import _run_to_training, _world
from tests.reconcile.world import FINISH_OK, TRAINING_OK, World

# legacy: before 1.31; both: 1.31+ once the pods are gone; decided: 1.31+ while the pods still terminate.
ORDERS = ("legacy", "both", "decided")
_TARGET = {"Complete": "SuccessCriteriaMet", "Failed": "FailureTarget"}


def job_conditions(final: str, reason: str, message: str, order: str) -> list[dict[str, Any]]:
    done = {"type": final, "status": "True", "reason": reason, "message": message}
    target = {**done, "type": _TARGET[final]}
    return {"legacy": [done], "both": [target, done], "decided": [target]}[order]


def _terminating_peer(world: World, stage: str) -> None:
    """A second pod of the Job still stopping (deletionTimestamp set, Running): what 'decided' waits for."""
    pod = world.add_pod(stage, "Running")
    pod["metadata"]["deletionTimestamp"] = "2026-11-29T10:59:00Z"


def _finish(world: World, stage: str, summary: dict[str, Any] | None, *, ok: bool, order: str) -> None:
    terminated: dict[str, Any] = {"exitCode": 0 if ok else 1, "reason": "Completed" if ok else "Error"}
    if summary is not None:
        terminated["message"] = json.dumps(summary)
    world.add_pod(stage, "Succeeded" if ok else "Failed", terminated=terminated)
    if order == "decided":
        _terminating_peer(world, stage)
    final, reason, message = (
        ("Complete", "CompletionsReached", "Reached expected number of succeeded pods")
        if ok
        else ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    )
    status: dict[str, Any] = {"conditions": job_conditions(final, reason, message, order)}
    status |= {"succeeded": 1, "active": 1 if order == "decided" else 0} if ok else {"failed": 1}
    if ok and order != "decided":
        status["completionTime"] = "2026-11-29T11:00:00Z"  # set with Complete, not with SuccessCriteriaMet
    world.set_job_status(stage, **status)


def _outcome(world: World) -> tuple[str, list[tuple[str, str, str]]]:
    conditions = world.resource["status"]["conditions"]
    return world.phase, sorted((k["type"], k["status"], k["reason"]) for k in conditions)


def _succeeded(order: str) -> tuple[str, list[tuple[str, str, str]]]:
    world = _world()
    _run_to_training(world)
    _finish(world, "train", TRAINING_OK, ok=True, order=order)
    world.step()
    _finish(world, "finish", FINISH_OK, ok=True, order=order)
    world.step()
    world.step()
    return _outcome(world)


def _failed(order: str) -> tuple[str, list[tuple[str, str, str]]]:
    world = _world()
    _run_to_training(world)
    _finish(world, "train", None, ok=False, order=order)
    world.step()
    return _outcome(world)


@pytest.mark.parametrize("order", ORDERS)
def test_a_succeeded_job_reads_the_same_in_every_order(order: str) -> None:
    phase, conditions = _succeeded(order)
    assert phase == "Succeeded"
    assert (phase, conditions) == _succeeded("legacy")


@pytest.mark.parametrize("order", ORDERS)
def test_a_failed_job_reads_the_same_in_every_order(order: str) -> None:
    phase, conditions = _failed(order)
    assert phase == "Failed"
    assert (c.FAILED, "True", c.BACKOFF_LIMIT_EXCEEDED) in conditions
    assert (phase, conditions) == _failed("legacy")


def test_a_job_with_only_failure_target_is_failed_not_running() -> None:
    """The pods of a Job decided to fail may take their grace period to stop: the Job is failed meanwhile."""
    job = {
        "metadata": {"name": "j-train", "labels": {}},
        "status": {
            "active": 1,
            "failed": 1,
            "conditions": job_conditions("Failed", "DeadlineExceeded", "Job was active longer than specified deadline", "decided"),
        },
    }  # fmt: skip
    view = job_view(job, [])
    assert (view.failure_reason, view.failure_message) == (
        "DeadlineExceeded",
        "Job was active longer than specified deadline",
    )
    assert not view.complete
    complete = job_view(
        {**job, "status": {"conditions": job_conditions("Complete", "SuccessPolicy", "", "decided")}}, []
    )
    assert complete.complete and complete.failure_reason is None


def test_a_condition_that_is_not_true_decides_nothing() -> None:
    false = [{"type": t, "status": "False", "reason": "X"} for t in ("FailureTarget", "SuccessCriteriaMet")]
    view = job_view({"metadata": {"name": "j"}, "status": {"conditions": false}}, [])
    assert not view.complete and view.failure_reason is None
