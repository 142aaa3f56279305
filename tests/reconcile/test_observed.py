"""What the operator reads from the children it observed: which pod to scrape on a multi-node job."""

from __future__ import annotations

import json
from typing import Any

from kubetune.reconcile.observed import COMPLETION_INDEX, job_view


def _pod(name: str, created: str, *, index: int | None = None, phase: str = "Running") -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "creationTimestamp": created,
        "labels": {"batch.kubernetes.io/job-name": "bot-train"},
    }
    if index is not None:
        metadata["annotations"] = {COMPLETION_INDEX: str(index)}
    return {"metadata": metadata, "status": {"phase": phase, "podIP": f"10.0.0.{(index or 0) + 1}"}}


JOB = {"metadata": {"name": "bot-train", "labels": {"kubetune.dev/stage": "train"}}, "status": {"active": 2}}


def test_multinode_progress_is_scraped_from_rank_0_not_the_newest_pod() -> None:
    # Index 1 started a second later; only rank 0 (completion index 0) serves the trainer's metrics.
    pods = [_pod("bot-train-0-abc", "2026-01-01T00:00:00Z", index=0),
            _pod("bot-train-1-def", "2026-01-01T00:00:01Z", index=1)]  # fmt: skip
    view = job_view(JOB, pods)
    assert view.newest_pod("Running").name == "bot-train-1-def"  # type: ignore[union-attr]
    target = view.metrics_pod()
    assert target is not None and target.name == "bot-train-0-abc" and target.completion_index == 0


def test_a_retried_rank_0_is_scraped_and_none_while_rank_0_is_not_running() -> None:
    pods = [_pod("bot-train-0-old", "2026-01-01T00:00:00Z", index=0, phase="Failed"),
            _pod("bot-train-1-def", "2026-01-01T00:00:01Z", index=1),
            _pod("bot-train-0-new", "2026-01-01T00:05:00Z", index=0)]  # fmt: skip
    assert job_view(JOB, pods).metrics_pod().name == "bot-train-0-new"  # type: ignore[union-attr]
    assert job_view(JOB, pods[:2]).metrics_pod() is None


def test_a_single_pod_job_scrapes_its_newest_running_pod() -> None:
    pods = [
        _pod("bot-train-a", "2026-01-01T00:00:00Z", phase="Failed"),
        _pod("bot-train-b", "2026-01-01T00:01:00Z"),
    ]
    assert job_view(JOB, pods).metrics_pod().name == "bot-train-b"  # type: ignore[union-attr]


def test_a_multinode_jobs_summary_is_rank_0s_which_holds_the_outputs() -> None:
    rank_0 = _pod("bot-train-0-abc", "2026-01-01T00:00:00Z", index=0, phase="Succeeded")
    rank_1 = _pod("bot-train-1-def", "2026-01-01T00:00:01Z", index=1, phase="Succeeded")
    for pod, message in ((rank_0, {"stage": "train", "outputs": {"adapterUri": "s3://a/"}}),
                         (rank_1, {"stage": "train"})):  # fmt: skip
        pod["status"]["containerStatuses"] = [
            {"name": "trainer", "state": {"terminated": {"exitCode": 0, "message": json.dumps(message)}}}
        ]
    summary = job_view(JOB, [rank_0, rank_1]).summary()
    assert summary is not None and summary["outputs"] == {"adapterUri": "s3://a/"}
