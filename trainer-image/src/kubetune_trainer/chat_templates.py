"""Which chat template a job trains with, resolved once the same way by every stage (validate counts tokens
with it, train masks the loss with it, evaluate prompts with it, export saves it).

- `spec.dataset.chatTemplate`: the user's Jinja text, as given.
- `spec.dataset.chatTemplateName`: TRL's training variant of a known template (`trl.chat_template_utils`,
  public `NAME_training_chat_template`), which marks assistant turns with `{% generation %}` so the tokenizer
  itself returns the assistant mask. The special tokens it spells are added to the tokenizer when missing
  (the embeddings are resized by the train stage) and its end-of-turn token becomes a stop id.
- neither: the tokenizer's own template; none at all is an error for chat data (validate fails before a GPU).
"""

# ruff: noqa: RUF001  (DeepSeek spells its tokens with fullwidth bars, on purpose)
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubetune.api.finetunejob import Dataset

# name -> (special tokens its text spells, the token that ends an assistant turn). Checked against TRL's
# template text by tests/trainer/test_chat_templates.py.
NAMED_TEMPLATE_TOKENS: dict[str, tuple[tuple[str, ...], str]] = {
    "llama3": (("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "<|eot_id|>"),
    "qwen2_5": (("<|im_start|>", "<|im_end|>"), "<|im_end|>"),
    "qwen3": (("<|im_start|>", "<|im_end|>", "<think>", "</think>"), "<|im_end|>"),
    "phi3": (("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"), "<|end|>"),
    "gemma": (("<start_of_turn>", "<end_of_turn>"), "<end_of_turn>"),
    "gemma3": (("<start_of_turn>", "<end_of_turn>"), "<end_of_turn>"),
    "deepseekv3": (
        (
            "<｜User｜>",
            "<｜Assistant｜>",
            "<｜end▁of▁sentence｜>",
            "<think>",
            "</think>",
            "<｜tool▁calls▁begin｜>",
            "<｜tool▁calls▁end｜>",
            "<｜tool▁call▁begin｜>",
            "<｜tool▁call▁end｜>",
            "<｜tool▁outputs▁begin｜>",
            "<｜tool▁outputs▁end｜>",
            "<｜tool▁output▁begin｜>",
            "<｜tool▁output▁end｜>",
            "<｜tool▁sep｜>",
        ),
        "<｜end▁of▁sentence｜>",
    ),
    "cohere": (
        (
            "<|START_OF_TURN_TOKEN|>",
            "<|END_OF_TURN_TOKEN|>",
            "<|USER_TOKEN|>",
            "<|CHATBOT_TOKEN|>",
            "<|SYSTEM_TOKEN|>",
        ),
        "<|END_OF_TURN_TOKEN|>",
    ),
    "cohere2": (
        (
            "<|START_OF_TURN_TOKEN|>",
            "<|END_OF_TURN_TOKEN|>",
            "<|USER_TOKEN|>",
            "<|CHATBOT_TOKEN|>",
            "<|SYSTEM_TOKEN|>",
            "<|START_RESPONSE|>",
            "<|END_RESPONSE|>",
        ),
        "<|END_OF_TURN_TOKEN|>",
    ),
}


@dataclass(frozen=True)
class ChatTemplate:
    text: str
    source: str  # "spec.dataset.chatTemplate", "spec.dataset.chatTemplateName: NAME" or "tokenizer"
    special_tokens: tuple[str, ...] = ()
    end_of_turn: str | None = None  # a stop id for generation, beside the model's EOS


def named_template(name: str) -> ChatTemplate:
    import trl.chat_template_utils as templates

    if name not in NAMED_TEMPLATE_TOKENS:
        raise ValueError(
            f"spec.dataset.chatTemplateName {name!r} is not one of {sorted(NAMED_TEMPLATE_TOKENS)}"
        )
    text = getattr(templates, f"{name}_training_chat_template", None)
    if not isinstance(text, str):
        raise ValueError(
            f"spec.dataset.chatTemplateName {name!r}: this TRL has no {name}_training_chat_template"
        )
    tokens, end = NAMED_TEMPLATE_TOKENS[name]
    return ChatTemplate(text, f"spec.dataset.chatTemplateName: {name}", tokens, end)


def resolve(dataset: Dataset, tokenizer_template: str | None) -> ChatTemplate | None:
    """The template this job uses; None when neither the spec nor the tokenizer has one."""
    if dataset.chat_template and dataset.chat_template_name:
        # The CRD's CEL refuses this; a config written by hand must not pick one silently.
        raise ValueError("set at most one of spec.dataset.chatTemplate and spec.dataset.chatTemplateName")
    if dataset.chat_template:
        return ChatTemplate(dataset.chat_template, "spec.dataset.chatTemplate")
    if dataset.chat_template_name:
        return named_template(dataset.chat_template_name)
    if tokenizer_template:
        return ChatTemplate(tokenizer_template, "tokenizer")
    return None


def apply_to_tokenizer(tokenizer: Any, template: ChatTemplate | None) -> list[str]:
    """Set the template and add its missing special tokens; returns the tokens added (resize when any)."""
    if template is None:
        return []
    tokenizer.chat_template = template.text
    vocabulary = tokenizer.get_vocab()
    missing = [token for token in template.special_tokens if token not in vocabulary]
    if missing:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": missing}, replace_extra_special_tokens=False
        )
    return missing


def stop_token_ids(tokenizer: Any, template: ChatTemplate | None) -> list[int]:
    """The template's end-of-turn token id, when it has one the tokenizer knows."""
    if template is None or template.end_of_turn is None:
        return []
    token_id = tokenizer.convert_tokens_to_ids(template.end_of_turn)
    return [int(token_id)] if isinstance(token_id, int) and token_id != tokenizer.unk_token_id else []
