"""The user CLI's pure parts: progress line, tables, sparkline, loss sources and the built-in PNG writer."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from kubetune.cli import user


def test_progress_line_shows_phase_steps_loss_speed_and_eta() -> None:
    status = {"phase": "Running", "progress": {"step": 50, "totalSteps": 200, "trainLoss": "1.23",
                                                "tokensPerSecond": 3100, "etaSeconds": 95}}  # fmt: skip
    line = user.progress_line(status, width=8)
    assert line.startswith("Running")
    assert "[##......]" in line and "50/200" in line and "loss 1.23" in line
    assert "3100 tok/s" in line and "ETA 01:35" in line


def test_progress_line_before_training() -> None:
    assert "-/-" in user.progress_line({"phase": "Validating"})


def test_evaluation_table_compares_base_tuned_and_thresholds() -> None:
    job = {
        "spec": {"evaluation": {"thresholds": {"perplexity": {"max": 20.0}, "rougeL": {"min": 0.5}}}},
        "status": {"evaluation": {"metrics": {"perplexity": "6.8", "rougeL": "0.1"},
                                  "baseline": {"perplexity": "150", "rougeL": "0.02"},
                                  "passed": False, "failedThresholds": ["rougeL 0.1 < min 0.5"]}},
    }  # fmt: skip
    text = user.evaluation_table(job)
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "base", "tuned", "threshold"]
    assert lines[1].split() == ["perplexity", "150", "6.8", "max", "20.0", "ok"]
    assert lines[2].split() == ["rougeL", "0.02", "0.1", "min", "0.5", "FAIL"]
    assert text.endswith("evaluation FAILED")


def test_sparkline_spans_low_to_high() -> None:
    assert user.sparkline([3.0, 2.0, 1.0]) == "█▅▁"
    assert user.sparkline([]) == ""


def test_losses_from_the_trainers_progress_lines() -> None:
    lines = [
        'INFO kubetune_trainer.stages.train: progress {"step": 10, "trainLoss": "2.5"}',
        "something else",
        'INFO kubetune_trainer.stages.train: progress {"step": 20, "trainLoss": "2.0", "evalLoss": "2.2"}',
        'INFO kubetune_trainer.stages.train: progress {"step": 20, "trainLoss": "1.9", "evalLoss": "2.2"}',
    ]
    series = user.losses_from_log(lines)
    assert series["train"] == [(10, 2.5), (20, 1.9)]
    assert series["eval"] == [(20, 2.2)]


def test_losses_from_a_log_history_and_from_checkpoints() -> None:
    history = [{"step": 5, "loss": 3.0}, {"step": 10, "eval_loss": 2.5}, {"epoch": 1.0}]
    assert user.losses_from_history(history) == {"train": [(5, 3.0)], "eval": [(10, 2.5)]}
    status = {
        "checkpoints": [{"step": 20, "evalLoss": "2.0", "uri": "s3://x"}, {"step": 10, "uri": "s3://y"}]
    }
    assert user.losses_from_checkpoints(status) == {"train": [], "eval": [(20, 2.0)]}


def test_the_builtin_png_writer_makes_a_valid_png(tmp_path: Path) -> None:
    path = tmp_path / "loss.png"
    user._write_png_builtin(
        path, {"train": [(1, 3.0), (2, 2.0), (3, 1.5)], "eval": [(2, 2.5)]}, width=64, height=32
    )
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length = struct.unpack(">I", data[8:12])[0]
    width, height = struct.unpack(">II", data[16:24])
    assert (length, width, height) == (13, 64, 32)
    idat = data.index(b"IDAT")
    size = struct.unpack(">I", data[idat - 4 : idat])[0]
    raw = zlib.decompress(data[idat + 4 : idat + 4 + size])
    assert len(raw) == 32 * (1 + 64 * 3)
    assert raw.count(b"\xff") < len(raw) - 32  # something was drawn
