"""Checkpoints in S3 (moto over HTTP): complete-or-ignored, verified, retained, and resumed bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.trainer.conftest import S3Helper, write_config
from tests.trainer.test_train import DATA_URI, chat_rows, make_job, put_jsonl, validate

pytestmark = pytest.mark.usefixtures("torch_threads", "trainer_work_dir")

PREFIX = "s3://artifacts/team/job/checkpoints/"


def _checkpoint_dir(tmp_path: Path, name: str, payload: bytes = b"weights") -> Path:
    local = tmp_path / name
    (local / "sub").mkdir(parents=True)
    (local / "adapter_model.safetensors").write_bytes(payload)
    (local / "sub" / "trainer_state.json").write_text("{}")
    return local


def test_a_checkpoint_counts_only_once_its_manifest_exists(s3: S3Helper, tmp_path: Path) -> None:
    from kubetune_trainer.checkpoints import CheckpointStore

    store = CheckpointStore(PREFIX, writer="default/job/uid-1")
    record = store.save(_checkpoint_dir(tmp_path, "a"), step=10, eval_loss=1.5)
    assert record.uri == PREFIX + "step-00000010/"
    # A newer checkpoint whose upload was cut short: files, no manifest.
    s3.put(PREFIX + "step-00000020/adapter_model.safetensors", b"half")
    assert [r.step for r in store.complete()] == [10]
    assert store.latest() == store.complete()[0]
    manifest = json.loads(s3.get(PREFIX + "step-00000010/_COMPLETE.json"))
    assert {f["path"] for f in manifest["files"]} == {"adapter_model.safetensors", "sub/trainer_state.json"}
    assert manifest["evalLoss"] == 1.5 and manifest["writer"] == "default/job/uid-1"

    restored = store.download(record, tmp_path / "restored")
    assert (restored / "adapter_model.safetensors").read_bytes() == b"weights"
    assert (restored / "sub" / "trainer_state.json").exists()


def test_a_corrupted_checkpoint_fails_loudly(s3: S3Helper, tmp_path: Path) -> None:
    from kubetune_trainer.checkpoints import CheckpointError, CheckpointStore

    store = CheckpointStore(PREFIX, writer="w")
    record = store.save(_checkpoint_dir(tmp_path, "a"), step=1)
    s3.put(record.uri + "adapter_model.safetensors", b"tampered")
    with pytest.raises(CheckpointError, match="does not match its manifest"):
        store.download(record, tmp_path / "restored")


def test_retention_keeps_the_last_and_the_best_and_only_deletes_its_own(s3: S3Helper, tmp_path: Path) -> None:
    from kubetune_trainer.checkpoints import CheckpointStore

    ours = CheckpointStore(PREFIX, writer="default/job/uid-1")
    theirs = CheckpointStore(PREFIX, writer="default/job/uid-0")  # an earlier job of the same name
    theirs.save(_checkpoint_dir(tmp_path, "t"), step=5, eval_loss=9.0)
    for step, loss in [(10, 2.0), (20, 1.0), (30, 1.5), (40, 1.7), (50, None)]:
        ours.save(_checkpoint_dir(tmp_path, f"c{step}"), step=step, eval_loss=loss)
    kept = ours.retain(keep_last=2)
    assert [r.step for r in kept] == [5, 20, 40, 50]  # theirs, the best (1.0), the last two
    keys = s3.keys("artifacts", "team/job/checkpoints/")
    assert not any(k.startswith("team/job/checkpoints/step-00000010/") for k in keys)
    assert not any(k.startswith("team/job/checkpoints/step-00000030/") for k in keys)
    assert "team/job/checkpoints/step-00000005/_COMPLETE.json" in keys


def test_sigkill_then_rerun_resumes_and_matches_an_uninterrupted_run_bit_for_bit(
    s3: S3Helper, tiny_model_s3: str, tmp_path: Path
) -> None:
    """kill -9 after the first complete checkpoint; the rerun resumes from the newest complete one (a
    manifest-less newer one is ignored) and ends with exactly the uninterrupted run's adapter."""
    from kubetune_trainer.stages import train

    put_jsonl(s3, DATA_URI, chat_rows(240))
    spec = {
        "hyperparameters": {"epochs": 2, "batchSize": 4},
        "checkpoint": {"everySteps": 4, "keepLast": 2},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.1},  # dropout: the RNG state must be restored too
    }
    straight = make_job("lora", tiny_model_s3, output="s3://artifacts/straight/", **spec)
    interrupted = make_job("lora", tiny_model_s3, output="s3://artifacts/team/job/", **spec)
    validate(straight)
    validate(interrupted)

    config_file = write_config(interrupted, tmp_path / "config.json")
    env = {
        **os.environ,
        "KUBETUNE_LOG_LEVEL": "WARNING",
        "OMP_NUM_THREADS": "1",  # as in this process: the same kernels, the same bits
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "kubetune_trainer", "train", "--config", str(config_file)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not any(k.endswith("_COMPLETE.json") for k in s3.keys("artifacts", "team/job/checkpoints/")):
            if process.poll() is not None:
                pytest.fail(f"trainer exited early: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not s3.keys("artifacts", "team/job/adapter/"), "killed before finishing"

    # Straight run in the meantime of nothing: in-process, uninterrupted.
    reference = train.run(straight)
    assert reference["ok"] and "resumedFromStep" not in reference

    complete = sorted(
        k for k in s3.keys("artifacts", "team/job/checkpoints/") if k.endswith("_COMPLETE.json")
    )
    newest = int(complete[-1].split("step-")[1][:8])
    s3.put(f"{PREFIX}step-{newest + 1:08d}/adapter_model.safetensors", b"a half-uploaded checkpoint")
    resumed = train.run(interrupted)
    assert resumed["ok"], resumed
    assert resumed["resumedFromStep"] == newest
    assert resumed["progress"]["step"] == reference["progress"]["step"]

    ours = s3.get("s3://artifacts/team/job/adapter/adapter_model.safetensors")
    theirs = s3.get("s3://artifacts/straight/adapter/adapter_model.safetensors")
    assert ours == theirs, "the resumed run's adapter differs from the uninterrupted run's"
