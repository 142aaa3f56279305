"""Live training progress from the trainer's Prometheus samples (the metric names are the contract)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# trainer metric -> (status.progress key or live key, how to format it)
TRAINER_METRICS: dict[str, tuple[str, str]] = {
    "kubetune_trainer_step": ("step", "int"),
    "kubetune_trainer_total_steps": ("totalSteps", "int"),
    "kubetune_trainer_epoch": ("epoch", "str"),
    "kubetune_trainer_train_loss": ("trainLoss", "str"),
    "kubetune_trainer_eval_loss": ("evalLoss", "str"),
    "kubetune_trainer_tokens_per_second": ("tokensPerSecond", "int"),
    "kubetune_trainer_eta_seconds": ("etaSeconds", "int"),
    "kubetune_trainer_last_checkpoint_step": ("lastCheckpointStep", "int"),
    "kubetune_trainer_resumed_from_step": ("resumedFromStep", "int"),
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
