"""Stage `train`: LoRA, QLoRA, full fine-tuning and DPO on the validated data, resumable from checkpoints.

The loop is Hugging Face's `Trainer` (TRL's `DPOTrainer` for DPO) with our own data path: examples are
tokenised with an assistant-only loss mask and, with `packing`, bin-packed into rows whose position ids restart
per example (collate.py); with bf16 autocast this ran ~2.9x the non-padding tokens/s of a plain padded
Trainer on a 2-core CPU (bench/trainer_throughput.py). TRL's SFTTrainer was ~40% slower per token on small
models, so SFT does not use it.

What this module adds around the Trainer (one callback, `RunCallback`):
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
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_trainer import storage
from kubetune_trainer.checkpoints import CheckpointRecord, CheckpointStore
from kubetune_trainer.metrics import Progress, RankInfo, TrainerMetrics, fit_summary, format_number

if TYPE_CHECKING:
    from kubetune.api.finetunejob import Hyperparameters, TrainerSpec
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
TRAINING_EVAL_MAX_EXAMPLES = 1000  # eval loss during training uses at most this many eval examples
CPU_PAD_MULTIPLE = 64
CPU_PACKED_ROW_TOKENS = 512  # attention over a packed row is quadratic on CPU: ~256-512 measured fastest
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


# ----------------------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class Device:
    cuda: bool
    bf16: bool  # bf16 autocast is fast here (GPU with bf16, or a CPU with AVX512-BF16/AMX)

    @classmethod
    def detect(cls) -> Device:
        import torch

        if torch.cuda.is_available():
            return cls(cuda=True, bf16=bool(torch.cuda.is_bf16_supported()))
        cpu_bf16 = False
        try:
            cpu_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            cpu_bf16 = False
        return cls(cuda=False, bf16=cpu_bf16)


def work_root() -> Path:
    """Scratch space for models and checkpoints (an emptyDir in the pod); KUBETUNE_WORK_DIR overrides."""
    root = Path(os.environ.get("KUBETUNE_WORK_DIR") or Path(tempfile.gettempdir()) / "kubetune")
    root.mkdir(parents=True, exist_ok=True)
    return root


def fetch_model(uri: str, cache_root: Path | None = None) -> Path:
    """A local directory holding the model at `uri` (s3:// downloaded once per pod, pvc:// read in place)."""
    if uri.startswith("hf://"):
        from huggingface_hub import snapshot_download

        name, _, revision = uri[len("hf://") :].partition("@")
        return Path(snapshot_download(name, revision=revision or None))
    if not storage.is_s3(uri):
        return storage.local_path(uri)
    import fcntl

    root = cache_root or work_root() / "models"
    root.mkdir(parents=True, exist_ok=True)
    target = root / hashlib.sha256(uri.encode()).hexdigest()[:16]
    marker = target / ".kubetune-complete"
    # Ranks on one node share the cache: the first to take the lock downloads, the others wait and reuse.
    with (root / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            shutil.rmtree(target, ignore_errors=True)
            storage.download_dir(uri if uri.endswith("/") else uri + "/", target)
            marker.write_text(uri)
    return target


def hash_model_files(model_dir: Path) -> dict[str, str]:
    """sha256 of config.json and every weight file: the base model's identity for the manifest."""
    hashes: dict[str, str] = {}
    from kubetune_trainer.checkpoints import sha256_file

    for path in sorted(model_dir.rglob("*")):
        if path.is_file() and (path.name == "config.json" or path.name.endswith(WEIGHT_SUFFIXES)):
            hashes[path.relative_to(model_dir).as_posix()] = sha256_file(path)
    return hashes


def base_fingerprint(model_dir: Path) -> dict[str, Any]:
    """The architecture facts an adapter depends on (export's compatibility check compares them)."""
    config = json.loads((model_dir / "config.json").read_text())
    text = config.get("text_config") or config
    return {
        "architectures": config.get("architectures"),
        "modelType": config.get("model_type"),
        "hiddenSize": text.get("hidden_size"),
        "intermediateSize": text.get("intermediate_size"),
        "numHiddenLayers": text.get("num_hidden_layers"),
        "numAttentionHeads": text.get("num_attention_heads"),
        "numKeyValueHeads": text.get("num_key_value_heads"),
        "vocabSize": text.get("vocab_size"),
    }


# ------------------------------------------------------------------------------------------ model loading


def load_tokenizer(model_dir: Path, chat_template: str | None = None) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if chat_template:
        tokenizer.chat_template = chat_template
    if tokenizer.pad_token_id is None:
        # Padding is never attended to or trained on (labels -100), so any id works; EOS is conventional.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def attention_implementation(device: Device) -> str:
    if device.cuda:
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"  # varlen kernels make packed rows free of wasted attention
        except ImportError:
            pass
    return "sdpa"


def disable_cpu_4bit_inference_packing(model: Any) -> int:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference (AVX512-BF16 path).

    After any inference pass (eval, generate) bitsandbytes 0.50 converts Linear4bit weights to a CPU-only
    packed layout in place; training afterwards silently gets wrong gradients. Returns the layers changed.
    """
    from bitsandbytes.nn.modules import Linear4bit

    changed = 0
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def load_base_model(
    model_dir: Path,
    *,
    method: str,
    device: Device,
    rank: RankInfo | None = None,
    quantize_4bit: bool | None = None,
) -> Any:
    """The base model as the method trains it: 4-bit nf4 for qlora, bf16 frozen weights for LoRA on GPU,
    fp32 otherwise (full fine-tuning keeps fp32 master weights; autocast does the bf16 math)."""
    import torch
    from transformers import AutoModelForCausalLM

    rank = rank or RankInfo()
    four_bit = method == "qlora" if quantize_4bit is None else quantize_4bit
    kwargs: dict[str, Any] = {"attn_implementation": attention_implementation(device)}
    if four_bit:
        import transformers

        quantization: Any = transformers.BitsAndBytesConfig  # untyped in transformers
        compute = torch.bfloat16 if device.cuda and device.bf16 else torch.float32
        kwargs["quantization_config"] = quantization(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_quant_storage=torch.uint8,
        )
        kwargs["device_map"] = {"": rank.local_rank} if device.cuda else {"": "cpu"}
        kwargs["dtype"] = compute
    elif device.cuda and device.bf16 and method != "full":
        kwargs["dtype"] = torch.bfloat16  # frozen base weights; adapters stay fp32 (PEFT upcasts them)
    else:
        kwargs["dtype"] = torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    # Without a KV cache object transformers turns position-id resets into a block-diagonal mask; with one
    # (use_cache defaults to True, also in train mode) packed examples would attend to each other.
    model.config.use_cache = False
    if four_bit and not device.cuda:
        disable_cpu_4bit_inference_packing(model)
    return model


def lora_config(spec: TrainerSpec) -> Any:
    from peft import LoraConfig

    lora = spec.lora
    if lora is None:
        raise ValueError(f"method {spec.method} needs spec.lora")
    targets: str | list[str] = (
        "all-linear" if "all-linear" in lora.target_modules else list(lora.target_modules)
    )
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        bias="none",
    )


def prepare_trainable_model(base: Any, spec: TrainerSpec, device: Device) -> Any:
    """Wrap the base model for its method: LoRA/QLoRA adapters, or all weights trainable for full."""
    hyper = spec.hyperparameters
    if spec.method == "full":
        return base
    import peft

    if spec.method == "qlora":
        # Casts norms to fp32 and enables input grads; the Trainer enables gradient checkpointing itself.
        prepare: Any = peft.prepare_model_for_kbit_training  # untyped in peft
        base = prepare(base, use_gradient_checkpointing=False)
    model = peft.get_peft_model(base, lora_config(spec))
    if spec.method == "qlora" and not device.cuda:
        disable_cpu_4bit_inference_packing(model)
    if hyper.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


# ---------------------------------------------------------------------------------------------- data


class ListDataset:
    """A map-style dataset over a list (the Trainer needs __len__/__getitem__ and nothing else)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


def read_prepared(config: TrainerConfig) -> tuple[list[Any], list[Any]]:
    """The validate stage's train/eval examples (formats.Example)."""
    from kubetune_trainer.formats import iter_prepared

    prefix = config.artifacts.prepared_data
    train_uri, eval_uri = storage.join(prefix, "train.jsonl"), storage.join(prefix, "eval.jsonl")
    if not storage.exists(train_uri):
        raise FileNotFoundError(f"no prepared data at {train_uri}: run the validate stage first")
    train = list(iter_prepared(train_uri))
    evaluation = list(iter_prepared(eval_uri)) if storage.exists(eval_uri) else []
    return train, evaluation


def packed_row_tokens(max_seq_length: int, device: Device) -> int:
    return max_seq_length if device.cuda else min(max_seq_length, CPU_PACKED_ROW_TOKENS)


@dataclass
class SftData:
    train: ListDataset
    eval: ListDataset | None
    collator: Any
    dropped: int  # examples with no trainable tokens left after truncation
    row_tokens: int | None


def build_sft_data(
    tokenizer: Any, train: list[Any], evaluation: list[Any], hyper: Hyperparameters, device: Device
) -> SftData:
    from kubetune_trainer.collate import Collator, pack_examples, tokenize_example, unpacked_rows

    def tokenize(examples: list[Any]) -> tuple[list[Any], int]:
        out = [tokenize_example(tokenizer, e, hyper.max_seq_length) for e in examples]
        kept = [t for t in out if t is not None]
        return kept, len(out) - len(kept)

    train_tokens, dropped = tokenize(train)
    eval_tokens, _ = tokenize(evaluation[:TRAINING_EVAL_MAX_EXAMPLES])
    row_tokens = None
    if hyper.packing:
        longest = max((len(t) for t in train_tokens + eval_tokens), default=1)
        row_tokens = max(packed_row_tokens(hyper.max_seq_length, device), longest)
        train_rows, eval_rows = (
            pack_examples(train_tokens, row_tokens),
            pack_examples(eval_tokens, row_tokens),
        )
    else:
        train_rows, eval_rows = unpacked_rows(train_tokens), unpacked_rows(eval_tokens)
    # Few distinct batch shapes: CPU kernels (oneDNN bf16) are built per shape; tensor cores like multiples of 8.
    collator = Collator(tokenizer.pad_token_id, pad_to_multiple_of=8 if device.cuda else CPU_PAD_MULTIPLE)
    return SftData(
        train=ListDataset(train_rows),
        eval=ListDataset(eval_rows) if eval_rows else None,
        collator=collator,
        dropped=dropped,
        row_tokens=row_tokens,
    )


def preference_rows(examples: list[Any]) -> list[dict[str, Any]]:
    """TRL's conversational preference format: prompt messages, chosen and rejected continuations."""
    rows = []
    for example in examples:
        if example.kind != "preference":
            continue
        rows.append(
            {
                "prompt": [m.to_json() for m in example.messages],
                "chosen": [m.to_json() for m in example.chosen or ()],
                "rejected": [m.to_json() for m in example.rejected or ()],
            }
        )
    return rows


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


def _make_callback_class() -> type:
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


# ------------------------------------------------------------------------------------------- arguments


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
        "warmup_steps": warmup,
        "weight_decay": hyper.weight_decay,
        "max_grad_norm": hyper.max_grad_norm,
        "seed": hyper.seed,
        "data_seed": hyper.seed,
        "bf16": device.bf16,
        "activation_checkpointing": hyper.gradient_checkpointing,
        "activation_checkpointing_kwargs": {"use_reentrant": False},
        "eval_strategy": "steps" if has_eval else "no",
        "eval_steps": every,
        "save_strategy": "steps",
        "save_steps": every,
        "save_total_limit": 1,  # local disk; the object store keeps the real history
        "logging_steps": max(1, min(10, every)),
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


# ------------------------------------------------------------------------------------------- the stage


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
    base = load_base_model(base_dir, method=spec.method, device=device, rank=rank)
    callback = _make_callback_class()(
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
