"""`kubetune_trainer launch`: a real torch.distributed run of two CPU processes, whose exit code survives.

torchrun exits 1 whatever its workers' codes; the launcher must exit with the worker's code, so the Job's
podFailurePolicy (exit 2: bad input, fail at once) still applies to multi-GPU pods."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubetune_trainer.launch import exit_code_of

WORKER = """
import json, os, signal, sys, time
from kubetune_trainer.__main__ import write_termination_message
rank = int(os.environ["RANK"])
mode = sys.argv[1]
if mode == "sigterm":
    # The trainer's preemption callback, in small: SIGTERM -> write a checkpoint, exit 143.
    def stop(*_):
        open(os.path.join(sys.argv[2], f"checkpoint-{rank}"), "w").write("saved")
        sys.exit(143)
    signal.signal(signal.SIGTERM, stop)
    open(os.path.join(sys.argv[2], f"ready-{rank}"), "w").close()
    time.sleep(60)
if mode == "summaries":
    # Rank 1 finishes last: without the launcher its summary would overwrite rank 0's.
    time.sleep(rank * 1.5)
    write_termination_message({"stage": "train", "ok": True, "reason": "Complete", "message": f"rank {rank}"})
    sys.exit(0)
if mode == "bad-input-on-rank-1":
    if rank == 0:
        signal.signal(signal.SIGTERM, lambda *_: (write_termination_message(
            {"stage": "train", "ok": False, "reason": "Preempted", "message": "rank 0"}), sys.exit(143)))
        time.sleep(60)
    write_termination_message({"stage": "train", "ok": False, "reason": "InvalidDataset", "message": "rank 1"})
    sys.exit(2)
sys.exit(int(mode))
"""


def _launch(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "KUBETUNE_TERMINATION_LOG": str(tmp_path / "termination-log"),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kubetune_trainer",
            "launch",
            "--standalone",
            "--nproc-per-node=2",
            "--shutdown-timeout=20",
            str(script),
            *args,
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.parametrize("code", [0, 2, 1])
def test_launcher_exits_with_the_workers_exit_code(tmp_path: Path, code: int) -> None:
    process = _launch(tmp_path, str(code))
    output, _ = process.communicate(timeout=120)
    assert process.returncode == code, output.decode(errors="replace")[-3000:]


def test_sigterm_reaches_the_workers_which_checkpoint_before_the_launcher_exits(tmp_path: Path) -> None:
    process = _launch(tmp_path, "sigterm", str(tmp_path))
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{rank}").exists() for rank in (0, 1)):
        assert process.poll() is None and time.monotonic() < deadline, "workers never started"
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)  # the kubelet signals the container's main process only
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, output.decode(errors="replace")[-3000:]
    assert {p.name for p in tmp_path.glob("checkpoint-*")} == {"checkpoint-0", "checkpoint-1"}


def test_signalled_workers_report_as_a_shell_would() -> None:
    assert exit_code_of(-9) == 137
    assert exit_code_of(2) == 2
    assert exit_code_of(0) == 1  # a failure without a code is still a failure


def test_the_termination_message_is_rank_0s_not_the_last_workers(tmp_path: Path) -> None:
    process = _launch(tmp_path, "summaries")
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output.decode(errors="replace")[-3000:]
    assert json.loads((tmp_path / "termination-log").read_text())["message"] == "rank 0"


def test_the_failed_workers_summary_and_code_tell_the_pods_outcome(tmp_path: Path) -> None:
    process = _launch(tmp_path, "bad-input-on-rank-1")
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 2, output.decode(errors="replace")[-3000:]
    summary = json.loads((tmp_path / "termination-log").read_text())
    assert (summary["reason"], summary["message"]) == ("InvalidDataset", "rank 1")
