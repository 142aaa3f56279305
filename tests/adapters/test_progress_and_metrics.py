"""Live progress from a real Prometheus endpoint, and the operator's own gauges."""

from __future__ import annotations

import asyncio
import math
import socket

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from kubetune.adapters import metrics
from kubetune.adapters.scrape import scrape_trainer
from kubetune.reconcile.progress import progress_from_samples


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_scraped_trainer_metrics_become_status_progress() -> None:
    registry = CollectorRegistry()
    values = {
        "kubetune_trainer_step": 40, "kubetune_trainer_total_steps": 120, "kubetune_trainer_epoch": 0.9876,
        "kubetune_trainer_train_loss": 1.23456, "kubetune_trainer_tokens_per_second": 912.7,
        "kubetune_trainer_eval_loss": math.nan, "kubetune_trainer_last_checkpoint_step": 20,
    }  # fmt: skip
    for name, value in values.items():
        Gauge(name, name, registry=registry).set(value)
    Gauge("unrelated_metric", "ignored", registry=registry).set(5)
    port = _free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        samples = asyncio.run(scrape_trainer("127.0.0.1", port))
    finally:
        server.shutdown()
        thread.join()
    assert samples is not None and "unrelated_metric" not in samples
    progress = progress_from_samples(samples)
    assert progress == {
        "step": 40,
        "totalSteps": 120,
        "epoch": "0.9876",
        "trainLoss": "1.235",
        "tokensPerSecond": 912,
        "lastCheckpointStep": 20,
    }  # fmt: skip  (NaN eval loss = not measured yet: left out, not shown as 0)


def test_unreachable_trainer_is_not_an_error() -> None:
    assert asyncio.run(scrape_trainer("127.0.0.1", _free_port(), timeout_seconds=1)) is None


def test_phase_gauges_and_gpus_follow_the_index() -> None:
    index = metrics.PhaseIndex()
    index.update("a", "Running", 8)
    index.update("b", "Running", 2)
    index.update("c", "Queued", 4)
    index.update("a", "Succeeded", 8)

    def gauge(phase: str) -> float:
        return metrics.JOBS_BY_PHASE.labels(phase)._value.get()

    assert (gauge("Running"), gauge("Queued"), gauge("Succeeded")) == (1, 1, 1)
    assert metrics.GPUS_REQUESTED._value.get() == 2
    index.update("b", None, 0)
    assert gauge("Running") == 0 and metrics.GPUS_REQUESTED._value.get() == 0
