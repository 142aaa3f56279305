"""Reading datasets in every supported file type and format, and normalising each row to one `Example`.

File types (by extension): `.jsonl`/`.ndjson` (one JSON object per line), `.json` (a JSON array of objects,
or JSON lines), `.csv` (header row; list-valued fields may hold JSON), `.parquet`. Everything streams:
memory is bounded by one row (at most `MAX_ROW_BYTES`) plus buffers, whatever the file's size. Parquet needs
random access, so an S3 Parquet file is first downloaded to a temporary file.

Formats (`spec.dataset.format`; `auto` detects one per file from its first rows):

| format            | fields (standard names; `columnMap` renames them)                                   |
|-------------------|--------------------------------------------------------------------------------------|
| openai            | messages: [{role, content}]                                                          |
| sharegpt          | conversations: [{from, value}]; from: human/user, gpt/assistant/model, system       |
| alpaca            | instruction, input (optional), output, system (optional)                            |
| prompt-completion | prompt, completion (strings, or message lists), system (optional)                   |
| text              | text                                                                                 |
| preference        | prompt (optional if chosen/rejected are full conversations), chosen, rejected       |

Errors are per row, with the 1-based line number (JSONL, JSON lines) or row number (JSON arrays, CSV data
rows, Parquet) and a short reason. Errors that make the rest of a file unreadable (an empty file, a broken
JSON array, an undetectable format) raise `DatasetFileError`.

## Prepared data (what the validate stage writes and the train stage reads)

`<artifacts.prepared_data>/train.jsonl` and `eval.jsonl` hold one normalised example per line
(`Example.to_json()`), UTF-8, no duplicates, and no train row whose `id` is also in eval:

    {"id": "<sha256 hex of the normalised example>",
     "kind": "chat" | "preference" | "text",
     "messages": [{"role": "system" | "user" | "assistant", "content": "<non-empty str>"}, ...],
     "chosen":   [{"role": "assistant", "content": ...}, ...],   # preference only
     "rejected": [{"role": "assistant", "content": ...}, ...],   # preference only
     "text": "<non-empty str>"}                                 # text only

- chat: `messages` is the whole conversation: an optional system turn first, then user/assistant turns
  alternating, starting with user and ending with assistant. Train on the assistant turns.
- preference: `messages` is the prompt (optional system, alternating, ending with user); `chosen` and
  `rejected` are the competing assistant continuations (TRL's conversational preference format).
- text: `messages` is empty; `text` is raw text for language-model training (loss on every token).
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import csv
import hashlib
import io
import json
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, get_args

from kubetune_trainer import storage

Format = Literal["openai", "sharegpt", "alpaca", "prompt-completion", "text", "preference"]
FORMATS: tuple[str, ...] = get_args(Format)
Kind = Literal["chat", "preference", "text"]
FileType = Literal["jsonl", "json", "csv", "parquet"]

# One row may be at most this large: long-context rows (128k tokens) fit; a runaway line does not.
MAX_ROW_BYTES = 8 * 1024 * 1024
DETECT_ROWS = 32  # rows read to detect a file's format
_CHUNK = 1024 * 1024

ROLE_ALIASES: dict[str, str] = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "chatgpt": "assistant",
}


class RowError(ValueError):
    """One row is invalid; the message is the short reason."""


class DatasetFileError(ValueError):
    """The file as a whole cannot be read (empty, unreadable, undetectable format)."""


# -------------------------------------------------------------------------------------------------- types


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str

    def to_json(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True, slots=True)
class Example:
    """One normalised training example (see the module docstring for each kind's shape)."""

    kind: Kind
    messages: tuple[Message, ...] = ()
    chosen: tuple[Message, ...] | None = None
    rejected: tuple[Message, ...] | None = None
    text: str | None = None

    def digest(self) -> str:
        """sha256 of the role-aware, whitespace-normalised example: equal for rows that differ only in spacing."""

        # Unit/record separators cannot collide with text once whitespace is squashed (they count as
        # whitespace to str.split), so the joined key is unambiguous, and much cheaper than JSON.
        parts: list[str] = [self.kind]
        for label, turns in (("m", self.messages), ("c", self.chosen), ("r", self.rejected)):
            if turns is not None:
                parts.append(label)
                parts.extend(f"{m.role}\x1f{_squash(m.content)}" for m in turns)
        if self.text is not None:
            parts.append("t\x1f" + _squash(self.text))
        encoded = "\x1e".join(parts).encode()
        return hashlib.sha256(encoded).hexdigest()

    def to_json(self, digest: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": digest or self.digest(),
            "kind": self.kind,
            "messages": [m.to_json() for m in self.messages],
        }
        if self.chosen is not None:
            out["chosen"] = [m.to_json() for m in self.chosen]
        if self.rejected is not None:
            out["rejected"] = [m.to_json() for m in self.rejected]
        if self.text is not None:
            out["text"] = self.text
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Example:
        def turns(items: Any) -> tuple[Message, ...] | None:
            return None if items is None else tuple(Message(t["role"], t["content"]) for t in items)

        return cls(
            kind=data["kind"],
            messages=turns(data.get("messages")) or (),
            chosen=turns(data.get("chosen")),
            rejected=turns(data.get("rejected")),
            text=data.get("text"),
        )

    def conversations(self) -> list[list[dict[str, str]]]:
        """The chat(s) to tokenise: one for chat, prompt+chosen and prompt+rejected for preference."""
        prompt = [m.to_json() for m in self.messages]
        if self.kind == "preference":
            return [prompt + [m.to_json() for m in side or ()] for side in (self.chosen, self.rejected)]
        return [prompt] if prompt else []


def _squash(text: str) -> str:
    return " ".join(text.split())


def iter_prepared(uri: str) -> Iterator[Example]:
    """Read a prepared train.jsonl/eval.jsonl back as Examples."""
    with storage.open_read(uri) as stream:
        for line in stream:
            if line.strip():
                yield Example.from_json(json.loads(line))


# ------------------------------------------------------------------------------------------------ records


@dataclass(frozen=True, slots=True)
class Record:
    """One raw row: its 1-based number, and either the parsed value or why it could not be parsed."""

    number: int
    value: Any = None
    error: str | None = None


def file_type(uri: str) -> FileType:
    name = uri.rsplit("/", 1)[-1].lower()
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".json"):
        return "json"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise DatasetFileError(f"{uri}: unknown file type; use .jsonl, .json, .csv or .parquet")


class _HashingReader(io.RawIOBase):
    """Passes bytes through while hashing them, so the sha256 costs no second pass over the file."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self.sha256 = hashlib.sha256()
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._inner.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.sha256.update(data)
        self.bytes_read += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()


class RecordReader:
    """Iterates a dataset file's rows as Records; `sha256` and `bytes_read` are final once exhausted.

    Use as a context manager. `unit` says how `Record.number` counts: "line" or "row".
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.type: FileType = file_type(uri)
        self.unit = "line" if self.type in ("jsonl", "json") else "row"
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._hasher: _HashingReader | None = None
        self._stream: io.BufferedReader | None = None
        self._parquet_path: Path | None = None
        self._parquet_digest = ""
        self._parquet_size = 0

    def __enter__(self) -> RecordReader:
        if self.type == "parquet":
            self._open_parquet()
        else:
            self._hasher = _HashingReader(storage.open_read(self.uri))
            self._stream = io.BufferedReader(self._hasher, buffer_size=_CHUNK)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stream is not None:
            self._stream.close()
        if self._tempdir is not None:
            self._tempdir.cleanup()

    @property
    def sha256(self) -> str:
        return self._hasher.sha256.hexdigest() if self._hasher else self._parquet_digest

    @property
    def bytes_read(self) -> int:
        return self._hasher.bytes_read if self._hasher else self._parquet_size

    def drain(self) -> None:
        """Read the rest of the file (e.g. after maxSamples) so `sha256` covers every byte."""
        if self._stream is not None:
            while self._stream.read(_CHUNK):
                pass

    def __iter__(self) -> Iterator[Record]:
        if self.type == "parquet":
            yield from self._parquet_records()
            return
        assert self._stream is not None
        first = self._stream.peek(64)[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
        if not first:
            raise DatasetFileError(f"{self.uri}: the file is empty")
        if self.type == "csv":
            yield from _csv_records(
                self._stream, delimiter="\t" if self.uri.lower().endswith(".tsv") else ","
            )
        elif self.type == "json" and first.startswith(b"["):
            self.unit = "row"
            yield from _json_array_records(self._stream, self.uri)
        else:
            yield from _jsonl_records(self._stream)

    # Parquet: random access, so S3 objects are downloaded first; the file hash is a separate pass.
    def _open_parquet(self) -> None:
        if storage.is_s3(self.uri):
            self._tempdir = tempfile.TemporaryDirectory(prefix="kubetune-dataset-")
            self._parquet_path = storage.download_file(self.uri, Path(self._tempdir.name) / "data.parquet")
        else:
            self._parquet_path = storage.local_path(self.uri)
            if not self._parquet_path.is_file():
                raise storage.StorageError(f"reading {self.uri} failed: no such file")
        digest = hashlib.sha256()
        with self._parquet_path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        self._parquet_digest = digest.hexdigest()
        self._parquet_size = self._parquet_path.stat().st_size

    def _parquet_records(self) -> Iterator[Record]:
        import pyarrow.parquet as pq

        assert self._parquet_path is not None
        if self._parquet_size == 0:
            raise DatasetFileError(f"{self.uri}: the file is empty")
        try:
            parquet = pq.ParquetFile(self._parquet_path)
        except Exception as error:
            raise DatasetFileError(f"{self.uri}: not a readable Parquet file: {error}") from error
        number = 0
        # Small batches keep memory at a few rows' worth, whatever the row group size.
        for batch in parquet.iter_batches(batch_size=256):
            for row in batch.to_pylist():
                number += 1
                yield Record(number, value=row)
        if number == 0:
            raise DatasetFileError(f"{self.uri}: the file has no rows")


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RowError(f"invalid UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1})") from None


def _jsonl_records(stream: io.BufferedReader) -> Iterator[Record]:
    number = 0
    while True:
        raw = stream.readline(MAX_ROW_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_ROW_BYTES and not raw.endswith(b"\n"):
            # Skip the rest of the oversized line without holding it in memory.
            while (more := stream.readline(_CHUNK)) and not more.endswith(b"\n"):
                pass
            yield Record(number, error=f"line is longer than {MAX_ROW_BYTES // (1024 * 1024)} MiB")
            continue
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        if not raw.strip():
            continue  # blank lines are not rows (their numbers still count)
        try:
            text = _decode(raw)
            value = json.loads(text)
        except RowError as error:
            yield Record(number, error=str(error))
            continue
        except json.JSONDecodeError as error:
            yield Record(number, error=f"broken JSON: {error.msg} (column {error.colno})")
            continue
        yield Record(number, value=value)


def _json_array_records(stream: io.BufferedReader, uri: str) -> Iterator[Record]:
    """Stream the elements of a top-level JSON array; bounded by one element's size."""
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    buffer, pos, eof, consumed = "", 0, False, 0

    def fill() -> bool:
        nonlocal buffer, pos, eof, consumed
        if eof:
            return False
        chunk = stream.read(_CHUNK)
        try:
            text = utf8.decode(chunk, final=not chunk)
        except UnicodeDecodeError as error:
            raise DatasetFileError(
                f"{uri}: invalid UTF-8 near byte {consumed + error.start} in a JSON array"
            ) from error
        consumed += len(chunk)
        eof = not chunk
        buffer = buffer[pos:] + text
        pos = 0
        return bool(chunk)

    def skip_whitespace() -> bool:
        """Advance past whitespace; False at end of input."""
        nonlocal pos
        while True:
            while pos < len(buffer) and buffer[pos] in " \t\r\n\ufeff":
                pos += 1
            if pos < len(buffer):
                return True
            if not fill():
                return False

    fill()
    if not skip_whitespace() or buffer[pos] != "[":
        raise DatasetFileError(f"{uri}: expected a JSON array")
    pos += 1
    number = 0
    while True:
        if not skip_whitespace():
            raise DatasetFileError(f"{uri}: the JSON array is truncated after row {number}")
        if buffer[pos] == "]":
            return
        number += 1
        while True:
            try:
                value, end = decoder.raw_decode(buffer, pos)
                if end < len(buffer) or eof:
                    break
            except json.JSONDecodeError as error:
                if eof and error.pos >= len(buffer.rstrip()):
                    raise DatasetFileError(f"{uri}: the JSON array is truncated in row {number}") from error
                if eof or len(buffer) - pos > MAX_ROW_BYTES:
                    raise DatasetFileError(
                        f"{uri}: broken JSON in row {number}: {error.msg}; the rest of the array is unreadable"
                    ) from error
            fill()
        pos = end
        yield Record(number, value=value)
        if not skip_whitespace():
            raise DatasetFileError(f"{uri}: the JSON array is truncated after row {number}")
        if buffer[pos] == ",":
            pos += 1
        elif buffer[pos] != "]":
            raise DatasetFileError(f"{uri}: expected ',' or ']' after row {number}")


_JSON_VALUED = {"messages", "conversations", "chosen", "rejected", "prompt", "completion"}


def _csv_records(stream: io.BufferedReader, delimiter: str) -> Iterator[Record]:
    # surrogateescape keeps invalid bytes as lone surrogates, so one bad row is one row error.
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    csv.field_size_limit(MAX_ROW_BYTES)
    reader = csv.DictReader(text, delimiter=delimiter)
    number = 0
    try:
        for row in reader:
            number += 1
            values = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
            if any(_has_surrogates(v) for v in values.values() if isinstance(v, str)):
                yield Record(number, error="invalid UTF-8")
                continue
            for key, value in values.items():
                # List-valued columns (messages, chosen, ...) are stored as JSON text in a CSV cell.
                if key in _JSON_VALUED and isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
                    with contextlib.suppress(json.JSONDecodeError):  # a prompt starting with '[' stays text
                        values[key] = json.loads(value)
            yield Record(number, value=values)
    except csv.Error as error:
        yield Record(number + 1, error=f"unreadable CSV: {error}")
    finally:
        text.detach()  # the caller's stream stays open


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


# ----------------------------------------------------------------------------------------- normalisation


class Normaliser:
    """Turns raw rows of one format into Examples, applying `columnMap`; raises RowError with a reason."""

    def __init__(self, fmt: str, column_map: Mapping[str, str] | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        self.format = fmt
        self._columns = dict(column_map or {})

    def column(self, name: str) -> str:
        return self._columns.get(name, name)

    def _get(self, row: Mapping[str, Any], name: str) -> Any:
        value = row.get(self.column(name))
        return None if value == "" else value

    def normalise(self, row: Any) -> Example:
        if not isinstance(row, Mapping):
            raise RowError(f"expected a JSON object, got {_type_name(row)}")
        if self.format in ("openai", "sharegpt"):
            return self._chat(row)
        if self.format == "alpaca":
            return self._alpaca(row)
        if self.format == "prompt-completion":
            return self._prompt_completion(row)
        if self.format == "text":
            text = self._string(row, "text")
            return Example(kind="text", text=text)
        return self._preference(row)

    # -- fields

    def _require(self, row: Mapping[str, Any], name: str) -> Any:
        value = self._get(row, name)
        if value is None:
            raise RowError(f"missing field '{self.column(name)}' ({self.format} format)")
        return value

    def _string(self, row: Mapping[str, Any], name: str, *, required: bool = True) -> str:
        value = self._require(row, name) if required else self._get(row, name)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise RowError(f"field '{self.column(name)}' must be a string, got {_type_name(value)}")
        if required and not value.strip():
            raise RowError(f"field '{self.column(name)}' is empty")
        return value

    def _system(self, row: Mapping[str, Any]) -> list[Message]:
        system = self._string(row, "system", required=False)
        return [Message("system", system)] if system.strip() else []

    def _turns(self, value: Any, field: str) -> list[Message]:
        if not isinstance(value, list):
            raise RowError(f"field '{field}' must be a list of turns, got {_type_name(value)}")
        turns: list[Message] = []
        openai_keys = self.column("role"), self.column("content")
        sharegpt_keys = self.column("from"), self.column("value")
        for index, turn in enumerate(value, 1):
            if not isinstance(turn, Mapping):
                raise RowError(f"turn {index} must be an object, got {_type_name(turn)}")
            role_key, content_key = openai_keys
            if role_key not in turn and sharegpt_keys[0] in turn:
                role_key, content_key = sharegpt_keys
            raw_role, content = turn.get(role_key), turn.get(content_key)
            if not isinstance(raw_role, str):
                raise RowError(f"turn {index} has no '{role_key}' string")
            role = ROLE_ALIASES.get(raw_role) or ROLE_ALIASES.get(raw_role.strip().lower())
            if role is None:
                raise RowError(f"turn {index} has unsupported role '{raw_role[:32]}'")
            if content is None:
                raise RowError(f"turn {index} has no '{content_key}'")
            if not isinstance(content, str):
                raise RowError(f"turn {index} content must be a string, got {_type_name(content)}")
            turns.append(Message(role, content))
        return turns

    # -- formats

    def _chat(self, row: Mapping[str, Any]) -> Example:
        names = ("messages", "conversations") if self.format == "openai" else ("conversations", "messages")
        field = next((n for n in names if self._get(row, n) is not None), None)
        if field is None:
            raise RowError(f"missing field '{self.column(names[0])}' ({self.format} format)")
        messages = self._turns(self._get(row, field), self.column(field))
        if messages and messages[0].role != "system":
            messages = self._system(row) + messages
        check_conversation(messages, end="assistant")
        return Example(kind="chat", messages=tuple(messages))

    def _alpaca(self, row: Mapping[str, Any]) -> Example:
        instruction = self._string(row, "instruction")
        extra = self._string(row, "input", required=False)
        output = self._string(row, "output")
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [*self._system(row), Message("user", user), Message("assistant", output)]
        return Example(kind="chat", messages=tuple(messages))

    def _side(self, value: Any, field: str, role: str) -> list[Message]:
        """A prompt/completion/chosen/rejected value: a plain string (one `role` turn) or a turn list."""
        if isinstance(value, str):
            if not value.strip():
                raise RowError(f"field '{field}' is empty")
            return [Message(role, value)]
        if isinstance(value, list):
            if not value:
                raise RowError(f"field '{field}' is an empty list")
            return self._turns(value, field)
        raise RowError(f"field '{field}' must be a string or a list of turns, got {_type_name(value)}")

    def _prompt_completion(self, row: Mapping[str, Any]) -> Example:
        prompt = self._side(self._require(row, "prompt"), self.column("prompt"), "user")
        completion = self._side(self._require(row, "completion"), self.column("completion"), "assistant")
        if prompt[0].role != "system":
            prompt = self._system(row) + prompt
        messages = prompt + completion
        check_conversation(messages, end="assistant")
        return Example(kind="chat", messages=tuple(messages))

    def _preference(self, row: Mapping[str, Any]) -> Example:
        chosen = self._side(self._require(row, "chosen"), self.column("chosen"), "assistant")
        rejected = self._side(self._require(row, "rejected"), self.column("rejected"), "assistant")
        raw_prompt = self._get(row, "prompt")
        if raw_prompt is None:
            # Implicit prompt (e.g. Anthropic HH): chosen and rejected are whole conversations sharing it.
            shared = 0
            while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
                shared += 1
            while shared and chosen[shared - 1].role != "user":
                shared -= 1
            if shared == 0:
                raise RowError(f"missing field '{self.column('prompt')}' (preference format)")
            prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        else:
            prompt = self._side(raw_prompt, self.column("prompt"), "user")
            # Some datasets repeat the prompt at the start of chosen/rejected: strip it.
            if chosen[: len(prompt)] == prompt:
                chosen = chosen[len(prompt) :]
            if rejected[: len(prompt)] == prompt:
                rejected = rejected[len(prompt) :]
        if prompt[0].role != "system":
            prompt = self._system(row) + prompt
        check_conversation(prompt, end="user", what="prompt")
        for name, side in (("chosen", chosen), ("rejected", rejected)):
            if not side:
                raise RowError(f"'{self.column(name)}' has no reply after the prompt")
            check_conversation(prompt + side, end="assistant", what=self.column(name))
        if [_squash(m.content) for m in chosen] == [_squash(m.content) for m in rejected]:
            raise RowError("chosen and rejected are identical")
        return Example(
            kind="preference", messages=tuple(prompt), chosen=tuple(chosen), rejected=tuple(rejected)
        )


def check_conversation(messages: list[Message], *, end: str, what: str = "conversation") -> None:
    """System only first; then user/assistant alternating from user; ends with `end`; no empty turns."""
    if not messages:
        raise RowError(f"{what} has no turns")
    for index, message in enumerate(messages, 1):
        if not message.content.strip():
            raise RowError(f"empty {message.role} turn {index}")
        if message.role == "system" and index != 1:
            raise RowError(f"system turn {index} is only allowed first")
    dialogue = messages[1:] if messages[0].role == "system" else messages
    if not dialogue:
        raise RowError(f"{what} has only a system turn")
    if dialogue[0].role != "user":
        raise RowError(f"{what} must start with a user turn (after an optional system turn)")
    offset = len(messages) - len(dialogue)
    for index in range(1, len(dialogue)):
        if dialogue[index].role == dialogue[index - 1].role:
            role = dialogue[index].role
            other = "assistant" if role == "user" else "user"
            raise RowError(
                f"two {role} turns in a row (turns {offset + index} and {offset + index + 1}) "
                f"without a {other} turn between"
            )
    if dialogue[-1].role != end:
        raise RowError(f"{what} must end with {'an' if end == 'assistant' else 'a'} {end} turn")


def _type_name(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


# ---------------------------------------------------------------------------------------------- detection


def detect_row_format(row: Any, column_map: Mapping[str, str] | None = None) -> str | None:
    """The format a single row looks like, or None."""
    if not isinstance(row, Mapping):
        return None
    columns = dict(column_map or {})

    def has(name: str) -> bool:
        return row.get(columns.get(name, name)) not in (None, "")

    if has("chosen") and has("rejected"):
        return "preference"
    for container in ("messages", "conversations"):
        if has(container):
            turns = row[columns.get(container, container)]
            first = turns[0] if isinstance(turns, list) and turns else None
            if isinstance(first, Mapping) and columns.get("from", "from") in first:
                return "sharegpt"
            return "openai" if container == "messages" else "sharegpt"
    if has("instruction") and has("output"):
        return "alpaca"
    if has("prompt") and has("completion"):
        return "prompt-completion"
    if has("text"):
        return "text"
    return None


def detect_format(rows: list[Any], column_map: Mapping[str, str] | None = None) -> str | None:
    """The most common format among the rows that look like one (first listed wins ties)."""
    votes = collections.Counter(f for f in (detect_row_format(r, column_map) for r in rows) if f)
    if not votes:
        return None
    best = max(votes.values())
    return next(f for f in FORMATS if votes.get(f) == best)


@dataclass(frozen=True, slots=True)
class NormalisedRow:
    number: int
    example: Example | None = None
    error: str | None = None


class DatasetFile:
    """A dataset file read as normalised rows: detection, per-row errors and the file's sha256.

    with DatasetFile(uri, "auto", column_map) as data:
        for row in data: ...        # NormalisedRow(number, example | None, error | None)
        data.format, data.sha256, data.unit
    """

    def __init__(self, uri: str, fmt: str = "auto", column_map: Mapping[str, str] | None = None) -> None:
        self.uri = uri
        self.declared = fmt
        self.format = fmt
        self.column_map = dict(column_map or {})
        self._reader = RecordReader(uri)

    def __enter__(self) -> DatasetFile:
        self._reader.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._reader.__exit__(*exc)

    @property
    def unit(self) -> str:
        return self._reader.unit

    @property
    def sha256(self) -> str:
        return self._reader.sha256

    @property
    def bytes_read(self) -> int:
        return self._reader.bytes_read

    def drain(self) -> None:
        self._reader.drain()

    def __iter__(self) -> Iterator[NormalisedRow]:
        records = iter(self._reader)
        head: list[Record] = []
        if self.declared == "auto":
            # Buffer the first rows to detect the format, then replay them.
            for record in records:
                head.append(record)
                if sum(r.error is None for r in head) >= DETECT_ROWS:
                    break
            if not head:
                raise DatasetFileError(f"{self.uri}: the file has no rows")
            detected = detect_format([r.value for r in head if r.error is None], self.column_map)
            if detected is None:
                keys = sorted({str(k) for r in head if isinstance(r.value, Mapping) for k in r.value})[:12]
                raise DatasetFileError(
                    f"{self.uri}: cannot detect the format from its first rows (fields seen: "
                    f"{', '.join(keys) or 'none'}); set spec.dataset.format or spec.dataset.columnMap"
                )
            self.format = detected
        normaliser = Normaliser(self.format, self.column_map)
        seen_any = False
        for record in _chain(head, records):
            seen_any = True
            if record.error is not None:
                yield NormalisedRow(record.number, error=record.error)
                continue
            try:
                yield NormalisedRow(record.number, example=normaliser.normalise(record.value))
            except RowError as error:
                yield NormalisedRow(record.number, error=str(error))
        if not seen_any:
            raise DatasetFileError(f"{self.uri}: the file has no rows")


def _chain(head: list[Record], rest: Iterator[Record]) -> Iterator[Record]:
    yield from head
    yield from rest
