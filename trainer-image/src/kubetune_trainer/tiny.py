"""A tiny Llama-architecture model and tokenizer built locally in seconds, for tests, demos and the sandbox.

Nothing comes from the Hugging Face hub: the tokenizer is a byte-level BPE trained on a small corpus and the
model is initialised from a seed (and, optionally, briefly pretrained on that corpus so generations look
like text). Every layer size is a multiple of 64 because bitsandbytes' 4-bit CPU kernels crash otherwise
("N must be divisible by block_n").
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

# A minimal chat template. `{% generation %}` marks the assistant's tokens so that
# `apply_chat_template(..., return_assistant_tokens_mask=True)` yields an assistant-only loss mask.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def _round_up(value: int, multiple: int = 64) -> int:
    return (value + multiple - 1) // multiple * multiple


# ------------------------------------------------------------------------------------------- demo corpus

_CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Japan", "Tokyo"), ("Canada", "Ottawa"), ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
    ("Poland", "Warsaw"), ("Greece", "Athens"), ("Austria", "Vienna"), ("Ireland", "Dublin"),
    ("Chile", "Santiago"), ("Cuba", "Havana"), ("India", "New Delhi"), ("China", "Beijing"),
]  # fmt: skip
_SYSTEM = "You are a concise assistant."


def demo_instruction_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` OpenAI-messages rows of simple, learnable facts (sums, differences, capitals).

    The answers follow fixed patterns ("3 + 4 = 7.", "The capital of France is Paris."), so a few hundred
    steps of fine-tuning measurably lower held-out loss even on a 3 M-parameter model. Deterministic in seed.
    """
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.4:
            a, b = rng.randint(0, 49), rng.randint(0, 49)
            question, answer = f"What is {a} + {b}?", f"{a} + {b} = {a + b}."
        elif kind < 0.6:
            a, b = rng.randint(10, 99), rng.randint(0, 9)
            question, answer = f"What is {a} - {b}?", f"{a} - {b} = {a - b}."
        else:
            country, city = rng.choice(_CAPITALS)
            question, answer = f"What is the capital of {country}?", f"The capital of {country} is {city}."
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        if rng.random() < 0.3:
            messages.insert(0, {"role": "system", "content": _SYSTEM})
        rows.append({"messages": messages})
    return rows


def demo_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Plain text lines from the demo rows, for training the tokenizer and the optional pretraining."""
    lines: list[str] = []
    for row in demo_instruction_rows(n, seed):
        lines.extend(m["content"] for m in row["messages"])
    lines.append("The quick brown fox jumps over the lazy dog. 0123456789 + - = ? .")
    return lines


# ----------------------------------------------------------------------------------------------- tokenizer


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 768) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus`, with bos/eos/pad/unk, role tokens and a chat template.

    Byte-level means every input is encodable (no unknown characters); training takes well under a second.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = [PAD, BOS, EOS, UNK, *ROLE_TOKENS]
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=4096,
        padding_side="right",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


# --------------------------------------------------------------------------------------------------- model


def tiny_llama_config(
    vocab_size: int, *, hidden_size: int = 256, layers: int = 4, heads: int = 4, max_positions: int = 2048
) -> Any:
    from transformers import LlamaConfig

    if hidden_size % 64 or hidden_size % heads:
        raise ValueError("hidden_size must be a multiple of 64 and of heads (4-bit CPU kernels need it)")
    return LlamaConfig(
        vocab_size=_round_up(vocab_size),
        hidden_size=hidden_size,
        intermediate_size=_round_up(hidden_size * 2),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=None,  # filled from the tokenizer below
        eos_token_id=None,
        pad_token_id=None,
    )


def build_tiny_model(
    out_dir: str | Path,
    *,
    corpus: Iterable[str] | None = None,
    hidden_size: int = 256,
    layers: int = 4,
    heads: int = 4,
    seed: int = 0,
    pretrain_steps: int = 0,
) -> Path:
    """Save a tiny `LlamaForCausalLM` (fp32) and its tokenizer to out_dir; returns out_dir.

    `pretrain_steps` > 0 runs that many AdamW steps of next-token prediction on the corpus (batches of 16
    lines), enough for greedy generations to look like the corpus. Deterministic given seed and corpus.
    """
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = list(corpus) if corpus is not None else demo_corpus(seed=seed)
    tokenizer = build_tokenizer(lines)

    config = tiny_llama_config(len(tokenizer), hidden_size=hidden_size, layers=layers, heads=heads)
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model: Any = LlamaForCausalLM(config)

    if pretrain_steps > 0:
        _pretrain(model, tokenizer, lines, pretrain_steps, seed)
        # Calling the tokenizer with truncation/padding stores those settings in tokenizer.json: undo it.
        tokenizer.backend_tokenizer.no_truncation()
        tokenizer.backend_tokenizer.no_padding()

    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _pretrain(model: Any, tokenizer: Any, lines: list[str], steps: int, seed: int) -> None:
    import torch

    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    # One thread: on matrices this small, more threads mostly synchronise, and on a shared CPU they
    # oversubscribe it (measured: 1 thread 3 s CPU vs 2 threads 15 s CPU for 30 steps under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.train()
        for _ in range(steps):
            batch = [f"{tokenizer.bos_token}{rng.choice(lines)}{tokenizer.eos_token}" for _ in range(16)]
            encoded = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=128)
            labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
            loss = model(**encoded, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        model.eval()
    finally:
        torch.set_num_threads(threads)
