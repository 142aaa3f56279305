"""The typed models: defaults, number strings, and the defaults the trainer will run with."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kubetune.api.finetunejob import Checkpoint, Evaluation, FineTuneJobSpec, Hyperparameters, Lora
from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.api.trainer_config import ArtifactLayout, TrainerConfig

MINIMAL_JOB = {
    "baseModel": {"uri": "s3://models/tiny/"},
    "dataset": {"uri": "s3://data/rows.jsonl", "evalSplit": 0.1},
    "output": {"uri": "s3://artifacts/job/"},
}


def test_minimal_job_gets_documented_defaults() -> None:
    spec = FineTuneJobSpec.model_validate(MINIMAL_JOB)
    assert spec.method == "lora"
    assert spec.dataset.format == "auto"
    assert spec.backoff_limit == 3
    assert spec.suspend is False


@pytest.mark.parametrize(
    ("field", "value", "accepted"),
    [
        ("learningRate", 2e-4, True),
        ("learningRate", 1, True),
        ("learningRate", 0, False),
        ("learningRate", 1.5, False),
        ("learningRate", "2e-4", False),
        ("learningRate", "abc", False),
        ("learningRate", True, False),
        ("learningRate", -1e-4, False),
        ("warmupRatio", 0.5, True),
        ("warmupRatio", 0.51, False),
        ("weightDecay", 0, True),
        ("weightDecay", 1, False),
    ],
)
def test_decimals_are_numbers_and_range_checked(field: str, value: object, accepted: bool) -> None:
    if accepted:
        Hyperparameters.model_validate({field: value})
    else:
        with pytest.raises(ValidationError, match=field):
            Hyperparameters.model_validate({field: value})


def test_unknown_fields_are_refused_by_the_typed_model() -> None:
    with pytest.raises(ValidationError, match=r"(?s)learningrate.*Extra inputs are not permitted"):
        Hyperparameters.model_validate({"learningrate": 1e-4})


def test_parsed_spec_always_has_warmup_lora_and_every_section() -> None:
    resolved = FineTuneJobSpec.model_validate(MINIMAL_JOB)
    assert resolved.hyperparameters.warmup_ratio == 0.03
    assert resolved.lora == Lora()
    assert resolved.dpo is None
    assert resolved.evaluation == Evaluation() and resolved.checkpoint == Checkpoint()


def test_parsed_spec_keeps_explicit_warmup_steps_and_no_lora_for_full() -> None:
    resolved = FineTuneJobSpec.model_validate(
        {**MINIMAL_JOB, "method": "full", "hyperparameters": {"warmupSteps": 10}}
    )
    assert resolved.hyperparameters.warmup_ratio is None
    assert resolved.hyperparameters.warmup_steps == 10
    assert resolved.lora is None


def test_trainer_config_round_trips_through_json_and_lays_out_artifacts() -> None:
    config = TrainerConfig.model_validate(
        {
            "job": {"name": "j", "namespace": "n"},
            "spec": FineTuneJobSpec.model_validate(MINIMAL_JOB).trainer_spec(),
        }
    )
    again = TrainerConfig.model_validate_json(config.model_dump_json(by_alias=True))
    assert again == config
    layout = config.artifacts
    assert layout == ArtifactLayout(root="s3://artifacts/job/")
    assert layout.checkpoints == "s3://artifacts/job/checkpoints/"
    assert layout.manifest == "s3://artifacts/job/manifest.json"


def test_model_deployment_defaults() -> None:
    spec = ModelDeploymentSpec.model_validate({"source": {"fineTuneJobRef": {"name": "j"}}})
    assert (spec.runtime, spec.serve, spec.replicas) == ("vllm", "adapter", 1)
