"""The data path of SFT and DPO: the validate stage's prepared examples, tokenised with an assistant-only loss
mask and, with `packing`, bin-packed into rows whose position ids restart per example (collate.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubetune_trainer import storage
from kubetune_trainer.training.model import Device

if TYPE_CHECKING:
    from kubetune.api.finetunejob import Hyperparameters
    from kubetune.api.trainer_config import TrainerConfig

TRAINING_EVAL_MAX_EXAMPLES = 1000  # eval loss during training uses at most this many eval examples
CPU_PAD_MULTIPLE = 64
CPU_PACKED_ROW_TOKENS = 512  # attention over a packed row is quadratic on CPU: ~256-512 measured fastest


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
