"""The serving pods' helpers: `fetch` (init container) and the benchmark's arithmetic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kubetune_trainer.bench import RequestResult, percentile, run_benchmark, summarize


def test_fetch_copies_model_prefix_and_single_file_from_s3(s3, tmp_path: Path) -> None:
    s3.put("s3://artifacts/models/tiny/config.json", '{"model_type": "llama"}')
    s3.put("s3://artifacts/models/tiny/sub/weights.bin", b"\x00\x01")
    s3.put("s3://artifacts/templates/chat.jinja", "{{ messages }}")
    command = [sys.executable, "-m", "kubetune_trainer", "fetch",
               "s3://artifacts/models/tiny/", str(tmp_path / "base"),
               "s3://artifacts/templates/chat.jinja", str(tmp_path / "chat.jinja")]  # fmt: skip
    subprocess.run(command, check=True, timeout=120)
    assert json.loads((tmp_path / "base" / "config.json").read_text()) == {"model_type": "llama"}
    assert (tmp_path / "base" / "sub" / "weights.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "chat.jinja").read_text() == "{{ messages }}"


def test_fetch_refuses_an_odd_argument_list() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kubetune_trainer", "fetch", "s3://a/b/"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "usage" in result.stderr


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]
    assert percentile(values, 0.95) == 19.0
    assert percentile(values, 0.5) == 10.0
    assert percentile([3.0], 0.95) == 3.0


def test_summary_counts_errors_and_tokens() -> None:
    results = [
        RequestResult(True, 1.0, 0.2, 10),
        RequestResult(True, 3.0, 0.4, 30),
        RequestResult(False, 0.1, None, 0, "x"),
    ]
    summary = summarize(results, wall_seconds=4.0, concurrency=2)
    assert summary["errorRate"] == "0.3333"
    assert summary["p50LatencySeconds"] == "2" and summary["p95LatencySeconds"] == "3"
    assert summary["ttftSeconds"] == "0.3" and summary["outputTokensPerSecond"] == "10"


def test_unreachable_endpoint_is_reported_not_raised() -> None:
    summary = run_benchmark("http://127.0.0.1:9/v1", "m", requests=2, concurrency=2, timeout=2)
    assert summary["ok"] is False and summary["reason"] == "EndpointUnavailable"
    assert summary["benchmark"]["errorRate"] == "1"


def test_fetch_downloads_hf_repositories_from_the_hub(monkeypatch, tmp_path: Path) -> None:
    import huggingface_hub

    from kubetune_trainer.__main__ import main

    calls = []

    def snapshot_download(repo_id: str, revision: str | None = None, local_dir: str | None = None) -> str:
        calls.append((repo_id, revision, local_dir))
        Path(local_dir or "").mkdir(parents=True, exist_ok=True)
        (Path(local_dir or "") / "config.json").write_text("{}")
        return str(local_dir)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert main(["fetch", "hf://meta-llama/Llama-3.1-8B-Instruct@main", str(tmp_path / "base")]) == 0
    assert calls == [("meta-llama/Llama-3.1-8B-Instruct", "main", str(tmp_path / "base"))]
    assert (tmp_path / "base" / "config.json").is_file()


def test_fetch_of_hf_says_so_when_the_hub_is_switched_off(monkeypatch, tmp_path: Path) -> None:
    import pytest

    from kubetune_trainer import storage

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(storage.StorageError, match="HF_HUB_OFFLINE"):
        storage.download_hf("hf://org/model", tmp_path)
