"""The verdict of metrics against thresholds: one function for the trainer, the operator and the gate."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from kubetune.api.common import decimal_text
from kubetune.api.finetunejob import Threshold


def failed_thresholds(metrics: Mapping[str, str | float], thresholds: Mapping[Any, Threshold]) -> list[str]:
    """One line per threshold not met, e.g. "perplexity 9.12 > max 8.0"; empty when all pass.

    A metric with a threshold but no value fails: an evaluation that did not measure it cannot pass it.
    """
    failures: list[str] = []
    for name, threshold in sorted(thresholds.items()):
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
