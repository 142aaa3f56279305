"""The operator↔trainer contract (kubetune.api.trainer_contract), end to end and without fakes of either side:
the real trainer exporter is scraped by the operator's real scraper, and the operator's port setting is
followed from its environment through the rendered pod and TrainerConfig to the port the trainer serves."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubetune.adapters.scrape import scrape_trainer
from kubetune.api import trainer_contract as contract
from kubetune.api.common import ResourceIdentity
from kubetune.api.finetunejob import FineTuneJobSpec, Threshold
from kubetune.api.trainer_config import CONFIG_FILE_NAME, TrainerConfig
from kubetune.handlers.settings import ConfigError, OperatorConfig
from kubetune.reconcile.progress import TRAINER_METRICS, progress_from_samples
from kubetune.render import finetunejob as render
from tests.api.conftest import load_example

OWNER = ResourceIdentity(name="support-bot", namespace="team-a", uid="uid-1", generation=1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def loopback_trainer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer binds its metrics server to the pod's address; here that is the loopback."""
    monkeypatch.setenv("KUBETUNE_METRICS_HOST", "127.0.0.1")
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------------------- metric names, served and read


def test_a_resumed_trainer_shows_resumed_from_step_in_the_scraped_progress(loopback_trainer: None) -> None:
    from kubetune_trainer.metrics import Progress, TrainerMetrics

    metrics = TrainerMetrics()
    port = _free_port()
    assert metrics.serve(port)
    try:
        metrics.update(
            Progress(step=60, total_steps=120, epoch=1.5, train_loss=0.8125, tokens_per_second=512.9,
                     eval_loss=0.9, eta_seconds=30.4)
        )  # fmt: skip
        metrics.checkpoint_step.set(50)
        metrics.resumed_from_step.set(50)  # as the train stage does when it resumes from a checkpoint
        samples = asyncio.run(scrape_trainer("127.0.0.1", port))
    finally:
        metrics.stop()
    assert samples is not None
    assert progress_from_samples(samples) == {
        "step": 60,
        "totalSteps": 120,
        "epoch": "1.5",
        "trainLoss": "0.8125",
        "evalLoss": "0.9",
        "tokensPerSecond": 512,
        "etaSeconds": 30,
        "lastCheckpointStep": 50,
        "resumedFromStep": 50,
    }


def test_a_fresh_trainer_reports_no_resume(loopback_trainer: None) -> None:
    from kubetune_trainer.metrics import TrainerMetrics

    metrics = TrainerMetrics()
    port = _free_port()
    assert metrics.serve(port)
    try:
        samples = asyncio.run(scrape_trainer("127.0.0.1", port))
    finally:
        metrics.stop()
    assert samples is not None
    # 0 is what the reconciler reads as "did not resume" (it records only a positive step).
    assert progress_from_samples(samples)["resumedFromStep"] == 0


def test_every_metric_the_operator_reads_is_one_the_trainer_serves(loopback_trainer: None) -> None:
    import urllib.request

    from kubetune_trainer.metrics import TrainerMetrics

    metrics = TrainerMetrics()
    port = _free_port()
    assert metrics.serve(port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        metrics.stop()
    served = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    assert set(TRAINER_METRICS) <= served, sorted(set(TRAINER_METRICS) - served)
    declared = {value for name, value in vars(contract).items() if name.isupper() and isinstance(value, str)}
    trainer_series = {
        name for name in served if name.startswith(contract.METRIC_PREFIX) and not name.endswith("_created")
    }
    assert trainer_series == declared - {contract.METRIC_PREFIX}, (
        "every trainer series is named in the contract"
    )


# ------------------------------------------------------------------------------------------- the port


class _Cluster:
    """The two reads `observe` makes, answered with the rendered training Job and its running pod."""

    def __init__(self, job: dict[str, Any], pod_ip: str) -> None:
        self.job = {**job, "metadata": {**job["metadata"], "uid": "job-uid"}, "status": {"active": 1}}
        name = job["metadata"]["name"]
        self.pod = {
            "metadata": {"name": f"{name}-0", "namespace": OWNER.namespace, "creationTimestamp": "2026-01-01T00:00:00Z",
                         "labels": {**job["spec"]["template"]["metadata"]["labels"], "batch.kubernetes.io/job-name": name}},
            "spec": job["spec"]["template"]["spec"],
            "status": {"phase": "Running", "podIP": pod_ip},
        }  # fmt: skip

    async def list(self, api_version: str, kind: str, namespace: str, **_: Any) -> list[dict[str, Any]]:
        return {"Job": [self.job], "Pod": [self.pod]}[kind]

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return None


def test_the_trainer_listens_where_the_operator_scrapes(
    loopback_trainer: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune.handlers import finetunejob as handler
    from kubetune.handlers.runtime import RUNTIME
    from kubetune_trainer.__main__ import execute_stage
    from kubetune_trainer.metrics import Progress
    from kubetune_trainer.stages import train as train_stage

    port = _free_port()
    assert port != contract.DEFAULT_METRICS_PORT
    operator = OperatorConfig.from_env({"KUBETUNE_TRAINER_METRICS_PORT": str(port)})
    monkeypatch.setattr(RUNTIME, "config", operator)

    # What the operator renders from its setting: the pod's port and the config file the trainer reads.
    resource = load_example("01-lora-basic/finetunejob.yaml")
    spec = FineTuneJobSpec.model_validate(resource["spec"])
    config_map = render.config_map(OWNER, spec, operator.defaults)
    digest = config_map["metadata"]["annotations"][render.CONFIG_HASH_ANNOTATION]
    job = render.training_job(OWNER, spec, operator.defaults, digest)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container["ports"]
    config_file = tmp_path / CONFIG_FILE_NAME
    config_file.write_text(config_map["data"][CONFIG_FILE_NAME], encoding="utf-8")
    assert TrainerConfig.model_validate_json(config_file.read_text()).metrics_port == port

    # The real train stage started from that file serves its metrics; only the training loop is replaced,
    # by one that reports a step and lets the operator observe the cluster meanwhile.
    body = {**resource, "metadata": {**resource["metadata"], "name": OWNER.name, "namespace": OWNER.namespace,
                                     "uid": OWNER.uid}}  # fmt: skip
    seen: dict[str, Any] = {}

    def training(config: TrainerConfig, *, metrics: Any, run_state: Any, **_: Any) -> Any:
        metrics.update(Progress(step=7, total_steps=10))
        seen["observed"] = asyncio.run(handler.observe(_Cluster(job, "127.0.0.1"), body))  # type: ignore[arg-type]
        return train_stage.TrainOutcome(run_state, None, {}, "trained 7 steps", [])

    monkeypatch.setattr(train_stage, "train", training)
    code, summary = execute_stage("train", str(config_file))
    assert code == 0, summary
    live = seen["observed"].live
    assert live is not None, "the operator did not reach the trainer's metrics"
    assert (live["step"], live["totalSteps"]) == (7, 10)


@pytest.mark.parametrize("value", ["80", "1023", "70000", "nine"])
def test_a_port_the_trainer_cannot_serve_on_stops_the_operator_at_start_up(value: str) -> None:
    with pytest.raises(ConfigError, match="KUBETUNE_TRAINER_METRICS_PORT"):
        OperatorConfig.from_env({"KUBETUNE_TRAINER_METRICS_PORT": value})


def test_the_port_defaults_to_the_contract_on_both_sides() -> None:
    defaults = OperatorConfig.from_env({}).defaults
    config = render.trainer_config(
        OWNER,
        FineTuneJobSpec.model_validate(load_example("01-lora-basic/finetunejob.yaml")["spec"]),
        defaults,
    )
    assert defaults.trainer_metrics_port == config.metrics_port == contract.DEFAULT_METRICS_PORT


# ---------------------------------------------------------------------------------- summary and verdict


def test_the_trainers_status_sections_fit_the_summary_model() -> None:
    from kubetune_trainer.checkpoints import CheckpointRecord
    from kubetune_trainer.metrics import Progress

    summary = {
        "stage": "train",
        "ok": True,
        "reason": "TrainingComplete",
        "message": "trained 60 steps",
        "progress": Progress(step=60, total_steps=120, epoch=0.5, train_loss=1.0, tokens_per_second=9.0).to_status(),
        "checkpoints": [CheckpointRecord(step=50, uri="s3://b/c/step-00000050/", eval_loss=0.5).to_status()],
        "resumedFromStep": 50,
        "outputs": {"adapterUri": "s3://b/c/adapter/"},
        "reportUri": "s3://b/c/report.json",  # a stage's own extra: kept
    }  # fmt: skip
    assert contract.summary_problems(summary) == []
    model = contract.TrainerSummary.model_validate(summary)
    assert model.resumed_from_step == 50 and model.progress is not None and model.progress.step == 60
    assert model.model_dump(mode="json", by_alias=True, exclude_unset=True) == summary  # the wire, unchanged
    wrong = {**summary, "progress": {**summary["progress"], "stepz": 3}, "ok": "perhaps"}
    assert [p.split(":")[0] for p in contract.summary_problems(wrong)] == ["ok", "progress.stepz"]


def test_one_verdict_with_one_wording_for_numbers_and_status_strings() -> None:
    thresholds = {"perplexity": Threshold(max=8.0), "rougeL": Threshold(min=0.35), "bleu": Threshold(min=10)}
    expected = ["bleu was not measured", "perplexity 9.123 > max 8", "rougeL 0.3 < min 0.35"]
    assert contract.failed_thresholds({"perplexity": 9.123, "rougeL": 0.3}, thresholds) == expected
    assert contract.failed_thresholds({"perplexity": "9.123", "rougeL": "0.3"}, thresholds) == expected
    assert contract.failed_thresholds({"perplexity": 1.0}, None) == []
