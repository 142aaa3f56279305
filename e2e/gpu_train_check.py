"""LoRA and QLoRA through the real train stage on a ~1B random-init Llama, on a CUDA GPU.

Prints, per method: non-padding tokens/s, MFU (model FLOPs per token from kubetune_trainer.estimate_flops:
4·N + 6·N_adapter + attention for LoRA), peak GPU memory, and the validate stage's memory estimate for the
same job with their ratio. Asserts only that training runs and the loss falls; speed and memory are reported.

    .venv/bin/pytest e2e/gpu_train_check.py -m gpu -s        # skipped, with the reason, without CUDA
    .venv/bin/python e2e/gpu_train_check.py [--steps 40]      # the same, as a script (JSON per method)
    .venv/bin/python e2e/gpu_train_check.py --smoke           # tiny model on CPU: checks this script itself
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

pytestmark = pytest.mark.gpu

# TinyLlama-1.1B's shape: ~1.1 B parameters, grouped-query attention, 32k vocabulary.
LLAMA_1B = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "layers": 22,
    "heads": 32,
    "kv_heads": 4,
    "vocab": 32000,
}
TINY = {"hidden_size": 256, "intermediate_size": 512, "layers": 4, "heads": 4, "kv_heads": 4, "vocab": 768}
MEASURE_FROM_STEP = 5


def build_random_llama(out_dir: Path, shape: dict[str, int], *, cuda: bool) -> Path:
    """A random-init Llama of the given shape saved in bf16, with the tiny BPE tokenizer (ids < 768)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kubetune_trainer.tiny import build_tokenizer, demo_corpus

    tokenizer = build_tokenizer(demo_corpus())
    config = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if cuda else torch.float32)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    del model
    return out_dir


def chat_rows(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Multi-turn chats of 1-8 exchanges from the demo facts."""
    from kubetune_trainer.tiny import demo_instruction_rows

    rng = random.Random(seed)
    turns = demo_instruction_rows(count * 5, seed=seed)
    rows, index = [], 0
    while len(rows) < count and index < len(turns):
        exchanges = rng.choice([1, 2, 3, 4, 6, 8])
        messages = [
            m for row in turns[index : index + exchanges] for m in row["messages"] if m["role"] != "system"
        ]
        index += exchanges
        rows.append({"messages": messages})
    return rows


def make_config(method: str, *, steps: int, seq: int, batch: int) -> Any:
    from kubetune.api.common import ResourceIdentity
    from kubetune.api.finetunejob import FineTuneJobSpec
    from kubetune.api.trainer_config import TrainerConfig

    spec = FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "pvc://models/llama"},
            "dataset": {"uri": "pvc://data/chats.jsonl", "evalSplit": 0.02},
            "method": method,
            **(
                {}
                if method == "full"
                else {"lora": {"r": 16, "alpha": 32, "dropout": 0.05, "targetModules": ["all-linear"]}}
            ),
            "hyperparameters": {
                "maxSteps": steps,
                "batchSize": batch,
                "maxSeqLength": seq,
                "packing": True,
                "gradientCheckpointing": True,
                "learningRate": 2e-4,
            },
            "checkpoint": {"everySteps": 100_000, "keepLast": 1},
            "resources": {"gpus": 1},
            "output": {"uri": f"pvc://out/{method}/"},
        }
    )
    return TrainerConfig(
        job=ResourceIdentity(name=f"gpu-check-{method}", namespace="e2e"), spec=spec.trainer_spec()
    )


def measure(method: str, model_dir: Path, *, steps: int, seq: int, batch: int) -> dict[str, Any]:
    import torch
    from transformers import TrainerCallback

    from kubetune_trainer import estimate_flops
    from kubetune_trainer.estimate import estimate_memory
    from kubetune_trainer.stages import train, validate

    class Window(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.marks: dict[int, tuple[float, int]] = {}
            self.losses: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.marks[state.global_step] = (time.perf_counter(), int(state.num_input_tokens_seen))

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    config = make_config(method, steps=steps, seq=seq, batch=batch)
    assert validate.run(config)["ok"]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    window = Window()
    outcome = train.train(config, extra_callbacks=[window])
    peak = int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None

    start, end = window.marks[MEASURE_FROM_STEP], window.marks[max(window.marks)]
    tokens_per_second = (end[1] - start[1]) / (end[0] - start[0])
    model_config = json.loads((model_dir / "config.json").read_text())
    adapter_params = sum(p.numel() for p in outcome.trainer.model.parameters() if p.requires_grad)
    collator = outcome.trainer.data_collator
    rows = outcome.trainer.train_dataset.rows
    # Attention FLOPs use each example's own length: packed examples never attend to each other.
    mean_context = sum(len(r["input_ids"]) for r in rows) / max(
        1, sum(r["position_ids"].count(0) for r in rows)
    )
    per_token = estimate_flops.flops_per_token(
        model_config, method=method, adapter_params=adapter_params, context=mean_context
    )
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak_flops = estimate_flops.peak_flops(device_name)
    estimate = estimate_memory(
        model_config,
        method=method,
        batch_size=batch,
        seq_length=seq,
        gradient_checkpointing=True,
        lora_r=16,
        lora_dropout=0.05,
        target_modules=["all-linear"],
        gpus=1,
        gpu_product=device_name,
    )
    return {
        "method": method,
        "device": device_name,
        "params": estimate_flops.matmul_params(model_config),
        "adapter_params": adapter_params,
        "tokens_per_second": round(tokens_per_second),
        "flops_per_token": per_token,
        "mfu": round(value, 4)
        if (value := estimate_flops.mfu(tokens_per_second, per_token, peak_flops))
        else None,
        "peak_memory_bytes": peak,
        "estimated_memory_bytes": estimate.gpu_memory_bytes,
        "peak_over_estimate": round(peak / estimate.gpu_memory_bytes, 3) if peak else None,
        "first_loss": window.losses[0] if window.losses else None,
        "last_loss": window.losses[-1] if window.losses else None,
        "packing_efficiency": round(collator.efficiency, 4),
        "mean_example_tokens": round(mean_context, 1),
        "steps": outcome.trainer.state.global_step,
    }


def run_check(*, smoke: bool, steps: int) -> list[dict[str, Any]]:
    import torch

    cuda = torch.cuda.is_available()
    root = Path(tempfile.mkdtemp(prefix="kubetune-gpu-check-"))
    os.environ["KUBETUNE_PVC_ROOT"] = str(root)
    os.environ["KUBETUNE_WORK_DIR"] = str(root / "work")
    model_dir = build_random_llama(root / "models" / "llama", TINY if smoke else LLAMA_1B, cuda=cuda)
    (root / "data").mkdir()
    rows = chat_rows(400 if smoke else 4000)
    (root / "data" / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    seq, batch = (128, 4) if smoke else (1024, 8)
    results = []
    for method in ("lora", "qlora"):
        result = measure(method, model_dir, steps=steps, seq=seq, batch=batch)
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def test_lora_and_qlora_train_a_1b_llama_on_the_gpu() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)")
    for result in run_check(smoke=False, steps=40):
        assert result["steps"] == 40
        assert result["last_loss"] < result["first_loss"], result
        assert result["tokens_per_second"] > 0 and result["peak_memory_bytes"] > 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke", action="store_true", help="tiny model on CPU (checks the script, not a GPU)"
    )
    parser.add_argument("--steps", type=int, default=40)
    options = parser.parse_args()
    import torch

    if not options.smoke and not torch.cuda.is_available():
        print("no CUDA GPU here; use --smoke to exercise the script on CPU", file=sys.stderr)
        return 2
    run_check(smoke=options.smoke, steps=options.steps if not options.smoke else min(options.steps, 12))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
