"""The real operator against the API emulator: a multi-node job whose rank 1 dies restarts both ranks as a
fresh Indexed Job, then trains on to evaluation. The test plays the kubelet and the Job controller."""

from __future__ import annotations

import json
from typing import Any

from kubetune.reconcile import conditions as c
from kubetune.reconcile.observed import COMPLETION_INDEX
from kubetune.render.finetunejob import GANG_ATTEMPT_ANNOTATION
from tests.api.conftest import load_example, with_changes
from tests.integration.harness import Api
from tests.reconcile.world import TRAINING_OK, VALIDATION_OK

EXAMPLE = load_example("01-lora-basic/finetunejob.yaml")


def _indexed_pod(
    api: Api, job_name: str, index: int, phase: str, terminated: dict[str, Any] | None = None
) -> None:
    """A pod of an Indexed Job as the Job controller makes it: its completion index annotated."""
    job = api.get("Job", job_name)
    assert job is not None
    name = f"{job_name}-{index}"
    if api.get("Pod", name) is None:
        labels = {**job["spec"]["template"]["metadata"]["labels"], "batch.kubernetes.io/job-name": job_name}
        api.create({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels, "annotations": {COMPLETION_INDEX: str(index)},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name,
                                              "uid": job["metadata"]["uid"], "controller": True}]},
            "spec": job["spec"]["template"]["spec"],
        })  # fmt: skip
    status: dict[str, Any] = {"phase": phase, "podIP": "127.0.0.1"}
    if terminated is not None:
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": terminated}, "ready": False,
                                        "restartCount": 0, "image": "trainer", "imageID": ""}]  # fmt: skip
    api.patch("Pod", name, {"status": status}, sub="status")


def _job_status(api: Api, job_name: str, status: dict[str, Any]) -> None:
    api.patch("Job", job_name, {"status": status}, sub="status")


def test_a_failed_rank_restarts_both_as_a_fresh_job_that_trains_on(api: Api, operator) -> None:
    name = "gang"
    api.create(with_changes(EXAMPLE, {"metadata.name": name, "spec.resources": {"gpus": 1, "nodes": 2}}))
    api.wait_job(f"{name}-validate")
    api.finish_job(f"{name}-validate", VALIDATION_OK)
    first = api.wait_job(f"{name}-train")
    assert first["spec"]["completions"] == 2 and first["spec"]["backoffLimit"] == 0

    _indexed_pod(api, f"{name}-train", 0, "Running")
    _indexed_pod(api, f"{name}-train", 1, "Running")
    _job_status(api, f"{name}-train", {"active": 2})
    api.wait_phase(name, "Running")
    _indexed_pod(api, f"{name}-train", 1, "Failed", {"exitCode": 137, "reason": "Error"})
    _job_status(api, f"{name}-train", {
        "active": 0, "failed": 1,
        "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}],
    })  # fmt: skip

    fresh = api.wait_job(f"{name}-retry1")
    assert fresh["spec"]["completions"] == fresh["spec"]["parallelism"] == 2
    assert fresh["metadata"]["annotations"][GANG_ATTEMPT_ANNOTATION] == "1"
    api.wait_for("the failed Job deleted", lambda: api.get("Job", f"{name}-train") is None)
    api.wait_for("restart counted", lambda: api.status(name).get("restarts") == 1)
    restarted = [
        e["message"]
        for e in api.list("Event")
        if e.get("involvedObject", {}).get("name") == name and e["reason"] == c.GANG_RESTARTED
    ]
    assert len(restarted) == 1 and "rank 1" in restarted[0] and "exited with code 137" in restarted[0]

    for index in (0, 1):
        _indexed_pod(api, f"{name}-retry1", index, "Running")
    _job_status(api, f"{name}-retry1", {"active": 2})
    api.wait_for("running again", lambda: api.condition(name, c.RUNNING).get("status") == "True")
    for index in (0, 1):
        message = json.dumps(TRAINING_OK)
        _indexed_pod(api, f"{name}-retry1", index, "Succeeded",
                     {"exitCode": 0, "reason": "Completed", "message": message})  # fmt: skip
    _job_status(api, f"{name}-retry1", {
        "active": 0, "succeeded": 2, "completionTime": "2026-11-29T11:00:00Z",
        "conditions": [{"type": "Complete", "status": "True"}],
    })  # fmt: skip
    api.wait_job(f"{name}-finish")
    status = api.wait_phase(name, "Evaluating")
    assert status["restarts"] == 1
    names = sorted(j["metadata"]["name"] for j in api.list("Job", f"kubetune.dev/finetunejob={name}"))
    assert names == [f"{name}-finish", f"{name}-retry1", f"{name}-validate"]
