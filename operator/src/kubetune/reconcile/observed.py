"""What the operator saw of a FineTuneJob's children, parsed from raw API objects into plain values."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from kubetune.render.finetunejob import (
    CONFIG_HASH_ANNOTATION,
    GANG_ATTEMPT_ANNOTATION,
    JOBSET_NAME_LABEL,
    JOBSET_RESTART_ATTEMPT_LABEL,
    RESTARTS_ANNOTATION,
    STAGE_LABEL,
    Stage,
)

# Set by the Job controller on the pods of an Indexed Job (annotation; also a label since Kubernetes 1.28).
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
_IMAGE_PULL_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
_CONFIG_ERROR_REASONS = {"CreateContainerConfigError", "CreateContainerError"}


@dataclass(frozen=True)
class PodView:
    name: str
    phase: str
    ip: str | None = None
    created: str = ""
    summary: dict[str, Any] | None = None  # the trainer's JSON termination message
    terminated_reason: str | None = None  # e.g. OOMKilled, Error, Completed
    exit_code: int | None = None
    waiting_reason: str | None = None
    waiting_message: str | None = None
    unschedulable_message: str | None = None
    completion_index: int | None = None  # an Indexed Job's pod: its node rank
    finished_at: str | None = None  # when the trainer container terminated
    # The reason of a DisruptionTarget condition (preemption, eviction, drain, node loss): not the pod's fault.
    disruption: str | None = None

    @property
    def image_pull_failed(self) -> bool:
        return self.waiting_reason in _IMAGE_PULL_REASONS

    @property
    def config_error(self) -> bool:
        return self.waiting_reason in _CONFIG_ERROR_REASONS


@dataclass(frozen=True)
class JobView:
    """A stage's Job, or the JobSet that trains a multi-node job where JobSet is used (kind says which)."""

    name: str
    stage: str
    api_version: str = "batch/v1"
    kind: str = "Job"
    suspended: bool = False
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    complete: bool = False
    failure_reason: str | None = None
    failure_message: str | None = None
    config_hash: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    pods: tuple[PodView, ...] = ()
    gang_attempt: int | None = None  # a multi-node Job's attempt; None for any other Job
    restarts: int = 0  # gang restarts counted against spec.backoffLimit (a JobSet: its own count)

    @property
    def gang(self) -> bool:
        """All ranks restart together: the operator's multi-node Job, or a JobSet (its controller does it)."""
        return self.gang_attempt is not None or self.kind == "JobSet"

    def first_failed_pod(self) -> PodView | None:
        """The pod whose failure failed the Job: the first to terminate (its peers are stopped after it)."""
        failed = [p for p in self.pods if p.phase == "Failed"]
        return min(failed, key=lambda p: (p.finished_at or "~", p.created, p.name)) if failed else None

    def newest_pod(self, phase: str | None = None) -> PodView | None:
        pods = [p for p in self.pods if phase is None or p.phase == phase]
        return max(pods, key=lambda p: (p.created, p.name)) if pods else None

    def metrics_pod(self) -> PodView | None:
        """The running pod whose trainer serves progress: rank 0's, which is completion index 0 of a multi-node
        (Indexed) Job, whatever pod was created last; the newest running pod of any other Job."""
        running = [p for p in self.pods if p.phase == "Running" and p.ip]
        if any(p.completion_index is not None for p in running):
            running = [p for p in running if p.completion_index == 0]
        return max(running, key=lambda p: (p.created, p.name)) if running else None

    def summary(self) -> dict[str, Any] | None:
        """The termination message of the newest finished pod (succeeded first); of a multi-node Job that
        succeeded, rank 0's (completion index 0), which alone holds the outputs and the checkpoints."""
        succeeded = [p for p in self.pods if p.phase == "Succeeded" and p.summary is not None]
        failed = [p for p in self.pods if p.phase == "Failed" and p.summary is not None]
        rank_0 = [p for p in succeeded if p.completion_index == 0]
        for candidates in (rank_0, succeeded, failed):
            if candidates:
                return max(candidates, key=lambda p: (p.created, p.name)).summary
        return None


@dataclass(frozen=True)
class Observed:
    """Everything reconcile needs to know about the world, fetched by the adapters."""

    now: str
    config_map: bool = False
    service: bool = False
    jobs: dict[str, JobView] = field(default_factory=dict)
    # Multi-node training is created as a JobSet: the operator is set to (or discovered that it can).
    jobset: bool = False
    live: dict[str, Any] | None = None  # progress scraped from the running trainer's metrics endpoint

    def job(self, stage: Stage) -> JobView | None:
        return self.jobs.get(stage)


def parse_summary(message: str | None) -> dict[str, Any] | None:
    """The trainer's summary (shaped as api.trainer_contract.TrainerSummary) from a termination message; None
    when the message is no JSON object (e.g. the log tail of FallbackToLogsOnError)."""
    if not message:
        return None
    try:
        value = json.loads(message)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def pod_view(pod: dict[str, Any]) -> PodView:
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    trainer = next((c for c in statuses if c.get("name") == "trainer"), statuses[0] if statuses else {})
    state = trainer.get("state") or {}
    terminated = state.get("terminated") or {}
    waiting = state.get("waiting") or {}
    scheduled: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), {}
    )
    unschedulable = scheduled.get("message") if scheduled.get("reason") == "Unschedulable" else None
    disrupted: dict[str, Any] = next(
        (
            c
            for c in status.get("conditions") or []
            if c.get("type") == "DisruptionTarget" and c.get("status") == "True"
        ),
        {},
    )
    metadata = pod["metadata"]
    index = (metadata.get("annotations") or {}).get(COMPLETION_INDEX) or (metadata.get("labels") or {}).get(
        COMPLETION_INDEX
    )
    return PodView(
        name=pod["metadata"]["name"],
        phase=status.get("phase", "Pending"),
        ip=status.get("podIP"),
        created=pod["metadata"].get("creationTimestamp", ""),
        summary=parse_summary(terminated.get("message")),
        terminated_reason=terminated.get("reason"),
        exit_code=terminated.get("exitCode"),
        waiting_reason=waiting.get("reason"),
        waiting_message=waiting.get("message"),
        unschedulable_message=unschedulable,
        completion_index=_number(index),
        finished_at=terminated.get("finishedAt"),
        disruption=(disrupted.get("reason") or "DisruptionTarget") if disrupted else None,
    )


def _number(value: Any) -> int | None:
    return int(value) if value is not None and str(value).isdigit() else None


def _job_name_of(pod: dict[str, Any]) -> str | None:
    labels = pod["metadata"].get("labels") or {}
    return labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")


def job_view(job: dict[str, Any], pods: list[dict[str, Any]]) -> JobView:
    status = job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    # Kubernetes >= 1.31 decides the outcome first (FailureTarget, SuccessCriteriaMet) and adds Failed or
    # Complete once the pods have terminated: the outcome counts from the first, so that a Job whose pods
    # take long to stop is neither read as running nor read differently on older clusters.
    failed = conditions.get("Failed") or conditions.get("FailureTarget")
    name = job["metadata"]["name"]
    mine = [p for p in pods if _job_name_of(p) == name]
    annotations = job["metadata"].get("annotations") or {}
    return JobView(
        name=name,
        stage=(job["metadata"].get("labels") or {}).get(STAGE_LABEL, ""),
        suspended=bool((job.get("spec") or {}).get("suspend")),
        active=int(status.get("active") or 0),
        succeeded=int(status.get("succeeded") or 0),
        failed=int(status.get("failed") or 0),
        complete="Complete" in conditions or "SuccessCriteriaMet" in conditions,
        failure_reason=failed.get("reason") if failed else None,
        failure_message=failed.get("message") if failed else None,
        config_hash=annotations.get(CONFIG_HASH_ANNOTATION),
        start_time=status.get("startTime"),
        completion_time=status.get("completionTime"),
        pods=tuple(pod_view(p) for p in mine),
        gang_attempt=_number(annotations.get(GANG_ATTEMPT_ANNOTATION)),
        restarts=_number(annotations.get(RESTARTS_ANNOTATION)) or 0,
    )


def jobset_view(jobset: dict[str, Any], pods: list[dict[str, Any]]) -> JobView:
    """A training JobSet as the stage's JobView: its conditions, its restart count, and the pods of its
    current restart attempt only (those of a recreated attempt are gone or going)."""
    status = jobset.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    failed = conditions.get("Failed")
    name = jobset["metadata"]["name"]
    attempt = str(int(status.get("restarts") or 0))
    mine = [
        p
        for p in pods
        if (labels := p["metadata"].get("labels") or {}).get(JOBSET_NAME_LABEL) == name
        and labels.get(JOBSET_RESTART_ATTEMPT_LABEL, attempt) == attempt
    ]
    replicated = status.get("replicatedJobsStatus") or []
    return JobView(
        name=name,
        stage=(jobset["metadata"].get("labels") or {}).get(STAGE_LABEL, ""),
        api_version=jobset.get("apiVersion", "jobset.x-k8s.io/v1alpha2"),
        kind="JobSet",
        suspended=bool((jobset.get("spec") or {}).get("suspend")),
        active=sum(int(r.get("active") or 0) for r in replicated),
        succeeded=sum(int(r.get("succeeded") or 0) for r in replicated),
        failed=sum(int(r.get("failed") or 0) for r in replicated),
        complete="Completed" in conditions,
        failure_reason=failed.get("reason") or "JobSetFailed" if failed else None,
        failure_message=failed.get("message") if failed else None,
        config_hash=(jobset["metadata"].get("annotations") or {}).get(CONFIG_HASH_ANNOTATION),
        pods=tuple(pod_view(p) for p in mine),
        restarts=int(status.get("restartsCountTowardsMax") or status.get("restarts") or 0),
    )
