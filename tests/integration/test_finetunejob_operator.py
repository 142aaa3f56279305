"""The real operator against the API emulator: the test plays kubelet and the job controller."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kubetune.reconcile import conditions as c
from tests.api.conftest import REPO, load_example, with_changes
from tests.integration.harness import Api
from tests.reconcile.world import FINISH_OK, TRAINING_OK, VALIDATION_OK

EXAMPLE = load_example("01-lora-basic/finetunejob.yaml")
ALL_CONDITIONS = {
    c.DATASET_VALIDATED,
    c.ADMITTED,
    c.RUNNING,
    c.EVALUATED,
    c.EVALUATION_PASSED,
    c.COMPLETE,
    c.FAILED,
    c.SUSPENDED,
}


def _job(name: str, **changes) -> dict:
    return with_changes(EXAMPLE, {"metadata.name": name, **changes})


def _kubectl(kubeconfig: Path, home: Path, *args: str, stdin: str | None = None) -> str:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(home)}
    result = subprocess.run(  # noqa: PLW1510  (the return code is asserted below, with stderr)
        ["kubectl", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _train_through(api: Api, name: str) -> None:
    api.wait_job(f"{name}-validate")
    api.finish_job(f"{name}-validate", VALIDATION_OK)
    api.wait_job(f"{name}-train")


@pytest.mark.kubectl
def test_kubectl_apply_to_succeeded_with_everything_filled(
    api: Api, operator, kubeconfig: Path, tmp_path: Path
) -> None:
    _kubectl(
        kubeconfig,
        tmp_path,
        "apply",
        "--validate=false",
        "-f",
        str(REPO / "examples/01-lora-basic/finetunejob.yaml"),
    )
    name = "support-bot"
    api.wait_phase(name, "Validating")
    assert api.get("Job", f"{name}-train") is None  # no GPU before the dataset passes
    _train_through(api, name)
    api.run_pod(f"{name}-train", "Running")
    api.patch("Job", f"{name}-train", {"status": {"active": 1}}, sub="status")
    api.wait_phase(name, "Running")
    api.delete("Pod", f"{name}-train-0")
    api.finish_job(f"{name}-train", TRAINING_OK)
    api.wait_job(f"{name}-finish")
    api.wait_phase(name, "Evaluating")
    api.finish_job(f"{name}-finish", FINISH_OK)
    status = api.wait_phase(name, "Succeeded")

    conditions = {cond["type"]: cond for cond in status["conditions"]}
    assert set(conditions) >= ALL_CONDITIONS
    assert conditions[c.COMPLETE]["status"] == conditions[c.EVALUATION_PASSED]["status"] == "True"
    assert all(
        cond["observedGeneration"] == 1 and cond["reason"] and cond["lastTransitionTime"]
        for cond in conditions.values()
    )
    for block in ("dataset", "estimate", "progress", "checkpoints", "evaluation", "outputs"):
        assert status[block], block
    assert status["dataset"]["tokens"]["p95"] == 300
    assert status["progress"]["percent"] == 100
    assert status["observedGeneration"] == 1
    api.wait_for(
        "events",
        lambda: (
            {"ValidationStarted", "DatasetValidated", "TrainingStarted", "EvaluationPassed", "Succeeded"}
            <= set(api.events(name))
        ),
    )
    listing = _kubectl(kubeconfig, tmp_path, "get", "ftj")
    assert name in listing and "Succeeded" in listing


def test_rejected_dataset_fails_and_never_creates_training(api: Api, operator) -> None:
    name = "bad-data"
    api.create(_job(name))
    api.wait_job(f"{name}-validate")
    rejection = {
        "stage": "validate",
        "ok": False,
        "reason": "InvalidDataset",
        "message": "line 3: missing field 'messages'",
    }
    api.finish_job(f"{name}-validate", rejection, ok=False, reason="PodFailurePolicy")
    status = api.wait_phase(name, "Failed")
    failed = next(cond for cond in status["conditions"] if cond["type"] == c.FAILED)
    assert failed["reason"] == "InvalidDataset" and "line 3" in failed["message"]
    api.wait_for("a settled operator", lambda: "DatasetRejected" in api.events(name))
    assert api.get("Job", f"{name}-train") is None


def test_killed_training_pod_is_retried_then_backoff_fails(api: Api, operator) -> None:
    name = "flaky"
    api.create(_job(name, **{"spec.backoffLimit": 1}))
    _train_through(api, name)
    api.run_pod(
        f"{name}-train", "Failed", state={"terminated": {"exitCode": 137, "reason": "Error"}}, index=0
    )
    api.run_pod(f"{name}-train", "Running", index=1)
    api.patch("Job", f"{name}-train", {"status": {"active": 1, "failed": 1}}, sub="status")
    api.wait_for("restarts counted", lambda: api.status(name).get("restarts") == 1)
    api.wait_for("Resumed event", lambda: "Resumed" in api.events(name))
    api.finish_job(f"{name}-train", None, ok=False, index=1)
    status = api.wait_phase(name, "Failed")
    assert api.condition(name, c.FAILED)["reason"] == c.BACKOFF_LIMIT_EXCEEDED
    assert status["restarts"] >= 1


def test_kueue_queue_user_suspend_resume_and_deadline(api: Api, operator) -> None:
    name = "queued"
    api.create(_job(name, **{"spec.scheduling.queueName": "gpu-team-a", "spec.activeDeadlineSeconds": 600}))
    _train_through(api, name)
    train = api.get("Job", f"{name}-train")
    assert train["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-team-a"
    assert train["spec"]["suspend"] is True and train["spec"]["activeDeadlineSeconds"] == 600
    api.wait_phase(name, "Queued")
    assert api.condition(name, c.ADMITTED)["reason"] == c.QUEUED_BY_KUEUE
    api.patch("Job", f"{name}-train", {"spec": {"suspend": False}})  # Kueue admits it
    api.wait_for("admitted", lambda: api.condition(name, c.ADMITTED).get("status") == "True")

    api.patch("FineTuneJob", name, {"spec": {"suspend": True}})
    api.wait_phase(name, "Suspended")
    api.wait_for("Kueue job removed on user suspend", lambda: api.get("Job", f"{name}-train") is None)
    api.patch("FineTuneJob", name, {"spec": {"suspend": False}})
    api.wait_job(f"{name}-train")
    api.wait_for("not suspended", lambda: api.condition(name, c.SUSPENDED).get("status") == "False")

    api.patch(
        "Job",
        f"{name}-train",
        {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}},
        sub="status",
    )
    api.wait_phase(name, "Failed")
    assert api.condition(name, c.FAILED)["reason"] == c.DEADLINE_EXCEEDED


def test_user_suspend_without_queue_suspends_the_job(api: Api, operator) -> None:
    name = "pausable"
    api.create(_job(name))
    _train_through(api, name)
    api.patch("FineTuneJob", name, {"spec": {"suspend": True}})
    api.wait_for("Job suspended", lambda: api.get("Job", f"{name}-train")["spec"].get("suspend") is True)
    assert api.wait_phase(name, "Suspended")["observedGeneration"] == 2
    api.patch("FineTuneJob", name, {"spec": {"suspend": False}})
    api.wait_for("Job resumed", lambda: api.get("Job", f"{name}-train")["spec"].get("suspend") is False)


def test_deleting_the_job_removes_its_children(api: Api, operator) -> None:
    name = "short-lived"
    api.create(_job(name))
    api.wait_job(f"{name}-validate")
    api.delete("FineTuneJob", name)
    api.wait_for("children collected", lambda: not api.list("Job", f"kubetune.dev/finetunejob={name}"))


# Written as people write it: decimals are plain YAML numbers, `2e-4` without a dot included.
MANIFEST_AS_TYPED = """\
apiVersion: kubetune.dev/v1alpha1
kind: FineTuneJob
metadata:
  name: typed-numbers
spec:
  baseModel: {uri: "s3://models/tiny/"}
  dataset: {uri: "s3://data/rows.jsonl", evalSplit: 0.1}
  method: lora
  lora: {r: 8, alpha: 16, dropout: 0.05}
  hyperparameters: {epochs: 1, learningRate: 2e-4, warmupRatio: 0.03}
  evaluation:
    metrics: [perplexity]
    thresholds: {perplexity: {max: 20}}
  resources: {gpus: 0}
  output: {uri: "s3://artifacts/typed-numbers/"}
"""


@pytest.mark.kubectl
def test_kubectl_apply_with_plain_numbers_trains_with_exactly_that_learning_rate(
    api: Api, operator, kubeconfig: Path, tmp_path: Path
) -> None:
    from kubetune.api.trainer_config import CONFIG_FILE_NAME, TrainerConfig
    from kubetune_trainer.stages.train import Device, training_arguments

    _kubectl(kubeconfig, tmp_path, "apply", "-f", "-", stdin=MANIFEST_AS_TYPED)
    stored = api.get("FineTuneJob", "typed-numbers")
    assert stored is not None
    hyper = stored["spec"]["hyperparameters"]
    assert (hyper["learningRate"], hyper["warmupRatio"]) == (0.0002, 0.03)
    assert stored["spec"]["evaluation"]["thresholds"] == {"perplexity": {"max": 20}}
    api.wait_phase("typed-numbers", "Validating")

    # The config the trainer's pods mount, read back the way the trainer reads it.
    config_map = api.wait_for("the trainer config", lambda: api.get("ConfigMap", "typed-numbers-config"))
    config = TrainerConfig.model_validate_json(config_map["data"][CONFIG_FILE_NAME])
    assert config.spec.hyperparameters is not None and config.spec.lora is not None
    assert config.spec.hyperparameters.learning_rate == 0.0002
    assert config.spec.lora.dropout == 0.05 and config.spec.dataset.eval_split == 0.1
    arguments = training_arguments(config, tmp_path / "out", Device(cuda=False, bf16=False), has_eval=True)
    assert arguments.learning_rate == 0.0002
    assert arguments.lr_scheduler_type == "cosine"
