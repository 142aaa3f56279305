"""Live progress as Prometheus metrics, and the stage summary the operator reads from the termination message.

Metric names come from the operator↔trainer contract (`kubetune.api.trainer_contract`): the prefix
`kubetune_trainer_`, base units in the name (seconds, bytes). They have no job labels: one trainer pod
serves one job, and the operator adds identity when it scrapes. The server runs on the global rank 0 only,
so ranks on one node never fight over the port.

The summary uses the FineTuneJobStatus field names (camelCase) so the operator copies it into status as is;
`__main__` writes it to the termination-message file. Numbers that status keeps as strings (epoch, losses,
metric values) are formatted here.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

from kubetune.api import trainer_contract as contract

log = logging.getLogger(__name__)

# __main__ compacts to 4096 bytes; keep well below so it never has to drop our fields.
SUMMARY_BUDGET_BYTES = 3500
MAX_CHECKPOINTS_IN_SUMMARY = 10


def format_number(value: float | None, digits: int = 4) -> str | None:
    """A float as status keeps it: a short decimal string (None and NaN stay None)."""
    if value is None or (isinstance(value, float) and (math.isnan(value) or math.isinf(value))):
        return None
    return f"{value:.{digits}g}"


@dataclass(frozen=True)
class RankInfo:
    """Where this process sits in a torchrun/`accelerate launch` job (all zeros when run alone)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> RankInfo:
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0


@dataclass
class Progress:
    """The latest training progress; mirrors FineTuneJobStatus.progress."""

    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    train_loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    tokens_seen: int = 0
    eta_seconds: float | None = None

    def to_status(self) -> dict[str, Any]:
        percent = int(100 * self.step / self.total_steps) if self.total_steps else None
        status = {
            "step": self.step,
            "totalSteps": self.total_steps or None,
            "percent": min(percent, 100) if percent is not None else None,
            "epoch": format_number(self.epoch, 3),
            "trainLoss": format_number(self.train_loss),
            "evalLoss": format_number(self.eval_loss),
            "tokensPerSecond": int(self.tokens_per_second) if self.tokens_per_second else None,
            "etaSeconds": int(self.eta_seconds) if self.eta_seconds is not None else None,
        }
        return {k: v for k, v in status.items() if v is not None}


class TrainerMetrics:
    """Prometheus gauges/counters of one training run, in their own registry (tests build several)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()

        def gauge(name: str, help_text: str) -> Gauge:
            return Gauge(name, help_text, registry=self.registry)

        self.step = gauge(contract.STEP, "Optimizer steps completed")
        self.total_steps = gauge(contract.TOTAL_STEPS, "Optimizer steps planned for the whole run")
        self.epoch = gauge(contract.EPOCH, "Epochs completed (fractional)")
        self.train_loss = gauge(contract.TRAIN_LOSS, "Mean training loss since the previous report")
        self.eval_loss = gauge(contract.EVAL_LOSS, "Loss on the evaluation split at the latest evaluation")
        self.learning_rate = gauge(contract.LEARNING_RATE, "Current learning rate")
        self.tokens_per_second = gauge(
            contract.TOKENS_PER_SECOND, "Non-padding training tokens per second, all ranks"
        )
        self.tokens_seen = Counter(
            contract.TOKENS_SEEN_TOTAL,
            "Non-padding training tokens processed, all ranks",
            registry=self.registry,
        )
        self.gpu_memory = gauge(contract.GPU_MEMORY_BYTES, "Peak GPU memory allocated by this process")
        self.eta = gauge(contract.ETA_SECONDS, "Estimated seconds until training completes")
        self.checkpoint_step = gauge(contract.LAST_CHECKPOINT_STEP, "Step of the newest complete checkpoint")
        self.resumed_from_step = gauge(
            contract.RESUMED_FROM_STEP,
            "Step of the checkpoint this run resumed from; 0 when it started afresh",
        )
        self._tokens_counted = 0
        self._server: Any = None

    def serve(self, port: int) -> bool:
        """Start the /metrics endpoint; a busy port is logged, not fatal (training matters more)."""
        from prometheus_client import start_http_server

        try:
            # The sandbox gives every pod its own loopback address; in a cluster the pod IP is all addresses.
            host = os.environ.get("KUBETUNE_METRICS_HOST", "0.0.0.0")
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            log.warning("metrics endpoint not started on port %d: %s", port, error)
            return False
        log.info("metrics on :%d/metrics", port)
        return True

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def update(self, progress: Progress) -> None:
        self.step.set(progress.step)
        self.total_steps.set(progress.total_steps)
        self.epoch.set(progress.epoch)
        for gauge, value in (
            (self.train_loss, progress.train_loss),
            (self.eval_loss, progress.eval_loss),
            (self.learning_rate, progress.learning_rate),
            (self.tokens_per_second, progress.tokens_per_second),
            (self.eta, progress.eta_seconds),
        ):
            if value is not None:
                gauge.set(value)
        if progress.tokens_seen > self._tokens_counted:
            self.tokens_seen.inc(progress.tokens_seen - self._tokens_counted)
            self._tokens_counted = progress.tokens_seen
        memory = gpu_peak_memory_bytes()
        if memory is not None:
            self.gpu_memory.set(memory)


def gpu_peak_memory_bytes() -> int | None:
    try:
        import torch
    except ImportError:  # pragma: no cover - the trainer image always has torch
        return None
    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.max_memory_allocated())


def fit_summary(summary: dict[str, Any], budget: int = SUMMARY_BUDGET_BYTES) -> dict[str, Any]:
    """Trim the list-valued parts of a summary until its JSON fits the budget (oldest checkpoints first)."""
    import json

    data = {k: v for k, v in summary.items() if v is not None}
    checkpoints = list(data.get("checkpoints") or [])[-MAX_CHECKPOINTS_IN_SUMMARY:]
    if checkpoints:
        data["checkpoints"] = checkpoints

    def size() -> int:
        return len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())

    while size() > budget and len(data.get("checkpoints") or []) > 1:
        data["checkpoints"] = data["checkpoints"][1:]
    while size() > budget and data.get("warnings"):
        data["warnings"] = data["warnings"][:-1]
    if size() > budget and isinstance(data.get("message"), str):
        data["message"] = data["message"][:300]
    return data
