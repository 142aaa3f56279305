"""Stage `validate`: check the dataset before any GPU is requested.

Reads the dataset (and `evalUri`), normalises every row (formats.py), reports invalid rows by line/row
number, drops exact duplicates, splits eval rows off deterministically (by hash and seed, not position),
removes train rows that leak eval rows, measures token lengths with the base model's tokenizer and chat
template, estimates GPU memory from the base model's config.json (estimate.py), and writes:

- `artifacts.prepared_data` train.jsonl / eval.jsonl (schema in formats.py), only when the dataset is valid;
- `artifacts.validation_report` report.json (always, when the output prefix is writable);
- the termination message (a compact JSON summary for the operator, < 4096 bytes) via `__main__`.

Memory stays bounded while streaming: one batch of rows, a token-length histogram, and a flat table of 8-byte row
digests for duplicate/leakage checks (the only thing that grows with the row count: 16-32 bytes per row).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from kubetune_trainer import model_cache, storage
from kubetune_trainer.estimate import MemoryEstimate, estimate_memory, human_bytes
from kubetune_trainer.formats import DatasetFile, DatasetFileError, Example
from kubetune_trainer.support import check_supported

if TYPE_CHECKING:
    from kubetune.api.trainer_config import TrainerConfig

log = logging.getLogger(__name__)

STAGE = "validate"
INVALID_DATASET = "InvalidDataset"
INVALID_SPEC = "InvalidSpec"
DATASET_VALID = "DatasetValid"
STORAGE_ERROR = "StorageError"
EXIT_INVALID_INPUT = 2  # the operator's podFailurePolicy fails the Job at once on this code

ERRORS_IN_MESSAGE = 5
ERRORS_IN_REPORT = 100
TOKEN_BATCH = 512
MIN_TRAIN_ROWS = 100
MIN_TOKENS_PER_TRAINABLE_PARAM = 0.05  # fewer tokens seen than this per trained parameter: overfitting risk

# Files needed to rebuild the tokenizer and read the architecture; weights are never downloaded here.
MODEL_METADATA_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "chat_template.jinja",
        "chat_template.json",
        "tokenizer.model",
        "vocab.json",
        "merges.txt",
    }
)


class ValidationFailedError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --------------------------------------------------------------------------------------------- base model


def fetch_model_metadata(model_uri: str, local_dir: Path) -> tuple[Path | None, str | None]:
    """config.json and tokenizer files of the base model in a local directory, or (None, why not).

    With a shared model cache (spec.cache.pvc) the whole model is downloaded into it here, on a CPU pod,
    so the GPU pods that follow find it there and start at once; its metadata is then read from the cache."""
    shared = model_cache.shared_root()
    hub_on = os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes")
    if shared is not None and (storage.is_s3(model_uri) or (model_uri.startswith("hf://") and hub_on)):
        path = model_cache.fetch(model_uri, shared).path
        return (path, None) if (path / "config.json").is_file() else (None, f"{model_uri} has no config.json")
    if model_uri.startswith("hf://"):
        return _fetch_hf_metadata(model_uri, local_dir)
    if not storage.is_s3(model_uri):
        path = storage.local_path(model_uri)
        return (path, None) if (path / "config.json").is_file() else (None, f"{model_uri} has no config.json")
    prefix = model_uri if model_uri.endswith("/") else model_uri + "/"
    found = False
    for uri in storage.list_prefix(prefix):
        relative = uri[len(prefix) :]
        if relative in MODEL_METADATA_FILES:
            storage.download_file(uri, local_dir / relative)
            found = found or relative == "config.json"
    return (local_dir, None) if found else (None, f"{model_uri} has no config.json")


def _fetch_hf_metadata(model_uri: str, local_dir: Path) -> tuple[Path | None, str | None]:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return None, f"{model_uri}: the Hugging Face hub is offline here (HF_HUB_OFFLINE), so it was skipped"
    name, _, revision = model_uri[len("hf://") :].partition("@")
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(
            name,
            revision=revision or None,
            allow_patterns=sorted(MODEL_METADATA_FILES),
            local_dir=str(local_dir),
        )
    except Exception as error:
        return None, f"{model_uri}: could not fetch config/tokenizer from the hub ({type(error).__name__})"
    return Path(path), None


class TokenCounter:
    """Token lengths with the base model's tokenizer and chat template, rendered in batches.

    With a `tokenizer.json` (every fast tokenizer) this uses `tokenizers` directly: no torch import, and
    batch encoding runs in Rust threads. Otherwise it falls back to transformers' AutoTokenizer.
    """

    def __init__(self, model_dir: Path, chat_template: str | None) -> None:
        settings = _read_json(model_dir / "tokenizer_config.json")
        specials = {**settings, **_read_json(model_dir / "special_tokens_map.json")}
        self._backend: Any = None
        self._slow: Any = None
        if (model_dir / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            self._backend = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
            # A tokenizer.json may carry truncation/padding settings; lengths must be the true ones.
            self._backend.no_truncation()
            self._backend.no_padding()
        else:
            from transformers import AutoTokenizer

            self._slow = AutoTokenizer.from_pretrained(str(model_dir))
            specials = {**specials, **self._slow.special_tokens_map}
        self._context = {
            name: text
            for name in ("bos_token", "eos_token", "pad_token", "unk_token")
            if (text := _token_text(specials.get(name)))
        }
        template = chat_template or _model_chat_template(model_dir, settings)
        self.note: str | None = None
        if not template:
            self.note = "the base model has no chat template; token lengths use a plain 'role: text' layout"
        self._render = _compile_template(template) if template else None
        self._text_extra = int("bos_token" in self._context) + int("eos_token" in self._context)

    def render(self, conversation: list[dict[str, str]]) -> str:
        if self._render is None:
            return "".join(f"{m['role']}: {m['content']}\n" for m in conversation)
        return self._render(messages=conversation, add_generation_prompt=False, **self._context)

    def _encode(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        if self._backend is not None:
            # encode_batch_fast skips character offsets, which lengths do not need: about twice as fast.
            encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
            return [len(e.ids) for e in encode(texts, add_special_tokens=False)]
        return [len(ids) for ids in self._slow(texts, add_special_tokens=False)["input_ids"]]

    def lengths(self, examples: Sequence[Example]) -> list[int | str]:
        """Token count per example (the longer side for preference), or the template's error text."""
        texts: list[str] = []
        owners: list[int] = []
        results: list[int | str] = [0] * len(examples)
        for index, example in enumerate(examples):
            try:
                if example.kind == "text":
                    pieces = [example.text or ""]
                else:
                    pieces = [self.render(c) for c in example.conversations()]
            except Exception as error:  # a template's raise_exception() on a row it refuses
                results[index] = f"chat template refused the row: {str(error)[:160]}"
                continue
            texts.extend(pieces)
            owners.extend([index] * len(pieces))
        for owner, count in zip(owners, self._encode(texts), strict=True):
            extra = self._text_extra if examples[owner].kind == "text" else 0
            current = results[owner]
            if isinstance(current, int):
                results[owner] = max(current, count + extra)
        return results


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    value = json.loads(path.read_text(encoding="utf-8"))
    return value if isinstance(value, dict) else {}


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _model_chat_template(model_dir: Path, settings: dict[str, Any]) -> str | None:
    """The tokenizer's chat template: chat_template.jinja (transformers 5), .json, or tokenizer_config."""
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    template = _read_json(model_dir / "chat_template.json").get("chat_template") or settings.get(
        "chat_template"
    )
    if isinstance(template, list):  # named templates: use the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


def _compile_template(template: str) -> Callable[..., str]:
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        compiled = _compile_jinja_template(template)
        return compiled.render  # type: ignore[no-any-return]
    except ImportError:  # pragma: no cover - older/newer transformers
        import jinja2

        return jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).from_string(template).render


# ------------------------------------------------------------------------------------------------- helpers


def eval_fraction_hit(digest: str, seed: int, fraction: float) -> bool:
    """Deterministic eval membership from the row's content hash and the seed (never its position)."""
    point = int(hashlib.sha256(f"{seed}:{digest}".encode()).hexdigest()[:16], 16) / 16**16
    return point < fraction


def _key(digest: str) -> int:
    # 64 bits of the row's sha256, never 0 (the empty-slot marker). A false duplicate needs a 64-bit
    # collision: odds about n²/2^65, i.e. 3e-8 for a million rows.
    return int(digest[:16], 16) or 1


class DigestSet:
    """A set of 64-bit row digests in one flat array (open addressing, linear probing).

    A Python set of ints costs ~100 bytes per row; this costs 16-32, so duplicate and leakage checks stay
    small next to the data even for tens of millions of rows.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._slots = array("Q", bytes(8 * capacity))
        self._mask = capacity - 1
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _find(self, key: int) -> int:
        slots, mask = self._slots, self._mask
        index = (key >> 7) & mask  # keys are uniformly random: any bits will do
        while True:
            value = slots[index]
            if value in (0, key):
                return index
            index = (index + 1) & mask

    def __contains__(self, key: int) -> bool:
        return self._slots[self._find(key)] == key

    def add(self, key: int) -> bool:
        """Insert; False when the key was already present."""
        index = self._find(key)
        if self._slots[index] == key:
            return False
        self._slots[index] = key
        self._count += 1
        if 2 * self._count > len(self._slots):  # keep the load under 1/2 so probes stay short
            old = self._slots
            self._slots = array("Q", bytes(16 * len(old)))
            self._mask = len(self._slots) - 1
            for value in old:
                if value:
                    self._slots[self._find(value)] = value
        return True


def percentile(histogram: dict[int, int], fraction: float) -> int | None:
    """The nearest-rank percentile of a {value: count} histogram."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(fraction * total))
    running = 0
    for value in sorted(histogram):
        running += histogram[value]
        if running >= rank:
            return value
    return max(histogram)


@dataclass
class FileReport:
    uri: str
    role: str  # "dataset" or "eval"
    format: str = ""
    sha256: str = ""
    bytes: int = 0
    rows_read: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "role": self.role,
            "format": self.format,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "rowsRead": self.rows_read,
        }


@dataclass
class Tally:
    invalid: int = 0
    duplicates: int = 0
    leakage: int = 0
    train: int = 0
    eval: int = 0
    train_tokens: int = 0
    truncated: int = 0
    errors: list[str] = field(default_factory=list)
    histogram: collections.Counter[int] = field(default_factory=collections.Counter)

    def error(self, where: str, reason: str) -> None:
        self.invalid += 1
        if len(self.errors) < ERRORS_IN_REPORT:
            self.errors.append(f"{where}: {reason}")


@dataclass
class Pending:
    where: str
    example: Example
    digest: str
    split: str  # "train" | "eval"


class Splitter:
    """Dedup, split, leakage and token checks for a stream of examples; writes the prepared JSONL files."""

    def __init__(
        self,
        *,
        tally: Tally,
        counter: TokenCounter | None,
        max_seq_length: int,
        outputs: dict[str, IO[str]],
        eval_fraction: float | None,
        seed: int,
    ) -> None:
        self.tally = tally
        self.counter = counter
        self.max_seq_length = max_seq_length
        self.outputs = outputs
        self.eval_fraction = eval_fraction
        self.seed = seed
        self.seen = DigestSet()
        self.eval_keys = DigestSet()
        self.batch: list[Pending] = []

    def add(self, where: str, example: Example, *, source: str) -> bool:
        """Queue a valid example; False if it was dropped (duplicate or leakage)."""
        digest = example.digest()
        key = _key(digest)
        if source == "eval":
            split = "eval"
        elif key in self.eval_keys:
            # A training row equal to a row of the separate eval file: never train on an eval row.
            self.tally.leakage += 1
            return False
        elif self.eval_fraction is not None and eval_fraction_hit(digest, self.seed, self.eval_fraction):
            split = "eval"
        else:
            split = "train"
        if not self.seen.add(key):
            self.tally.duplicates += 1
            return False
        if source == "eval":
            self.eval_keys.add(key)
        self.batch.append(Pending(where, example, digest, split))
        if len(self.batch) >= TOKEN_BATCH:
            self.flush()
        return True

    def flush(self) -> None:
        batch, self.batch = self.batch, []
        lengths: list[int | str] = self.counter.lengths([p.example for p in batch]) if self.counter else []
        for index, pending in enumerate(batch):
            length = lengths[index] if lengths else None
            if isinstance(length, str):
                self.tally.error(pending.where, length)
                continue
            if length is not None:
                self.tally.histogram[length] += 1
                if length > self.max_seq_length:
                    self.tally.truncated += 1
                if pending.split == "train":
                    self.tally.train_tokens += min(length, self.max_seq_length)
            if pending.split == "train":
                self.tally.train += 1
            else:
                self.tally.eval += 1
            out = self.outputs[pending.split]
            out.write(json.dumps(pending.example.to_json(pending.digest), ensure_ascii=False) + "\n")


def _read_file(
    uri: str,
    *,
    role: str,
    fmt: str,
    column_map: dict[str, str] | None,
    splitter: Splitter,
    max_samples: int | None,
) -> FileReport:
    report = FileReport(uri=uri, role=role)
    taken = 0
    try:
        with DatasetFile(uri, fmt, column_map) as data:
            for row in data:
                report.rows_read += 1
                where = f"{'eval file ' if role == 'eval' else ''}{data.unit} {row.number}"
                if row.error is not None or row.example is None:
                    splitter.tally.error(where, row.error or "invalid row")
                    continue
                if splitter.add(where, row.example, source=role):
                    taken += 1
                    if max_samples is not None and taken >= max_samples:
                        break
            data.drain()  # hash every byte even when maxSamples stopped early
            report.format = data.format
            report.sha256 = data.sha256
            report.bytes = data.bytes_read
    except DatasetFileError as error:
        raise ValidationFailedError(INVALID_DATASET, str(error)) from error
    except storage.StorageError as error:
        if error.not_found:
            raise ValidationFailedError(INVALID_DATASET, f"cannot read the dataset: {error}") from error
        raise
    splitter.flush()
    return report


# ------------------------------------------------------------------------------------------------ the stage


def run(config: TrainerConfig) -> dict[str, Any]:
    """Validate; always returns the termination summary (`ok`, `reason`, ...); `exitCode` 2 when invalid."""
    started = time.monotonic()
    spec = config.spec
    report: dict[str, Any] = {"stage": STAGE, "job": config.job.name}
    warnings: list[str] = []
    estimate: MemoryEstimate | None = None
    tally = Tally()
    files: list[FileReport] = []
    try:
        with tempfile.TemporaryDirectory(prefix="kubetune-validate-") as scratch:
            work = Path(scratch)
            try:
                check_supported(spec)
            except ValueError as error:
                raise ValidationFailedError(INVALID_SPEC, str(error)) from error
            model_dir, model_note = fetch_model_metadata(spec.base_model.uri, work / "model")
            if model_dir is None and not spec.base_model.uri.startswith("hf://"):
                raise ValidationFailedError(INVALID_SPEC, f"base model: {model_note}")
            if model_note:
                warnings.append(f"token lengths and GPU memory estimate skipped: {model_note}")
            counter = TokenCounter(model_dir, spec.dataset.chat_template) if model_dir else None
            if counter and counter.note:
                warnings.append(counter.note)
            _prepare(config, counter, work, files, tally)
            train_file, eval_file = work / "train.jsonl", work / "eval.jsonl"
            _check_outcome(config, files, tally, warnings)
            if model_dir is not None:
                estimate = _estimate(config, model_dir, tally, warnings)
            _overfitting_guard(config, tally, estimate, warnings)
            prefix = config.artifacts.prepared_data
            storage.upload_file(train_file, storage.join(prefix, "train.jsonl"))
            storage.upload_file(eval_file, storage.join(prefix, "eval.jsonl"))
        outcome: dict[str, Any] = {"ok": True, "reason": DATASET_VALID, "message": _success_message(tally)}
    except ValidationFailedError as failure:
        outcome = {"ok": False, "reason": failure.reason, "message": failure.message}
    summary = _summary(outcome, files=files, tally=tally, estimate=estimate, warnings=warnings, config=config)
    report.update(
        {
            **outcome,
            "dataset": summary.get("dataset"),
            "files": [f.to_json() for f in files],
            "errors": tally.errors,
            "warnings": warnings,
            "estimate": estimate.to_report() if estimate else None,
            "preparedData": config.artifacts.prepared_data if outcome["ok"] else None,
            "seconds": round(time.monotonic() - started, 3),
        }
    )
    try:
        storage.write_text(config.artifacts.validation_report, json.dumps(report, indent=2) + "\n")
    except storage.StorageError as error:
        log.error("could not write the validation report: %s", error)
        if outcome["ok"]:
            raise
    log.info("validate: %s (%s) in %.1fs", outcome["reason"], outcome["message"], report["seconds"])
    if not outcome["ok"]:
        summary["exitCode"] = EXIT_INVALID_INPUT
    return summary


def _prepare(
    config: TrainerConfig, counter: TokenCounter | None, work: Path, files: list[FileReport], tally: Tally
) -> None:
    """Stream the dataset (and eval file) into work/train.jsonl and work/eval.jsonl, counting into tally."""
    spec = config.spec
    dataset = spec.dataset
    hyper = spec.hyperparameters
    column_map = {str(k): v for k, v in dataset.column_map.items()} if dataset.column_map else None
    with (
        (work / "train.jsonl").open("w", encoding="utf-8") as train,
        (work / "eval.jsonl").open("w", encoding="utf-8") as evaluation,
    ):
        splitter = Splitter(
            tally=tally,
            counter=counter,
            max_seq_length=hyper.max_seq_length,
            outputs={"train": train, "eval": evaluation},
            eval_fraction=dataset.eval_split,
            seed=hyper.seed,
        )
        # The eval file first: its rows must be known before any training row is accepted.
        if dataset.eval_uri:
            files.append(
                _read_file(
                    dataset.eval_uri,
                    role="eval",
                    fmt=dataset.format,
                    column_map=column_map,
                    splitter=splitter,
                    max_samples=None,
                )
            )
        files.insert(
            0,
            _read_file(
                dataset.uri,
                role="dataset",
                fmt=dataset.format,
                column_map=column_map,
                splitter=splitter,
                max_samples=dataset.max_samples,
            ),
        )


def _check_outcome(config: TrainerConfig, files: list[FileReport], tally: Tally, warnings: list[str]) -> None:
    spec = config.spec
    total = tally.invalid + tally.train + tally.eval + tally.duplicates + tally.leakage
    tolerance = spec.dataset.invalid_row_tolerance
    if tally.invalid and tally.invalid > tolerance * max(total, 1):
        first = "; ".join(tally.errors[:ERRORS_IN_MESSAGE])
        more = f" (and {tally.invalid - ERRORS_IN_MESSAGE} more)" if tally.invalid > ERRORS_IN_MESSAGE else ""
        raise ValidationFailedError(
            INVALID_DATASET,
            f"{tally.invalid} of {total} rows are invalid (invalidRowTolerance {tolerance:g}): {first}{more}",
        )
    if tally.invalid:
        warnings.append(f"{tally.invalid} invalid rows skipped (within invalidRowTolerance)")
    formats = {f.format for f in files}
    is_preference = "preference" in formats
    if is_preference != (spec.method == "dpo") or (is_preference and len(formats) > 1):
        raise ValidationFailedError(
            INVALID_DATASET,
            f"the dataset's format is {', '.join(sorted(formats))} but method {spec.method} "
            + ("needs the preference format" if spec.method == "dpo" else "cannot train on preference pairs"),
        )
    if tally.train == 0:
        raise ValidationFailedError(
            INVALID_DATASET, "no training rows remain after removing invalid, duplicate and eval rows"
        )
    if tally.eval == 0:
        warnings.append("no evaluation rows: the dataset is too small for its evalSplit")
    max_seq_length = spec.hyperparameters.max_seq_length
    if tally.truncated:
        warnings.append(
            f"{tally.truncated} rows are longer than maxSeqLength ({max_seq_length} tokens) and will be truncated"
        )


def _estimate(
    config: TrainerConfig, model_dir: Path, tally: Tally, warnings: list[str]
) -> MemoryEstimate | None:
    spec = config.spec
    hyper, resources, lora = spec.hyperparameters, spec.resources, spec.lora
    # Full fine-tuning has no LoRA settings (spec.lora is None) and the estimate then uses none.
    lora_settings: dict[str, Any] = (
        {"lora_r": lora.r, "lora_dropout": lora.dropout, "target_modules": list(lora.target_modules)}
        if lora
        else {}
    )
    try:
        model_config = json.loads((model_dir / "config.json").read_text())
        longest = max(tally.histogram) if tally.histogram else hyper.max_seq_length
        # Padded batches are as long as their longest row; packed batches are always full.
        seq_length = hyper.max_seq_length if hyper.packing else min(hyper.max_seq_length, longest)
        estimate = estimate_memory(
            model_config,
            method=spec.method,
            batch_size=hyper.batch_size,
            seq_length=seq_length,
            gradient_checkpointing=hyper.gradient_checkpointing,
            **lora_settings,
            gpus=resources.gpus,
            nodes=resources.nodes,
            gpu_product=resources.gpu_product,
        )
    except (KeyError, ValueError, TypeError, ZeroDivisionError) as error:
        warnings.append(f"GPU memory estimate skipped: cannot read the base model's config.json ({error})")
        return None
    if estimate.fits_on_requested_gpus is False:
        warnings.append(
            f"estimated {human_bytes(estimate.gpu_memory_bytes_per_gpu)} per GPU exceeds the "
            f"{human_bytes(estimate.gpu_capacity_bytes or 0)} of {resources.gpu_product}: lower batchSize or "
            "maxSeqLength, enable gradientCheckpointing, use qlora, or request more GPUs"
        )
    return estimate


def _overfitting_guard(
    config: TrainerConfig, tally: Tally, estimate: MemoryEstimate | None, warnings: list[str]
) -> None:
    hyper = config.spec.hyperparameters
    if tally.train < MIN_TRAIN_ROWS:
        warnings.append(
            f"only {tally.train} training rows: fine-tuning on fewer than {MIN_TRAIN_ROWS} rows tends to "
            "overfit (consider more data or fewer epochs)"
        )
    if estimate is not None and tally.train_tokens:
        seen = tally.train_tokens * hyper.epochs
        if seen < MIN_TOKENS_PER_TRAINABLE_PARAM * estimate.trainable_params:
            warnings.append(
                f"{seen} training tokens ({hyper.epochs} epochs) for {estimate.trainable_params} trained "
                "parameters: high risk of overfitting (use a smaller LoRA rank or more data)"
            )


def _success_message(tally: Tally) -> str:
    return (
        f"{tally.train} training rows, {tally.eval} evaluation rows; dropped {tally.duplicates} duplicates, "
        f"{tally.leakage} leaked rows and {tally.invalid} invalid rows"
    )


def _summary(
    outcome: dict[str, Any],
    *,
    files: list[FileReport],
    tally: Tally,
    estimate: MemoryEstimate | None,
    warnings: list[str],
    config: TrainerConfig,
) -> dict[str, Any]:
    main = files[0] if files else None
    tokens = None
    if tally.histogram:
        tokens = {
            "p50": percentile(tally.histogram, 0.50),
            "p95": percentile(tally.histogram, 0.95),
            "max": max(tally.histogram),
            "truncated": tally.truncated,
        }
    dataset = {
        "rows": tally.train,
        "evalRows": tally.eval,
        "invalidRows": tally.invalid,
        "duplicatesDropped": tally.duplicates,
        "leakageRows": tally.leakage,
        "sha256": main.sha256 if main and main.sha256 else None,
        "format": main.format if main and main.format else None,
        "tokens": tokens,
    }
    return {
        "stage": STAGE,
        **outcome,
        "dataset": {k: v for k, v in dataset.items() if v is not None} if files else None,
        "estimate": estimate.to_status() if estimate else None,
        "warnings": list(warnings),
        "reportUri": config.artifacts.validation_report,
    }
