"""Gang semantics of a multi-node training Job: one failed rank restarts all of them together, as a fresh
Job, within spec.backoffLimit; bad input and the deadline fail at once; a disruption costs no budget."""

from __future__ import annotations

import copy
import json
from typing import Any

from kubetune.reconcile import conditions as c
from kubetune.reconcile.finetunejob import Create, Delete
from kubetune.render.finetunejob import GANG_ATTEMPT_ANNOTATION, RESTARTS_ANNOTATION, STAGE_LABEL
from tests.api.conftest import load_example, with_changes
from tests.reconcile.world import VALIDATION_OK, World

EXAMPLE = load_example("03-full-multinode/finetunejob.yaml")
NAME = "domain-adapt-full"
FIRST = f"{NAME}-train"
RETRY_1 = f"{NAME}-retry1"


def _world(**changes: Any) -> World:
    resource = with_changes(EXAMPLE, {"spec.scheduling": {}, **changes})
    resource["metadata"].update(uid="uid-1", generation=1)
    world = World(resource)
    world.step()
    world.finish("validate", VALIDATION_OK)
    world.step()
    return world


def _train_jobs(world: World) -> list[str]:
    return sorted(
        name
        for (kind, name), obj in world.objects.items()
        if kind == "Job" and obj["metadata"]["labels"][STAGE_LABEL] == "train"
    )


def _pod(world: World, job_name: str, index: int, phase: str, **extra: Any) -> None:
    status: dict[str, Any] = {"phase": phase, "podIP": f"10.0.0.{index + 1}"}
    terminated = extra.pop("terminated", None)
    if terminated is not None:
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": terminated}}]
    status.update(extra)
    world.pods.append({
        "metadata": {"name": f"{job_name}-{index}-x", "labels": {"job-name": job_name},
                     "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
                     "creationTimestamp": f"2026-11-29T10:00:0{index}Z"},
        "status": status,
    })  # fmt: skip


def _fail(world: World, job_name: str, failed_index: int, terminated: dict[str, Any], **pod: Any) -> None:
    """Play the Job controller: one rank fails, the Job fails (backoffLimit 0), its peer is stopped."""
    survivor = 1 - failed_index
    _pod(world, job_name, failed_index, "Failed", terminated={"finishedAt": "2026-11-29T10:05:00Z", **terminated},
         **pod)  # fmt: skip
    _pod(world, job_name, survivor, "Failed",
         terminated={"exitCode": 143, "reason": "Error", "finishedAt": "2026-11-29T10:05:30Z"})  # fmt: skip
    job = world.objects[("Job", job_name)]
    job["status"] = {
        "failed": 2,
        "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}],
    }


def _reasons(world: World) -> list[str]:
    return [event.reason for event in world.events]


def test_one_failed_rank_recreates_the_whole_gang_and_counts_the_restart() -> None:
    world = _world()
    assert _train_jobs(world) == [FIRST]
    _pod(world, FIRST, 0, "Running")
    world.step()
    _fail(world, FIRST, 1, {"exitCode": 137, "reason": "Error"})
    outcome = world.step()

    created = [a.manifest for a in outcome.actions if isinstance(a, Create)]
    deleted = [a.name for a in outcome.actions if isinstance(a, Delete)]
    assert [m["metadata"]["name"] for m in created] == [RETRY_1] and deleted == [FIRST]
    fresh = created[0]
    assert fresh["spec"]["completions"] == fresh["spec"]["parallelism"] == 2
    assert fresh["metadata"]["annotations"][GANG_ATTEMPT_ANNOTATION] == "1"
    assert fresh["metadata"]["annotations"][RESTARTS_ANNOTATION] == "1"
    assert world.resource["status"]["restarts"] == 1
    assert world.phase == "Running"
    assert world.condition(c.RUNNING)["reason"] == c.GANG_RESTARTING
    assert world.condition(c.FAILED)["status"] == "False"
    (restart,) = [e for e in world.events if e.reason == c.GANG_RESTARTED]
    assert "rank 1" in restart.message and "exited with code 137" in restart.message
    assert "restart 1/3 of spec.backoffLimit" in restart.message
    assert _train_jobs(world) == [RETRY_1]

    # The fresh Job runs: nothing more is created and the count holds.
    _pod(world, RETRY_1, 0, "Running")
    _pod(world, RETRY_1, 1, "Running")
    world.step()
    world.step()
    assert world.creates.count(f"Job/{RETRY_1}") == 1
    assert world.resource["status"]["restarts"] == 1 and world.phase == "Running"
    assert _reasons(world).count(c.GANG_RESTARTED) == 1


def test_a_lost_status_write_does_not_lose_the_restart_count() -> None:
    world = _world()
    _fail(world, FIRST, 0, {"exitCode": 1, "reason": "Error"})
    before = copy.deepcopy(world.resource["status"])
    world.step()
    world.resource["status"] = before  # the status write after the restart never landed
    world.step()
    assert world.resource["status"]["restarts"] == 1
    assert _train_jobs(world) == [RETRY_1]


def test_a_preempted_rank_restarts_the_gang_without_spending_the_backoff_limit() -> None:
    world = _world(**{"spec.backoffLimit": 0})
    disrupted = [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]
    _fail(world, FIRST, 1, {"exitCode": 137, "reason": "Error"}, conditions=disrupted)
    outcome = world.step()
    assert any(isinstance(a, Create) for a in outcome.actions)
    assert world.resource["status"]["restarts"] == 0 and world.phase == "Running"
    (restart,) = [e for e in world.events if e.reason == c.GANG_RESTARTED]
    assert "PreemptionByScheduler" in restart.message and "do not count" in restart.message


def test_bad_input_on_any_rank_fails_with_the_trainers_reason_and_no_restart() -> None:
    world = _world()
    summary = {"stage": "train", "ok": False, "reason": "InvalidSpec", "message": "spec.lora.r: too large"}
    _fail(world, FIRST, 1, {"exitCode": 2, "reason": "Error", "message": json.dumps(summary)})
    world.objects[("Job", FIRST)]["status"]["conditions"][0]["reason"] = "PodFailurePolicy"
    world.step()
    assert world.phase == "Failed"
    assert world.condition(c.FAILED)["reason"] == "InvalidSpec"
    assert "spec.lora.r" in world.condition(c.FAILED)["message"]
    assert _train_jobs(world) == [FIRST] and c.GANG_RESTARTED not in _reasons(world)


def test_the_deadline_is_not_retried() -> None:
    world = _world()
    _pod(world, FIRST, 0, "Running")
    world.objects[("Job", FIRST)]["status"] = {
        "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]
    }
    world.step()
    assert world.condition(c.FAILED)["reason"] == c.DEADLINE_EXCEEDED
    assert _train_jobs(world) == [FIRST]


def test_an_exhausted_backoff_limit_fails_naming_the_limit() -> None:
    world = _world(**{"spec.backoffLimit": 1})
    _fail(world, FIRST, 1, {"exitCode": 137, "reason": "Error"})
    world.step()
    assert _train_jobs(world) == [RETRY_1]
    _fail(world, RETRY_1, 0, {"exitCode": 1, "reason": "Error"})
    world.step()
    assert world.phase == "Failed"
    failed = world.condition(c.FAILED)
    assert failed["reason"] == c.BACKOFF_LIMIT_EXCEEDED
    assert "spec.backoffLimit (1)" in failed["message"] and "rank 0" in failed["message"]
    assert _train_jobs(world) == [RETRY_1] and _reasons(world).count(c.GANG_RESTARTED) == 1
    assert world.resource["status"]["restarts"] == 1


def test_a_queued_gang_restarts_suspended_so_kueue_admits_every_rank_at_once() -> None:
    world = _world(**{"spec.scheduling": {"queueName": "gpu-research"}})
    world.objects[("Job", FIRST)]["spec"]["suspend"] = False  # admitted
    _fail(world, FIRST, 1, {"exitCode": 137, "reason": "Error"})
    world.step()
    fresh = world.objects[("Job", RETRY_1)]
    assert fresh["spec"]["suspend"] is True
    assert fresh["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-research"
    world.step()
    assert world.phase == "Queued" and world.condition(c.ADMITTED)["reason"] == c.QUEUED_BY_KUEUE


# -- with JobSet: its controller restarts the ranks, the operator follows its status ------------------


def _jobset_world(**changes: Any) -> World:
    resource = with_changes(EXAMPLE, {"spec.scheduling": {}, **changes})
    resource["metadata"].update(uid="uid-1", generation=1)
    world = World(resource, jobset=True)
    world.step()
    world.finish("validate", VALIDATION_OK)
    world.step()
    return world


def _jobset_pod(world: World, index: int, phase: str, attempt: int, **terminated: Any) -> None:
    status: dict[str, Any] = {"phase": phase, "podIP": f"10.0.1.{index + 1}"}
    if terminated:
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": terminated}}]
    world.pods.append({
        "metadata": {"name": f"{NAME}-node-0-{index}-a{attempt}",
                     "labels": {"jobset.sigs.k8s.io/jobset-name": NAME,
                                "jobset.sigs.k8s.io/restart-attempt": str(attempt),
                                "job-name": f"{NAME}-node-0"},
                     "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
                     "creationTimestamp": f"2026-11-29T10:0{attempt}:0{index}Z"},
        "status": status,
    })  # fmt: skip


def test_with_jobset_a_multinode_job_is_one_jobset_and_no_service_of_ours() -> None:
    world = _jobset_world()
    assert [key for key in world.objects if key[0] in ("JobSet", "Service")] == [("JobSet", NAME)]
    assert _train_jobs(world) == []
    assert world.phase == "Queued" and world.condition(c.ADMITTED)["status"] == "True"
    _jobset_pod(world, 0, "Running", 0)
    _jobset_pod(world, 1, "Running", 0)
    world.step()
    assert world.phase == "Running" and world.condition(c.RUNNING)["status"] == "True"


def test_a_jobset_restart_is_reported_and_only_the_current_attempts_pods_count() -> None:
    world = _jobset_world()
    _jobset_pod(world, 0, "Running", 0)  # of the failed attempt, still terminating
    _jobset_pod(world, 1, "Failed", 0, exitCode=137, reason="Error")
    _jobset_pod(world, 0, "Running", 1)
    _jobset_pod(world, 1, "Pending", 1)
    world.objects[("JobSet", NAME)]["status"] = {"restarts": 1, "restartsCountTowardsMax": 1}
    world.step()
    world.step()
    assert world.resource["status"]["restarts"] == 1
    (restart,) = [e for e in world.events if e.reason == c.GANG_RESTARTED]
    assert "restarted all 2 ranks (1/3" in restart.message
    assert world.condition(c.RUNNING)["message"] == "1 training pod(s) running"
    assert world.creates.count(f"JobSet/{NAME}") == 1  # the operator never recreates it


def test_a_jobset_out_of_restarts_fails_naming_the_limit() -> None:
    world = _jobset_world(**{"spec.backoffLimit": 1})
    world.objects[("JobSet", NAME)]["status"] = {
        "restarts": 1,
        "restartsCountTowardsMax": 1,
        "conditions": [{"type": "Failed", "status": "True", "reason": "ReachedMaxRestarts",
                        "message": "jobset failed due to reaching max number of restarts"}],
    }  # fmt: skip
    world.step()
    assert world.phase == "Failed"
    failed = world.condition(c.FAILED)
    assert failed["reason"] == c.BACKOFF_LIMIT_EXCEEDED and "spec.backoffLimit" in failed["message"]


def test_bad_input_fails_the_jobset_with_the_trainers_reason() -> None:
    world = _jobset_world()
    summary = {"stage": "train", "ok": False, "reason": "InvalidSpec", "message": "spec.lora.r: too large"}
    _jobset_pod(world, 1, "Failed", 0, exitCode=2, reason="Error", message=json.dumps(summary))
    world.objects[("JobSet", NAME)]["status"] = {
        "conditions": [{"type": "Failed", "status": "True", "reason": "FailJobSetFailurePolicyRuleAction",
                        "message": "failed by rule InvalidInput"}],
    }  # fmt: skip
    world.step()
    assert world.condition(c.FAILED)["reason"] == "InvalidSpec"


def test_user_suspend_suspends_the_jobset_itself() -> None:
    world = _jobset_world()
    _jobset_pod(world, 0, "Running", 0)
    world.resource["spec"]["suspend"] = True
    world.step()
    assert world.objects[("JobSet", NAME)]["spec"]["suspend"] is True
    assert world.phase == "Suspended"
