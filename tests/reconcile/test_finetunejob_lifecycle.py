"""The FineTuneJob state machine, one decision at a time, against an in-memory world."""

from __future__ import annotations

import copy

import pytest

from kubetune.reconcile import conditions as c
from kubetune.reconcile.progress import progress_changed
from tests.api.conftest import load_example, with_changes
from tests.reconcile.world import FINISH_OK, TRAINING_OK, VALIDATION_OK, World

EXAMPLE = load_example("01-lora-basic/finetunejob.yaml")


def _world(**changes) -> World:
    resource = with_changes(EXAMPLE, changes)
    resource["metadata"].update(uid="uid-1", generation=1)
    return World(resource)


def _reasons(world: World) -> list[str]:
    return [event.reason for event in world.events]


def _run_to_training(world: World) -> None:
    world.step()
    world.finish("validate", VALIDATION_OK)
    world.step()


def test_happy_path_reaches_succeeded_with_every_condition() -> None:
    world = _world()
    world.step()
    assert world.phase == "Validating"
    assert world.creates == ["ConfigMap/support-bot-config", "Job/support-bot-validate"]
    assert world.condition(c.ADMITTED)["status"] == "Unknown"

    world.finish("validate", VALIDATION_OK)
    world.step()
    assert world.condition(c.DATASET_VALIDATED)["status"] == "True"
    assert world.resource["status"]["dataset"]["rows"] == 950
    assert world.resource["status"]["estimate"]["fitsOnRequestedGpus"] is True
    assert "Job/support-bot-train" in world.creates
    assert world.phase == "Queued"

    world.add_pod("train", "Running")
    world.set_job_status("train", active=1)
    world.live = {
        "step": 40,
        "totalSteps": 120,
        "trainLoss": "1.9",
        "tokensPerSecond": 850,
        "lastCheckpointStep": 20,
    }
    outcome = world.step()
    assert world.phase == "Running"
    assert world.condition(c.RUNNING)["status"] == "True"
    assert world.resource["status"]["progress"]["percent"] == 33
    assert world.resource["status"]["checkpoints"][0]["step"] == 20
    assert outcome.requeue_after is not None

    world.pods.clear()
    world.live = None
    world.finish("train", TRAINING_OK)
    world.step()
    assert world.phase == "Evaluating"
    assert [s["step"] for s in world.resource["status"]["checkpoints"]] == [20, 100]

    world.finish("finish", FINISH_OK)
    world.step()
    status = world.resource["status"]
    assert world.phase == "Succeeded"
    assert {cond["type"]: cond["status"] for cond in status["conditions"]} == {
        c.DATASET_VALIDATED: "True",
        c.ADMITTED: "True",
        c.RUNNING: "False",
        c.EVALUATED: "True",
        c.EVALUATION_PASSED: "True",
        c.COMPLETE: "True",
        c.FAILED: "False",
        c.SUSPENDED: "False",
    }
    assert status["evaluation"]["passed"] is True
    assert status["outputs"]["adapterUri"].endswith("/adapter/")
    assert status["observedGeneration"] == 1
    assert _reasons(world) == [
        "ValidationStarted", "DatasetValidated", "TrainingJobCreated", "TrainingStarted",
        "CheckpointSaved", "CheckpointSaved", "EvaluationStarted", "EvaluationPassed", "Succeeded",
    ]  # fmt: skip


def _assert_settled(world: World) -> None:
    """Once the world stops changing, another reconcile changes nothing and asks for nothing."""
    world.step()  # acts on the change
    world.step()  # observes what it created
    before = copy.deepcopy(world.resource["status"])
    world.clock -= 1  # same moment: only a changed world may change the status
    outcome = world.step()
    assert outcome.actions == () and outcome.events == ()
    assert world.resource["status"] == before


def test_reconcile_settles_at_every_point() -> None:
    world = _world()
    _assert_settled(world)
    world.finish("validate", VALIDATION_OK)
    _assert_settled(world)
    world.add_pod("train", "Running")
    world.set_job_status("train", active=1)
    _assert_settled(world)
    world.pods.clear()
    world.finish("train", TRAINING_OK)
    _assert_settled(world)
    world.finish("finish", FINISH_OK)
    _assert_settled(world)
    assert world.phase == "Succeeded"
    assert len(world.creates) == len(set(world.creates)) == 4


def test_rejected_dataset_fails_without_a_training_job() -> None:
    world = _world()
    world.step()
    rejection = {
        "stage": "validate", "ok": False, "reason": "InvalidDataset",
        "message": "12 of 40 rows are invalid (tolerance 0): line 3: missing field 'messages'; line 7: broken JSON",
        "dataset": {"rows": 28, "invalidRows": 12},
    }  # fmt: skip
    world.finish("validate", rejection, ok=False)
    world.step()
    world.step()
    assert world.phase == "Failed"
    assert world.condition(c.FAILED)["reason"] == "InvalidDataset"
    assert "line 3" in world.condition(c.DATASET_VALIDATED)["message"]
    assert not any("train" in name for name in world.creates)
    assert "DatasetRejected" in _reasons(world)


def test_estimate_that_does_not_fit_fails_before_asking_for_gpus() -> None:
    world = _world()
    world.step()
    world.finish(
        "validate",
        VALIDATION_OK | {"estimate": {"gpuMemoryBytesPerGpu": 90 * 2**30, "fitsOnRequestedGpus": False}},
    )
    world.step()
    assert world.condition(c.FAILED)["reason"] == c.INSUFFICIENT_GPU_MEMORY
    assert "90.0 GiB" in world.condition(c.FAILED)["message"]
    assert "Job/support-bot-train" not in world.creates


def test_retried_pod_counts_restarts_and_reports_resume() -> None:
    world = _world()
    _run_to_training(world)
    world.add_pod("train", "Failed", terminated={"exitCode": 137, "reason": "Error"})
    world.add_pod("train", "Running")
    world.set_job_status("train", active=1, failed=1)
    world.live = {"step": 60, "totalSteps": 120, "resumedFromStep": 50}
    world.step()
    assert world.resource["status"]["restarts"] == 1
    assert world.resource["status"]["resumedFromStep"] == 50
    assert "Resumed" in _reasons(world)
    world.step()
    assert _reasons(world).count("Resumed") == 1


def test_backoff_limit_exhausted_fails() -> None:
    world = _world()
    _run_to_training(world)
    world.finish("train", None, ok=False)
    world.step()
    assert world.phase == "Failed"
    assert world.condition(c.FAILED)["reason"] == c.BACKOFF_LIMIT_EXCEEDED


def test_oom_killed_fails_with_advice() -> None:
    world = _world()
    _run_to_training(world)
    world.finish("train", None, ok=False, reason="OOMKilled")
    world.step()
    failed = world.condition(c.FAILED)
    assert failed["reason"] == c.OUT_OF_MEMORY
    assert "qlora" in failed["message"] and "gradientCheckpointing" in failed["message"]


def test_deadline_exceeded() -> None:
    world = _world(**{"spec.activeDeadlineSeconds": 3600})
    _run_to_training(world)
    assert world.job("train")["spec"]["activeDeadlineSeconds"] == 3600
    world.set_job_status(
        "train", conditions=[{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]
    )
    world.step()
    assert world.condition(c.FAILED)["reason"] == c.DEADLINE_EXCEEDED


def test_kueue_suspended_job_shows_queued_and_operator_never_unsuspends_it() -> None:
    world = _world(**{"spec.scheduling.queueName": "gpu-team-a"})
    _run_to_training(world)
    assert world.job("train")["spec"]["suspend"] is True
    for _ in range(2):
        outcome = world.step()
        assert world.phase == "Queued"
        assert world.condition(c.ADMITTED)["reason"] == c.QUEUED_BY_KUEUE
        assert not any(getattr(a, "kind", "") == "Job" for a in outcome.actions)
    world.job("train")["spec"]["suspend"] = False  # Kueue admits
    world.step()
    assert world.condition(c.ADMITTED)["status"] == "True"


def test_unschedulable_pod_message_reaches_status() -> None:
    world = _world()
    _run_to_training(world)
    pod = world.add_pod("train", "Pending")
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    pod["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
    ]
    world.step()
    running = world.condition(c.RUNNING)
    assert running["reason"] == c.UNSCHEDULABLE and message in running["message"]


def test_missing_secret_is_an_actionable_condition() -> None:
    world = _world()
    _run_to_training(world)
    world.add_pod(
        "train",
        "Pending",
        waiting={"reason": "CreateContainerConfigError", "message": 'secret "s3-credentials" not found'},
    )
    world.step()
    running = world.condition(c.RUNNING)
    assert running["reason"] == c.CONTAINER_CONFIG_ERROR
    assert "storageSecretRef" in running["message"]


def test_user_suspend_and_resume_without_queue() -> None:
    world = _world()
    _run_to_training(world)
    world.resource["spec"]["suspend"] = True
    world.step()
    assert world.phase == "Suspended" and world.job("train")["spec"]["suspend"] is True
    world.resource["spec"]["suspend"] = False
    world.step()
    assert world.job("train")["spec"]["suspend"] is False
    assert world.condition(c.SUSPENDED)["status"] == "False"
    assert {"Suspended", "Unsuspended"} <= set(_reasons(world))


def test_user_suspend_with_kueue_deletes_and_recreates_the_training_job() -> None:
    world = _world(**{"spec.scheduling.queueName": "gpu-team-a"})
    _run_to_training(world)
    world.job("train")["spec"]["suspend"] = False
    world.step()
    world.resource["spec"]["suspend"] = True
    world.step()
    assert ("Job", "support-bot-train") not in world.objects
    assert world.phase == "Suspended"
    world.resource["spec"]["suspend"] = False
    world.step()
    assert world.creates.count("Job/support-bot-train") == 2


def test_suspended_at_creation_runs_nothing() -> None:
    world = _world(**{"spec.suspend": True})
    world.step()
    assert world.phase == "Suspended"
    assert world.creates == ["ConfigMap/support-bot-config"]


def test_failed_thresholds_keep_succeeded_but_evaluation_not_passed() -> None:
    world = _world()
    _run_to_training(world)
    world.finish("train", TRAINING_OK)
    world.step()
    world.finish("finish", FINISH_OK | {"evaluation": {"metrics": {"perplexity": "9.5"}, "passed": True}})
    world.step()
    assert world.phase == "Succeeded"
    passed = world.condition(c.EVALUATION_PASSED)
    assert passed["status"] == "False" and "perplexity 9.5 > max 8" in passed["message"]
    assert world.resource["status"]["evaluation"]["passed"] is False  # the operator's verdict, not the pod's
    assert "EvaluationFailed" in _reasons(world)


@pytest.mark.parametrize("terminal", ["Succeeded", "Failed"])
def test_terminal_states_are_sticky(terminal: str) -> None:
    world = _world()
    _run_to_training(world)
    if terminal == "Failed":
        world.finish("train", None, ok=False)
    else:
        world.finish("train", TRAINING_OK)
        world.step()
        world.finish("finish", FINISH_OK)
    world.step()
    world.objects.clear()
    outcome = world.step()
    assert world.phase == terminal and outcome.actions == ()


def test_condition_transition_time_moves_only_on_flips() -> None:
    world = _world()
    world.step()
    first = world.condition(c.FAILED)["lastTransitionTime"]
    world.step()
    assert world.condition(c.FAILED)["lastTransitionTime"] == first


def test_identical_observations_later_leave_the_status_unchanged_and_a_new_step_moves_it() -> None:
    world = _world()
    _run_to_training(world)
    world.add_pod("train", "Running")
    world.set_job_status("train", active=1)
    world.live = {"step": 40, "totalSteps": 120, "trainLoss": "1.9", "tokensPerSecond": 850}
    world.step()
    before = copy.deepcopy(world.resource["status"])

    outcome = world.step()  # a minute later (the world's clock moved), the trainer reports the same
    assert outcome.actions == () and outcome.events == ()
    assert outcome.status == before

    world.live = {**world.live, "step": 41}
    outcome = world.step()
    progress = outcome.status["progress"]
    assert progress["step"] == 41 and progress["updatedAt"] != before["progress"]["updatedAt"]
    assert {k: v for k, v in outcome.status.items() if k != "progress"} == {
        k: v for k, v in before.items() if k != "progress"
    }


@pytest.mark.parametrize(
    ("before", "after", "changed"),
    [
        ({"step": 1, "updatedAt": "a"}, {"step": 1, "updatedAt": "b"}, False),
        ({"step": 1, "updatedAt": "a"}, {"step": 2, "updatedAt": "a"}, True),
        ({"step": 1}, {"step": 1, "trainLoss": "1.2"}, True),
        ({}, {}, False),
    ],
)
def test_progress_changed_ignores_only_updated_at(before: dict, after: dict, changed: bool) -> None:
    assert progress_changed(before, after) is changed
