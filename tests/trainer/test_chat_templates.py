"""Named chat templates (TRL's training variants): their special tokens, the assistant mask they give the
tokenizer, their stop id, and how a spec picks one."""

# ruff: noqa: RUF001, RUF003  (DeepSeek spells its tokens with fullwidth bars)
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pydantic
import pytest

from kubetune.api.finetunejob import Dataset
from kubetune_trainer.chat_templates import (
    NAMED_TEMPLATE_TOKENS,
    apply_to_tokenizer,
    named_template,
    resolve,
    stop_token_ids,
)

NAMES = sorted(NAMED_TEMPLATE_TOKENS)
ANSWERS = ("2 + 3 = 5.", "4 + 4 = 8.")
QUESTIONS = ("What is 2 + 3?", "And 4 + 4?")
CONVERSATION = [
    {"role": "user", "content": QUESTIONS[0]},
    {"role": "assistant", "content": ANSWERS[0]},
    {"role": "user", "content": QUESTIONS[1]},
    {"role": "assistant", "content": ANSWERS[1]},
]
# Spellings that can only be special tokens: <|NAME|> and DeepSeek's <｜NAME｜>.
SPECIAL_SPELLING = re.compile(r"<\|[A-Za-z_]+\|>|<｜[^｜]+｜>")


def dataset(**fields: Any) -> Dataset:
    return Dataset.model_validate({"uri": "pvc://data/train.jsonl", "evalSplit": 0.1, **fields})


def tiny_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


@pytest.mark.parametrize("name", NAMES)
def test_trl_template_spells_every_listed_token_and_no_unlisted_one(name: str) -> None:
    import trl.chat_template_utils as templates

    text = getattr(templates, f"{name}_training_chat_template")
    tokens, end_of_turn = NAMED_TEMPLATE_TOKENS[name]
    assert end_of_turn in tokens
    assert [token for token in tokens if token not in text] == []
    assert set(SPECIAL_SPELLING.findall(text)) <= set(tokens)
    assert "{% generation %}" in text or "{%- generation %}" in text or "{%- generation -%}" in text


@pytest.mark.parametrize("name", NAMES)
def test_applying_adds_only_the_missing_tokens_once_each_a_single_id(tiny_model_dir: Path, name: str) -> None:
    tokenizer = tiny_tokenizer(tiny_model_dir)
    before = dict(tokenizer.get_vocab())
    template = named_template(name)

    added = apply_to_tokenizer(tokenizer, template)

    assert added == [token for token in template.special_tokens if token not in before]
    assert len(tokenizer) == len(before) + len(added)
    assert tokenizer.chat_template == template.text
    for token in template.special_tokens:
        assert tokenizer.encode(token, add_special_tokens=False) == [tokenizer.convert_tokens_to_ids(token)]
    assert sorted(tokenizer.convert_tokens_to_ids(added)) == list(range(len(before), len(tokenizer)))
    assert apply_to_tokenizer(tokenizer, template) == []  # a reloaded tokenizer gains nothing twice


def _spans(ids: list[int], mask: list[int]) -> list[list[int]]:
    spans: list[list[int]] = []
    current: list[int] = []
    for token_id, marked in zip(ids, mask, strict=True):
        if marked:
            current.append(token_id)
        elif current:
            spans.append(current)
            current = []
    return [*spans, current] if current else spans


@pytest.mark.parametrize("name", NAMES)
def test_assistant_mask_marks_exactly_the_assistant_turns_and_their_end_of_turn(
    tiny_model_dir: Path, name: str
) -> None:
    tokenizer = tiny_tokenizer(tiny_model_dir)
    template = named_template(name)
    apply_to_tokenizer(tokenizer, template)

    rendered = tokenizer.apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = list(rendered["input_ids"]), list(rendered["assistant_masks"])
    spans = _spans(ids, mask)

    end_id = tokenizer.convert_tokens_to_ids(template.end_of_turn)
    markup = (*template.special_tokens, tokenizer.eos_token)
    assert len(spans) == len(ANSWERS)
    for span, answer in zip(spans, ANSWERS, strict=True):
        text = tokenizer.decode(span)
        assert answer in text
        rest = text.replace(answer, "", 1)
        for token in markup:
            rest = rest.replace(token, "")
        assert rest.strip() == "", f"{name} masks more than the answer: {text!r}"
        # The model must learn to stop: the turn's last trained token (bar whitespace and EOS) ends the turn.
        tail = [t for t in span if tokenizer.decode([t]).strip() and t != tokenizer.eos_token_id]
        assert tail[-1] == end_id
    unmasked = tokenizer.decode([t for t, marked in zip(ids, mask, strict=True) if not marked])
    assert all(question in unmasked for question in QUESTIONS)
    assert not any(answer in unmasked for answer in ANSWERS)


@pytest.mark.parametrize("name", NAMES)
def test_stop_ids_are_the_end_of_turn_token(tiny_model_dir: Path, name: str) -> None:
    tokenizer = tiny_tokenizer(tiny_model_dir)
    template = named_template(name)
    assert stop_token_ids(tokenizer, template) == []  # not in the vocabulary yet: no id to stop on
    apply_to_tokenizer(tokenizer, template)
    assert stop_token_ids(tokenizer, template) == [tokenizer.convert_tokens_to_ids(template.end_of_turn)]


def test_resolve_prefers_the_spec_then_the_tokenizer() -> None:
    named = resolve(dataset(chatTemplateName="qwen2_5"), "{{ tokenizer }}")
    assert named is not None and named.source == "spec.dataset.chatTemplateName: qwen2_5"
    given = resolve(dataset(chatTemplate="{{ mine }}"), "{{ tokenizer }}")
    assert given is not None and (given.text, given.source) == ("{{ mine }}", "spec.dataset.chatTemplate")
    own = resolve(dataset(), "{{ tokenizer }}")
    assert own is not None and (own.text, own.source, own.end_of_turn) == (
        "{{ tokenizer }}",
        "tokenizer",
        None,
    )
    assert resolve(dataset(), None) is None
    assert stop_token_ids(object(), own) == []


def test_both_template_fields_fail_naming_them() -> None:
    with pytest.raises(ValueError, match=r"spec\.dataset\.chatTemplate and spec\.dataset\.chatTemplateName"):
        resolve(dataset(chatTemplate="{{ x }}", chatTemplateName="llama3"), None)


def test_an_unknown_name_fails_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"spec\.dataset\.chatTemplateName 'chatml2' is not one of"):
        named_template("chatml2")
    with pytest.raises(pydantic.ValidationError, match=r"chat_template_name|chatTemplateName"):
        dataset(chatTemplateName="chatml2")
