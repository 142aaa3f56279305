"""`kubetune quickstart` end to end, as the README's first command runs it, and the model cache's repair."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.api.manifests import load_yaml
from kubetune_sandbox.cluster import seed

REPO = Path(__file__).resolve().parents[2]


# The quickstart's own waits (seconds), each ending with a message naming the phase it did not reach; the rest
# of QUICKSTART is the sandbox's start (the tiny model's build included) and stop, and the chat request.
JOB_SECONDS, SERVING_SECONDS, QUICKSTART = 600, 240, 1080  # it takes ~40 s on 2 idle cores


def _base_and_tuned(output: str, metric: str) -> tuple[float, float]:
    """From the quickstart's evaluation table: `metric  base  tuned  threshold  verdict`."""
    table = output.partition("evaluation (base vs tuned vs thresholds):")[2]
    row = next((line.split() for line in table.splitlines() if line.split()[:1] == [metric]), None)
    assert row is not None, f"no {metric} row in the evaluation table: {table[:2000]}"
    return float(row[1]), float(row[2])


def _tail(captured: bytes | str | None) -> str:
    text = captured.decode(errors="replace") if isinstance(captured, bytes) else captured or ""
    return text[-6000:]


@pytest.mark.slow
@pytest.mark.timeout(QUICKSTART + 60)  # more than 300 s: training and serving on a busy CPU
def test_quickstart_trains_a_model_that_beats_the_base_and_serves_it(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "kubetune.cli.main", "quickstart", "--dir", str(tmp_path / "qs"),
               "--timeout", str(JOB_SECONDS), "--serving-timeout", str(SERVING_SECONDS)]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=QUICKSTART, check=False)
    except subprocess.TimeoutExpired as error:
        raise AssertionError(
            f"quickstart still running after {QUICKSTART}s:\n{_tail(error.stdout)}\n{_tail(error.stderr)}"
        ) from None
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "evaluation passed" in output
    base, tuned = _base_and_tuned(output, "perplexity")
    assert tuned < base, (
        base,
        tuned,
    )  # the tuned model beats the base on held-out data, as well as the gates
    base, tuned = _base_and_tuned(output, "rougeL")
    assert tuned > base, (base, tuned)
    assert "A: " in output  # the served model answered a chat request
    assert (tmp_path / "qs" / "quickstart-loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "On a real cluster" in output


def test_quickstart_manifests_point_at_the_documented_sandbox_uris() -> None:
    job = load_yaml((REPO / "examples/quickstart/finetunejob.yaml").read_text())
    deployment = load_yaml((REPO / "examples/quickstart/modeldeployment.yaml").read_text())
    assert job["spec"]["baseModel"]["uri"] == seed.BASE_MODEL_URI
    assert job["spec"]["dataset"]["uri"] == seed.DATASET_URI
    assert job["spec"]["output"]["uri"].startswith(f"s3://{seed.BUCKET}/")
    assert job["spec"]["storageSecretRef"]["name"] == "sandbox-s3"
    assert job["spec"]["evaluation"]["thresholds"]
    assert deployment["spec"]["source"]["fineTuneJobRef"]["name"] == job["metadata"]["name"]


def test_the_quickstart_manifests_pass_admission() -> None:
    from kubetune.api.crd import all_crds
    from kubetune_sandbox.emulator.server import EmulatorServer

    with EmulatorServer(crds=all_crds()) as server:
        for name, resource in (
            ("finetunejob.yaml", "finetunejobs"),
            ("modeldeployment.yaml", "modeldeployments"),
        ):
            body = load_yaml((REPO / "examples/quickstart" / name).read_text())
            server.create(f"kubetune.dev/v1alpha1/{resource}", body)


@pytest.mark.slow
def test_a_corrupted_model_cache_is_detected_and_rebuilt(tmp_path: Path) -> None:
    messages: list[str] = []
    model = seed.tiny_model(1, root=tmp_path, say=messages.append)
    assert seed.cache_intact(model)
    assert json.loads((model / seed.MANIFEST).read_text())["files"]
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # truncated, as by a full disk
    messages.clear()
    rebuilt = seed.tiny_model(1, root=tmp_path, say=messages.append)
    assert rebuilt == model and seed.cache_intact(rebuilt)
    assert messages[0] == f"the model cache at {model} is corrupted or incomplete; rebuilding it"
