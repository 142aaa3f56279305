"""Stage `all`: validate, train, evaluate and export in one process (the local sandbox, small jobs).

Each stage runs as it would in its own pod and the first failure stops the chain; the summary merges what
the stages reported (dataset, progress, checkpoints, evaluation, outputs) so the operator reads one status.
Validation is skipped when the prepared data already exists (a restarted pod resumes training directly).
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from kubetune_trainer import storage

if TYPE_CHECKING:
    from kubetune.api.trainer_config import TrainerConfig

log = logging.getLogger(__name__)

STAGE = "all"
CHAIN = ("validate", "train", "evaluate", "export")
MERGED_KEYS = ("dataset", "estimate", "progress", "checkpoints", "resumedFromStep", "evaluation")


def run(config: TrainerConfig) -> dict[str, Any]:
    from kubetune_trainer.metrics import fit_summary

    prepared = storage.join(config.artifacts.prepared_data, "train.jsonl")
    stages = CHAIN[1:] if storage.exists(prepared) else CHAIN
    merged: dict[str, Any] = {"stage": STAGE, "ok": True}
    outputs: dict[str, Any] = {}
    warnings: list[str] = []
    messages: list[str] = []
    for stage in stages:
        module = importlib.import_module(f"kubetune_trainer.stages.{stage}")
        summary: dict[str, Any] = module.run(config)
        for key in MERGED_KEYS:
            if summary.get(key) is not None:
                merged[key] = summary[key]
        outputs.update(summary.get("outputs") or {})
        warnings.extend(f"{stage}: {w}" for w in summary.get("warnings") or [])
        messages.append(f"{stage}: {summary.get('message', '')}")
        merged["reason"] = summary.get("reason")
        if not summary.get("ok", True) or summary.get("exitCode"):
            merged.update({"ok": False, "failedStage": stage})
            if summary.get("exitCode") is not None:
                merged["exitCode"] = summary["exitCode"]
            break
    merged["message"] = " | ".join(messages)
    merged["outputs"] = outputs or None
    merged["warnings"] = warnings or None
    return fit_summary(merged)
