"""Stage `train`: LoRA, QLoRA, full fine-tuning and DPO on the validated data, resumable from checkpoints.

The loop is Hugging Face's `Trainer` (TRL's `DPOTrainer` for DPO) with our own data path: examples are
tokenised with an assistant-only loss mask and, with `packing`, bin-packed into rows whose position ids restart
per example (collate.py); with bf16 autocast this ran ~2.9x the non-padding tokens/s of a plain padded
Trainer on a 2-core CPU (bench/trainer_throughput.py). TRL's SFTTrainer was ~40% slower per token on small
models, so SFT does not use it.

What this stage adds around the Trainer (one callback, `RunCallback`; the pieces live in
kubetune_trainer.training: model, data, callbacks, arguments):
- checkpoints every `checkpoint.everySteps` and on SIGTERM, uploaded with a manifest written last
  (checkpoints.py); a restarted pod resumes from the newest complete one (weights, optimizer, scheduler,
  RNG, data position: the Trainer's own resume restores all of these from the downloaded directory);
- early stopping on eval loss, derived from the Trainer's log history so it survives a resume unchanged;
- progress as Prometheus metrics (metrics.py) and the stage summary for the termination message.

Multi-GPU (torchrun/accelerate): the Trainer handles DDP; here, only the global rank 0 uploads, serves
metrics and writes outputs; the SIGTERM flag is all-reduced so every rank stops at the same step; each node's
local rank 0 downloads the resume checkpoint before the others read it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_trainer import storage
from kubetune_trainer.checkpoints import CheckpointStore
from kubetune_trainer.metrics import RankInfo, TrainerMetrics, fit_summary, format_number
from kubetune_trainer.support import check_supported
from kubetune_trainer.training.arguments import training_arguments
from kubetune_trainer.training.callbacks import Preemption, RunState, make_callback_class
from kubetune_trainer.training.data import (
    TRAINING_EVAL_MAX_EXAMPLES,
    SftData,
    build_sft_data,
    preference_rows,
    read_prepared,
)
from kubetune_trainer.training.model import (
    Device,
    base_fingerprint,
    fetch_model,
    hash_model_files,
    load_base_model,
    load_tokenizer,
    lora_config,
    prepare_trainable_model,
    work_root,
)

if TYPE_CHECKING:
    from kubetune.api.trainer_config import TrainerConfig

log = logging.getLogger(__name__)

STAGE = "train"
EXIT_ERROR = 1
EXIT_PREEMPTED = 143  # 128 + SIGTERM: retried by the Job, like any non-2 failure
REASON_COMPLETE = "TrainingComplete"
REASON_PREEMPTED = "Preempted"
REASON_OOM = "OutOfMemory"
REASON_STORAGE = "StorageError"
REASON_NO_DATA = "InvalidDataset"

BASE_INFO_NAME = "kubetune_base.json"  # written beside adapters: which base they were trained on


@dataclass
class TrainOutcome:
    state: RunState
    resumed_from: int | None
    outputs: dict[str, Any]
    message: str
    warnings: list[str]
    trainer: Any = None  # for tests and the `all` stage; None when training never started


def run(config: TrainerConfig) -> dict[str, Any]:
    """Train, checkpointing and resuming; returns the termination summary (exitCode 143 when preempted)."""
    rank = RankInfo.from_env()
    if not rank.is_main:
        logging.getLogger("kubetune_trainer").setLevel(logging.WARNING)
    metrics = TrainerMetrics()
    if rank.is_main:
        metrics.serve(config.metrics_port)
    preemption = Preemption().install()
    run_state = RunState()
    try:
        outcome = train(config, rank=rank, metrics=metrics, preemption=preemption, run_state=run_state)
    except Exception as error:
        return failure_summary(error, run_state)
    finally:
        preemption.uninstall()
        metrics.stop()
    state = outcome.state
    summary: dict[str, Any] = {
        "stage": STAGE,
        "ok": not state.preempted,
        "reason": REASON_PREEMPTED if state.preempted else REASON_COMPLETE,
        "message": outcome.message,
        "progress": state.progress.to_status(),
        "checkpoints": [c.to_status() for c in state.checkpoints],
        "resumedFromStep": outcome.resumed_from,
        "outputs": outcome.outputs or None,
        "warnings": outcome.warnings or None,
    }
    if state.preempted:
        summary["exitCode"] = EXIT_PREEMPTED
    return fit_summary(summary)


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def failure_summary(error: BaseException, run_state: RunState) -> dict[str, Any]:
    if is_out_of_memory(error):
        reason = REASON_OOM
        message = (
            f"out of memory at step {run_state.progress.step}: lower hyperparameters.batchSize or "
            "maxSeqLength, enable gradientCheckpointing, use method qlora, or request a larger GPU "
            f"({str(error)[:300]})"
        )
    elif isinstance(error, storage.StorageError):
        reason, message = REASON_STORAGE, str(error)[:1000]
    elif isinstance(error, FileNotFoundError | ValueError):
        reason, message = REASON_NO_DATA, str(error)[:1000]
    else:
        reason, message = type(error).__name__, str(error)[:1000]
    log.exception("train failed: %s", message)
    summary = {
        "stage": STAGE,
        "ok": False,
        "reason": reason,
        "message": message,
        "progress": run_state.progress.to_status(),
        "checkpoints": [c.to_status() for c in run_state.checkpoints] or None,
        "exitCode": EXIT_ERROR,
    }
    return fit_summary(summary)


def _job_identity(config: TrainerConfig) -> str:
    return f"{config.job.namespace}/{config.job.name}/{config.job.uid}"


def train(
    config: TrainerConfig,
    *,
    rank: RankInfo | None = None,
    metrics: TrainerMetrics | None = None,
    preemption: Preemption | None = None,
    run_state: RunState | None = None,
    argument_overrides: dict[str, Any] | None = None,
    extra_callbacks: list[Any] | None = None,
) -> TrainOutcome:
    """The training run itself (no signal handlers, no metrics server): tests and the bench call this."""
    from transformers import set_seed

    spec = config.spec
    check_supported(spec)  # validate refused it already; a config run by hand must not train without it
    hyper = spec.hyperparameters
    rank = rank or RankInfo.from_env()
    metrics = metrics or TrainerMetrics()
    preemption = preemption or Preemption()
    run_state = run_state or RunState()
    device = Device.detect()
    warnings: list[str] = []

    base_dir = fetch_model(spec.base_model.uri)
    # Hash the base model's files in the background while training runs (the manifest records them).
    base_hashes: dict[str, str] = {}
    hasher = threading.Thread(target=lambda: base_hashes.update(hash_model_files(base_dir)), daemon=True)
    if rank.is_main:
        hasher.start()

    tokenizer = load_tokenizer(base_dir, spec.dataset.chat_template)
    train_examples, eval_examples = read_prepared(config)
    is_dpo = spec.method == "dpo"
    sft: SftData | None = None
    if is_dpo:
        train_rows, eval_rows = preference_rows(train_examples), preference_rows(eval_examples)
        if not train_rows:
            raise ValueError("method dpo found no preference examples in the prepared data")
        has_eval = bool(eval_rows)
    else:
        sft = build_sft_data(tokenizer, train_examples, eval_examples, hyper, device)
        if len(sft.train) == 0:
            raise ValueError("no training example has trainable (assistant) tokens within maxSeqLength")
        if sft.dropped:
            warnings.append(
                f"{sft.dropped} examples had no assistant tokens within maxSeqLength and were skipped"
            )
        has_eval = sft.eval is not None

    # Creating the arguments sets up torch.distributed under torchrun; node-local coordination follows.
    output_dir = work_root() / f"train-{hashlib.sha256(_job_identity(config).encode()).hexdigest()[:12]}"
    args = training_arguments(
        config, output_dir, device, has_eval=has_eval, dpo=is_dpo, overrides=argument_overrides
    )
    store = CheckpointStore(config.artifacts.checkpoints, writer=_job_identity(config))
    keep_last = spec.checkpoint.keep_last
    latest = store.latest()
    resume_dir = output_dir / f"checkpoint-{latest.step}" if latest else None
    with args.main_process_first(local=True, desc="prepare the checkpoint directory"):
        if rank.is_local_main:
            # The object store is the truth: never trust what an earlier container left on local disk.
            shutil.rmtree(output_dir, ignore_errors=True)
            output_dir.mkdir(parents=True)
            if latest is not None and resume_dir is not None:
                store.download(latest, resume_dir)
    if latest is not None:
        run_state.history = store.read_history()
        run_state.checkpoints = store.complete()
        log.info("resuming from checkpoint step %d (%s)", latest.step, latest.uri)
    resumed_from = latest.step if latest else None
    if resumed_from is not None:
        metrics.resumed_from_step.set(resumed_from)  # the operator scrapes it into status.resumedFromStep

    set_seed(hyper.seed)  # model init (LoRA matrices) must not depend on what ran before
    base = load_base_model(
        base_dir, method=spec.method, device=device, rank=rank, attention=hyper.attention_implementation
    )
    callback = make_callback_class()(
        store=store,
        keep_last=keep_last,
        metrics=metrics,
        preemption=preemption,
        rank=rank,
        patience=hyper.early_stopping_patience if has_eval else None,
        state=run_state,
        progress_interval=float(config.progress_interval_seconds),
    )
    trainer: Any
    if is_dpo:
        from datasets import Dataset
        from trl.trainer.dpo_trainer import DPOTrainer

        trainer = DPOTrainer(
            model=base,
            args=args,
            train_dataset=Dataset.from_list(train_rows),
            eval_dataset=Dataset.from_list(eval_rows[:TRAINING_EVAL_MAX_EXAMPLES]) if eval_rows else None,
            processing_class=tokenizer,
            peft_config=lora_config(spec),
            callbacks=[callback, *(extra_callbacks or [])],
        )
    else:
        from transformers import Trainer

        assert sft is not None
        trainer = Trainer(
            model=prepare_trainable_model(base, spec, device),
            args=args,
            train_dataset=sft.train,
            eval_dataset=sft.eval,
            data_collator=sft.collator,
            processing_class=tokenizer,
            callbacks=[callback, *(extra_callbacks or [])],
        )

    from transformers import PrinterCallback, ProgressCallback

    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)  # our callback logs progress; these print raw dicts to stdout
    if preemption.requested.is_set():
        run_state.preempted = True
        return TrainOutcome(run_state, resumed_from, {}, "SIGTERM before training started", warnings, trainer)

    trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir else None)
    if run_state.preempted:
        message = f"preempted: checkpoint at step {run_state.progress.step} saved; a restart resumes from it"
        return TrainOutcome(run_state, resumed_from, {}, message, warnings, trainer)

    if has_eval and run_state.progress.eval_loss is None:
        trainer.evaluate()
    best = run_state.best_step
    if run_state.early_stopped and best is not None and best != trainer.state.global_step:
        _restore_best(trainer, store, best, output_dir)

    # Every rank takes part in save_model (sharded setups gather weights); only rank 0 writes and uploads.
    final_dir = output_dir / "final"
    trainer.save_model(str(final_dir))
    outputs: dict[str, Any] = {}
    if rank.is_main:
        hasher.join()
        outputs = publish_final(
            final_dir, tokenizer=tokenizer, config=config, base_dir=base_dir, base_hashes=base_hashes
        )
    trainer.accelerator.wait_for_everyone()
    progress = run_state.progress
    message = (
        f"trained {progress.step} steps ({progress.epoch:.2f} epochs)"
        + (f", eval loss {format_number(progress.eval_loss)}" if progress.eval_loss is not None else "")
        + (f"; early stopped, kept the best step {best}" if run_state.early_stopped else "")
    )
    return TrainOutcome(run_state, resumed_from, outputs, message, warnings, trainer)


def _restore_best(trainer: Any, store: CheckpointStore, step: int, output_dir: Path) -> None:
    """After early stopping, load the best checkpoint's weights so the outputs are the best model."""
    record = next((r for r in store.complete() if r.step == step), None)
    if record is None:
        log.warning("best checkpoint step %d is gone; keeping the last weights", step)
        return
    local = output_dir / f"best-{step}"
    with trainer.args.main_process_first(local=True, desc="download the best checkpoint"):
        if not local.exists():
            store.download(record, local)
    trainer._load_from_checkpoint(str(local))  # the Trainer's own loader: adapters or full weights
    log.info("restored the best weights from step %d", step)


def publish_final(
    local: Path,
    *,
    tokenizer: Any,
    config: TrainerConfig,
    base_dir: Path,
    base_hashes: dict[str, str],
) -> dict[str, Any]:
    """Complete the saved adapter (or full model) with tokenizer and base identity, and upload it."""
    spec = config.spec
    tokenizer.save_pretrained(str(local))
    base_info = {"uri": spec.base_model.uri, "fingerprint": base_fingerprint(base_dir), "files": base_hashes}
    (local / BASE_INFO_NAME).write_text(json.dumps(base_info, indent=1))
    adapter_config = local / "adapter_config.json"
    if adapter_config.exists():
        # Record the base by its URI, not the pod-local path it happened to be read from.
        data = json.loads(adapter_config.read_text())
        data["base_model_name_or_path"] = spec.base_model.uri
        if isinstance(data.get("target_modules"), list):
            data["target_modules"] = sorted(data["target_modules"])  # PEFT writes a set: stable order
        adapter_config.write_text(json.dumps(data, indent=2, sort_keys=True))
    (local / "README.md").unlink(missing_ok=True)  # PEFT's model card names the local path
    (local / "training_args.bin").unlink(missing_ok=True)  # a pickle: no consumer should have to load it
    target = config.artifacts.adapter if spec.method != "full" else config.artifacts.merged
    storage.upload_dir(local, target)
    key = "adapterUri" if spec.method != "full" else "mergedUri"
    return {key: target}
