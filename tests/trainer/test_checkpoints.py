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


def test_retention_counts_a_nan_eval_loss_as_the_worst(s3: S3Helper, tmp_path: Path) -> None:
    from kubetune_trainer.checkpoints import CheckpointStore

    store = CheckpointStore(PREFIX, writer="w")
    for step, loss in [(10, float("nan")), (20, 2.0), (30, 3.0)]:
        store.save(_checkpoint_dir(tmp_path, f"c{step}"), step=step, eval_loss=loss)
    assert [r.step for r in store.retain(keep_last=1)] == [20, 30]


# The CLI's train stage in a child process that, at the end of step FREEZE_STEP, writes MARKER (atomically)
# and then hangs until it is killed: a kill at a known step, however fast or slow the machine.
_TRAIN_THEN_FREEZE = """
import os, sys, threading
from transformers import TrainerCallback
from kubetune_trainer.__main__ import main
from kubetune_trainer.stages import train

marker, freeze_step, config_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]

class FreezeAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == freeze_step:
            with open(marker + ".tmp", "w") as out:
                out.write(str(state.global_step))
            os.replace(marker + ".tmp", marker)
            threading.Event().wait()

real_train = train.train
train.train = lambda config, **kw: real_train(config, extra_callbacks=[FreezeAt()], **kw)
sys.exit(main(["train", "--config", config_path]))
"""


def test_sigkill_then_rerun_resumes_and_matches_an_uninterrupted_run_bit_for_bit(
    s3: S3Helper, tiny_model_s3: str, tmp_path: Path, torch_threads: int
) -> None:
    """kill -9 two steps after the first complete checkpoint (step 4 of 8 or more, frozen at step 6); the
    rerun resumes from the newest complete one (a manifest-less newer one is ignored), redoes the lost steps
    and ends with exactly the uninterrupted run's adapter."""
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
        "OMP_NUM_THREADS": str(torch_threads),  # as in this process: the same kernels, the same bits
    }
    marker, stderr_path = tmp_path / "frozen", tmp_path / "trainer.stderr"
    with stderr_path.open("wb") as stderr:
        command = [sys.executable, "-c", _TRAIN_THEN_FREEZE, str(marker), "6", str(config_file)]
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        # Waits for a state, not a duration (pytest's timeout guards against a hang).
        while not marker.exists():
            if process.poll() is not None:
                pytest.fail(f"trainer exited before step 6: {stderr_path.read_text()[-2000:]}")
            time.sleep(0.2)
        assert marker.read_text() == "6"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not s3.keys("artifacts", "team/job/adapter/"), "killed before finishing"
    complete = [k for k in s3.keys("artifacts", "team/job/checkpoints/") if k.endswith("_COMPLETE.json")]
    assert complete == ["team/job/checkpoints/step-00000004/_COMPLETE.json"]

    # Straight run in the meantime of nothing: in-process, uninterrupted.
    reference = train.run(straight)
    assert reference["ok"] and "resumedFromStep" not in reference

    assert reference["progress"]["step"] >= 8, reference["progress"]  # step 6 was mid-run
    s3.put(f"{PREFIX}step-00000005/adapter_model.safetensors", b"a half-uploaded checkpoint")
    resumed = train.run(interrupted)
    assert resumed["ok"], resumed
    assert resumed["resumedFromStep"] == 4
    assert resumed["progress"]["step"] == reference["progress"]["step"]

    ours = s3.get("s3://artifacts/team/job/adapter/adapter_model.safetensors")
    theirs = s3.get("s3://artifacts/straight/adapter/adapter_model.safetensors")
    assert ours == theirs, "the resumed run's adapter differs from the uninterrupted run's"
