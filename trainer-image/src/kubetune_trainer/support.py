"""Spec settings the API accepts but this trainer cannot honour yet (issue 14 is landing them one by one).

A job that asks for one fails in the validate stage, before any GPU is requested, with the field named: it
is never trained as if the setting were absent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kubetune.api.finetunejob import DPO_METRICS

if TYPE_CHECKING:
    from kubetune.api.finetunejob import TrainerSpec


def unsupported_settings(spec: TrainerSpec) -> list[str]:
    hyper = spec.hyperparameters
    found = []
    if hyper.cross_entropy != "standard":
        found.append(f"spec.hyperparameters.crossEntropy {hyper.cross_entropy}")
    if hyper.train_on_inputs:
        found.append("spec.hyperparameters.trainOnInputs")
    if hyper.train_on_last_turn_only:
        found.append("spec.hyperparameters.trainOnLastTurnOnly")
    if spec.dataset.chat_template_name:
        # Needs the added special tokens' embedding rows resized and trained.
        found.append(f"spec.dataset.chatTemplateName {spec.dataset.chat_template_name}")
    if spec.tracking is not None:
        found.append("spec.tracking")
    reward_metrics = [m for m in spec.evaluation.metrics if m in DPO_METRICS]
    if reward_metrics:
        found.append("spec.evaluation.metrics " + ", ".join(reward_metrics))
    return found


def check_supported(spec: TrainerSpec) -> None:
    found = unsupported_settings(spec)
    if found:
        raise ValueError(
            "this trainer image does not support "
            + ", ".join(found)
            + " yet; remove the setting to run the job without it"
        )
