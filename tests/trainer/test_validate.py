"""The validate stage end to end: every format and file type over S3 (moto over HTTP) and from disk (pvc://),
malformed files, duplicates and leakage, the eval split, token lengths, the estimate, the CLI."""

from __future__ import annotations

import csv
import gc
import hashlib
import io
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.trainer_config import TrainerConfig
from kubetune_trainer import storage
from kubetune_trainer.__main__ import compact_summary, main
from kubetune_trainer.formats import Example, iter_prepared
from kubetune_trainer.stages import validate
from tests.trainer.conftest import S3Helper, build_config, write_config

REPO = Path(__file__).resolve().parents[2]
MakeConfig = Callable[..., TrainerConfig]


# ------------------------------------------------------------------------------------------------ helpers


def qa(i: int) -> tuple[str, str]:
    return f"What is {i} + 7?", f"{i} + 7 = {i + 7}."


def rows_in_format(fmt: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    """n distinct rows of a format, all about the same simple facts."""
    rows: list[dict[str, Any]] = []
    for i in range(start, start + n):
        q, a = qa(i)
        if fmt == "openai":
            rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        elif fmt == "sharegpt":
            rows.append({"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]})
        elif fmt == "alpaca":
            rows.append({"instruction": q, "input": "", "output": a})
        elif fmt == "prompt-completion":
            rows.append({"prompt": q, "completion": a})
        elif fmt == "text":
            rows.append({"text": f"{q} {a}"})
        else:
            rows.append({"prompt": q, "chosen": a, "rejected": "I do not know."})
    return rows


def encode(rows: list[dict[str, Any]], file_type: str) -> bytes:
    if file_type == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows).encode()
    if file_type == "json":
        return json.dumps(rows).encode()
    if file_type == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
        return out.getvalue().encode()
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


def jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def read_report(config: TrainerConfig) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(storage.read_text(config.artifacts.validation_report))
    return report


def prepared(config: TrainerConfig, split: str) -> list[Example]:
    return list(iter_prepared(storage.join(config.artifacts.prepared_data, f"{split}.jsonl")))


def method_for(fmt: str) -> str:
    return "dpo" if fmt == "preference" else "lora"


# ----------------------------------------------------------------------------------------- every format

FORMATS = ["openai", "sharegpt", "alpaca", "prompt-completion", "text", "preference"]
KINDS = {"preference": "preference", "text": "text"}


@pytest.mark.parametrize("file_type", ["jsonl", "json", "csv", "parquet"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_and_file_type_over_s3(
    fmt: str, file_type: str, s3: S3Helper, tiny_model_uri: str, make_config: MakeConfig
) -> None:
    data = encode(rows_in_format(fmt, 40), file_type)
    uri = s3.put(f"s3://data/sets/{fmt}.{file_type}", data)
    config = make_config(
        base_model=tiny_model_uri,
        dataset={"uri": uri, "evalSplit": 0.2},
        output="s3://artifacts/jobs/one/",
        method=method_for(fmt),
    )
    summary = validate.run(config)

    assert summary["ok"] is True, summary
    assert "exitCode" not in summary
    dataset = summary["dataset"]
    assert dataset["format"] == fmt
    assert dataset["sha256"] == hashlib.sha256(data).hexdigest()
    assert dataset["rows"] + dataset["evalRows"] == 40
    assert dataset["evalRows"] > 0
    assert (dataset["invalidRows"], dataset["duplicatesDropped"], dataset["leakageRows"]) == (0, 0, 0)
    assert 5 < dataset["tokens"]["p50"] <= dataset["tokens"]["p95"] <= dataset["tokens"]["max"] < 64
    assert summary["estimate"]["gpuMemoryBytes"] > 0

    train, evaluation = prepared(config, "train"), prepared(config, "eval")
    assert len(train) == dataset["rows"] and len(evaluation) == dataset["evalRows"]
    assert {e.kind for e in train + evaluation} == {KINDS.get(fmt, "chat")}
    assert not {e.digest() for e in train} & {e.digest() for e in evaluation}
    report = read_report(config)
    assert report["ok"] is True and report["files"][0]["format"] == fmt
    assert s3.keys("artifacts", "jobs/one/") == [
        "jobs/one/validation/data/eval.jsonl",
        "jobs/one/validation/data/train.jsonl",
        "jobs/one/validation/report.json",
    ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_from_disk(
    fmt: str, pvc_root: Path, tiny_model_uri: str, make_config: MakeConfig
) -> None:
    (pvc_root / "datasets").mkdir()
    (pvc_root / "datasets" / "d.jsonl").write_bytes(encode(rows_in_format(fmt, 30), "jsonl"))
    config = make_config(
        base_model=tiny_model_uri,
        dataset={"uri": "pvc://datasets/d.jsonl", "format": fmt},
        output="pvc://out/job/",
        method=method_for(fmt),
    )
    summary = validate.run(config)
    assert summary["ok"] is True, summary
    assert summary["dataset"]["rows"] + summary["dataset"]["evalRows"] == 30
    assert (pvc_root / "out/job/validation/data/train.jsonl").is_file()
    assert (pvc_root / "out/job/validation/report.json").is_file()


def test_s3_base_model_metadata_is_fetched_without_weights(
    s3: S3Helper, tiny_model_s3: str, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched: list[str] = []
    original = storage.download_file

    def recording(uri: str, target: Any) -> Path:
        fetched.append(uri.rsplit("/", 1)[-1])
        return original(uri, target)

    monkeypatch.setattr(storage, "download_file", recording)
    uri = s3.put("s3://data/d.jsonl", encode(rows_in_format("openai", 20), "jsonl"))
    config = make_config(base_model=tiny_model_s3, dataset={"uri": uri}, output="s3://artifacts/j/")
    summary = validate.run(config)
    assert summary["ok"] is True, summary
    assert "config.json" in fetched and "tokenizer.json" in fetched
    assert "model.safetensors" not in fetched
    assert summary["dataset"]["tokens"]["max"] > 0


# ----------------------------------------------------------------------------------------- bad datasets

MALFORMED_LINES = [
    json.dumps({"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]}),
    '{"messages": [{"role": "user", "content": "q2"}',  # 2: truncated JSON
    json.dumps({"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "a"}]}),  # 3
    json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                             {"role": "assistant", "content": "c"}]}),  # 4: two user turns
    json.dumps({"messages": [{"role": "user", "content": "q5"}]}),  # 5: does not end with assistant
    json.dumps({"messages": [{"role": "user", "content": "q6"}, {"role": "assistant", "content": " "}]}),  # 6
    json.dumps({"prompt": "mixed", "completion": "formats"}),  # 7: another format in the file
    json.dumps({"messages": [{"role": "user", "content": "q8"}, {"role": "system", "content": "s"},
                             {"role": "assistant", "content": "a8"}]}),  # 8: system not first
    json.dumps({"messages": [{"role": "user", "content": "q9"}, {"role": "assistant", "content": "a9"}]}),
]  # fmt: skip
EXPECTED_ERRORS = [
    "line 2: broken JSON",
    "line 3: turn 1 content must be a string, got number",
    "line 4: two user turns in a row (turns 1 and 2) without a assistant turn between",
    "line 5: conversation must end with an assistant turn",
    "line 6: empty assistant turn 2",
    "line 7: missing field 'messages' (openai format)",
    "line 8: system turn 2 is only allowed first",
    "line 10: invalid UTF-8",
    "line 11: line is longer than 8 MiB",
]


def _malformed_file() -> bytes:
    lines = [line.encode() for line in MALFORMED_LINES]
    lines.append(b'{"messages": [{"role": "user", "content": "\xc3\x28"}]}')  # 10: invalid UTF-8
    lines.append(b'{"text": "' + b"y" * (10 * 1024 * 1024) + b'"}')  # 11: a 10 MB line
    return b"\n".join(lines) + b"\n"


def test_malformed_corpus_reports_line_numbers_and_fails(
    s3: S3Helper, tiny_model_uri: str, make_config: MakeConfig
) -> None:
    uri = s3.put("s3://data/bad.jsonl", _malformed_file())
    config = make_config(base_model=tiny_model_uri, dataset={"uri": uri}, output="s3://artifacts/bad/")
    summary = validate.run(config)
    assert summary["ok"] is False
    assert summary["reason"] == "InvalidDataset"
    assert summary["exitCode"] == 2
    assert summary["dataset"]["invalidRows"] == 9
    assert summary["message"].startswith(
        "9 of 11 rows are invalid (invalidRowTolerance 0): line 2: broken JSON"
    )
    assert "(and 4 more)" in summary["message"]
    report = read_report(config)
    assert len(report["errors"]) == 9
    for error, expected in zip(report["errors"], EXPECTED_ERRORS, strict=True):
        assert error.replace("an assistant", "a assistant").startswith(
            expected.replace("an assistant", "a assistant")
        )
    # Nothing prepared for training from an invalid dataset.
    assert s3.keys("artifacts", "bad/") == ["bad/validation/report.json"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b'{"foo": 1}\n', "cannot detect the format"),
    ],
)
def test_unreadable_dataset_fails_with_reason(
    content: bytes, message: str, s3: S3Helper, tiny_model_uri: str, make_config: MakeConfig
) -> None:
    uri = s3.put("s3://data/x.jsonl", content)
    config = make_config(base_model=tiny_model_uri, dataset={"uri": uri}, output="s3://artifacts/x/")
    summary = validate.run(config)
    assert (summary["ok"], summary["reason"], summary["exitCode"]) == (False, "InvalidDataset", 2)
    assert message in summary["message"]


def test_missing_dataset_is_invalid_not_retried(
    s3: S3Helper, tiny_model_uri: str, make_config: MakeConfig
) -> None:
    config = make_config(
        base_model=tiny_model_uri, dataset={"uri": "s3://data/nope.jsonl"}, output="s3://artifacts/x/"
    )
    summary = validate.run(config)
    assert (summary["reason"], summary["exitCode"]) == ("InvalidDataset", 2)
    assert "s3://data/nope.jsonl" in summary["message"]


def test_invalid_row_tolerance(s3: S3Helper, tiny_model_uri: str, make_config: MakeConfig) -> None:
    rows = jsonl(rows_in_format("openai", 19)) + b"{oops\n"
    uri = s3.put("s3://data/d.jsonl", rows)
    strict = make_config(base_model=tiny_model_uri, dataset={"uri": uri}, output="s3://artifacts/a/")
    assert validate.run(strict)["ok"] is False
    lenient = make_config(
        base_model=tiny_model_uri,
        dataset={"uri": uri, "invalidRowTolerance": 0.1},
        output="s3://artifacts/b/",
    )
    summary = validate.run(lenient)
    assert summary["ok"] is True
    assert summary["dataset"]["invalidRows"] == 1
    assert any("1 invalid rows skipped" in w for w in summary["warnings"])
    assert read_report(lenient)["errors"] == [
        "line 20: broken JSON: Expecting property name enclosed in double quotes (column 2)"
    ]


def test_method_and_format_must_agree(s3: S3Helper, tiny_model_uri: str, make_config: MakeConfig) -> None:
    uri = s3.put("s3://data/pref.jsonl", jsonl(rows_in_format("preference", 10)))
    config = make_config(base_model=tiny_model_uri, dataset={"uri": uri}, output="s3://artifacts/p/")
    summary = validate.run(config)
    assert (summary["ok"], summary["reason"]) == (False, "InvalidDataset")
    assert "method lora cannot train on preference pairs" in summary["message"]


def test_base_model_without_config_is_an_invalid_spec(
    pvc_root: Path, s3: S3Helper, make_config: MakeConfig
) -> None:
    (pvc_root / "models" / "empty").mkdir(parents=True)
    uri = s3.put("s3://data/d.jsonl", jsonl(rows_in_format("openai", 10)))
    config = make_config(base_model="pvc://models/empty", dataset={"uri": uri}, output="s3://artifacts/e/")
    summary = validate.run(config)
    assert (summary["ok"], summary["reason"], summary["exitCode"]) == (False, "InvalidSpec", 2)
    assert "has no config.json" in summary["message"]


# ------------------------------------------------------------------------------- duplicates, split, leakage


def test_duplicates_and_leakage_with_eval_uri(
    s3: S3Helper, tiny_model_uri: str, make_config: MakeConfig
) -> None:
    train_rows = rows_in_format("openai", 10)
    first = train_rows[0]["messages"]
    whitespace_twin = {"messages": [{**first[0], "content": "  What is 0 +   7? "}, first[1]]}
    eval_rows = rows_in_format("openai", 3, start=100)
    train_rows += [whitespace_twin, eval_rows[0], train_rows[3]]  # 1 near-dup, 1 leak, 1 exact dup
    eval_rows.append(eval_rows[1])  # a duplicate inside the eval file
    train_uri = s3.put("s3://data/train.jsonl", jsonl(train_rows))
    eval_uri = s3.put("s3://data/eval.jsonl", jsonl(eval_rows))
    config = make_config(
        base_model=tiny_model_uri, dataset={"uri": train_uri, "evalUri": eval_uri}, output="s3://artifacts/l/"
    )
    summary = validate.run(config)
    assert summary["ok"] is True, summary
    assert summary["dataset"] | {"sha256": None, "tokens": None} == {
        "rows": 10,
        "evalRows": 3,
        "invalidRows": 0,
        "duplicatesDropped": 3,
        "leakageRows": 1,
        "sha256": None,
        "format": "openai",
        "tokens": None,
    }
    train_ids = {e.digest() for e in prepared(config, "train")}
    eval_ids = {e.digest() for e in prepared(config, "eval")}
    assert len(train_ids) == 10 and len(eval_ids) == 3 and not train_ids & eval_ids
    files = read_report(config)["files"]
    assert [(f["role"], f["rowsRead"]) for f in files] == [("dataset", 13), ("eval", 4)]


def test_eval_split_is_by_hash_and_seed_not_position(
    s3: S3Helper, tiny_model_uri: str, make_config: MakeConfig
) -> None:
    rows = rows_in_format("prompt-completion", 400)
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)

    def eval_ids(data: list[dict[str, Any]], seed: int, name: str) -> set[str]:
        uri = s3.put(f"s3://data/{name}.jsonl", jsonl(data))
        config = make_config(
            base_model=tiny_model_uri,
            dataset={"uri": uri, "evalSplit": 0.25},
            output=f"s3://artifacts/{name}/",
            hyperparameters={"seed": seed},
        )
        assert validate.run(config)["ok"] is True
        return {e.digest() for e in prepared(config, "eval")}

    ordered = eval_ids(rows, 42, "ordered")
    assert eval_ids(shuffled, 42, "shuffled") == ordered
    assert eval_ids(rows, 43, "reseeded") != ordered
    assert 60 < len(ordered) < 140  # about 25% of 400


def test_max_samples_limits_rows_but_hashes_the_whole_file(
    s3: S3Helper, tiny_model_uri: str, make_config: MakeConfig
) -> None:
    data = jsonl(rows_in_format("openai", 50))
    uri = s3.put("s3://data/d.jsonl", data)
    config = make_config(
        base_model=tiny_model_uri, dataset={"uri": uri, "maxSamples": 20}, output="s3://artifacts/m/"
    )
    summary = validate.run(config)
    assert summary["dataset"]["rows"] + summary["dataset"]["evalRows"] == 20
    assert summary["dataset"]["sha256"] == hashlib.sha256(data).hexdigest()


# -------------------------------------------------------------------------------------- tokens, estimate


def test_token_lengths_match_the_tokenizers_chat_template(
    s3: S3Helper, tiny_model_dir: Path, tiny_model_uri: str, make_config: MakeConfig
) -> None:
    from transformers import AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    rows = rows_in_format("openai", 30)
    rows.append({"messages": [{"role": "user", "content": "tell me a long story " * 20},
                              {"role": "assistant", "content": "once upon a time " * 20}]})  # fmt: skip
    expected = sorted(
        len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
        for r in rows
    )
    uri = s3.put("s3://data/d.jsonl", jsonl(rows))
    config = make_config(
        base_model=tiny_model_uri,
        dataset={"uri": uri},
        output="s3://artifacts/t/",
        hyperparameters={"maxSeqLength": 32},
    )
    tokens = validate.run(config)["dataset"]["tokens"]
    assert tokens["max"] == expected[-1]
    assert tokens["p50"] == expected[len(expected) // 2 - (1 if len(expected) % 2 == 0 else 0)]
    assert tokens["truncated"] == sum(n > 32 for n in expected)

    override = make_config(
        base_model=tiny_model_uri,
        dataset={
            "uri": uri,
            "chatTemplate": "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}",
        },
        output="s3://artifacts/t2/",
    )
    assert validate.run(override)["dataset"]["tokens"]["max"] > tokens["max"]


def test_hf_base_model_offline_skips_tokens_and_estimate_with_a_note(
    s3: S3Helper, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    uri = s3.put("s3://data/d.jsonl", jsonl(rows_in_format("openai", 20)))
    config = make_config(
        base_model="hf://meta-llama/Llama-3.1-8B", dataset={"uri": uri}, output="s3://artifacts/h/"
    )
    summary = validate.run(config)
    assert summary["ok"] is True
    assert "tokens" not in summary["dataset"] and summary["estimate"] is None
    assert any("skipped" in w and "offline" in w for w in summary["warnings"])


def test_estimate_and_overfitting_warnings_reach_the_summary(
    s3: S3Helper, tiny_model_uri: str, make_config: MakeConfig
) -> None:
    uri = s3.put("s3://data/d.jsonl", jsonl(rows_in_format("openai", 30)))
    config = make_config(
        base_model=tiny_model_uri,
        dataset={"uri": uri},
        output="s3://artifacts/e/",
        resources={"gpus": 1, "gpuProduct": "Tesla-T4"},
    )
    summary = validate.run(config)
    assert summary["estimate"]["fitsOnRequestedGpus"] is True
    assert summary["estimate"]["gpuMemoryBytesPerGpu"] == summary["estimate"]["gpuMemoryBytes"]
    assert any("training rows" in w and "overfit" in w for w in summary["warnings"])
    report = read_report(config)
    assert report["estimate"]["trainableParams"] > 0
    assert set(report["estimate"]["breakdownBytes"]) >= {"weights", "activations", "optimizer", "overhead"}


# --------------------------------------------------------------------------------- CLI, termination message


def _cli(config_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubetune_trainer", "validate", "--config", str(config_path)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        check=False,
    )


def test_cli_exit_codes_and_termination_message(
    s3: S3Helper, tiny_model_uri: str, tmp_path: Path, termination_log: Path
) -> None:
    good = s3.put("s3://data/good.jsonl", jsonl(rows_in_format("openai", 20)))
    bad = s3.put("s3://data/bad.jsonl", _malformed_file())
    env = {"PYTHONPATH": os.pathsep.join([str(REPO / "trainer-image/src"), str(REPO / "operator/src")])}

    ok_config = build_config(base_model=tiny_model_uri, dataset={"uri": good}, output="s3://artifacts/ok/")
    result = _cli(write_config(ok_config, tmp_path / "ok.json"), env)
    assert result.returncode == 0, result.stderr
    message = json.loads(termination_log.read_text())
    assert set(message) == {
        "stage",
        "ok",
        "reason",
        "message",
        "dataset",
        "estimate",
        "warnings",
        "reportUri",
    }
    assert (message["stage"], message["ok"], message["reason"]) == ("validate", True, "DatasetValid")
    assert set(message["dataset"]) == {
        "rows", "evalRows", "invalidRows", "duplicatesDropped", "leakageRows", "sha256", "format", "tokens",
    }  # fmt: skip
    assert set(message["dataset"]["tokens"]) == {"p50", "p95", "max", "truncated"}
    assert set(message["estimate"]) == {"gpuMemoryBytes", "gpuMemoryBytesPerGpu", "fitsOnRequestedGpus"}
    assert (
        "AWS_SECRET_ACCESS_KEY" not in result.stderr
        and os.environ["AWS_SECRET_ACCESS_KEY"] not in result.stderr
    )

    bad_config = build_config(base_model=tiny_model_uri, dataset={"uri": bad}, output="s3://artifacts/bad/")
    result = _cli(write_config(bad_config, tmp_path / "bad.json"), env)
    assert result.returncode == 2
    message = json.loads(termination_log.read_text())
    assert (message["ok"], message["reason"]) == (False, "InvalidDataset")
    assert "line 2: broken JSON" in message["message"]
    assert "exitCode" not in message
    assert len(termination_log.read_bytes()) < 4096


def test_main_in_process_invalid_config_and_unwritable_termination_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(tmp_path / "no-such-dir" / "log"))
    bad = tmp_path / "config.json"
    bad.write_text('{"job": {}}')
    assert main(["validate", "--config", str(bad)]) == 2
    assert any("termination message not written" in r.getMessage() for r in caplog.records)


def test_missing_stage_module_is_a_clear_error(
    tmp_path: Path, termination_log: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_uri: str
) -> None:
    import importlib

    real_import = importlib.import_module

    def fake_import(name: str, *args: Any) -> Any:
        if name == "kubetune_trainer.stages.bench":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    config = build_config(
        base_model=tiny_model_uri, dataset={"uri": "pvc://d/x.jsonl"}, output="pvc://out/o/"
    )
    assert main(["bench", "--config", str(write_config(config, tmp_path / "c.json"))]) == 1
    message = json.loads(termination_log.read_text())
    assert message["reason"] == "StageUnavailable"
    assert "kubetune_trainer.stages.bench" in message["message"]


def test_schema_stage_prints_the_trainer_config_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "TrainerConfig"
    assert "spec" in schema["properties"] and "metricsPort" in schema["properties"]


def test_compact_summary_fits_the_termination_limit() -> None:
    summary = {
        "stage": "validate",
        "ok": False,
        "reason": "InvalidDataset",
        "message": "x" * 10_000,
        "dataset": {"rows": 1},
        "warnings": ["w" * 1000] * 50,
        "exitCode": 2,
        "extra": "e" * 5000,
    }
    text = compact_summary(summary)
    assert len(text.encode()) <= 4096
    data = json.loads(text)
    assert data["reason"] == "InvalidDataset" and data["dataset"] == {"rows": 1} and "exitCode" not in data


# ------------------------------------------------------------------------------------------- memory bound


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_200k_rows_stream_with_bounded_memory(
    pvc_root: Path, tiny_model_uri: str, make_config: MakeConfig
) -> None:
    (pvc_root / "d").mkdir()
    small, big = pvc_root / "d" / "small.jsonl", pvc_root / "d" / "big.jsonl"
    small.write_bytes(jsonl(rows_in_format("openai", 20)))
    with big.open("w") as out:
        for i in range(200_000):
            # (i % 997, i % 211) is unique below 210,367: distinct rows built from a small vocabulary.
            item, aisle = i % 997, i % 211
            question = f"How many boxes of item {item} are in aisle {aisle}?"
            answer = f"Aisle {aisle} has {i % 89} boxes of item {item}."
            out.write(
                f'{{"messages": [{{"role": "user", "content": "{question}"}}, '
                f'{{"role": "assistant", "content": "{answer}"}}]}}\n'
            )
    size = big.stat().st_size
    # Warm up (imports, tokenizer) on a small file, then measure the peak RSS growth of the big run only.
    validate.run(
        make_config(base_model=tiny_model_uri, dataset={"uri": "pvc://d/small.jsonl"}, output="pvc://out/o1/")
    )
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS
    before = _proc_status_bytes("VmRSS")
    summary = validate.run(
        make_config(base_model=tiny_model_uri, dataset={"uri": "pvc://d/big.jsonl"}, output="pvc://out/o2/")
    )
    growth = _proc_status_bytes("VmHWM") - before
    assert summary["ok"] is True
    assert summary["dataset"]["rows"] + summary["dataset"]["evalRows"] == 200_000
    # Holding the rows would cost ~10x the file (Python dicts); streaming keeps a batch, a token-length
    # histogram and 16-32 bytes of digest per row for duplicate checks.
    assert growth < 0.6 * size, f"peak RSS grew {growth / 1e6:.0f} MB for a {size / 1e6:.0f} MB file"
