"""What runs inside Hugging Face's Trainer loop: SIGTERM preemption (all ranks stop at the same step), the
run's state, early stopping on eval loss from the log history (so it survives a resume), and `RunCallback`:
progress metrics, checkpoints uploaded with their manifest written last, the loss curve."""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune_trainer import storage
from kubetune_trainer.checkpoints import CheckpointRecord, CheckpointStore
from kubetune_trainer.metrics import Progress, RankInfo, TrainerMetrics

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- preemption


class Preemption:
    """SIGTERM sets a flag; the training loop checkpoints at the next step end and stops."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._previous: Any = None

    def install(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def uninstall(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM: checkpointing at the end of this step, then exiting")
        self.requested.set()

    def agreed(self, world_size: int) -> bool:
        """True on every rank once any rank got SIGTERM (so all ranks save and stop at the same step)."""
        flag = self.requested.is_set()
        if world_size <= 1:
            return flag
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return flag
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        tensor = torch.tensor([1 if flag else 0], device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())


# ------------------------------------------------------------------------------------------- the callback


@dataclass
class RunState:
    """What the callback learned during the run, for the summary."""

    progress: Progress = field(default_factory=Progress)
    checkpoints: list[CheckpointRecord] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    preempted: bool = False
    early_stopped: bool = False
    best_eval_loss: float | None = None
    best_step: int | None = None


def _finite(value: Any) -> float:
    """A loss for comparisons: NaN (a diverged evaluation) counts as the worst possible."""
    number = float(value)
    return math.inf if math.isnan(number) else number


def early_stopping_due(log_history: list[dict[str, Any]], patience: int | None) -> bool:
    """True when the last `patience` evaluations did not improve on the best eval loss before them."""
    if not patience:
        return False
    losses = [_finite(entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    if len(losses) <= patience:
        return False
    best_before = min(losses[:-patience])
    return min(losses[-patience:]) >= best_before


def best_evaluation(log_history: list[dict[str, Any]]) -> tuple[int, float] | None:
    """(step, eval loss) of the lowest eval loss so far; from the log history, so it survives a resume."""
    scored = [
        (_finite(e["eval_loss"]), int(e["step"])) for e in log_history if "eval_loss" in e and "step" in e
    ]
    if not scored:
        return None
    loss, step = min(scored, key=lambda pair: (pair[0], -pair[1]))
    return step, loss


def make_callback_class() -> type:
    """RunCallback, defined on first use so importing this module does not import transformers."""
    from transformers import TrainerCallback

    class RunCallback(TrainerCallback):
        def __init__(
            self,
            *,
            store: CheckpointStore,
            keep_last: int,
            metrics: TrainerMetrics,
            preemption: Preemption,
            rank: RankInfo,
            patience: int | None,
            state: RunState,
            progress_interval: float,
        ) -> None:
            self.store = store
            self.keep_last = keep_last
            self.metrics = metrics
            self.preemption = preemption
            self.rank = rank
            self.patience = patience
            self.run = state
            self.progress_interval = progress_interval
            self._last_report = 0.0
            self._rate_window: tuple[float, int] | None = None
            self._session_start: tuple[float, int] = (time.monotonic(), 0)

        # -- progress
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.run.progress.total_steps = state.max_steps
            self.run.progress.step = state.global_step
            self._session_start = (time.monotonic(), state.global_step)
            self._rate_window = (time.monotonic(), state.num_input_tokens_seen)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            progress = self.run.progress
            progress.step = state.global_step
            progress.epoch = float(state.epoch or 0.0)
            progress.tokens_seen = int(state.num_input_tokens_seen)
            now = time.monotonic()
            if self._rate_window is not None and now - self._rate_window[0] >= 1.0:
                seconds = now - self._rate_window[0]
                progress.tokens_per_second = (progress.tokens_seen - self._rate_window[1]) / seconds
                self._rate_window = (now, progress.tokens_seen)
            started, first_step = self._session_start
            done = state.global_step - first_step
            if done > 0:
                progress.eta_seconds = (state.max_steps - state.global_step) * (now - started) / done
            if self.rank.is_main:
                self.metrics.update(progress)
                if now - self._last_report >= self.progress_interval:
                    self._last_report = now
                    log.info("progress %s", json.dumps(progress.to_status()))
            if self.preemption.agreed(self.rank.world_size):
                self.run.preempted = True
                control.should_save = True
                control.should_training_stop = True

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            logs = logs or {}
            if "loss" in logs:
                self.run.progress.train_loss = float(logs["loss"])
            if "learning_rate" in logs:
                self.run.progress.learning_rate = float(logs["learning_rate"])
            if "eval_loss" in logs:
                self.run.progress.eval_loss = float(logs["eval_loss"])

        def on_evaluate(
            self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any
        ) -> None:
            loss = (metrics or {}).get("eval_loss")
            if loss is not None:
                self.run.progress.eval_loss = float(loss)
            best = best_evaluation(state.log_history)
            if best is not None:
                self.run.best_step, self.run.best_eval_loss = best
            if self.rank.is_main:
                self.metrics.update(self.run.progress)
            if early_stopping_due(state.log_history, self.patience) and not control.should_training_stop:
                log.info("early stopping: no eval-loss improvement in %s evaluations", self.patience)
                self.run.early_stopped = True
                control.should_training_stop = True

        # -- checkpoints
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not state.is_world_process_zero:
                return
            local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            eval_loss = next(
                (
                    float(entry["eval_loss"])
                    for entry in reversed(state.log_history)
                    if "eval_loss" in entry and entry.get("step") == state.global_step
                ),
                None,
            )
            record = self.store.save(local, state.global_step, eval_loss)
            self.run.history.append(record.to_status())
            self.run.checkpoints = self.store.retain(self.keep_last)
            self.store.write_history(self.run.history)
            self.metrics.checkpoint_step.set(state.global_step)
            self._write_log_history(state)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                self._write_log_history(state)

        def _write_log_history(self, state: Any) -> None:
            """The loss curve (`kubetune plot` reads it), beside the checkpoints; small, rewritten whole."""
            storage.write_text(self.store.prefix + "log_history.json", json.dumps(state.log_history))

    return RunCallback
