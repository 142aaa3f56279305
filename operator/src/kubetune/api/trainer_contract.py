"""What the trainer tells the operator: metric names, the metrics port, the stage summary and the verdict.

Both sides import this module, so a name or a wording exists once:

- the trainer serves the gauges named here on `TrainerConfig.metrics_port` (DEFAULT_METRICS_PORT unless the
  operator's KUBETUNE_TRAINER_METRICS_PORT says otherwise; the operator renders the same port into the pod's
  containerPort and scrapes it), and the operator turns the samples into `status.progress`;
- every stage returns a `TrainerSummary`-shaped dict, written as the pod's termination message and read
  back into the FineTuneJob's status (its status sections use FineTuneJobStatus's own models);
- `failed_thresholds` is the one verdict of metrics against thresholds: the evaluate stage, the operator
  and the ModelDeployment gate all call it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from kubetune.api.common import decimal_text
from kubetune.api.finetunejob import (
    CheckpointStatus,
    DatasetStatus,
    Estimate,
    EvaluationStatus,
    Outputs,
    Progress,
    Threshold,
)

# ------------------------------------------------------------------------------------------ the metrics

DEFAULT_METRICS_PORT = 9400
# The trainer runs as a non-root user, which cannot bind a privileged port.
MIN_METRICS_PORT = 1024
MAX_METRICS_PORT = 65535

METRIC_PREFIX = "kubetune_trainer_"
STEP = METRIC_PREFIX + "step"
TOTAL_STEPS = METRIC_PREFIX + "total_steps"
EPOCH = METRIC_PREFIX + "epoch"
TRAIN_LOSS = METRIC_PREFIX + "train_loss"
EVAL_LOSS = METRIC_PREFIX + "eval_loss"
LEARNING_RATE = METRIC_PREFIX + "learning_rate"
TOKENS_PER_SECOND = METRIC_PREFIX + "tokens_per_second"
TOKENS_SEEN_TOTAL = METRIC_PREFIX + "tokens_seen_total"  # a counter
GPU_MEMORY_BYTES = METRIC_PREFIX + "gpu_memory_bytes"
ETA_SECONDS = METRIC_PREFIX + "eta_seconds"
LAST_CHECKPOINT_STEP = METRIC_PREFIX + "last_checkpoint_step"
RESUMED_FROM_STEP = METRIC_PREFIX + "resumed_from_step"  # 0 when the run did not resume

# ------------------------------------------------------------------------------------- the stage summary


class TrainerSummary(BaseModel):
    """A stage's summary, as the trainer writes it to the termination message (camelCase JSON).

    The status sections carry FineTuneJobStatus's field names and models, so the operator copies them into
    status as they are. A stage may add fields of its own (e.g. `reportUri`, `benchmark`); they are kept.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True)

    stage: str
    ok: bool = True
    reason: str | None = None
    message: str | None = None
    warnings: list[str] | None = None
    failed_stage: str | None = None
    exit_code: int | None = Field(default=None, description="In-process only: never written to the message")
    dataset: DatasetStatus | None = None
    estimate: Estimate | None = None
    progress: Progress | None = None
    checkpoints: list[CheckpointStatus] | None = None
    resumed_from_step: int | None = None
    evaluation: EvaluationStatus | None = None
    outputs: Outputs | None = None


def summary_problems(summary: Mapping[str, Any]) -> list[str]:
    """Where a stage's summary departs from the contract, one line each; empty when it fits."""
    try:
        TrainerSummary.model_validate(summary)
    except ValidationError as error:
        return [f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()]
    return []


# ------------------------------------------------------------------------------------------ the verdict


def failed_thresholds(
    metrics: Mapping[str, str | float], thresholds: Mapping[Any, Threshold] | None
) -> list[str]:
    """One line per threshold not met, e.g. "perplexity 9.12 > max 8"; empty when all pass.

    Metric values may be numbers (the evaluate stage) or the decimal strings status keeps. A metric with a
    threshold but no value fails: an evaluation that did not measure it cannot pass it.
    """
    failures: list[str] = []
    for name, threshold in sorted((thresholds or {}).items()):
        raw = metrics.get(name)
        value = float(raw) if raw is not None else math.nan
        if math.isnan(value):
            failures.append(f"{name} was not measured")
            continue
        if threshold.min is not None and value < threshold.min:
            failures.append(f"{name} {value:.4g} < min {decimal_text(threshold.min)}")
        if threshold.max is not None and value > threshold.max:
            failures.append(f"{name} {value:.4g} > max {decimal_text(threshold.max)}")
    return failures
