"""The train stage on a tiny Llama with real transformers/peft/trl/bitsandbytes, data and outputs in S3 (moto).

Each method must beat the base model on held-out data: lora/qlora/full by a lower held-out perplexity from
the evaluate stage (which also measures the base model), dpo by a positive held-out reward margin and
accuracy above chance (both are exactly 0 for the base model, where policy and reference coincide).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.conftest import S3Helper, build_config

pytestmark = pytest.mark.usefixtures("torch_threads", "trainer_work_dir")

DATA_URI = "s3://data/train.jsonl"
OUTPUT = "s3://artifacts/team/job/"
FAST_HYPER = {
    "epochs": 3,
    "batchSize": 8,
    "maxSeqLength": 128,
    "learningRate": 2e-3,
    "packing": True,
    "gradientCheckpointing": False,
    "warmupRatio": 0.1,
}


def chat_rows(n: int = 320, seed: int = 7) -> list[dict[str, Any]]:
    from kubetune_trainer.tiny import demo_instruction_rows

    return demo_instruction_rows(n, seed=seed)


def preference_rows(n: int = 320, seed: int = 7) -> list[dict[str, Any]]:
    """Prompt + correct answer (chosen) vs a refusal (rejected): a preference that generalises."""
    rows = []
    for index, row in enumerate(chat_rows(n, seed)):
        messages = row["messages"]
        refusal = ["I do not know.", "Sorry, I cannot help with that.", "No idea."][index % 3]
        rows.append(
            {
                "prompt": messages[:-1],
                "chosen": [messages[-1]],
                "rejected": [{"role": "assistant", "content": refusal}],
            }
        )
    return rows


def put_jsonl(s3: S3Helper, uri: str, rows: list[dict[str, Any]]) -> str:
    return s3.put(uri, "".join(json.dumps(r) + "\n" for r in rows))


def make_job(method: str, base_model: str, *, output: str = OUTPUT, merge: bool = False, **spec: Any) -> Any:
    """A small CPU job: tiny LoRA rank, short packed rows, a few epochs."""
    from kubetune.api.finetunejob import Output

    hyper = {k: v for k, v in {**FAST_HYPER, **spec.pop("hyperparameters", {})}.items() if v is not None}
    dataset = spec.pop("dataset", {"uri": DATA_URI, "evalSplit": 0.1})
    if method != "full":
        spec.setdefault("lora", {"r": 8, "alpha": 16, "dropout": 0.05})
    spec.setdefault("checkpoint", {"everySteps": 20, "keepLast": 2})
    spec.setdefault("resources", {"gpus": 0})
    config = build_config(
        base_model=base_model, dataset=dataset, output=output, method=method, hyperparameters=hyper, **spec
    )
    if merge:
        spec_with_merge = config.spec.model_copy(update={"output": Output(uri=output, merge=True)})
        config = config.model_copy(update={"spec": spec_with_merge})
    return config


def validate(config: Any) -> None:
    from kubetune_trainer.stages import validate as validate_stage

    summary = validate_stage.run(config)
    assert summary["ok"], summary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------- packing


def test_packed_rows_never_attend_across_examples(tiny_model_dir: Path) -> None:
    """Logits of a packed row equal the examples run one by one; with a KV cache object they would not."""
    import torch

    from kubetune_trainer.collate import Collator, TokenizedExample, pack_examples
    from kubetune_trainer.stages.train import Device, load_base_model, load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_base_model(tiny_model_dir, method="lora", device=Device(cuda=False, bf16=False)).eval()
    texts = ["What is 3 + 4? 3 + 4 = 7.", "The capital of France is Paris.", "12 - 5 = 7."]
    examples = [TokenizedExample(ids, ids) for ids in (tokenizer(t)["input_ids"] for t in texts)]
    rows = pack_examples(examples, row_tokens=64)
    assert len(rows) == 1, "all three fit one row"
    short = {key: values[:5] for key, values in rows[0].items()}  # a second, shorter row: padded
    batch = Collator(tokenizer.pad_token_id)([rows[0], short])
    assert "attention_mask" not in batch
    members = sorted(examples, key=len, reverse=True)  # best fit decreasing: longest first
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        offset = 0
        for member in members:
            alone = model(input_ids=torch.tensor([member.input_ids])).logits[0]
            torch.testing.assert_close(logits[0, offset : offset + len(member)], alone, atol=1e-4, rtol=1e-4)
            offset += len(member)
        first = model(input_ids=torch.tensor([members[0].input_ids[:5]])).logits[0]
        torch.testing.assert_close(logits[1, :5], first, atol=1e-4, rtol=1e-4)
        # The trap this guards against: a cache object disables the packed-sequence mask.
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True).logits
    later = slice(len(members[0]), offset)
    assert (leaky[0, later] - logits[0, later]).abs().max() > 1e-2


def test_loss_mask_covers_assistant_turns_only(tiny_model_dir: Path) -> None:
    from kubetune_trainer.collate import IGNORE_INDEX, tokenize_chat
    from kubetune_trainer.stages.train import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "2 + 2 = 4."},
        {"role": "user", "content": "And the capital of Peru?"},
        {"role": "assistant", "content": "The capital of Peru is Lima."},
    ]
    with_markers = tokenize_chat(tokenizer, messages, max_length=256)
    trained = tokenizer.decode([t for t in with_markers.labels if t != IGNORE_INDEX])
    assert trained == "2 + 2 = 4.</s>The capital of Peru is Lima.</s>"
    # A template without {% generation %} markers: spans come from rendering prefixes; same mask.
    tokenizer.chat_template = tokenizer.chat_template.replace("{% generation %}", "").replace(
        "{% endgeneration %}", ""
    )
    assert tokenize_chat(tokenizer, messages, max_length=256) == with_markers
    truncated = tokenize_chat(tokenizer, messages, max_length=10)
    assert len(truncated) == 10 and truncated.trainable_tokens == 0

    from kubetune_trainer.collate import tokenize_example
    from kubetune_trainer.formats import Example

    text = tokenize_example(tokenizer, Example(kind="text", text="Plain text, every token counts."), 64)
    assert text is not None and text.labels[0] == IGNORE_INDEX and text.labels[1:] == text.input_ids[1:]
    assert text.input_ids[-1] == tokenizer.eos_token_id
    assert tokenize_example(tokenizer, Example(kind="chat", messages=()), 64) is None


def test_best_fit_packing_is_dense_and_deterministic() -> None:
    import random

    from kubetune_trainer.collate import pack_best_fit

    rng = random.Random(0)
    lengths = [rng.randint(20, 170) for _ in range(2000)]
    rows = pack_best_fit(lengths, 256)
    assert rows == pack_best_fit(lengths, 256)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 256 for row in rows)
    assert sum(lengths) / (256 * len(rows)) > 0.95
    with pytest.raises(ValueError, match="more than a packed row"):
        pack_best_fit([300], 256)


def test_warmup_is_never_zero_and_schedules_follow_the_spec(tiny_model_uri: str) -> None:
    from kubetune_trainer.stages.train import Device, training_arguments

    config = make_job("lora", tiny_model_uri, hyperparameters={"warmupRatio": 0.001, "scheduler": "linear"})
    args = training_arguments(config, Path("/tmp/unused"), Device(cuda=False, bf16=False), has_eval=True)
    assert args.get_warmup_steps(10) == 1
    assert args.lr_scheduler_type == "linear"
    steps = make_job("lora", tiny_model_uri, hyperparameters={"warmupSteps": 7, "warmupRatio": None})
    assert (
        training_arguments(steps, Path("/tmp/u"), Device(False, False), has_eval=False).get_warmup_steps(100)
        == 7
    )


def test_early_stopping_counts_evaluations_without_improvement() -> None:
    from kubetune_trainer.training.callbacks import early_stopping_due

    history = [{"loss": 3.0}, {"eval_loss": 2.0}, {"eval_loss": 1.5}, {"eval_loss": 1.6}, {"eval_loss": 1.55}]
    assert early_stopping_due(history, 2)
    assert not early_stopping_due(history, 3)
    assert not early_stopping_due(history[:-1], 2)
    assert not early_stopping_due(history, None)


# ------------------------------------------------------------------------------------------------- qlora


def test_qlora_gradients_stay_right_after_an_eval_pass(tiny_model_dir: Path) -> None:
    """bitsandbytes repacks 4-bit weights for CPU inference after an eval pass; training must not notice."""
    import torch

    from kubetune_trainer.stages.train import Device, load_base_model, lora_config, prepare_trainable_model

    config = make_job("qlora", "pvc://models/tiny")
    device = Device(cuda=False, bf16=False)
    torch.manual_seed(0)
    model = prepare_trainable_model(
        load_base_model(tiny_model_dir, method="qlora", device=device), config.spec, device
    )
    assert lora_config(config.spec).target_modules == "all-linear"
    for module in model.modules():  # non-zero B so every adapter gets a gradient
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.02)
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 2]])

    def gradients() -> dict[str, torch.Tensor]:
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    before = gradients()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)  # an evaluation pass, as the Trainer's evaluate() does
    after = gradients()
    assert before.keys() == after.keys() and before
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0, msg=name)


# ------------------------------------------------------------------------------------- methods vs base


def _tuned_beats_base(summary: dict[str, Any]) -> None:
    evaluation = summary["evaluation"]
    tuned, base = float(evaluation["metrics"]["perplexity"]), float(evaluation["baseline"]["perplexity"])
    assert tuned < 0.8 * base, evaluation


def test_lora_all_stages_on_s3_beat_the_base_and_report_status(
    s3: S3Helper, tiny_model_s3: str, termination_log: Path
) -> None:
    """validate -> train -> evaluate -> export through the CLI entry point, everything in moto's S3."""
    from kubetune.api.finetunejob import FineTuneJobStatus
    from kubetune_trainer.__main__ import main
    from tests.trainer.conftest import write_config

    put_jsonl(s3, DATA_URI, chat_rows())
    config = make_job(
        "lora",
        tiny_model_s3,
        evaluation={
            "metrics": ["perplexity", "rougeL", "bleu"],
            "maxNewTokens": 16,
            "maxSamples": 24,
            "thresholds": {"perplexity": {"max": 1000}},
        },
        merge=True,
    ).model_copy(update={"metrics_port": free_port()})
    config_path = write_config(config, termination_log.parent / "config.json")
    assert main(["all", "--config", str(config_path)]) == 0

    message = termination_log.read_text()
    assert len(message.encode()) < 4096
    summary = json.loads(message)
    assert summary["ok"] and summary["stage"] == "all", summary
    _tuned_beats_base(summary)
    status = FineTuneJobStatus.model_validate(
        {k: summary[k] for k in ("progress", "checkpoints", "evaluation", "outputs", "dataset")}
    )
    assert status.progress and status.progress.step == status.progress.total_steps
    assert status.evaluation and status.evaluation.passed
    assert status.outputs and status.outputs.adapter_uri == OUTPUT + "adapter/"
    assert {"rougeL", "bleu"} <= set(summary["evaluation"]["metrics"])
    adapter_config = json.loads(s3.get(OUTPUT + "adapter/adapter_config.json"))
    assert adapter_config["base_model_name_or_path"] == tiny_model_s3
    keys = s3.keys("artifacts", "team/job/")
    assert "team/job/merged/model.safetensors" in keys and "team/job/manifest.json" in keys
    assert all(
        len(c["uri"]) and c["uri"].startswith(OUTPUT + "checkpoints/step-") for c in summary["checkpoints"]
    )
    (termination_log.parent / "summary.json").write_text(json.dumps(summary, indent=1))


@pytest.mark.parametrize("method", ["qlora", "full"])
def test_method_beats_the_base_model_on_held_out_data(method: str, s3: S3Helper, tiny_model_s3: str) -> None:
    from kubetune_trainer.stages import evaluate, train

    put_jsonl(s3, DATA_URI, chat_rows())
    hyper = {"gradientCheckpointing": method == "qlora"}  # the checkpointed path, once
    if method == "full":
        hyper["learningRate"] = 5e-4
    config = make_job(method, tiny_model_s3, hyperparameters=hyper, evaluation={"metrics": ["perplexity"]})
    validate(config)
    summary = train.run(config)
    assert summary["ok"], summary
    assert summary["outputs"] == (
        {"mergedUri": OUTPUT + "merged/"} if method == "full" else {"adapterUri": OUTPUT + "adapter/"}
    )
    _tuned_beats_base(evaluate.run(config))


def test_dpo_raises_the_held_out_reward_margin(s3: S3Helper, tiny_model_s3: str) -> None:
    from kubetune_trainer.stages import train

    put_jsonl(s3, DATA_URI, preference_rows())
    config = make_job(
        "dpo",
        tiny_model_s3,
        dataset={"uri": DATA_URI, "format": "preference", "evalSplit": 0.1},
        hyperparameters={"epochs": 2, "learningRate": 5e-3, "packing": False},
        dpo={"beta": 0.1},
    )
    validate(config)
    outcome = train.train(config)
    held_out = outcome.trainer.evaluate()
    assert held_out["eval_rewards/margins"] > 0.5, held_out
    assert held_out["eval_rewards/accuracies"] > 0.8, held_out
    assert outcome.outputs == {"adapterUri": OUTPUT + "adapter/"}
    # The evaluate stage takes preference pairs too: perplexity and generations on the chosen answers.
    from kubetune_trainer.stages import evaluate

    summary = evaluate.run(config)
    assert summary["ok"] and {"perplexity"} <= set(summary["evaluation"]["baseline"]), summary


def scripted_eval_losses(losses: list[float]) -> Any:
    """A Trainer callback that replaces the i-th evaluation's eval_loss with `losses[i]`.

    Early stopping, the best step and checkpoint retention then follow a known sequence instead of a tiny
    model's loss path (which differs between CPUs). Trainer.log appends the history entry and then calls
    on_log with the same metrics dict that on_evaluate receives next; rewriting both here, before the train
    stage's callback reads them in on_evaluate (and in on_save, from the history), drives the real logic.
    `measured` keeps the real losses. More evaluations than scripted losses fail the run (IndexError)."""
    from transformers import TrainerCallback

    class ScriptedEvalLoss(TrainerCallback):
        def __init__(self) -> None:
            self.measured: list[float] = []

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if not logs or "eval_loss" not in logs:
                return
            entry = state.log_history[-1]
            assert entry.get("eval_loss") == logs["eval_loss"], "not the history entry of these metrics"
            self.measured.append(float(logs["eval_loss"]))
            logs["eval_loss"] = entry["eval_loss"] = losses[len(self.measured) - 1]

    return ScriptedEvalLoss()


@dataclass(frozen=True)
class EarlyStopCase:
    patience: int
    losses: list[float]  # the scripted eval loss of evaluation 1, 2, ... (one every 2 steps)
    stop_step: int
    best_step: int
    max_steps: int = 20


@pytest.mark.parametrize(
    "case",
    [
        # The first evaluation without improvement stops the run, as early as the second evaluation.
        EarlyStopCase(1, [3.0, 3.5], stop_step=4, best_step=2),
        # An improvement resets the count; an equal loss is no improvement, and the later of equal losses
        # is the best (the run state and checkpoint retention must agree on that).
        EarlyStopCase(2, [3.0, 2.0, 2.5, 1.5, 1.5, 1.7], stop_step=12, best_step=10),
        # Never two evaluations without improvement: the run goes to maxSteps; the last step is the best.
        EarlyStopCase(2, [3.0, 2.0, 2.5, 1.9], stop_step=8, best_step=8, max_steps=8),
    ],
    ids=["patience-1", "patience-2-reset-and-tie", "never-stops"],
)
def test_early_stopping_stops_and_keeps_the_best_checkpoint(
    case: EarlyStopCase, s3: S3Helper, tiny_model_s3: str
) -> None:
    """Real training (tiny model, real Trainer, real callback and checkpoint store) with a scripted
    eval-loss sequence: which step stops, which is best and which checkpoints stay are exactly known."""
    from safetensors.torch import load

    from kubetune_trainer.stages import train

    every, max_steps = 2, case.max_steps
    patience, losses, stop_step, best_step = case.patience, case.losses, case.stop_step, case.best_step
    put_jsonl(s3, DATA_URI, chat_rows(200))
    config = make_job(
        "lora",
        tiny_model_s3,
        hyperparameters={"maxSteps": max_steps, "earlyStoppingPatience": patience},
        checkpoint={"everySteps": every, "keepLast": 1},
    )
    validate(config)
    scripted = scripted_eval_losses(losses)
    outcome = train.train(config, extra_callbacks=[scripted])
    state, history = outcome.state, outcome.trainer.state.log_history
    evaluations = stop_step // every
    assert len(scripted.measured) == evaluations and all(map(math.isfinite, scripted.measured))
    assert [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e] == [
        (every * (i + 1), loss) for i, loss in enumerate(losses[:evaluations])
    ], "the scripted losses did not reach the history the train stage reads"

    assert outcome.trainer.state.global_step == stop_step
    assert state.early_stopped == (stop_step < max_steps), history
    assert (state.best_step, state.best_eval_loss) == (best_step, losses[best_step // every - 1])
    assert state.progress.eval_loss == losses[evaluations - 1]
    if state.early_stopped:
        assert outcome.message.endswith(f"early stopped, kept the best step {best_step}"), outcome.message

    # Retention (keepLast 1): the best and the last, in the run state and in the store; every save recorded.
    kept = {best_step, stop_step}
    assert {c.step for c in state.checkpoints} == kept
    manifests = [k for k in s3.keys("artifacts", "team/job/checkpoints/") if k.endswith("/_COMPLETE.json")]
    assert manifests == [f"team/job/checkpoints/step-{step:08d}/_COMPLETE.json" for step in sorted(kept)]
    for step in kept:
        manifest = json.loads(s3.get(f"{OUTPUT}checkpoints/step-{step:08d}/_COMPLETE.json"))
        assert manifest["evalLoss"] == losses[step // every - 1], manifest
    assert [c["step"] for c in state.history] == list(range(every, stop_step + 1, every))

    # The published adapter holds the best checkpoint's weights, not the last step's.
    def adapter_at(step: int) -> dict[str, Any]:
        return load(s3.get(f"{OUTPUT}checkpoints/step-{step:08d}/adapter_model.safetensors"))

    best, final = adapter_at(best_step), load(s3.get(OUTPUT + "adapter/adapter_model.safetensors"))
    assert best.keys() == final.keys()
    assert all(best[k].equal(final[k]) for k in best), "the outputs are not the best checkpoint's weights"
    if stop_step != best_step:
        last = adapter_at(stop_step)
        assert not all(last[k].equal(best[k]) for k in best), "training did not move the weights"


# -------------------------------------------------------------------------- preemption, metrics, failures


class _PreemptAt:
    """A Preemption that reports SIGTERM once the given step has ended (deterministic, no real signal)."""

    def __init__(self, step: int) -> None:
        from kubetune_trainer.stages.train import Preemption

        self.inner = Preemption()
        self.step = step
        self.calls = 0
        self.requested = self.inner.requested

    def agreed(self, world_size: int) -> bool:
        self.calls += 1
        return self.calls >= self.step


def test_sigterm_saves_a_checkpoint_then_exits_non_zero(s3: S3Helper, tiny_model_s3: str) -> None:
    from kubetune_trainer.stages import train

    put_jsonl(s3, DATA_URI, chat_rows(200))
    config = make_job("lora", tiny_model_s3, hyperparameters={"epochs": 1})
    validate(config)
    outcome = train.train(config, preemption=_PreemptAt(3))  # type: ignore[arg-type]
    assert outcome.state.preempted
    assert [c.step for c in outcome.state.checkpoints] == [3]
    assert "team/job/checkpoints/step-00000003/_COMPLETE.json" in s3.keys("artifacts", "team/job/")

    # The real handler: SIGTERM only sets the flag (the loop saves and stops at the next step end).
    handler = train.Preemption().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert handler.requested.wait(5)
    finally:
        handler.uninstall()
    summary = train.run(config.model_copy(update={"metrics_port": free_port()}))
    assert summary["resumedFromStep"] == 3 and summary["ok"]


def test_prometheus_endpoint_serves_progress_in_base_units() -> None:
    from kubetune_trainer.metrics import Progress, TrainerMetrics

    metrics = TrainerMetrics()
    port = free_port()
    assert metrics.serve(port)
    try:
        metrics.update(
            Progress(
                step=5,
                total_steps=10,
                epoch=0.5,
                train_loss=1.25,
                tokens_per_second=900.0,
                tokens_seen=4500,
                eta_seconds=12.0,
                learning_rate=1e-4,
            )
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        metrics.stop()
    for line in (
        "kubetune_trainer_step 5.0",
        "kubetune_trainer_total_steps 10.0",
        "kubetune_trainer_epoch 0.5",
        "kubetune_trainer_train_loss 1.25",
        "kubetune_trainer_tokens_seen_total 4500.0",
        "kubetune_trainer_eta_seconds 12.0",
        "kubetune_trainer_tokens_per_second 900.0",
        "kubetune_trainer_learning_rate 0.0001",
    ):
        assert line in text
    assert "kubetune_trainer_gpu_memory_bytes" in text and "kubetune_trainer_eval_loss" in text


def test_out_of_memory_is_reported_as_such() -> None:
    import torch

    from kubetune_trainer.stages.train import RunState, failure_summary

    summary = failure_summary(
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), RunState()
    )
    assert summary["reason"] == "OutOfMemory" and summary["exitCode"] == 1
    assert "batchSize" in summary["message"]
    cpu = failure_summary(RuntimeError("DefaultCPUAllocator: can't allocate memory"), RunState())
    assert cpu["reason"] == "OutOfMemory"
