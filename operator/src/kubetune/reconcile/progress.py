"""Live training progress from the trainer's Prometheus samples (the names are in api.trainer_contract)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from kubetune.api import trainer_contract as contract

# trainer metric -> (status.progress key or live key, how to format it)
TRAINER_METRICS: dict[str, tuple[str, str]] = {
    contract.STEP: ("step", "int"),
    contract.TOTAL_STEPS: ("totalSteps", "int"),
    contract.EPOCH: ("epoch", "str"),
    contract.TRAIN_LOSS: ("trainLoss", "str"),
    contract.EVAL_LOSS: ("evalLoss", "str"),
    contract.TOKENS_PER_SECOND: ("tokensPerSecond", "int"),
    contract.ETA_SECONDS: ("etaSeconds", "int"),
    contract.LAST_CHECKPOINT_STEP: ("lastCheckpointStep", "int"),
    contract.RESUMED_FROM_STEP: ("resumedFromStep", "int"),
}


def progress_from_samples(samples: Mapping[str, float]) -> dict[str, Any]:
    """Status-shaped progress; unknown (NaN) or absent samples are left out rather than shown as zero."""
    progress: dict[str, Any] = {}
    for metric, (key, kind) in TRAINER_METRICS.items():
        value = samples.get(metric)
        if value is None or math.isnan(value) or math.isinf(value):
            continue
        progress[key] = int(value) if kind == "int" else f"{value:.4g}"
    return progress


def progress_changed(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """Whether a user would see different status.progress: any value but the bookkeeping updatedAt."""
    return {k: v for k, v in before.items() if k != "updatedAt"} != {
        k: v for k, v in after.items() if k != "updatedAt"
    }
