"""Training throughput of our train stage vs plain HF Trainer + PEFT with padded batches, on this machine.

Both arms train the same tiny Llama (hidden 256, 4 layers) with the same LoRA and hyperparameters on the same
multi-turn chat data (assistant-only loss), in one process, interleaved for `--rounds` rounds (CPU timings
swing 15-30% between back-to-back runs, so only interleaved arms and medians of per-round ratios compare).

- ours: `kubetune_trainer.stages.train.train(config)`, the real stage (packing, bf16 autocast where the CPU
  has AVX512-BF16/AMX, our collator, checkpoint at the end);
- baseline: `transformers.Trainer` + `peft.get_peft_model`, examples padded per batch with an attention mask,
  default precision (fp32), the same tokenisation and labels.

Throughput = non-padding tokens / second between the end of step 2 and the last step (the first steps pay
for one-off kernel setup), counted by the Trainer itself (`include_num_input_tokens_seen="non_padding"`).
packing_efficiency = non-padding tokens / token slots in our packed training batches (padding to a
multiple of 64 included). The last output line is JSON.

    python bench/trainer_throughput.py [--rounds 5] [--examples 600]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WARMUP_STEPS = 2
HYPERPARAMETERS = {
    "epochs": 1,
    "batchSize": 8,
    "maxSeqLength": 256,
    "learningRate": 2e-4,
    "warmupRatio": 0.03,
    "scheduler": "cosine",
    "packing": True,
    "gradientCheckpointing": False,
}
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "targetModules": ["all-linear"]}


def conversations(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Multi-turn chats of 1-8 exchanges (about 20-200 tokens): the length spread real chat data has."""
    from kubetune_trainer.tiny import demo_instruction_rows

    rng = random.Random(seed)
    turns = demo_instruction_rows(count * 4, seed=seed)
    rows, index = [], 0
    while len(rows) < count and index < len(turns):
        exchanges = rng.choice([1, 1, 2, 3, 4, 6, 8])
        messages: list[dict[str, str]] = []
        for row in turns[index : index + exchanges]:
            messages.extend(m for m in row["messages"] if m["role"] != "system")
        index += exchanges
        rows.append({"messages": messages})
    return rows


class StepWindow:
    """Non-padding tokens and seconds between the end of step WARMUP_STEPS and the last step."""

    def __new__(cls) -> Any:
        from transformers import TrainerCallback

        class _Window(TrainerCallback):
            def __init__(self) -> None:
                self.start: tuple[float, int] | None = None
                self.end: tuple[float, int] | None = None
                self.efficiency = 0.0

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                mark = (time.perf_counter(), int(state.num_input_tokens_seen))
                # Training batches only (the collator also serves evaluation batches later).
                collator = getattr(kwargs.get("train_dataloader"), "collate_fn", None)
                if hasattr(collator, "efficiency"):
                    self.efficiency = collator.efficiency
                if state.global_step == WARMUP_STEPS:
                    self.start = mark
                elif state.global_step > WARMUP_STEPS:
                    self.end = mark

            @property
            def tokens_per_second(self) -> float:
                assert self.start and self.end, "too few steps for a measurement window"
                return (self.end[1] - self.start[1]) / (self.end[0] - self.start[0])

        return _Window()


def run_ours(config: Any) -> tuple[float, float, int]:
    from kubetune_trainer.stages import train

    window = StepWindow()
    outcome = train.train(config, extra_callbacks=[window])
    return window.tokens_per_second, window.efficiency, outcome.trainer.state.global_step


def run_baseline(model_dir: Path, examples: list[Any], tokenizer: Any, work: Path) -> tuple[float, int]:
    import peft
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, set_seed

    from kubetune_trainer.collate import Collator, unpacked_rows

    set_seed(42)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = peft.get_peft_model(
        model,
        peft.LoraConfig(
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=0.05,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    args = TrainingArguments(
        output_dir=str(work / "baseline"),
        per_device_train_batch_size=HYPERPARAMETERS["batchSize"],
        num_train_epochs=HYPERPARAMETERS["epochs"],
        learning_rate=float(HYPERPARAMETERS["learningRate"]),
        warmup_steps=float(HYPERPARAMETERS["warmupRatio"]),
        lr_scheduler_type="cosine",
        seed=42,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        logging_steps=10,
        remove_unused_columns=False,
        dataloader_pin_memory=False,
        include_num_input_tokens_seen="non_padding",
        use_cpu=True,
    )
    window = StepWindow()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=unpacked_rows(examples),  # type: ignore[arg-type]
        data_collator=Collator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[window],
    )
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # quiet; changes nothing in training
    trainer.train()
    return window.tokens_per_second, trainer.state.global_step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--examples", type=int, default=600)
    parser.add_argument("--warmup-rounds", type=int, default=1, help="run both arms first, unmeasured")
    options = parser.parse_args()

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from kubetune.api.common import ResourceIdentity
    from kubetune.api.finetunejob import FineTuneJobSpec
    from kubetune.api.trainer_config import TrainerConfig
    from kubetune_trainer.collate import tokenize_chat
    from kubetune_trainer.stages import validate
    from kubetune_trainer.stages.train import Device, load_tokenizer
    from kubetune_trainer.tiny import build_tiny_model

    root = Path(tempfile.mkdtemp(prefix="kubetune-bench-"))
    os.environ["KUBETUNE_PVC_ROOT"] = str(root)
    os.environ["KUBETUNE_WORK_DIR"] = str(root / "work")
    model_dir = build_tiny_model(root / "models" / "tiny", seed=0, pretrain_steps=30)
    rows = conversations(options.examples)
    (root / "data").mkdir()
    (root / "data" / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def config(round_index: int) -> TrainerConfig:
        spec = {
            "baseModel": {"uri": "pvc://models/tiny"},
            "dataset": {"uri": "pvc://data/chats.jsonl", "evalSplit": 0.02},
            "method": "lora",
            "lora": LORA,
            "hyperparameters": HYPERPARAMETERS,
            "checkpoint": {"everySteps": 100_000, "keepLast": 1},
            "resources": {"gpus": 0},
            "output": {"uri": f"pvc://out/round-{round_index}/"},
        }
        parsed = FineTuneJobSpec.model_validate(spec).trainer_spec()
        return TrainerConfig(
            job=ResourceIdentity(name=f"bench-{round_index}", namespace="bench"), spec=parsed
        )

    first = config(0)
    assert validate.run(first)["ok"]
    tokenizer = load_tokenizer(model_dir)
    from kubetune_trainer.formats import iter_prepared

    prepared = list(iter_prepared(str(root / "out" / "round-0" / "validation" / "data" / "train.jsonl")))
    examples = [tokenize_chat(tokenizer, [m.to_json() for m in e.messages], 256) for e in prepared]
    mean_length = sum(len(e) for e in examples) / len(examples)

    device = Device.detect()
    ours_tps: list[float] = []
    base_tps: list[float] = []
    ratios: list[float] = []
    efficiency = 0.0
    steps: dict[str, int] = {}
    for round_index in range(-options.warmup_rounds, options.rounds):
        cfg = config(round_index + options.warmup_rounds)
        if round_index + options.warmup_rounds:
            validate.run(cfg)
        order = ("ours", "baseline") if round_index % 2 == 0 else ("baseline", "ours")
        result: dict[str, float] = {}
        for arm in order:
            if arm == "ours":
                result[arm], efficiency, steps["ours"] = run_ours(cfg)
            else:
                result[arm], steps["baseline"] = run_baseline(model_dir, examples, tokenizer, root / "work")
        if round_index < 0:
            print(
                f"warmup round: ours {result['ours']:.0f} tok/s, baseline {result['baseline']:.0f} tok/s",
                flush=True,
            )
            continue
        ours_tps.append(result["ours"])
        base_tps.append(result["baseline"])
        ratios.append(result["ours"] / result["baseline"])
        print(
            f"round {round_index + 1}/{options.rounds}: ours {result['ours']:.0f} tok/s, "
            f"baseline {result['baseline']:.0f} tok/s, ratio {ratios[-1]:.2f}",
            flush=True,
        )
    summary = {
        "median_ratio": round(statistics.median(ratios), 3),
        "packing_efficiency": round(efficiency, 4),
        "ratios": [round(r, 3) for r in ratios],
        "ours_tokens_per_second": [round(t) for t in ours_tps],
        "baseline_tokens_per_second": [round(t) for t in base_tps],
        "optimizer_steps_per_epoch": steps,
        "examples": len(examples),
        "mean_example_tokens": round(mean_length, 1),
        "ours": {
            "packed_row_tokens": HYPERPARAMETERS["maxSeqLength"],
            "rows_per_step": HYPERPARAMETERS["batchSize"],
            "bf16_autocast": device.bf16,
        },
        "baseline": {
            "examples_per_step": HYPERPARAMETERS["batchSize"],
            "precision": "fp32",
            "padding": "per batch",
        },
        "warmup_rounds": options.warmup_rounds,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
