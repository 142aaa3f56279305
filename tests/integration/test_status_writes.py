"""The operator writes a FineTuneJob's status only when something a user can see changed: a running job
whose trainer reports the same progress tick after tick gets no status PATCH from the resync timer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import trainer_contract as contract
from tests.api.conftest import load_example, with_changes
from tests.integration.harness import Api, OperatorProcess
from tests.reconcile.world import VALIDATION_OK

RESYNC_SECONDS = 1
EXAMPLE = load_example("01-lora-basic/finetunejob.yaml")


class TrainerMetrics:
    """A trainer's /metrics endpoint on 127.0.0.1 (the pod IP the harness gives pods); a test sets the gauges."""

    def __init__(self) -> None:
        self.samples: dict[str, float] = {}
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                text = "".join(f"{name} {value}\n" for name, value in metrics.samples.items())
                body = text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> TrainerMetrics:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def trainer() -> Iterator[TrainerMetrics]:
    with TrainerMetrics() as metrics:
        yield metrics


@pytest.fixture(scope="module")
def scraping_operator(
    kubeconfig: Path, trainer: TrainerMetrics, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    env = {
        "KUBETUNE_SCRAPE_PROGRESS": "true",
        "KUBETUNE_TRAINER_METRICS_PORT": str(trainer.port),
        "KUBETUNE_RESYNC_SECONDS": str(RESYNC_SECONDS),
    }
    process = OperatorProcess(kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log", env)
    process.start()
    yield process
    process.stop()


def _status_patches(emulator: Any, name: str) -> int:
    path = f"/finetunejobs/{name}/status"
    return sum(
        1
        for request in list(emulator.emulator)
        if request.method.value.upper() == "PATCH" and request.url.path.endswith(path)
    )


def test_running_job_with_unchanged_progress_gets_no_status_patch(
    api: Api, emulator: Any, trainer: TrainerMetrics, scraping_operator: OperatorProcess
) -> None:
    name = "steady"
    trainer.samples = {contract.STEP: 40, contract.TOTAL_STEPS: 120, contract.TRAIN_LOSS: 1.9}
    api.create(with_changes(EXAMPLE, {"metadata.name": name}))
    api.wait_job(f"{name}-validate")
    api.finish_job(f"{name}-validate", VALIDATION_OK)
    api.wait_job(f"{name}-train")
    api.run_pod(f"{name}-train", "Running")
    api.patch("Job", f"{name}-train", {"status": {"active": 1}}, sub="status")
    api.wait_for("progress at step 40", lambda: api.status(name).get("progress", {}).get("step") == 40)
    time.sleep(RESYNC_SECONDS)  # let the reconciles already in flight land
    updated_at = api.status(name)["progress"]["updatedAt"]

    before = _status_patches(emulator, name)
    time.sleep(3 * RESYNC_SECONDS + 0.5)  # three timer ticks, each scraping the same samples
    assert _status_patches(emulator, name) - before == 0
    assert api.status(name)["progress"]["updatedAt"] == updated_at

    trainer.samples = {**trainer.samples, contract.STEP: 41}
    api.wait_for("progress at step 41", lambda: api.status(name)["progress"]["step"] == 41)
    assert _status_patches(emulator, name) - before == 1
