"""The rendered multi-node training Job under a Job controller (the sandbox's, which follows Kubernetes'
rules for podFailurePolicy, backoffLimit and Indexed Jobs): one failed or disrupted rank fails the whole Job
and stops its peer, instead of its index being replaced alone while the peer hangs in NCCL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kubetune.api.common import ResourceIdentity
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.render import finetunejob as render
from kubetune.render.pod import OperatorDefaults
from kubetune_sandbox.cluster import decisions
from tests.api.conftest import load_example

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
OWNER = ResourceIdentity(name="big", namespace="default", uid="u")
DISRUPTED = [{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}]


def _training_job(example: str) -> dict[str, Any]:
    spec = FineTuneJobSpec.model_validate(load_example(example)["spec"])
    job = render.training_job(OWNER, spec, OperatorDefaults(), "d")
    job["spec"].pop("suspend", None)  # admitted
    job["status"] = {"startTime": "2026-01-01T11:00:00Z"}
    return job


def _pod(
    index: int, phase: str, *, code: int | None = None, conditions: list[dict[str, Any]] | None = None
) -> dict:
    status: dict[str, Any] = {"phase": phase, "conditions": list(conditions or [])}
    if code is not None:
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": {"exitCode": code}}}]
    metadata = {"name": f"big-train-{index}", "uid": f"uid-{index}",
                "annotations": {decisions.COMPLETION_INDEX: str(index)}, "creationTimestamp": "2026-01-01T11:00:00Z"}  # fmt: skip
    return {"metadata": metadata, "status": status}


@pytest.mark.parametrize(
    ("failed", "reason"),
    [
        (_pod(1, "Failed", code=137), "BackoffLimitExceeded"),
        (_pod(1, "Failed", code=143, conditions=DISRUPTED), "PodFailurePolicy"),
        (_pod(1, "Failed", code=2), "PodFailurePolicy"),
    ],
    ids=["killed", "evicted", "bad-input"],
)
def test_one_failed_rank_fails_the_gang_and_stops_its_peer(failed: dict[str, Any], reason: str) -> None:
    job = _training_job("03-full-multinode/finetunejob.yaml")
    plan = decisions.plan_job(job, [_pod(0, "Running"), failed], vanished=0, now=NOW)
    assert plan.create == [], "a rank was replaced alone"
    assert plan.delete == ["big-train-0"]
    assert plan.status is not None
    (condition,) = [c for c in plan.status["conditions"] if c["type"] == "Failed"]
    assert condition["reason"] == reason


def test_a_single_node_job_still_retries_its_pod_and_ignores_disruptions() -> None:
    job = _training_job("01-lora-basic/finetunejob.yaml")
    killed = decisions.plan_job(job, [_pod(0, "Failed", code=137)], vanished=0, now=NOW)
    evicted = decisions.plan_job(
        job, [_pod(0, "Failed", code=143, conditions=DISRUPTED)], vanished=0, now=NOW
    )
    assert killed.create == [None] and evicted.create == [None]
    assert evicted.status is not None and evicted.status["failed"] == 0
