"""Readers and normalisation: every format, every file type, and the row-level errors (no tokenizer here)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from kubetune_trainer.formats import (
    MAX_ROW_BYTES,
    DatasetFile,
    DatasetFileError,
    Example,
    Message,
    Normaliser,
    RowError,
    detect_format,
    detect_row_format,
)

U, A, S = "user", "assistant", "system"


def chat(*turns: tuple[str, str]) -> tuple[Message, ...]:
    return tuple(Message(role, content) for role, content in turns)


CASES: list[tuple[str, dict[str, Any], Example]] = [
    (
        "openai",
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"}]},
        Example("chat", chat((S, "Be brief."), (U, "Hi"), (A, "Hello"))),
    ),
    (
        "sharegpt",
        {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"},
                           {"from": "user", "value": "3+3?"}, {"from": "chatgpt", "value": "6"}]},
        Example("chat", chat((U, "2+2?"), (A, "4"), (U, "3+3?"), (A, "6"))),
    ),
    (
        "alpaca",
        {"instruction": "Translate", "input": "bonjour", "output": "hello", "system": "You translate."},
        Example("chat", chat((S, "You translate."), (U, "Translate\n\nbonjour"), (A, "hello"))),
    ),
    (
        "alpaca",
        {"instruction": "Say hi", "input": "", "output": "hi"},
        Example("chat", chat((U, "Say hi"), (A, "hi"))),
    ),
    (
        "prompt-completion",
        {"prompt": "Capital of France?", "completion": "Paris."},
        Example("chat", chat((U, "Capital of France?"), (A, "Paris."))),
    ),
    (
        "prompt-completion",
        {"prompt": [{"role": "user", "content": "Q"}], "completion": [{"role": "assistant", "content": "A"}]},
        Example("chat", chat((U, "Q"), (A, "A"))),
    ),
    ("text", {"text": "Once upon a time."}, Example("text", text="Once upon a time.")),
    (
        "preference",
        {"prompt": "Best pet?", "chosen": "A cat.", "rejected": "A rock."},
        Example("preference", chat((U, "Best pet?")), chat((A, "A cat.")), chat((A, "A rock."))),
    ),
    (
        "preference",  # implicit prompt: chosen/rejected are whole conversations sharing it
        {"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "good"}],
         "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "bad"}]},
        Example("preference", chat((U, "Q")), chat((A, "good")), chat((A, "bad"))),
    ),
    (
        "preference",  # the prompt repeated at the start of chosen/rejected is stripped
        {"prompt": [{"role": "user", "content": "Q"}],
         "chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "good"}],
         "rejected": [{"role": "assistant", "content": "bad"}]},
        Example("preference", chat((U, "Q")), chat((A, "good")), chat((A, "bad"))),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "row", "expected"), CASES)
def test_each_format_normalises_to_one_example_type(fmt: str, row: dict[str, Any], expected: Example) -> None:
    assert Normaliser(fmt).normalise(row) == expected
    assert detect_row_format(row) == fmt
    assert Example.from_json(json.loads(json.dumps(expected.to_json()))) == expected


def test_column_map_renames_standard_fields() -> None:
    mapping = {"prompt": "question", "completion": "answer", "system": "persona"}
    row = {"question": "Why?", "answer": "Because.", "persona": "Be terse."}
    assert detect_row_format(row, mapping) == "prompt-completion"
    assert Normaliser("prompt-completion", mapping).normalise(row).messages == chat(
        (S, "Be terse."), (U, "Why?"), (A, "Because.")
    )
    turns = {"messages": "dialog", "role": "speaker", "content": "text"}
    row2 = {"dialog": [{"speaker": "user", "text": "a"}, {"speaker": "assistant", "text": "b"}]}
    assert Normaliser("openai", turns).normalise(row2).messages == chat((U, "a"), (A, "b"))


BAD_ROWS: list[tuple[str, Any, str]] = [
    ("openai", {"messages": [{"role": "user", "content": "hi"}]}, "must end with an assistant turn"),
    ("openai", {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                             {"role": "assistant", "content": "c"}]}, "two user turns in a row (turns 1 and 2)"),
    ("openai", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                             {"role": "assistant", "content": "c"}]}, "two assistant turns in a row"),
    ("openai", {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"},
                             {"role": "assistant", "content": "c"}]}, "system turn 2 is only allowed first"),
    ("openai", {"messages": [{"role": "assistant", "content": "a"}]}, "must start with a user turn"),
    ("openai", {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]},
     "empty user turn 1"),
    ("openai", {"messages": [{"role": "user", "content": ["parts"]}, {"role": "assistant", "content": "x"}]},
     "turn 1 content must be a string, got list"),
    ("openai", {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]},
     "content must be a string, got number"),
    ("openai", {"messages": [{"role": "tool", "content": "a"}]}, "unsupported role 'tool'"),
    ("openai", {"messages": []}, "has no turns"),
    ("openai", {"messages": "hello"}, "must be a list of turns, got string"),
    ("openai", {"text": "wrong format"}, "missing field 'messages' (openai format)"),
    ("openai", [1, 2], "expected a JSON object, got list"),
    ("sharegpt", {"conversations": [{"from": "human"}]}, "turn 1 has no 'value'"),
    ("alpaca", {"instruction": "x"}, "missing field 'output'"),
    ("alpaca", {"instruction": 3, "output": "y"}, "field 'instruction' must be a string, got number"),
    ("prompt-completion", {"prompt": "p", "completion": "   "}, "field 'completion' is empty"),
    ("text", {"text": ""}, "missing field 'text'"),
    ("text", {"text": {"a": 1}}, "must be a string, got object"),
    ("preference", {"prompt": "p", "chosen": "same", "rejected": "same "}, "chosen and rejected are identical"),
    ("preference", {"prompt": "p", "chosen": "c"}, "missing field 'rejected'"),
    ("preference", {"chosen": "c", "rejected": "r"}, "missing field 'prompt'"),
    ("preference", {"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                    "chosen": "c", "rejected": "r"}, "prompt must end with a user turn"),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "row", "reason"), BAD_ROWS)
def test_invalid_rows_give_short_reasons(fmt: str, row: Any, reason: str) -> None:
    with pytest.raises(RowError) as info:
        Normaliser(fmt).normalise(row)
    assert reason in str(info.value)


def test_digest_is_whitespace_normalised_and_role_aware() -> None:
    a = Example("chat", chat((U, "What  is\n2+2?"), (A, "4")))
    b = Example("chat", chat((U, " What is 2+2? "), (A, "4\n")))
    swapped = Example("chat", chat((A, "What is 2+2?"), (U, "4")))
    assert a.digest() == b.digest()
    assert a.digest() != swapped.digest()
    assert a.digest() != Example("chat", chat((U, "what is 2+2?"), (A, "4"))).digest()


def test_detect_format_by_majority_and_none_when_unknown() -> None:
    rows = [{"text": "a"}, {"prompt": "p", "completion": "c"}, {"prompt": "q", "completion": "d"}, {"x": 1}]
    assert detect_format(rows) == "prompt-completion"
    assert detect_format([{"x": 1}, "junk"]) is None
    sharegpt_in_messages = {"messages": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    assert detect_row_format(sharegpt_in_messages) == "sharegpt"
    assert Normaliser("sharegpt").normalise(sharegpt_in_messages).messages == chat((U, "hi"), (A, "yo"))


# ------------------------------------------------------------------------------------------- file types

ROWS = [
    {"prompt": "one", "completion": "1"},
    {"prompt": "two", "completion": "2"},
    {"prompt": "three", "completion": "3"},
]


def _write(path: Path, kind: str, rows: list[dict[str, Any]]) -> Path:
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "json":
        path.write_text(json.dumps(rows, indent=2))
    elif kind == "csv":
        with path.open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=sorted({k for r in rows for k in r}))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet"])
def test_every_file_type_reads_the_same_examples(kind: str, tmp_path: Path) -> None:
    path = _write(tmp_path / f"data.{kind}", kind, ROWS)
    with DatasetFile(str(path)) as data:
        rows = list(data)
        assert data.format == "prompt-completion"
        assert len(data.sha256) == 64
    assert [r.error for r in rows] == [None] * 3
    assert [r.example.messages[-1].content for r in rows if r.example] == ["1", "2", "3"]
    assert [r.number for r in rows] == [1, 2, 3]


def test_csv_cells_may_hold_json_message_lists(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    path = _write(tmp_path / "chat.csv", "csv", rows)
    with DatasetFile(str(path), "auto") as data:
        (row,) = list(data)
    assert data.format == "openai"
    assert row.example == Example("chat", chat((U, "q"), (A, "a")))


def test_parquet_nested_lists_of_structs(tmp_path: Path) -> None:
    rows = [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]
    path = _write(tmp_path / "chat.parquet", "parquet", rows)
    with DatasetFile(str(path)) as data:
        (row,) = list(data)
    assert data.format == "sharegpt"
    assert row.example == Example("chat", chat((U, "q"), (A, "a")))


def test_jsonl_line_numbers_count_blank_lines_and_survive_bom(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\n\n{"text": "b"}\n{"text": \n')
    with DatasetFile(str(path)) as data:
        rows = list(data)
    assert [(r.number, r.error is None) for r in rows] == [(1, True), (3, True), (4, False)]
    assert rows[2].error is not None and rows[2].error.startswith("broken JSON")


def test_malformed_jsonl_rows(tmp_path: Path) -> None:
    huge = b'{"text": "' + b"x" * (MAX_ROW_BYTES + 10) + b'"}\n'
    lines = [
        b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n',
        b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"\n',  # truncated
        b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n',  # latin-1, not UTF-8
        huge,
        b'{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}\n',
        b'{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]}\n',
        b'{"prompt": "mixed", "completion": "formats"}\n',
        b"[1, 2]\n",
        b'{"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "fine"}]}',  # no \n
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"".join(lines))
    with DatasetFile(str(path)) as data:
        rows = list(data)
    assert data.format == "openai"
    errors = {r.number: r.error for r in rows if r.error}
    assert set(errors) == {2, 3, 4, 5, 6, 7, 8}
    assert errors[2].startswith("broken JSON")
    assert errors[3] == f"invalid UTF-8 (byte 0xe9 at column {lines[2].index(0xE9) + 1})"
    assert errors[4] == "line is longer than 8 MiB"
    assert "must start with a user turn" in errors[5]
    assert errors[6] == "empty user turn 1"
    assert errors[7] == "missing field 'messages' (openai format)"
    assert errors[8] == "expected a JSON object, got list"
    assert [r.number for r in rows if r.example] == [1, 9]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", b"", "the file is empty"),
        ("blank.jsonl", b"\n  \n", "the file is empty"),
        ("unknown.jsonl", b'{"foo": 1}\n{"bar": 2}\n', "cannot detect the format"),
        ("broken.json", b'[{"text": "a"}, {"text": ', "truncated"),
        ("garbage.json", b'[{"text": "a"} {"text": "b"}]', "expected ',' or ']' after row 1"),
        ("badutf8.json", b'[{"text": "\xff"}]', "invalid UTF-8"),
        ("notarray.json", b'"just a string"', "cannot detect the format"),
        ("badrow.json", b'[{"text": "a"}, {"text": nope}, {"text": "c"}]', "broken JSON in row 2"),
        ("empty.parquet", b"", "the file is empty"),
        ("junk.parquet", b"not parquet at all", "not a readable Parquet file"),
        ("data.xml", b"<a/>", "unknown file type"),
    ],
)
def test_unreadable_files_raise_file_errors(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DatasetFileError, match=message), DatasetFile(str(path)) as data:
        list(data)


def test_json_array_rows_are_numbered_and_streamed(tmp_path: Path) -> None:
    rows = [{"text": f"row {i}"} for i in range(3000)] + [{"nope": 1}]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(rows))  # one line, ~50 KB: crosses no chunk boundary issues either way
    with DatasetFile(str(path)) as data:
        out = list(data)
    assert data.unit == "row"
    assert len(out) == 3001
    assert out[-1].number == 3001 and out[-1].error == "missing field 'text' (text format)"


def test_csv_invalid_utf8_is_a_row_error(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"prompt,completion\nhello,world\nbad\xff,row\nok,fine\n")
    with DatasetFile(str(path)) as data:
        rows = list(data)
    assert [(r.number, r.error) for r in rows] == [(1, None), (2, "invalid UTF-8"), (3, None)]
