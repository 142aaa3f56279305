"""Evaluation metrics: our ROUGE-L/BLEU are the reference libraries' numbers, perplexity is exp(mean NLL)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("torch_threads")

PREDICTIONS = ["The capital of France is Paris.", "3 + 4 = 8.", "", "Die Hauptstadt ist Berlin, glaube ich."]
REFERENCES = ["The capital of France is Paris.", "3 + 4 = 7.", "Lima.", "The capital of Germany is Berlin."]


def test_rouge_l_and_bleu_equal_the_reference_libraries() -> None:
    import sacrebleu
    from rouge_score import rouge_scorer

    from kubetune_trainer.stages.evaluate import bleu, rouge_l

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    expected_rouge = (
        sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(PREDICTIONS, REFERENCES, strict=True)) / 4
    )
    assert rouge_l(PREDICTIONS, REFERENCES) == pytest.approx(expected_rouge, abs=1e-12)
    assert bleu(PREDICTIONS, REFERENCES) == pytest.approx(
        sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score, abs=1e-12
    )
    assert rouge_l(["a b c"], ["a b c"]) == 1.0 and bleu(["a b c d"], ["a b c d"]) == pytest.approx(100.0)
    assert math.isnan(rouge_l([], []))


def test_perplexity_is_exp_of_the_mean_assistant_token_nll(tiny_model_dir: Path) -> None:
    import torch

    from kubetune_trainer.collate import IGNORE_INDEX, tokenize_chat
    from kubetune_trainer.stages.evaluate import token_nll
    from kubetune_trainer.stages.train import Device, load_base_model, load_tokenizer
    from kubetune_trainer.tiny import demo_instruction_rows

    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_base_model(tiny_model_dir, method="lora", device=Device(cuda=False, bf16=False)).eval()
    examples = [tokenize_chat(tokenizer, row["messages"], 128) for row in demo_instruction_rows(12, seed=5)]
    total = token_nll(model, examples, tokenizer.pad_token_id, batch_tokens=100)  # several padded batches

    nll, count = 0.0, 0
    with torch.no_grad():
        for example in examples:  # by hand, one unpadded example at a time
            logits = model(input_ids=torch.tensor([example.input_ids])).logits[0]
            log_probs = torch.log_softmax(logits.double(), dim=-1)
            for position in range(1, len(example)):
                if example.labels[position] != IGNORE_INDEX:
                    nll -= float(log_probs[position - 1, example.labels[position]])
                    count += 1
    assert total.tokens == count == sum(e.trainable_tokens for e in examples)
    assert total.perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_thresholds_give_a_readable_verdict() -> None:
    from kubetune.api.finetunejob import Threshold
    from kubetune.api.trainer_contract import failed_thresholds as check_thresholds

    thresholds = {
        "perplexity": Threshold(max=8.0),
        "rougeL": Threshold(min=0.35, max=1),
        "bleu": Threshold(min=10),
    }
    assert check_thresholds({"perplexity": 3.2, "rougeL": 0.5, "bleu": 22.5}, thresholds) == []  # type: ignore[arg-type]
    failed = check_thresholds({"perplexity": 9.123, "rougeL": 0.3}, thresholds)  # type: ignore[arg-type]
    assert failed == ["bleu was not measured", "perplexity 9.123 > max 8", "rougeL 0.3 < min 0.35"]
    assert check_thresholds({"perplexity": 1.0}, None) == []


def test_batched_greedy_generation_equals_one_prompt_at_a_time(tiny_model_dir: Path) -> None:
    from kubetune_trainer.stages.evaluate import generate_answers
    from kubetune_trainer.stages.train import Device, load_base_model, load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_base_model(tiny_model_dir, method="lora", device=Device(cuda=False, bf16=False)).eval()
    prompts = [
        [{"role": "user", "content": "What is 3 + 4?"}],
        [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Capital of Peru?"},
        ],
        [{"role": "user", "content": "What is the capital of France?"}],
    ]
    # A briefly pretrained model often ends at once (EOS first), which would make every answer "" and the
    # comparison vacuous: forbid EOS for the first 12 tokens so that there are tokens to compare.
    model.generation_config.min_new_tokens = 12
    batched = generate_answers(model, tokenizer, prompts, max_new_tokens=12, batch_size=3)
    alone = [generate_answers(model, tokenizer, [p], max_new_tokens=12, batch_size=1)[0] for p in prompts]
    assert batched == alone
    assert all(isinstance(a, str) for a in batched) and any(batched), batched
