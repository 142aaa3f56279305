"""End to end: `kubetune sandbox up` as a user runs it, kubectl, the real operator and trainer.

A FineTuneJob on data uploaded to the sandbox's S3 trains; its training pod is deleted mid-run (the retry
resumes from the newest checkpoint), then the job is suspended and resumed through the CLI, and succeeds
with its outputs in S3. The user CLI is exercised against it. Stopping the sandbox with SIGTERM leaves
no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from kubetune_sandbox.cluster import seed
from tests.sandbox.conftest import wait_for

JOB = "e2e"
DATASET_URI = "s3://kubetune-sandbox/user-data/e2e.jsonl"
OUTPUT = f"outputs/default/{JOB}/"

# Time limits, in seconds. pytest-timeout counts a module fixture's setup against the first test that uses it
# and its teardown against the last, so each test on `sandbox` has a timeout covering both besides its own.
SANDBOX_UP = 240  # `sandbox up` until sandbox.json: ~12 s on 2 idle cores, with the tiny model built first
SANDBOX_EXIT = 120  # SIGTERM until `sandbox up` exits (~3 s)
SANDBOX_DOWN = SANDBOX_EXIT + 10 + 30  # ... or is SIGKILLed; then until every process it started is gone
COMMAND = 60  # one kubectl or kubetune invocation (~1-3 s), cut to what is left of the test's budget
LIFECYCLE = 1200  # the FineTuneJob test's body, every wait and command in it: 45-70 s on 2 idle cores, >700 s
# on 2 cores at load 10 (other suites running)
MARGIN = 30  # pytest's own setup and teardown, the S3 calls
CONTRACT_TIMEOUT = SANDBOX_UP + COMMAND + SANDBOX_DOWN + MARGIN
LIFECYCLE_TIMEOUT = SANDBOX_UP + LIFECYCLE + SANDBOX_DOWN + MARGIN


class Budget:
    """A test's time, spent by its waits and commands: none runs past the end, so the test fails naming what
    it was waiting for before pytest-timeout would stop it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self, limit: float, what: str) -> float:
        """`limit`, or less where the budget ends sooner."""
        left = self.end - time.monotonic()
        assert left > 0, f"the test's {self.seconds:.0f}s were spent before {what}"
        return min(limit, left)


def finetunejob() -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": JOB, "namespace": "default"},
        "spec": {
            "baseModel": {"uri": seed.BASE_MODEL_URI},
            "dataset": {"uri": DATASET_URI, "evalSplit": 0.1},
            "method": "lora",
            "lora": {"r": 8, "alpha": 16, "targetModules": ["all-linear"]},
            "hyperparameters": {"epochs": 1, "maxSteps": 90, "learningRate": 3e-3, "batchSize": 4,
                                "maxSeqLength": 96, "gradientCheckpointing": False},
            "checkpoint": {"everySteps": 10, "keepLast": 2},
            "evaluation": {"metrics": ["perplexity"], "maxSamples": 8, "maxNewTokens": 8},
            "resources": {"gpus": 0},
            "output": {"uri": f"s3://{seed.BUCKET}/{OUTPUT}"},
            "storageSecretRef": {"name": "sandbox-s3"},
            "backoffLimit": 4,
        },
    }  # fmt: skip


def _sandbox_processes(directory: Path) -> list[int]:
    """Processes started by this sandbox: their command line or environment names its directory."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            text = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if str(directory).encode() in text:
            found.append(int(proc.name))
    return found


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("sandbox")
    log = (directory / "sandbox-up.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "kubetune.cli.main", "sandbox", "up", "--dir", str(directory)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(
            f"`kubetune sandbox up` to write sandbox.json (log: {directory / 'sandbox-up.log'})",
            lambda: (directory / "sandbox.json").exists() or process.poll() is not None,
            SANDBOX_UP,
        )
        assert process.poll() is None, (directory / "sandbox-up.log").read_text()
        info = json.loads((directory / "sandbox.json").read_text())
        info["dir"] = directory
        yield info
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=SANDBOX_EXIT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            code = None
        log.close()
    assert code == 0, (
        f"sandbox up: exit {code} (None: still running {SANDBOX_EXIT}s after SIGTERM, so killed)\n"
        + (directory / "sandbox-up.log").read_text()
    )
    wait_for("every sandbox process gone", lambda: not _sandbox_processes(directory), timeout=30)


def run(
    info: dict[str, Any],
    *args: str,
    check: bool = True,
    budget: Budget | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": info["kubeconfig"], "HOME": str(info["dir"] / "home"), **(env or {})}
    timeout = budget.left(COMMAND, f"{args}") if budget else COMMAND
    try:
        result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"{args} still running after {timeout:.0f}s: {error.stderr!r}") from None
    assert not check or result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


def kubetune(
    info: dict[str, Any], *args: str, budget: Budget | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run(info, sys.executable, "-m", "kubetune.cli.main", *args, budget=budget, env=env)


def aws_env(info: dict[str, Any]) -> dict[str, str]:
    """What a user exports to reach the sandbox's S3 (the CLI reads no sandbox files)."""
    s3 = info["s3"]
    return {"AWS_ENDPOINT_URL": s3["endpoint"], "AWS_ACCESS_KEY_ID": s3["accessKeyId"],
            "AWS_SECRET_ACCESS_KEY": s3["secretAccessKey"], "AWS_REGION": s3["region"]}  # fmt: skip


def kubectl_json(info: dict[str, Any], *args: str, budget: Budget | None = None) -> Any:
    return json.loads(run(info, "kubectl", *args, "-o", "json", budget=budget).stdout)


def s3_client(info: dict[str, Any]) -> Any:
    import boto3

    s3 = info["s3"]
    return boto3.client("s3", endpoint_url=s3["endpoint"], aws_access_key_id=s3["accessKeyId"],
                        aws_secret_access_key=s3["secretAccessKey"], region_name=s3["region"])  # fmt: skip


def job_status(info: dict[str, Any], budget: Budget) -> dict[str, Any]:
    return kubectl_json(info, "get", "finetunejob", JOB, budget=budget).get("status") or {}


def train_pods(info: dict[str, Any], budget: Budget) -> list[dict[str, Any]]:
    selector = f"kubetune.dev/finetunejob={JOB},kubetune.dev/stage=train"
    pods = kubectl_json(info, "get", "pods", "-l", selector, budget=budget)
    return sorted(pods["items"], key=lambda p: p["metadata"]["creationTimestamp"])


def test_a_port_in_use_is_one_line_and_leaves_nothing_running(tmp_path: Path) -> None:
    """First in the module, so the sandbox fixture's teardown never lands in this test's time."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for flag in ("--api-port", "--s3-port"):
            directory = tmp_path / flag
            result = subprocess.run(
                [sys.executable, "-m", "kubetune.cli.main", "sandbox", "up", "--dir", str(directory), flag, str(port)],
                capture_output=True, text=True, timeout=COMMAND, check=False,
            )  # fmt: skip
            assert result.returncode == 1
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and f"port {port}" in lines[0] and flag in lines[0], result.stderr
            assert not (directory / "sandbox.json").exists()  # refused before anything came up
            assert not _sandbox_processes(directory)


@pytest.mark.slow
@pytest.mark.kubectl
@pytest.mark.timeout(CONTRACT_TIMEOUT)  # more than 300 s: it starts the module's sandbox, and may stop it
def test_sandbox_writes_its_contract(sandbox: dict[str, Any]) -> None:
    assert set(sandbox) >= {"apiServer", "s3", "bucket", "baseModelUri", "datasetUri", "storageSecretName"}
    assert set(sandbox["s3"]) == {"endpoint", "accessKeyId", "secretAccessKey", "region"}
    assert sandbox["storageSecretName"] == "sandbox-s3"
    keys = [o["Key"] for o in s3_client(sandbox).list_objects_v2(Bucket=sandbox["bucket"])["Contents"]]
    assert any(k.startswith(seed.MODEL_PREFIX) and k.endswith("config.json") for k in keys)
    assert seed.DATASET_KEY in keys
    secret = kubectl_json(sandbox, "get", "secret", "sandbox-s3")
    assert set(secret["data"]) == {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
    }
    # The operator runs as the chart's ServiceAccount under the chart's RBAC, which never lets it read Secrets.
    # (Its token, sent as the operator sends it: kubectl sends no bearer token over plain http.)
    operator_user = yaml.safe_load(Path(sandbox["operatorKubeconfig"]).read_text())["users"][0]["user"]
    headers = {"Authorization": f"Bearer {operator_user['token']}"}
    secret_url = f"{sandbox['apiServer']}/api/v1/namespaces/default/secrets/sandbox-s3"
    refused = requests.get(secret_url, headers=headers, timeout=10)
    assert refused.status_code == 403
    assert (
        'User "system:serviceaccount:kubetune-system:kubetune" cannot get resource "secrets"'
        in refused.json()["message"]
    )
    jobs = requests.get(
        f"{sandbox['apiServer']}/apis/kubetune.dev/v1alpha1/finetunejobs", headers=headers, timeout=10
    )
    assert jobs.status_code == 200  # what the chart grants, it may do


@pytest.mark.slow
@pytest.mark.timeout(LIFECYCLE_TIMEOUT)  # its own LIFECYCLE, and it may start and stop the module's sandbox
@pytest.mark.kubectl
def test_finetunejob_survives_a_deleted_pod_and_a_suspension_then_succeeds(
    sandbox: dict[str, Any], tmp_path: Path
) -> None:
    from kubetune_trainer.tiny import demo_instruction_rows

    budget = Budget(LIFECYCLE)  # each wait below ends at its own limit or when the budget does, if sooner

    def until(what: str, check: Callable[[], Any], limit: float) -> Any:
        return wait_for(what, check, timeout=budget.left(limit, f"waiting for {what}"))

    def status() -> dict[str, Any]:
        return job_status(sandbox, budget)

    def pods() -> list[dict[str, Any]]:
        return train_pods(sandbox, budget)

    rows = "".join(json.dumps(r) + "\n" for r in demo_instruction_rows(300, seed=7))
    s3_client(sandbox).put_object(Bucket=seed.BUCKET, Key=DATASET_URI.split("/", 3)[3], Body=rows.encode())
    manifest = tmp_path / "job.json"  # JSON: YAML 1.2 (kubectl) would read an unquoted 3e-3 as a number
    manifest.write_text(json.dumps(finetunejob()))
    run(sandbox, "kubectl", "apply", "--validate=false", "-f", str(manifest), budget=budget)

    # 1. Delete the training pod once a checkpoint exists: the Job's retry resumes from it.
    until("a first checkpoint", lambda: status().get("checkpoints"), 600)
    first = next(p for p in reversed(pods()) if p["status"].get("phase") == "Running")
    run(sandbox, "kubectl", "delete", "pod", first["metadata"]["name"], "--wait=false", budget=budget)
    until("a replacement training pod", lambda: any(
        p["metadata"]["uid"] != first["metadata"]["uid"] and p["status"].get("phase") == "Running"
        for p in pods()), 180)  # fmt: skip

    # 2. Suspend through the CLI (pods go away), then resume.
    kubetune(sandbox, "suspend", JOB, budget=budget)
    until("Suspended", lambda: status().get("phase") == "Suspended", 180)
    until("no running training pod", lambda: not [p for p in pods()
                                                  if p["status"].get("phase") in ("Pending", "Running")], 120)  # fmt: skip
    kubetune(sandbox, "resume", JOB, budget=budget)

    final = until("Succeeded", lambda: (s := status()).get("phase") in ("Succeeded", "Failed") and s, 1200)
    assert final["phase"] == "Succeeded", json.dumps(final, indent=1)
    outputs = final["outputs"]
    assert outputs["adapterUri"].startswith(f"s3://{seed.BUCKET}/{OUTPUT}")
    keys = [
        o["Key"] for o in s3_client(sandbox).list_objects_v2(Bucket=seed.BUCKET, Prefix=OUTPUT)["Contents"]
    ]
    assert any(k.startswith(f"{OUTPUT}adapter/") for k in keys)
    assert f"{OUTPUT}manifest.json" in keys

    finished = [p for p in pods() if p["status"].get("phase") == "Succeeded"]
    summary = json.loads(finished[-1]["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    assert summary.get("resumedFromStep"), summary  # it did not start over

    # 3. The user CLI against the sandbox.
    assert "Succeeded" in kubetune(sandbox, "status", JOB, budget=budget).stdout
    assert "step" in kubetune(sandbox, "checkpoints", JOB, budget=budget).stdout
    png = tmp_path / "loss.png"
    no_s3 = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
             "AWS_MAX_ATTEMPTS": "1"}  # fmt: skip
    plotted = kubetune(sandbox, "plot", JOB, "-o", str(png), budget=budget, env=no_s3)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "train" in plotted.stdout or "eval" in plotted.stdout  # pod logs or checkpoints, without S3
    from_s3 = kubetune(sandbox, "plot", JOB, "-o", str(png), budget=budget, env=aws_env(sandbox))
    assert "losses from s3://" in from_s3.stdout and "log_history.json" in from_s3.stdout
    logs = kubetune(sandbox, "logs", JOB, "--no-follow", budget=budget)
    assert logs.stdout.strip()
    assert "==> pod" in logs.stderr
    assert kubetune(sandbox, "watch", JOB, budget=budget).returncode == 0
    cli = (sys.executable, "-m", "kubetune.cli.main")
    missing = run(sandbox, *cli, "status", "nope", check=False, budget=budget)
    assert missing.returncode == 1 and "not found" in missing.stderr
