"""The FineTuneJob state machine: (resource, observed children) -> (status, actions, events). Pure.

Level-based: every call recomputes the whole status from what exists, so a restarted operator, a missed
watch event or a repeated call all converge to the same answer. Children have fixed names, so creating
one twice is a harmless conflict, never a duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from kubetune.api.common import ResourceIdentity
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.trainer_config import ArtifactLayout
from kubetune.api.trainer_contract import failed_thresholds
from kubetune.reconcile import conditions as c
from kubetune.reconcile.observed import JobView, Observed, PodView
from kubetune.reconcile.progress import progress_changed
from kubetune.render import finetunejob as render
from kubetune.render.finetunejob import EXIT_INVALID_INPUT
from kubetune.render.pod import Manifest, OperatorDefaults

MAX_CHECKPOINTS_IN_STATUS = 20


@dataclass(frozen=True)
class Create:
    manifest: Manifest


@dataclass(frozen=True)
class Patch:
    api_version: str
    kind: str
    name: str
    patch: Any  # a merge patch (dict), or a JSON patch (list of operations) when json_patch is set
    json_patch: bool = False


@dataclass(frozen=True)
class Delete:
    api_version: str
    kind: str
    name: str


Action = Create | Patch | Delete


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Outcome:
    status: dict[str, Any]
    actions: tuple[Action, ...] = ()
    events: tuple[Event, ...] = ()
    # Seconds until the next look even without a watch event (training progress is polled).
    requeue_after: float | None = None


@dataclass
class _Draft:
    """The status being built during one reconcile, with what it asks the world to do."""

    resource: Manifest
    observed: Observed
    status: dict[str, Any]
    generation: int
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None

    @property
    def conditions(self) -> list[dict[str, Any]]:
        return list(self.status.get("conditions") or [])

    def condition(self, kind: str, status: c.ConditionStatus, reason: str, message: str) -> bool:
        """Set a condition; True when its status flipped (the moment to emit an event)."""
        before = c.find(self.conditions, kind)
        self.status["conditions"] = c.set_condition(
            self.conditions, kind, status, reason, message, now=self.observed.now, generation=self.generation
        )
        return before is None or before.get("status") != status

    def event(self, kind: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(Event(kind, reason, " ".join(message.split())[:1024]))

    def fail(self, reason: str, message: str) -> None:
        if self.condition(c.FAILED, "True", reason, message):
            self.event("Warning", "Failed", f"{reason}: {message}")
        self.condition(c.COMPLETE, "False", reason, "the job failed")
        self.condition(c.RUNNING, "False", reason, "the job failed")
        self.status.setdefault("completionTime", self.observed.now)
        self.status["phase"] = "Failed"

    def outcome(self) -> Outcome:
        return Outcome(dict(self.status), tuple(self.actions), tuple(self.events), self.requeue_after)


def reconcile(resource: Manifest, observed: Observed, defaults: OperatorDefaults) -> Outcome:
    status = dict(resource.get("status") or {})
    generation = int(resource["metadata"].get("generation") or 1)
    draft = _Draft(resource, observed, status, generation)
    status["observedGeneration"] = generation
    try:
        spec = FineTuneJobSpec.model_validate(resource.get("spec") or {})
    except ValidationError as error:
        # The CRD should have refused this; say what is wrong instead of crash-looping on it.
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        draft.fail(c.INVALID_SPEC, f"spec.{where}: {first['msg']}")
        return draft.outcome()
    if c.is_true(draft.conditions, c.FAILED) or c.is_true(draft.conditions, c.COMPLETE):
        status["phase"] = "Failed" if c.is_true(draft.conditions, c.FAILED) else "Succeeded"
        return draft.outcome()  # terminal states are sticky
    _initial_conditions(draft)
    owner = ResourceIdentity.of(resource)
    config = render.config_map(owner, spec, defaults)
    digest = config["metadata"]["annotations"][render.CONFIG_HASH_ANNOTATION]
    if not observed.config_map:
        draft.actions.append(Create(config))
    status.setdefault("startTime", observed.now)
    if not _validate(draft, owner, spec, defaults, digest):
        return draft.outcome()
    if not _train(draft, owner, spec, defaults, digest):
        return draft.outcome()
    _finish(draft, owner, spec, defaults, digest)
    return draft.outcome()


def _initial_conditions(draft: _Draft) -> None:
    """Every condition is present from the first reconcile, Unknown or False until it is known."""
    present = {cond["type"] for cond in draft.conditions}
    defaults: list[tuple[str, c.ConditionStatus, str, str]] = [
        (c.DATASET_VALIDATED, "Unknown", c.NOT_STARTED, "the dataset has not been validated yet"),
        (c.ADMITTED, "Unknown", c.WAITING_FOR_VALIDATION, "no GPU is requested before the dataset passes"),
        (c.RUNNING, "False", c.NOT_STARTED, "training has not started"),
        (c.EVALUATED, "Unknown", c.NOT_STARTED, "evaluation runs after training"),
        (c.EVALUATION_PASSED, "Unknown", c.NOT_STARTED, "evaluation runs after training"),
        (c.COMPLETE, "False", c.NOT_STARTED, "the job has not finished"),
        (c.FAILED, "False", c.NO_FAILURE, "no failure"),
        (c.SUSPENDED, "False", c.NOT_SUSPENDED, "the job is not suspended"),
    ]
    for kind, status, reason, message in defaults:
        if kind not in present:
            draft.condition(kind, status, reason, message)


def _suspend(draft: _Draft, message: str) -> None:
    if draft.condition(c.SUSPENDED, "True", c.USER_SUSPENDED, message):
        draft.event("Normal", "Suspended", message)
    draft.status["phase"] = "Suspended"


def _unsuspend(draft: _Draft) -> None:
    if c.is_true(draft.conditions, c.SUSPENDED):
        draft.event("Normal", "Unsuspended", "spec.suspend is false again; the job continues")
    draft.condition(c.SUSPENDED, "False", c.NOT_SUSPENDED, "the job is not suspended")


def _pod_problem(pod: PodView | None) -> tuple[str, str] | None:
    """Why a pod cannot start, in words a user can act on."""
    if pod is None or pod.phase != "Pending":
        return None
    if pod.unschedulable_message:
        return c.UNSCHEDULABLE, f"pod {pod.name} cannot be scheduled: {pod.unschedulable_message}"
    if pod.image_pull_failed:
        return (
            c.IMAGE_PULL_FAILED,
            f"pod {pod.name}: {pod.waiting_reason}: {pod.waiting_message or ''} (check the trainer image)",
        )
    if pod.config_error:
        return (
            c.CONTAINER_CONFIG_ERROR,
            f"pod {pod.name}: {pod.waiting_message or pod.waiting_reason} (does spec.storageSecretRef name an existing Secret?)",
        )
    return None


def _failure(job: JobView, stage: str) -> tuple[str, str]:
    """The most precise reason a finished-and-failed Job can give."""
    summary = job.summary() or {}
    pod = job.newest_pod("Failed")
    if (pod is not None and pod.terminated_reason == "OOMKilled") or summary.get("reason") == c.OUT_OF_MEMORY:
        return c.OUT_OF_MEMORY, (
            f"the {stage} pod ran out of memory; try method qlora, hyperparameters.gradientCheckpointing: true, "
            "a smaller batchSize or maxSeqLength, or more GPUs"
        )
    if job.failure_reason == "DeadlineExceeded":
        return (
            c.DEADLINE_EXCEEDED,
            f"the {stage} Job ran longer than its deadline (spec.activeDeadlineSeconds)",
        )
    if summary.get("reason") and summary.get("message"):
        return str(summary["reason"]), str(summary["message"])
    if (
        job.failure_reason == "ReachedMaxRestarts"
    ):  # a JobSet's: it restarted every rank spec.backoffLimit times
        return (
            c.BACKOFF_LIMIT_EXCEEDED,
            f"the {stage} JobSet failed after {job.restarts} restarts of all ranks (spec.backoffLimit); see the logs",
        )
    if job.failure_reason == "BackoffLimitExceeded":
        return (
            c.BACKOFF_LIMIT_EXCEEDED,
            f"the {stage} pod failed {job.failed} times (spec.backoffLimit); see its logs",
        )
    return job.failure_reason or "JobFailed", job.failure_message or f"the {stage} Job failed"


def _validate(
    draft: _Draft, owner: ResourceIdentity, spec: FineTuneJobSpec, defaults: OperatorDefaults, digest: str
) -> bool:
    """True once the dataset passed; otherwise the status says where validation stands."""
    if c.is_true(draft.conditions, c.DATASET_VALIDATED):
        return True
    job = draft.observed.job("validate")
    if job is None:
        if spec.suspend:
            _suspend(draft, "spec.suspend is true: nothing runs until it is false")
            return False
        _unsuspend(draft)
        draft.actions.append(Create(render.validation_job(owner, spec, defaults, digest)))
        draft.event(
            "Normal", "ValidationStarted", f"validating {spec.dataset.uri} on CPU before asking for GPUs"
        )
        draft.condition(c.DATASET_VALIDATED, "Unknown", c.VALIDATING, "the validation Job is starting")
        draft.status["phase"] = "Validating"
        return False
    if job.complete:
        return _accept_validation(draft, spec, job.summary())
    if job.failure_reason:
        reason, message = _failure(job, "validation")
        if reason in (c.INVALID_DATASET, c.INVALID_SPEC):
            summary = job.summary() or {}
            if summary.get("dataset"):
                draft.status["dataset"] = summary["dataset"]
            draft.condition(c.DATASET_VALIDATED, "False", reason, message)
            draft.event("Warning", "DatasetRejected", message)
        else:
            draft.condition(c.DATASET_VALIDATED, "False", reason, message)
        draft.fail(reason, message)
        return False
    problem = _pod_problem(job.newest_pod())
    reason, message = problem or (c.VALIDATING, "the validation Job is running")
    draft.condition(c.DATASET_VALIDATED, "Unknown", reason, message)
    draft.status["phase"] = "Validating"
    return False


def _accept_validation(draft: _Draft, spec: FineTuneJobSpec, summary: dict[str, Any] | None) -> bool:
    if not summary or not summary.get("ok", True) or "dataset" not in summary:
        draft.condition(
            c.DATASET_VALIDATED, "False", c.VALIDATION_REPORT_MISSING, "the validation Job left no summary"
        )
        draft.fail(
            c.VALIDATION_REPORT_MISSING, "the validation Job succeeded but wrote no termination message"
        )
        return False
    dataset = summary["dataset"]
    draft.status["dataset"] = dataset
    estimate = summary.get("estimate") or {}
    if estimate:
        draft.status["estimate"] = estimate
    for warning in summary.get("warnings") or []:
        draft.event("Warning", "DatasetWarning", str(warning))
    if estimate.get("fitsOnRequestedGpus") is False:
        needed = int(estimate.get("gpuMemoryBytesPerGpu") or estimate.get("gpuMemoryBytes") or 0)
        message = (
            f"estimated peak GPU memory {needed / 2**30:.1f} GiB per GPU does not fit the requested GPUs; "
            "use method qlora, gradient checkpointing, a smaller batchSize or maxSeqLength, or more GPUs"
        )
        draft.condition(c.DATASET_VALIDATED, "True", c.DATASET_VALID, "the dataset is valid")
        draft.fail(c.INSUFFICIENT_GPU_MEMORY, message)
        return False
    message = (
        f"{dataset.get('rows', 0)} training rows, {dataset.get('evalRows', 0)} evaluation rows, "
        f"{dataset.get('duplicatesDropped', 0)} duplicates dropped, {dataset.get('leakageRows', 0)} leaked rows removed"
    )
    if draft.condition(c.DATASET_VALIDATED, "True", c.DATASET_VALID, message):
        draft.event("Normal", "DatasetValidated", message)
    return True


def _queue_name(spec: FineTuneJobSpec) -> str | None:
    return spec.scheduling.queue_name


def _train(
    draft: _Draft, owner: ResourceIdentity, spec: FineTuneJobSpec, defaults: OperatorDefaults, digest: str
) -> bool:
    """True once training finished; otherwise creates, suspends or follows the training Job."""
    job = draft.observed.job("train")
    queue = _queue_name(spec)
    if job is None:
        if spec.suspend:
            _suspend(draft, "spec.suspend is true: training starts when it is false")
            return False
        _unsuspend(draft)
        restarts = int(draft.status.get("restarts") or 0)
        if render.needs_rendezvous_service(spec) and draft.observed.jobset:
            # JobSet restarts the ranks and makes the headless Service itself.
            draft.actions.append(Create(render.training_jobset(owner, spec, defaults, digest)))
        else:
            if render.needs_rendezvous_service(spec) and not draft.observed.service:
                draft.actions.append(Create(render.rendezvous_service(owner)))
            draft.actions.append(
                Create(render.training_job(owner, spec, defaults, digest, restarts=restarts))
            )
        draft.status.setdefault("restarts", 0)
        if queue:
            draft.condition(
                c.ADMITTED,
                "False",
                c.QUEUED_BY_KUEUE,
                f"waiting for Kueue LocalQueue {queue} to admit the job",
            )
            draft.event("Normal", "Queued", f"training Job created in Kueue LocalQueue {queue}")
        else:
            draft.condition(c.ADMITTED, "True", c.ADMITTED_REASON, "the training Job was created")
            draft.event("Normal", "TrainingJobCreated", "training Job created")
        draft.status["phase"] = "Queued"
        return False
    if job.complete:
        _record_training_summary(draft, spec, job)
        draft.condition(c.RUNNING, "False", c.TRAINING_COMPLETE, "training finished")
        return True
    if job.failure_reason:
        _record_training_summary(draft, spec, job)
        if job.kind == "Job" and job.gang and _restart_gang(draft, owner, spec, defaults, digest, job=job):
            return False
        draft.fail(*_failure(job, "training"))
        return False
    if spec.suspend:
        if queue:
            # Kueue would re-admit a Job we merely suspend: delete it instead (pods checkpoint on SIGTERM) and
            # recreate it on resume, which resumes from the newest complete checkpoint.
            draft.actions.append(Delete(job.api_version, job.kind, job.name))
        elif not job.suspended:
            draft.actions.append(Patch(job.api_version, job.kind, job.name, {"spec": {"suspend": True}}))
        draft.condition(c.RUNNING, "False", c.USER_SUSPENDED, "suspended by spec.suspend")
        _suspend(draft, "spec.suspend is true: the training pods stop after a last checkpoint")
        return False
    if c.is_true(draft.conditions, c.SUSPENDED) and job.suspended and not queue:
        draft.actions.append(Patch(job.api_version, job.kind, job.name, {"spec": {"suspend": False}}))
    _unsuspend(draft)
    if job.suspended:
        # Only Kueue suspends our Jobs now: the job waits in its queue.
        draft.condition(
            c.ADMITTED,
            "False",
            c.QUEUED_BY_KUEUE,
            f"waiting for Kueue LocalQueue {queue or '?'} to admit the job",
        )
        draft.status["phase"] = "Queued"
        return False
    if draft.condition(c.ADMITTED, "True", c.ADMITTED_REASON, "the training Job may run"):
        draft.event(
            "Normal",
            "Admitted",
            "the training Job was admitted" + (f" by Kueue LocalQueue {queue}" if queue else ""),
        )
    _follow_training(draft, spec, job)
    return False


def _restarts(draft: _Draft, job: JobView) -> int:
    """Retries so far: a gang's are counted by the operator and carried by its Job; any other Job's failed
    pods are the Job controller's retries."""
    counted = job.restarts if job.gang else job.failed
    return max(int(draft.status.get("restarts") or 0), counted)


def _describe_failure(pod: PodView) -> str:
    if pod.disruption:
        return f"was disrupted ({pod.disruption})"
    if pod.terminated_reason == "OOMKilled":
        return "ran out of memory (OOMKilled)"
    if pod.exit_code is not None:
        return f"exited with code {pod.exit_code}" + (
            f" ({pod.terminated_reason})" if pod.terminated_reason else ""
        )
    return "failed"


def _restart_gang(
    draft: _Draft,
    owner: ResourceIdentity,
    spec: FineTuneJobSpec,
    defaults: OperatorDefaults,
    digest: str,
    *,
    job: JobView,
) -> bool:
    """A multi-node Job fails whole on any pod's failure: start all its ranks again as a fresh Job (they resume
    from the newest complete checkpoint). False leaves the failure to stand: bad input (exit 2 on any rank) or
    the deadline cannot be retried away. A disruption (preemption, eviction, drain) is not the job's fault and
    does not use up spec.backoffLimit; any other failure does, and the job fails once it is spent."""
    failed = [p for p in job.pods if p.phase == "Failed"]
    if job.failure_reason == "DeadlineExceeded" or any(p.exit_code == EXIT_INVALID_INPUT for p in failed):
        return False
    cause = job.first_failed_pod()
    rank = f"rank {cause.completion_index}" if cause and cause.completion_index is not None else "a rank"
    what = f"{rank} (pod {cause.name}) {_describe_failure(cause)}" if cause else f"{rank} failed"
    disrupted = cause is not None and cause.disruption is not None
    restarts = _restarts(draft, job)
    if not disrupted and restarts >= spec.backoff_limit:
        if cause is not None and cause.terminated_reason == "OOMKilled":
            return False  # the out-of-memory advice says more than the count
        draft.fail(
            c.BACKOFF_LIMIT_EXCEEDED,
            f"training failed again after {restarts} gang restart(s), the most spec.backoffLimit "
            f"({spec.backoff_limit}) allows: {what}; see its logs",
        )
        return True
    counted = restarts if disrupted else restarts + 1
    attempt = (job.gang_attempt or 0) + 1
    fresh = render.training_job(owner, spec, defaults, digest, attempt=attempt, restarts=counted)
    # Create before delete: a repeated reconcile then meets a harmless conflict, never a lost restart.
    draft.actions.append(Create(fresh))
    draft.actions.append(Delete("batch/v1", "Job", job.name))
    budget = (
        "disruptions do not count against spec.backoffLimit"
        if disrupted
        else f"restart {counted}/{spec.backoff_limit} of spec.backoffLimit"
    )
    message = (
        f"{what}: restarting all {spec.resources.nodes} ranks as Job {fresh['metadata']['name']} "
        f"from the newest complete checkpoint ({budget})"
    )
    draft.event("Warning", c.GANG_RESTARTED, message)
    draft.status["restarts"] = counted
    draft.condition(c.RUNNING, "False", c.GANG_RESTARTING, message)
    draft.status["phase"] = "Running"
    return True


def _follow_training(draft: _Draft, spec: FineTuneJobSpec, job: JobView) -> None:
    running = [p for p in job.pods if p.phase == "Running"]
    restarts = _restarts(draft, job)
    if restarts > int(draft.status.get("restarts") or 0) and job.kind == "JobSet":
        draft.event(
            "Warning",
            c.GANG_RESTARTED,
            f"JobSet {job.name} restarted all {spec.resources.nodes} ranks ({restarts}/{spec.backoff_limit} of "
            "spec.backoffLimit); they resume from the newest complete checkpoint",
        )
    elif restarts > int(draft.status.get("restarts") or 0):
        draft.event(
            "Warning",
            "Resumed",
            f"training pod retried ({restarts}/{spec.backoff_limit}); it resumes from the newest complete checkpoint",
        )
    draft.status["restarts"] = restarts
    if running:
        if draft.condition(c.RUNNING, "True", c.TRAINING, f"{len(running)} training pod(s) running"):
            draft.event("Normal", "TrainingStarted", f"training started on pod {running[0].name}")
        draft.status["phase"] = "Running"
        draft.requeue_after = 15.0
        _record_live_progress(draft, spec)
        return
    problem = _pod_problem(job.newest_pod())
    if problem:
        draft.condition(c.RUNNING, "False", *problem)
    else:
        draft.condition(c.RUNNING, "False", c.PENDING_PODS, "waiting for the training pod to start")
    draft.status["phase"] = "Running" if c.is_true(draft.conditions, c.RUNNING) else "Queued"


_PROGRESS_KEYS = ("step", "totalSteps", "epoch", "trainLoss", "evalLoss", "tokensPerSecond", "etaSeconds")


def _merge_progress(draft: _Draft, progress: dict[str, Any]) -> None:
    """updatedAt moves only when a value does: unchanged progress leaves the status as it was, so the
    resync timer's reconcile writes nothing (handlers.reconciler writes only a changed status)."""
    before = dict(draft.status.get("progress") or {})
    merged = {**before, **{k: progress[k] for k in _PROGRESS_KEYS if progress.get(k) is not None}}
    step, total = merged.get("step"), merged.get("totalSteps")
    if isinstance(step, int) and isinstance(total, int) and total > 0:
        merged["percent"] = min(100, step * 100 // total)
    if progress_changed(before, merged) or "updatedAt" not in before:
        merged["updatedAt"] = draft.observed.now
    draft.status["progress"] = merged


def _record_checkpoints(draft: _Draft, spec: FineTuneJobSpec, checkpoints: list[dict[str, Any]]) -> None:
    known = {int(item["step"]): item for item in draft.status.get("checkpoints") or []}
    layout = ArtifactLayout(root=spec.output.uri)
    for item in checkpoints:
        step = int(item["step"])
        if step not in known:
            draft.event("Normal", "CheckpointSaved", f"checkpoint at step {step} is complete")
        entry = {"step": step, "uri": item.get("uri") or f"{layout.checkpoints}step-{step:08d}/"}
        if item.get("evalLoss") is not None:
            entry["evalLoss"] = str(item["evalLoss"])
        known[step] = {**known.get(step, {}), **entry}
    draft.status["checkpoints"] = [known[s] for s in sorted(known)][-MAX_CHECKPOINTS_IN_STATUS:]


def _record_live_progress(draft: _Draft, spec: FineTuneJobSpec) -> None:
    live = draft.observed.live
    if not live:
        return
    _merge_progress(draft, live)
    if live.get("lastCheckpointStep"):
        _record_checkpoints(draft, spec, [{"step": int(live["lastCheckpointStep"])}])
    if live.get("resumedFromStep"):
        draft.status["resumedFromStep"] = int(live["resumedFromStep"])


def _record_training_summary(draft: _Draft, spec: FineTuneJobSpec, job: JobView) -> None:
    draft.status["restarts"] = _restarts(draft, job)
    summary = job.summary() or {}
    if summary.get("progress"):
        _merge_progress(draft, summary["progress"])
    if summary.get("checkpoints"):
        _record_checkpoints(draft, spec, list(summary["checkpoints"]))
    if summary.get("resumedFromStep") is not None:
        draft.status["resumedFromStep"] = int(summary["resumedFromStep"])


def _finish(
    draft: _Draft, owner: ResourceIdentity, spec: FineTuneJobSpec, defaults: OperatorDefaults, digest: str
) -> None:
    job = draft.observed.job("finish")
    if job is None:
        draft.actions.append(Create(render.finishing_job(owner, spec, defaults, digest)))
        draft.event(
            "Normal",
            "EvaluationStarted",
            "evaluating the tuned model against the base model on the held-out split",
        )
        draft.condition(c.EVALUATED, "Unknown", c.EVALUATING, "the evaluation Job is starting")
        draft.status["phase"] = "Evaluating"
        return
    if job.failure_reason:
        reason, message = _failure(job, "evaluation")
        draft.condition(c.EVALUATED, "False", reason, message)
        draft.fail(reason if reason != c.BACKOFF_LIMIT_EXCEEDED else c.EVALUATION_JOB_FAILED, message)
        return
    if not job.complete:
        problem = _pod_problem(job.newest_pod())
        draft.condition(c.EVALUATED, "Unknown", *(problem or (c.EVALUATING, "evaluation is running")))
        draft.status["phase"] = "Evaluating"
        return
    summary = job.summary() or {}
    evaluation = dict(summary.get("evaluation") or {})
    outputs = summary.get("outputs") or {}
    thresholds = spec.evaluation.thresholds or {}
    failures = failed_thresholds(evaluation.get("metrics") or {}, thresholds)
    evaluation["passed"] = not failures
    evaluation["failedThresholds"] = failures
    draft.status["evaluation"] = evaluation
    if outputs:
        draft.status["outputs"] = outputs
    metrics_text = ", ".join(f"{k} {v}" for k, v in sorted((evaluation.get("metrics") or {}).items()))
    draft.condition(c.EVALUATED, "True", c.SUCCEEDED, metrics_text or "evaluated")
    if not thresholds:
        draft.condition(
            c.EVALUATION_PASSED, "True", c.NO_THRESHOLDS, "no thresholds declared in spec.evaluation"
        )
    elif failures:
        if draft.condition(c.EVALUATION_PASSED, "False", c.THRESHOLDS_NOT_MET, "; ".join(failures)):
            draft.event("Warning", "EvaluationFailed", "; ".join(failures))
    elif draft.condition(c.EVALUATION_PASSED, "True", c.THRESHOLDS_MET, metrics_text):
        draft.event("Normal", "EvaluationPassed", metrics_text)
    if draft.condition(c.COMPLETE, "True", c.SUCCEEDED, f"outputs under {spec.output.uri}"):
        draft.event("Normal", "Succeeded", f"fine-tuning finished; outputs under {spec.output.uri}")
    draft.status["completionTime"] = job.completion_time or draft.observed.now
    draft.status["phase"] = "Succeeded"
