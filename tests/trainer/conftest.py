"""Fixtures shared by the trainer tests: a tiny local model, an S3 server over real HTTP, configs.

- `tiny_model_dir` (session): a saved tiny Llama + tokenizer built by `build_tiny_model` (briefly pretrained).
- `moto_server` (session): a moto `ThreadedMotoServer` on 127.0.0.1, on a free port; its endpoint URL.
- `s3` (function): points boto3 at that server through the standard env (AWS_MAX_ATTEMPTS=1), resets the
  server's state first (`POST /moto-api/reset`), creates the buckets `data` and `artifacts`, and returns an
  `S3Helper` (`.client`, `.endpoint`, `.put(uri, bytes)`, `.get(uri)`, `.keys(bucket, prefix)`).
- `pvc_root` (function): `KUBETUNE_PVC_ROOT` set to a temp dir, so `pvc://claim/path` maps under it.
- `tiny_model_uri` / `tiny_model_s3` (function): the tiny model as `pvc://models/tiny` / `s3://data/models/tiny/`.
- `termination_log` (function): `KUBETUNE_TERMINATION_LOG` set to a temp file path.
- `make_config(...)`: a TrainerConfig from keyword overrides of a small valid spec.
- `torch_threads` (module): torch's intra-op threads set from KUBETUNE_TEST_TORCH_THREADS (default 1).
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Never touch the hub, whatever a library tries; set before anything imports transformers.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

from kubetune.api.common import ResourceIdentity
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.trainer_config import TrainerConfig

DATA_BUCKET = "data"
ARTIFACTS_BUCKET = "artifacts"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama (hidden 256, 4 layers, ~3 M params) with a local BPE tokenizer; read-only for tests."""
    from kubetune_trainer.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0, pretrain_steps=30)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """Endpoint URL of an S3 server speaking real HTTP (port 0: the OS picks a free one)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@dataclass
class S3Helper:
    endpoint: str
    client: Any

    def put(self, uri: str, data: bytes | str) -> str:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        self.client.put_object(Bucket=bucket, Key=key, Body=data.encode() if isinstance(data, str) else data)
        return uri

    def get(self, uri: str) -> bytes:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        body: bytes = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def _reset_moto(endpoint: str) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


@pytest.fixture
def s3(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> S3Helper:
    """A clean S3 with buckets `data` and `artifacts`, reachable through the standard AWS env."""
    import boto3
    from botocore.config import Config

    _reset_moto(moto_server)
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    env = {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
        "AWS_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    client = boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret-key",
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )
    for bucket in (DATA_BUCKET, ARTIFACTS_BUCKET):
        client.create_bucket(Bucket=bucket)
    return S3Helper(endpoint=moto_server, client=client)


@pytest.fixture
def pvc_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`pvc://CLAIM/path` resolves to `<pvc_root>/CLAIM/path` during the test."""
    root = tmp_path / "pvc"
    root.mkdir()
    monkeypatch.setenv("KUBETUNE_PVC_ROOT", str(root))
    return root


@pytest.fixture
def tiny_model_uri(pvc_root: Path, tiny_model_dir: Path) -> str:
    """The session's tiny model as `pvc://models/tiny` (a symlink under this test's pvc root)."""
    (pvc_root / "models").mkdir(exist_ok=True)
    (pvc_root / "models" / "tiny").symlink_to(tiny_model_dir, target_is_directory=True)
    return "pvc://models/tiny"


@pytest.fixture
def tiny_model_s3(s3: S3Helper, tiny_model_dir: Path) -> str:
    """The session's tiny model uploaded to `s3://data/models/tiny/`."""
    from kubetune_trainer import storage

    storage.upload_dir(tiny_model_dir, "s3://data/models/tiny/")
    return "s3://data/models/tiny/"


@pytest.fixture
def termination_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "termination-log"
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(path))
    return path


def build_config(
    *,
    base_model: str,
    dataset: dict[str, Any],
    output: str,
    method: str = "lora",
    **spec_extra: Any,
) -> TrainerConfig:
    """A TrainerConfig with defaults resolved, from camelCase-or-snake_case spec pieces."""
    raw: dict[str, Any] = {
        "baseModel": {"uri": base_model},
        "dataset": dataset,
        "method": method,
        "output": {"uri": output},
        **spec_extra,
    }
    if "evalSplit" not in dataset and "evalUri" not in dataset:
        raw["dataset"] = {**dataset, "evalSplit": 0.1}
    spec = FineTuneJobSpec.model_validate(raw).trainer_spec()
    return TrainerConfig(job=ResourceIdentity(name="test-job", namespace="default"), spec=spec)


@pytest.fixture
def make_config() -> Callable[..., TrainerConfig]:
    return build_config


def write_config(config: TrainerConfig, path: Path) -> Path:
    path.write_text(config.model_dump_json(by_alias=True, exclude_none=True))
    return path


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


TORCH_THREADS_ENV = "KUBETUNE_TEST_TORCH_THREADS"


def torch_thread_count() -> int:
    """The intra-op thread count trainer tests run with: KUBETUNE_TEST_TORCH_THREADS, default 1."""
    raw = os.environ.get(TORCH_THREADS_ENV, "1")
    if not raw.isdigit() or int(raw) < 1:
        raise pytest.UsageError(f"{TORCH_THREADS_ENV} must be a positive integer, not {raw!r}")
    return int(raw)


@pytest.fixture(scope="module")
def torch_threads() -> Iterator[int]:
    """Intra-op threads for training tests, from KUBETUNE_TEST_TORCH_THREADS (default 1). One by default: on a
    shared 2-core machine, OpenMP threads spin-waiting on a busy core made them 5-8x slower; single-threaded
    they are steady. The suite must pass with 2 as well (no test may depend on the kernels' exact bits)."""
    import torch

    before = torch.get_num_threads()
    threads = torch_thread_count()
    torch.set_num_threads(threads)
    yield threads
    torch.set_num_threads(before)


@pytest.fixture
def trainer_work_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stages' scratch space, per test."""
    work = tmp_path / "work"
    monkeypatch.setenv("KUBETUNE_WORK_DIR", str(work))
    return work
