"""Condition types, reasons and the one rule for updating a conditions list."""

from __future__ import annotations

from typing import Any, Literal

ConditionStatus = Literal["True", "False", "Unknown"]

# FineTuneJob condition types.
DATASET_VALIDATED = "DatasetValidated"
ADMITTED = "Admitted"
RUNNING = "Running"
EVALUATED = "Evaluated"
EVALUATION_PASSED = "EvaluationPassed"
COMPLETE = "Complete"
FAILED = "Failed"
SUSPENDED = "Suspended"
FINETUNEJOB_CONDITIONS = (
    DATASET_VALIDATED,
    ADMITTED,
    RUNNING,
    EVALUATED,
    EVALUATION_PASSED,
    COMPLETE,
    FAILED,
    SUSPENDED,
)

# Reasons (CamelCase, specific).
VALIDATING = "Validating"
DATASET_VALID = "DatasetValid"
INVALID_DATASET = "InvalidDataset"
INVALID_SPEC = "InvalidSpec"
INSUFFICIENT_GPU_MEMORY = "InsufficientGPUMemory"
VALIDATION_REPORT_MISSING = "ValidationReportMissing"
WAITING_FOR_VALIDATION = "WaitingForValidation"
QUEUED_BY_KUEUE = "QueuedByKueue"
ADMITTED_REASON = "Admitted"
UNSCHEDULABLE = "Unschedulable"
IMAGE_PULL_FAILED = "ImagePullFailed"
CONTAINER_CONFIG_ERROR = "ContainerConfigError"
PENDING_PODS = "PodsPending"
TRAINING = "Training"
TRAINING_COMPLETE = "TrainingComplete"
EVALUATING = "Evaluating"
THRESHOLDS_MET = "ThresholdsMet"
THRESHOLDS_NOT_MET = "ThresholdsNotMet"
NO_THRESHOLDS = "NoThresholds"
SUCCEEDED = "Succeeded"
OUT_OF_MEMORY = "OutOfMemory"
BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
DEADLINE_EXCEEDED = "DeadlineExceeded"
EVALUATION_JOB_FAILED = "EvaluationJobFailed"
USER_SUSPENDED = "SuspendedByUser"
NOT_SUSPENDED = "NotSuspended"
NO_FAILURE = "NoFailure"
NOT_STARTED = "NotStarted"
GANG_RESTARTING = "GangRestarting"
# FineTuneJob event reason: a multi-node Job failed or was disrupted and all its ranks start again.
GANG_RESTARTED = "GangRestarted"

# ModelDeployment reasons (its condition types are in reconcile.modeldeployment); INVALID_SPEC and
# THRESHOLDS_NOT_MET above serve both kinds.
SOURCE_NOT_FOUND = "SourceNotFound"
SOURCE_NOT_READY = "SourceNotReady"
EVALUATION_NOT_PASSED = "EvaluationNotPassed"
CHECKPOINT_NOT_FOUND = "CheckpointNotFound"
MERGED_MODEL_MISSING = "MergedModelMissing"
ADAPTER_MISSING = "AdapterMissing"
GATE_BLOCKED = "GateBlocked"
STORAGE_CREDENTIALS_MISSING = "StorageCredentialsMissing"
GATE_OPEN = "GatePassed"
STABLE_SERVING = "StableServing"
DEPLOYING = "Deploying"
NOT_READY = "NotReady"
CANARY = "Canary"
PAUSED = "Paused"
CANARY_NOT_READY = "CanaryNotReady"
ROLLOUT_COMPLETE = "RolloutComplete"
PROMOTED = "Promoted"
ABORTED_BY_USER = "AbortedByUser"
ANALYSIS_FAILED = "AnalysisFailed"
ERROR_RATE_TOO_HIGH = "ErrorRateTooHigh"
LATENCY_TOO_HIGH = "LatencyTooHigh"
BENCHMARK_FAILED = "BenchmarkFailed"
BENCHMARK_RECORDED = "BenchmarkRecorded"
# ModelDeployment event reasons besides the above.
REVISION_CREATED = "RevisionCreated"
ROLLED_BACK_EVENT = "RolledBack"
CANARY_STEP_PASSED = "CanaryStepPassed"

# Either kind: written by the handlers when a reconcile raised, cleared by the next one that succeeds.
RECONCILED = "Reconciled"
RECONCILE_ERROR = "ReconcileError"


def find(conditions: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == kind), None)


def is_true(conditions: list[dict[str, Any]], kind: str) -> bool:
    found = find(conditions, kind)
    return found is not None and found.get("status") == "True"


def set_condition(
    conditions: list[dict[str, Any]],
    kind: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    now: str,
    generation: int,
) -> list[dict[str, Any]]:
    """A new list with one condition set; lastTransitionTime moves only when the status flips."""
    previous = find(conditions, kind)
    changed = previous is None or previous.get("status") != status
    updated = {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": " ".join(message.split())[:1024],  # one line, within the schema's bound
        "lastTransitionTime": now if changed or previous is None else previous["lastTransitionTime"],
        "observedGeneration": generation,
    }
    others = [c for c in conditions if c.get("type") != kind]
    return sorted([*others, updated], key=_order)


def _order(condition: dict[str, Any]) -> int:
    kind = condition.get("type", "")
    return (
        FINETUNEJOB_CONDITIONS.index(kind) if kind in FINETUNEJOB_CONDITIONS else len(FINETUNEJOB_CONDITIONS)
    )
