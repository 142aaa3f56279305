"""Stage `evaluate`: perplexity, ROUGE-L and BLEU on the held-out split, for the tuned and the base model.

- perplexity = exp(total NLL / number of tokens) over the eval examples' assistant tokens (the same mask the
  loss was trained with; every token for text examples, the chosen answer for preference pairs);
- ROUGE-L = mean F-measure of `rouge_score`'s rougeL between each greedy generation and its reference answer
  (the last assistant turn), BLEU = `sacrebleu.corpus_bleu(...).score` (0-100). Both libraries are called
  directly: `evaluate.load` fetches scripts from the hub and fails offline.
- The base model is the same weights with the adapter disabled (no second copy in memory), or the base
  checkpoint for full fine-tuning.

The verdict compares each metric with `evaluation.thresholds` ({min, max}) through
`kubetune.api.trainer_contract.failed_thresholds`, the function the operator and the deployment gate use
too, so every side words a failure alike. Failing a threshold is a result, not a crash: the stage succeeds with `passed: false` and the operator decides.
metrics.json goes to `artifacts.evaluation_report`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api.trainer_contract import failed_thresholds
from kubetune_trainer import storage
from kubetune_trainer.metrics import format_number

if TYPE_CHECKING:
    from kubetune.api.trainer_config import TrainerConfig

log = logging.getLogger(__name__)

STAGE = "evaluate"
REASON_PASSED = "EvaluationPassed"
REASON_FAILED = "EvaluationFailed"
REASON_DONE = "Evaluated"  # no thresholds to judge against
EXIT_ERROR = 1
PERPLEXITY_BATCH_TOKENS = 8192  # tokens per forward pass when measuring NLL
EXAMPLES_IN_REPORT = 5


# ------------------------------------------------------------------------------------------------ metrics


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (rouge_score, no stemming), as `evaluate`'s rouge reports rougeL."""
    from rouge_score import rouge_scorer

    if not predictions:
        return float("nan")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    scores = [
        scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references, strict=True)
    ]
    return float(sum(scores) / len(scores))


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenisation, 0-100 scale), one reference per prediction."""
    import sacrebleu

    if not predictions:
        return float("nan")
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


@dataclass
class NllTotal:
    nll: float = 0.0
    tokens: int = 0

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens) if self.tokens else float("nan")


def token_nll(
    model: Any, examples: Sequence[Any], pad_token_id: int, batch_tokens: int = PERPLEXITY_BATCH_TOKENS
) -> NllTotal:
    """Summed next-token NLL over the label tokens of tokenised examples (collate.TokenizedExample)."""
    import torch
    from torch.nn import functional

    from kubetune_trainer.collate import IGNORE_INDEX, Collator, unpacked_rows

    total = NllTotal()
    collator = Collator(pad_token_id)
    device = next(model.parameters()).device
    ordered = sorted(examples, key=len)  # similar lengths together: little padding
    start = 0
    while start < len(ordered):
        end = start + 1
        while end < len(ordered) and len(ordered[end]) * (end - start + 1) <= batch_tokens:
            end += 1
        batch = collator(unpacked_rows(ordered[start:end]))
        start = end
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits.float()
        labels = batch["labels"].to(device)[:, 1:]
        shifted = logits[:, :-1, :]
        nll = functional.cross_entropy(
            shifted.reshape(-1, shifted.size(-1)),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        total.nll += float(nll)
        total.tokens += int((labels != IGNORE_INDEX).sum())
    return total


# ------------------------------------------------------------------------------------------- the samples


@dataclass
class EvalSample:
    """One eval example: what perplexity is measured on, and (if it has one) a prompt with its reference."""

    tokenized: Any  # collate.TokenizedExample, or None when nothing trainable fits in maxSeqLength
    prompt: list[dict[str, str]] | None = None
    reference: str | None = None


def build_samples(tokenizer: Any, examples: Sequence[Any], max_seq_length: int) -> list[EvalSample]:
    from kubetune_trainer.collate import tokenize_chat, tokenize_text

    samples: list[EvalSample] = []
    for example in examples:
        if example.kind == "text":
            samples.append(EvalSample(tokenize_text(tokenizer, example.text or "", max_seq_length)))
            continue
        messages = [m.to_json() for m in example.messages]
        if example.kind == "preference":
            messages = messages + [m.to_json() for m in example.chosen or ()]
        tokenized = tokenize_chat(tokenizer, messages, max_seq_length)
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        prompt = messages[:last] if last is not None else None
        reference = messages[last]["content"] if last is not None else None
        samples.append(EvalSample(tokenized if tokenized.trainable_tokens else None, prompt, reference))
    return samples


def generate_answers(
    model: Any, tokenizer: Any, prompts: Sequence[list[dict[str, str]]], max_new_tokens: int, batch_size: int
) -> list[str]:
    """Greedy completions of chat prompts, batched with left padding, in the prompts' order."""
    import torch

    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    answers = [""] * len(encoded)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, index in enumerate(chunk):
            ids = encoded[index]
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
        for row, index in enumerate(chunk):
            answers[index] = tokenizer.decode(output[row, width:], skip_special_tokens=True).strip()
    return answers


@dataclass
class ModelScores:
    metrics: dict[str, float] = field(default_factory=dict)
    generations: list[str] = field(default_factory=list)
    seconds: float = 0.0


def score_model(
    model: Any,
    tokenizer: Any,
    samples: Sequence[EvalSample],
    wanted: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
) -> ModelScores:
    started = time.monotonic()
    scores = ModelScores()
    model.eval()
    if "perplexity" in wanted:
        tokenized = [s.tokenized for s in samples if s.tokenized is not None]
        scores.metrics["perplexity"] = token_nll(model, tokenized, tokenizer.pad_token_id).perplexity
    if {"rougeL", "bleu"} & set(wanted):
        with_reference = [s for s in samples if s.prompt is not None and s.reference is not None]
        prompts = [s.prompt for s in with_reference if s.prompt is not None]
        references = [s.reference or "" for s in with_reference]
        scores.generations = generate_answers(model, tokenizer, prompts, max_new_tokens, batch_size)
        if "rougeL" in wanted:
            scores.metrics["rougeL"] = rouge_l(scores.generations, references)
        if "bleu" in wanted:
            scores.metrics["bleu"] = bleu(scores.generations, references)
    scores.seconds = time.monotonic() - started
    return scores


# -------------------------------------------------------------------------------------------- the models


def on_device(model: Any, device: Any) -> Any:
    """Move a model to the GPU when there is one (4-bit models are placed at load time already)."""
    if device.cuda and not getattr(model, "is_loaded_in_4bit", False):
        return model.to("cuda")
    return model


def load_tuned_model(config: TrainerConfig, base_dir: Path, work: Path) -> tuple[Any, Any, bool]:
    """(tuned model, tokenizer, whether the base is reachable by disabling an adapter)."""
    from kubetune_trainer.training.model import Device, load_base_model, load_tokenizer

    spec = config.spec
    device = Device.detect()
    if spec.method == "full":
        merged = storage.download_dir(config.artifacts.merged, work / "tuned")
        model = on_device(load_base_model(merged, method="full", device=device), device)
        return model, load_tokenizer(merged, spec.dataset), False
    from peft import PeftModel

    adapter = storage.download_dir(config.artifacts.adapter, work / "adapter")
    base = on_device(load_base_model(base_dir, method=spec.method, device=device), device)
    model = PeftModel.from_pretrained(base, str(adapter))
    tokenizer = load_tokenizer(
        adapter if (adapter / "tokenizer_config.json").exists() else base_dir, spec.dataset
    )
    if spec.dataset.chat_template:
        tokenizer.chat_template = spec.dataset.chat_template
    return model, tokenizer, True


# ------------------------------------------------------------------------------------------------ stage


def run(config: TrainerConfig) -> dict[str, Any]:
    import tempfile

    from kubetune_trainer.formats import iter_prepared
    from kubetune_trainer.training.model import Device, fetch_model, load_base_model

    spec = config.spec
    evaluation, hyper = spec.evaluation, spec.hyperparameters
    eval_uri = storage.join(config.artifacts.prepared_data, "eval.jsonl")
    examples = list(iter_prepared(eval_uri)) if storage.exists(eval_uri) else []
    examples = examples[: evaluation.max_samples]
    if not examples:
        message = f"no evaluation rows at {eval_uri}: nothing to evaluate"
        failed = failed_thresholds({}, evaluation.thresholds)
        return _summary(config, metrics={}, baseline=None, failed=failed, message=message, warnings=[])

    with tempfile.TemporaryDirectory(prefix="kubetune-evaluate-") as scratch:
        work = Path(scratch)
        base_dir = fetch_model(spec.base_model.uri)
        model, tokenizer, adapter_toggle = load_tuned_model(config, base_dir, work)
        samples = build_samples(tokenizer, examples, hyper.max_seq_length)
        wanted = list(evaluation.metrics)
        options = {"max_new_tokens": evaluation.max_new_tokens, "batch_size": max(hyper.batch_size, 8)}
        tuned = score_model(model, tokenizer, samples, wanted, **options)
        baseline: ModelScores | None = None
        if evaluation.compare_baseline:
            if adapter_toggle:
                with model.disable_adapter():
                    baseline = score_model(model, tokenizer, samples, wanted, **options)
            else:
                del model
                device = Device.detect()
                base = on_device(load_base_model(base_dir, method="full", device=device), device)
                baseline = score_model(base, tokenizer, samples, wanted, **options)

    failed = failed_thresholds(tuned.metrics, evaluation.thresholds)
    report = {
        "metrics": _strings(tuned.metrics),
        "baseline": _strings(baseline.metrics) if baseline else None,
        "passed": not failed,
        "failedThresholds": failed,
        "thresholds": {k: v.model_dump(exclude_none=True) for k, v in (evaluation.thresholds or {}).items()},
        "raw": {"metrics": tuned.metrics, "baseline": baseline.metrics if baseline else None},
        "samples": {
            "examples": len(examples),
            "perplexityTokens": sum(s.tokenized.trainable_tokens for s in samples if s.tokenized),
            "generations": len(tuned.generations),
            "maxNewTokens": evaluation.max_new_tokens,
        },
        "methods": {
            "perplexity": "exp(mean next-token NLL over assistant tokens)",
            "rougeL": "rouge_score RougeScorer(['rougeL'], use_stemmer=False), mean F-measure",
            "bleu": "sacrebleu.corpus_bleu, default 13a tokenisation, 0-100",
        },
        "examples": _examples(samples, tuned, baseline),
        "seconds": {
            "tuned": round(tuned.seconds, 2),
            "baseline": round(baseline.seconds, 2) if baseline else None,
        },
    }
    storage.write_text(config.artifacts.evaluation_report, json.dumps(report, indent=2) + "\n")
    parts = [f"{k} {format_number(v)}" for k, v in tuned.metrics.items()]
    if baseline:
        parts.append("baseline " + ", ".join(f"{k} {format_number(v)}" for k, v in baseline.metrics.items()))
    message = "; ".join(parts) + (f"; failed: {', '.join(failed)}" if failed else "")
    baseline_metrics = baseline.metrics if baseline else None
    return _summary(
        config, metrics=tuned.metrics, baseline=baseline_metrics, failed=failed, message=message, warnings=[]
    )


def _examples(
    samples: Sequence[EvalSample], tuned: ModelScores, baseline: ModelScores | None
) -> list[dict[str, str]]:
    """A few reference/generation pairs, so a reader of metrics.json can see what the numbers mean."""
    with_prompt = [s for s in samples if s.prompt is not None]
    out = []
    for index, sample in enumerate(with_prompt[: min(EXAMPLES_IN_REPORT, len(tuned.generations))]):
        item = {"reference": (sample.reference or "")[:300], "tuned": tuned.generations[index][:300]}
        if baseline is not None and baseline.generations:
            item["baseline"] = baseline.generations[index][:300]
        out.append(item)
    return out


def _strings(metrics: dict[str, float]) -> dict[str, str]:
    return {k: text for k, v in metrics.items() if (text := format_number(v)) is not None}


def _summary(
    config: TrainerConfig,
    *,
    metrics: dict[str, float],
    baseline: dict[str, float] | None,
    failed: list[str],
    message: str,
    warnings: list[str],
) -> dict[str, Any]:
    has_thresholds = bool(config.spec.evaluation.thresholds)
    reason = (REASON_FAILED if failed else REASON_PASSED) if has_thresholds else REASON_DONE
    evaluation: dict[str, Any] = {
        "metrics": _strings(metrics),
        "passed": not failed,
        "failedThresholds": failed,
    }
    if baseline is not None:
        evaluation["baseline"] = _strings(baseline)
    return {
        "stage": STAGE,
        "ok": True,
        "reason": reason,
        "message": message[:1500],
        "evaluation": evaluation,
        "reportUri": config.artifacts.evaluation_report,
        "warnings": warnings or None,
    }
