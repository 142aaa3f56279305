"""Tokenising prepared examples with an assistant-only loss mask, packing them into rows, and collating.

- Chat examples: the loss covers the assistant turns only (labels are -100 on system/user turns and on the
  template's role markers), including each assistant turn's end-of-turn token so the model learns to stop.
  Templates with `{% generation %}` markers give the mask directly; for any other template the assistant
  spans are found by rendering each conversation prefix and mapping character spans to token offsets.
- Text examples: loss on every token after BOS.
- Packing: examples are bin-packed (best fit decreasing, deterministic) into rows of at most `row_tokens`.
  Each example keeps its own `position_ids` starting at 0, and no attention mask is passed: transformers then
  derives a block-diagonal causal mask from the position resets, so tokens never attend across examples.
  This only holds when the model runs without a KV cache (`use_cache=False`), which the train stage sets:
  with a cache object present transformers skips the packed-sequence detection and rows cross-attend.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from kubetune_trainer.formats import Example

IGNORE_INDEX = -100


@dataclass(frozen=True, slots=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trainable_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


# ------------------------------------------------------------------------------------------- tokenising


def _has_generation_markers(tokenizer: Any) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and "{% generation %}" in template.replace("{%-", "{%").replace(
        "-%}", "%}"
    )


def _render(tokenizer: Any, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return str(text)


def _assistant_char_spans(
    tokenizer: Any, messages: Sequence[dict[str, str]], full_text: str
) -> list[tuple[int, int]]:
    """Character spans of the assistant turns in `full_text`, found by rendering conversation prefixes.

    The span of turn i runs from the end of render(messages[:i], add_generation_prompt=True) to the end of
    render(messages[:i+1]). Templates that re-render earlier turns differently (so prefixes are not prefixes)
    fall back to locating the turn's content after the previous span.
    """
    spans: list[tuple[int, int]] = []
    search_from = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:index], add_generation_prompt=True) if index else ""
        upto = _render(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if full_text.startswith(upto) and upto.startswith(before) and len(upto) > len(before):
            # The turn ends at its end-of-turn token; a separator newline after it is not the answer.
            start, end = len(before), len(upto.rstrip())
        else:
            start = full_text.find(message["content"], search_from)
            if start < 0:
                continue
            end = start + len(message["content"])
        spans.append((start, end))
        search_from = end
    return spans


def tokenize_chat(tokenizer: Any, messages: Sequence[dict[str, str]], max_length: int) -> TokenizedExample:
    """Token ids of the rendered conversation and labels that are -100 outside the assistant turns."""
    if _has_generation_markers(tokenizer):
        encoded = tokenizer.apply_chat_template(
            list(messages), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        input_ids = list(encoded["input_ids"])
        mask = list(encoded["assistant_masks"])
    else:
        text = _render(tokenizer, messages, add_generation_prompt=False)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        input_ids = list(encoded["input_ids"])
        spans = _assistant_char_spans(tokenizer, messages, text)
        mask = [
            int(any(start < span_end and end > span_start for span_start, span_end in spans))
            for start, end in encoded["offset_mapping"]
        ]
    input_ids, mask = input_ids[:max_length], mask[:max_length]
    labels = [token if keep else IGNORE_INDEX for token, keep in zip(input_ids, mask, strict=True)]
    return TokenizedExample(input_ids, labels)


def tokenize_text(tokenizer: Any, text: str, max_length: int) -> TokenizedExample:
    """BOS + text + EOS with loss on everything after BOS (plain language-model training)."""
    ids: list[int] = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    if tokenizer.eos_token_id is not None:
        ids = [*ids, tokenizer.eos_token_id]
    ids = ids[:max_length]
    labels = list(ids)
    if tokenizer.bos_token_id is not None and labels:
        labels[0] = IGNORE_INDEX  # nothing predicts BOS
    return TokenizedExample(ids, labels)


def tokenize_example(tokenizer: Any, example: Example, max_length: int) -> TokenizedExample | None:
    """One prepared chat/text example, or None when truncation left it nothing to learn from."""
    if example.kind == "text":
        tokenized = tokenize_text(tokenizer, example.text or "", max_length)
    elif not example.messages:
        return None
    else:
        tokenized = tokenize_chat(tokenizer, [m.to_json() for m in example.messages], max_length)
    return tokenized if tokenized.trainable_tokens > 0 else None


# ---------------------------------------------------------------------------------------------- packing


def pack_best_fit(lengths: Sequence[int], row_tokens: int) -> list[list[int]]:
    """Indices grouped into rows of at most `row_tokens` tokens (best fit decreasing; deterministic).

    Longest first, each into the fullest row that still has room: near-full rows with O(n log n) lookups.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    # (remaining capacity, row number), kept sorted so bisect finds the tightest row that fits.
    free: list[tuple[int, int]] = []
    for index in order:
        size = lengths[index]
        if size > row_tokens:
            raise ValueError(f"example {index} has {size} tokens, more than a packed row's {row_tokens}")
        slot = bisect.bisect_left(free, (size, -1))
        if slot < len(free):
            remaining, row = free.pop(slot)
            rows[row].append(index)
            remaining -= size
        else:
            row, remaining = len(rows), row_tokens - size
            rows.append([index])
        if remaining > 0:
            bisect.insort(free, (remaining, row))
    return rows


def pack_examples(examples: Sequence[TokenizedExample], row_tokens: int) -> list[dict[str, list[int]]]:
    """Packed rows: concatenated input_ids/labels, and position_ids restarting at 0 for every example."""
    rows: list[dict[str, list[int]]] = []
    for members in pack_best_fit([len(e) for e in examples], row_tokens):
        input_ids: list[int] = []
        labels: list[int] = []
        position_ids: list[int] = []
        for index in members:
            example = examples[index]
            input_ids.extend(example.input_ids)
            labels.extend(example.labels)
            position_ids.extend(range(len(example)))
        rows.append({"input_ids": input_ids, "labels": labels, "position_ids": position_ids})
    return rows


def unpacked_rows(examples: Iterable[TokenizedExample]) -> list[dict[str, list[int]]]:
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]


# ------------------------------------------------------------------------------------------- collating


@dataclass
class Collator:
    """Pads a list of rows into a batch.

    Packed rows (with `position_ids`) get no attention mask: their padding is one more "example" with its own
    positions, which nothing else attends to (it comes last, and the block-diagonal mask separates it).
    Unpacked rows get the usual right padding and attention mask. `pad_to_multiple_of` helps tensor cores.
    Counts real (non-padding) tokens and token slots for packing efficiency.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    real_tokens: int = field(default=0, init=False)
    slot_tokens: int = field(default=0, init=False)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        packed = "position_ids" in features[0]
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        extra = torch.zeros((len(features), width), dtype=torch.long)  # position_ids or attention_mask
        for row, feature in enumerate(features):
            length = len(feature["input_ids"])
            input_ids[row, :length] = torch.tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :length] = torch.tensor(feature["labels"], dtype=torch.long)
            if packed:
                extra[row, :length] = torch.tensor(feature["position_ids"], dtype=torch.long)
                extra[row, length:] = torch.arange(width - length)
            else:
                extra[row, :length] = 1
            self.real_tokens += length
        self.slot_tokens += input_ids.numel()
        key = "position_ids" if packed else "attention_mask"
        return {"input_ids": input_ids, "labels": labels, key: extra}

    @property
    def efficiency(self) -> float:
        return self.real_tokens / self.slot_tokens if self.slot_tokens else 0.0
