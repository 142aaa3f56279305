"""Each training knob of the spec reaches the Trainer it runs with: a real train stage on the tiny model,
then the Trainer's own arguments, optimizer, scheduler and model are read back."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.conftest import S3Helper
from tests.trainer.test_train import DATA_URI, chat_rows, make_job, put_jsonl, validate

pytestmark = pytest.mark.usefixtures("torch_threads", "trainer_work_dir")

LEARNING_RATE = 1e-3
MIN_RATIO = 0.25
MAX_STEPS = 8


def test_optimizer_schedule_evaluation_logging_and_neftune_reach_the_trainer(
    s3: S3Helper, tiny_model_s3: str
) -> None:
    from kubetune_trainer.stages import train

    put_jsonl(s3, DATA_URI, chat_rows(160))
    config = make_job(
        "lora",
        tiny_model_s3,
        hyperparameters={
            "maxSteps": MAX_STEPS,
            "learningRate": LEARNING_RATE,
            "warmupSteps": 1,
            "warmupRatio": None,
            "scheduler": "cosine_with_min_lr",
            "minLearningRateRatio": MIN_RATIO,
            "optimizer": "adamw_torch",
            "adamBeta1": 0.8,
            "adamBeta2": 0.95,
            "adamEpsilon": 1e-6,
            "evalSteps": 2,
            "loggingSteps": 3,
            "neftuneNoiseAlpha": 5,
        },
        checkpoint={"everySteps": 4, "keepLast": 1},
    )
    validate(config)
    outcome = train.train(config)
    trainer = outcome.trainer
    args = trainer.args
    assert (args.optim, args.adam_beta1, args.adam_beta2, args.adam_epsilon) == (
        "adamw_torch",
        0.8,
        0.95,
        1e-6,
    )
    group = trainer.optimizer.param_groups[0]
    assert (group["betas"], group["eps"]) == ((0.8, 0.95), 1e-6), "the optimizer was built without them"
    assert (args.lr_scheduler_type, args.lr_scheduler_kwargs) == (
        "cosine_with_min_lr",
        {"min_lr_rate": MIN_RATIO},
    )
    # The schedule decays towards, and never below, the floor: the last logged rate sits just above it.
    rates = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    assert rates and all(rate >= LEARNING_RATE * MIN_RATIO - 1e-12 for rate in rates), rates
    assert min(rates) < LEARNING_RATE * 0.9, "the learning rate never decayed"
    assert args.eval_steps == 2 and args.save_steps == 4
    evaluated = [entry["step"] for entry in trainer.state.log_history if "eval_loss" in entry]
    assert evaluated[:4] == [2, 4, 6, 8], evaluated
    assert args.logging_steps == 3
    logged = [entry["step"] for entry in trainer.state.log_history if "loss" in entry]
    assert logged[:2] == [3, 6], logged
    assert args.neftune_noise_alpha == 5
    assert all(math.isfinite(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry)


def test_rslora_dora_and_modules_to_save_reach_the_adapter(tiny_model_dir: Path, tiny_model_uri: str) -> None:
    from kubetune_trainer.training.model import Device, load_base_model, prepare_trainable_model

    config = make_job(
        "lora",
        tiny_model_uri,
        lora={"r": 4, "alpha": 16, "useRslora": True, "useDora": True, "modulesToSave": ["lm_head"]},
    )
    device = Device(cuda=False, bf16=False)
    model = prepare_trainable_model(
        load_base_model(tiny_model_dir, method="lora", device=device), config.spec, device
    )
    peft_config = model.peft_config["default"]
    assert (peft_config.use_rslora, peft_config.use_dora) == (True, True)
    assert set(peft_config.modules_to_save) >= {"lm_head"}
    from peft.tuners.lora import LoraLayer

    layer = next(m for m in model.modules() if isinstance(m, LoraLayer))
    assert layer.scaling["default"] == pytest.approx(16 / math.sqrt(4)), "rsLoRA scales by alpha/sqrt(r)"
    assert any("lora_magnitude_vector" in name for name, _ in model.named_parameters()), "no DoRA magnitude"
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("lm_head" in name and "modules_to_save" in name for name in trainable), sorted(trainable)[:10]


def test_an_attention_kernel_that_cannot_run_fails_naming_the_field(tiny_model_dir: Path) -> None:
    from kubetune_trainer.training.model import Device, load_base_model

    cpu = Device(cuda=False, bf16=False)
    with pytest.raises(ValueError, match=r"attentionImplementation flash_attention_2 needs a CUDA GPU"):
        load_base_model(tiny_model_dir, method="lora", device=cpu, attention="flash_attention_2")
    eager = load_base_model(tiny_model_dir, method="lora", device=cpu, attention="eager")
    assert eager.config._attn_implementation == "eager"  # transformers has no public getter for it


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"hyperparameters": {"crossEntropy": "chunked"}}, "spec.hyperparameters.crossEntropy chunked"),
        ({"hyperparameters": {"trainOnInputs": True}}, "spec.hyperparameters.trainOnInputs"),
        ({"tracking": {"reportTo": ["tensorboard"]}}, "spec.tracking"),
    ],
)
def test_a_setting_this_trainer_cannot_honour_fails_validation_naming_it(
    setting: dict[str, Any], named: str, s3: S3Helper, tiny_model_s3: str
) -> None:
    from kubetune_trainer.stages import validate as validate_stage

    put_jsonl(s3, DATA_URI, chat_rows(40))
    summary = validate_stage.run(make_job("lora", tiny_model_s3, **setting))
    assert (summary["ok"], summary["reason"], summary["exitCode"]) == (False, "InvalidSpec", 2)
    assert named in summary["message"], summary["message"]
