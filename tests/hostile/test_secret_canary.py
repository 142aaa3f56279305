"""A secret planted in the storage Secret never shows up anywhere it could leak: the operator's log, any
object or object version in the API (status, events, Jobs, ConfigMaps), or what the trainer writes to S3."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune.api.crd import all_crds
from kubetune_sandbox.emulator.server import EmulatorServer
from tests.integration.harness import Api, OperatorProcess
from tests.integration.test_finetunejob_operator import _job
from tests.reconcile.world import FINISH_OK, TRAINING_OK, VALIDATION_OK

CANARY = f"canary-{uuid.uuid4().hex}"
FORMS = (CANARY, base64.b64encode(CANARY.encode()).decode())  # as written, and as Secret.data holds it


def _leaks(text: str) -> list[str]:
    return [form for form in FORMS if form in text]


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(crds=all_crds()) as server:
        yield server


def test_storage_secret_never_leaks_from_the_operator(emulator: EmulatorServer, tmp_path: Path) -> None:
    api = Api(emulator.url)
    api.http.post(
        f"{emulator.url}/api/v1/namespaces/default/secrets",
        json={"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-credentials"},
              "data": {"AWS_ACCESS_KEY_ID": base64.b64encode(b"key").decode(),
                       "AWS_SECRET_ACCESS_KEY": FORMS[1]}},
        timeout=10,
    ).raise_for_status()  # fmt: skip
    log = tmp_path / "operator.log"
    operator = OperatorProcess(emulator.kubeconfig(tmp_path / "kubeconfig"), log)
    operator.start()
    name = "canary-job"
    try:
        api.create(_job(name))  # the example references storageSecretRef s3-credentials
        api.wait_job(f"{name}-validate")
        api.finish_job(f"{name}-validate", VALIDATION_OK)
        api.wait_job(f"{name}-train")
        api.finish_job(f"{name}-train", TRAINING_OK)
        api.wait_job(f"{name}-finish")
        api.finish_job(f"{name}-finish", FINISH_OK)
        api.wait_phase(name, "Succeeded")
        api.wait_for("the Succeeded event", lambda: "Succeeded" in api.events(name))
    finally:
        operator.stop()

    train = api.get("Job", f"{name}-train")
    assert train is not None
    container = train["spec"]["template"]["spec"]["containers"][0]
    # The pods get the Secret by reference; its value is never copied into a manifest.
    assert {"secretRef": {"name": "s3-credentials"}} in container["envFrom"]
    assert not _leaks(log.read_text(errors="replace")), "the operator logged the secret"
    store = emulator.emulator.store

    def everything() -> list[tuple[str, dict]]:
        current = [(resource, obj) for resource, obj in store._all()]
        history = [(event.resource, event.object) for event in store.events_since(0)]
        return [(str(r), o) for r, o in current + history if o.get("kind") != "Secret"]

    seen = emulator._on_loop(everything)
    kinds = {obj.get("kind") for _, obj in seen}
    assert {"FineTuneJob", "Job", "Pod", "ConfigMap", "Event"} <= kinds, kinds
    for resource, obj in seen:
        assert not _leaks(json.dumps(obj)), f"{resource} {obj['metadata'].get('name')} carries the secret"


def test_storage_secret_never_reaches_what_the_trainer_writes(
    s3, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Validate, then the export stage's manifest writer, with the canary as the S3 secret key."""
    from kubetune_trainer import storage
    from kubetune_trainer.stages import export, validate
    from tests.trainer.conftest import build_config
    from tests.trainer.test_validate import jsonl, rows_in_format

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY)  # moto accepts any key; the client is rebuilt
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    caplog.set_level(logging.DEBUG)
    uri = s3.put("s3://data/canary.jsonl", jsonl(rows_in_format("openai", 20)))
    config = build_config(base_model="hf://org/model", dataset={"uri": uri}, output="s3://artifacts/canary/")
    summary = validate.run(config)
    assert summary["ok"] is True, summary
    manifest = export.build_manifest(config, base_info={"uri": "hf://org/model"}, outputs={}, quantized=[])
    storage.write_text(config.artifacts.manifest, json.dumps(manifest, indent=2))

    written = s3.keys("artifacts", "canary/")
    assert "canary/manifest.json" in written and "canary/validation/report.json" in written
    for key in written:
        assert not _leaks(s3.get(f"s3://artifacts/{key}").decode(errors="replace")), key
    assert not _leaks(json.dumps(summary))
    assert not _leaks(caplog.text)
    assert not _leaks(json.dumps(manifest))
    # And the secret did reach the client: the run really signed its requests with it.
    assert storage.s3_client()._request_signer._credentials.secret_key == CANARY
