"""TrainingArguments (DPOConfig for DPO) from the TrainerConfig: every knob the spec sets, and the ones the
stage fixes (checkpointing, logging, the data loader, the device)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api.finetunejob import DEFAULT_LOGGING_STEPS, DEFAULT_MIN_LR_RATIO
from kubetune_trainer.training.model import Device

if TYPE_CHECKING:
    from kubetune.api.finetunejob import Hyperparameters
    from kubetune.api.trainer_config import TrainerConfig


def _scheduler_kwargs(hyper: Hyperparameters) -> dict[str, Any]:
    if hyper.scheduler != "cosine_with_min_lr":
        return {}
    ratio = hyper.min_learning_rate_ratio
    return {"min_lr_rate": DEFAULT_MIN_LR_RATIO if ratio is None else ratio}


def training_arguments(
    config: TrainerConfig,
    output_dir: Path,
    device: Device,
    *,
    has_eval: bool,
    dpo: bool = False,
    overrides: dict[str, Any] | None = None,
) -> Any:
    """TrainingArguments (DPOConfig for DPO) from the spec; warmup is always at least one step."""
    spec = config.spec
    hyper = spec.hyperparameters
    every = spec.checkpoint.every_steps
    # A ratio in (0, 1): the Trainer takes ceil(total_steps * ratio), at least 1 step for any ratio > 0.
    # The spec holds one of the two (warmupRatio has its default when warmupSteps is not set).
    warmup = hyper.warmup_steps if hyper.warmup_steps is not None else hyper.warmup_ratio
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": hyper.batch_size,
        "per_device_eval_batch_size": hyper.batch_size,
        "gradient_accumulation_steps": hyper.gradient_accumulation_steps,
        "num_train_epochs": hyper.epochs,
        "max_steps": hyper.max_steps or -1,
        "learning_rate": hyper.learning_rate,
        "lr_scheduler_type": hyper.scheduler,
        "lr_scheduler_kwargs": _scheduler_kwargs(hyper),
        "optim": hyper.optimizer,
        "adam_beta1": hyper.adam_beta1,
        "adam_beta2": hyper.adam_beta2,
        "adam_epsilon": hyper.adam_epsilon,
        "neftune_noise_alpha": hyper.neftune_noise_alpha,
        "warmup_steps": warmup,
        "weight_decay": hyper.weight_decay,
        "max_grad_norm": hyper.max_grad_norm,
        "seed": hyper.seed,
        "data_seed": hyper.seed,
        "bf16": device.bf16,
        "activation_checkpointing": hyper.gradient_checkpointing,
        "activation_checkpointing_kwargs": {"use_reentrant": False},
        "eval_strategy": "steps" if has_eval else "no",
        "eval_steps": hyper.eval_steps or every,
        "save_strategy": "steps",
        "save_steps": every,
        "save_total_limit": 1,  # local disk; the object store keeps the real history
        "logging_steps": hyper.logging_steps or max(1, min(DEFAULT_LOGGING_STEPS, every)),
        "report_to": [],
        "disable_tqdm": True,
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": device.cuda,
        "include_num_input_tokens_seen": "non_padding",
        "use_cpu": not device.cuda,
        "ddp_find_unused_parameters": False,
        "save_only_model": False,
        "log_level": "warning",
    }
    if dpo:
        from trl.trainer.dpo_config import DPOConfig

        dpo_spec = spec.dpo
        if dpo_spec is None:
            raise ValueError(f"method {spec.method} needs spec.dpo")
        # TRL's config keeps the older names (and defaults checkpointing on): set them explicitly.
        kwargs["gradient_checkpointing"] = kwargs.pop("activation_checkpointing")
        kwargs["gradient_checkpointing_kwargs"] = kwargs.pop("activation_checkpointing_kwargs")
        kwargs.update(
            {
                "beta": dpo_spec.beta,
                "loss_type": [dpo_spec.loss_type],
                "max_length": hyper.max_seq_length,
                "precompute_ref_log_probs": False,
            }
        )
        kwargs.update(overrides or {})
        return DPOConfig(**kwargs)
    from transformers import TrainingArguments

    kwargs.update(overrides or {})
    return TrainingArguments(**kwargs)
