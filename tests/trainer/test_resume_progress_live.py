"""A training run that resumes from a checkpoint says so on its metrics endpoint while it trains, and the
operator's own scraper reads it as `resumedFromStep` (the gauge is named once, in api.trainer_contract)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.trainer.conftest import S3Helper, build_config

pytestmark = pytest.mark.usefixtures("trainer_work_dir")

DATA_URI = "s3://data/train.jsonl"


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: steady on a shared machine (OpenMP spin-waits make more threads slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _PreemptAt:
    """Reports SIGTERM once the given step has ended: deterministic, no real signal."""

    def __init__(self, step: int) -> None:
        from kubetune_trainer.stages.train import Preemption

        self.requested = Preemption().requested
        self.step = step
        self.calls = 0

    def agreed(self, world_size: int) -> bool:
        self.calls += 1
        return self.calls >= self.step


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_resumed_training_reports_resumed_from_step_live(
    s3: S3Helper, tiny_model_s3: str, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import TrainerCallback

    from kubetune.adapters.scrape import scrape_trainer
    from kubetune.reconcile.progress import progress_from_samples
    from kubetune_trainer.metrics import TrainerMetrics
    from kubetune_trainer.stages import train
    from kubetune_trainer.stages import validate as validate_stage
    from kubetune_trainer.tiny import demo_instruction_rows

    monkeypatch.setenv("KUBETUNE_METRICS_HOST", "127.0.0.1")
    s3.put(DATA_URI, "".join(json.dumps(row) + "\n" for row in demo_instruction_rows(64, seed=3)))
    config = build_config(
        base_model=tiny_model_s3,
        dataset={"uri": DATA_URI, "evalSplit": 0.1},
        output="s3://artifacts/team/job/",
        lora={"r": 4, "alpha": 8},
        hyperparameters={"epochs": 1, "batchSize": 8, "maxSeqLength": 96, "packing": False},
        checkpoint={"everySteps": 100, "keepLast": 2},
        resources={"gpus": 0},
    )
    assert validate_stage.run(config)["ok"]
    first = train.train(config, preemption=_PreemptAt(2))  # type: ignore[arg-type]
    assert first.state.preempted and [c.step for c in first.state.checkpoints] == [2]

    scraped: list[dict[str, Any]] = []

    class ScrapeLikeTheOperator(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not scraped:
                samples = asyncio.run(scrape_trainer("127.0.0.1", port))
                assert samples is not None, "the trainer's metrics endpoint did not answer"
                scraped.append(progress_from_samples(samples))

    metrics = TrainerMetrics()
    port = _free_port()
    assert metrics.serve(port)
    try:
        second = train.train(config, metrics=metrics, extra_callbacks=[ScrapeLikeTheOperator()])
    finally:
        metrics.stop()
    assert second.resumed_from == 2 and not second.state.preempted
    assert scraped, "no training step ran after the resume"
    assert scraped[0]["resumedFromStep"] == 2
    assert scraped[0]["step"] > 2
