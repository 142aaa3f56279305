"""The trainer image's layout without Docker: the rendered multi-GPU command runs two ranks from it.

The layout (tests/toolenvs.py TRAINER_IMAGE, built by scripts/setup.sh) is what trainer-image/Dockerfile
makes: a base interpreter holding only torch (the pytorch image) with its own `torchrun`, and the image venv
/opt/kubetune made by that interpreter with the Dockerfile's pip command. `--system-site-packages` is a .pth
line there (a venv made from a venv would see the first interpreter's site-packages, not the base's); this
session's kubetune is laid over the image venv by the Dockerfile's `pip install --no-deps .`, so the test runs
the current trainer code, and the project stands where the image has it: in the venv, not in the base.

Containers run as the sandbox's kubelet runs them (kubetune_sandbox.cluster.kubelet): the command and args as
rendered, with only image and volume paths mapped to local folders by the same rewrite_paths
(/opt/kubetune -> the layer's venv, /etc/kubetune -> the ConfigMap's files, /cache, /work, /tmp and the
termination-message path -> folders of the test), the image's ENV from the Dockerfile under the pod's env,
and PATH in the image's order: the venv's bin, then the base's, then /usr/bin:/bin.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.common import ResourceIdentity
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.trainer_config import CONFIG_FILE_NAME, TRAINER_VENV
from kubetune.render import finetunejob as render
from kubetune.render.pod import CONFIG_MOUNT, OperatorDefaults
from kubetune_sandbox.cluster import decisions
from tests.toolenvs import TRAINER_IMAGE, ImageRecipe
from tests.trainer.conftest import S3Helper, torch_thread_count

pytestmark = pytest.mark.slow

OWNER = ResourceIdentity(name="layout", namespace="team-a", uid="6d1f4a52-0000-4000-8000-00000000a001")
SECRET = "s3-credentials"
OUTPUT = "s3://artifacts/team-a/layout/"
DATA = "s3://data/layout/train.jsonl"
HOST_PATH = "/usr/bin:/bin"


@dataclass(frozen=True)
class ImageLayout:
    venv: Path  # stands for /opt/kubetune: this session's kubetune over the built image venv
    base: Path  # the base image's interpreter environment (torch, torchrun)

    @property
    def path(self) -> str:
        """The image's PATH as its ENV orders it: the venv's bin, then the base image's PATH."""
        return f"{self.venv}/bin:{self.base}/bin:{HOST_PATH}"


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> ImageLayout:
    TRAINER_IMAGE.require()  # fails with the command that builds it; a test never builds it
    venv = TRAINER_IMAGE.with_project(tmp_path_factory.mktemp("image") / "opt-kubetune")
    return ImageLayout(venv=venv, base=TRAINER_IMAGE.base)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def image_env(layout: ImageLayout, mounts: Mapping[str, str]) -> dict[str, str]:
    """The Dockerfile's final-stage ENV, its paths mapped as the kubelet maps them."""
    env = {}
    for name, value in ImageRecipe.read().env:
        # $PATH is the base image's, local paths already (never rewritten: the cache may lie under /tmp).
        env[name] = decisions.rewrite_paths(value, mounts).replace("$PATH", f"{layout.base}/bin:{HOST_PATH}")
    return env


def run_container(
    layout: ImageLayout,
    pod: Mapping[str, Any],
    root: Path,
    *,
    files: Mapping[str, Mapping[str, str]],
    secrets: Mapping[str, Mapping[str, str]],
    timeout: float = 600,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run the pod's only container in the image layout; returns the process and its termination log."""
    (container,) = pod["containers"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {TRAINER_VENV: str(layout.venv)}
    for mount in container["volumeMounts"]:
        local = root / "volumes" / mount["name"]
        local.mkdir(parents=True, exist_ok=True)
        config_map = volumes[mount["name"]].get("configMap")
        if config_map:
            for key, text in files[config_map["name"]].items():
                (local / key).write_text(text)
        mounts[mount["mountPath"]] = str(local)
    termination = root / "termination-log"
    mounts[container["terminationMessagePath"]] = str(termination)
    for image_dir in ("/work", "/cache", "/tmp"):  # the image's own folders, where no volume covers them
        mounts.setdefault(image_dir, str(root / "image" / image_dir.strip("/")))
        Path(mounts[image_dir]).mkdir(parents=True, exist_ok=True)

    env = image_env(layout, mounts)
    for source in container.get("envFrom") or []:
        env.update(secrets[source["secretRef"]["name"]])
    for entry in container.get("env") or []:
        env[entry["name"]] = decisions.rewrite_paths(decisions.expand(entry["value"], env), mounts)
    # What the sandbox's kubelet adds: TMPDIR on the /tmp volume, metrics bound to the pod's own address;
    # and the trainer tests' thread count (torchrun would set OMP_NUM_THREADS=1 otherwise).
    env.update(
        TMPDIR=mounts["/tmp"], KUBETUNE_METRICS_HOST="127.0.0.1", OMP_NUM_THREADS=str(torch_thread_count())
    )
    argv = [
        decisions.rewrite_paths(decisions.expand(part, env), mounts)
        for part in [*container.get("command", []), *container.get("args", [])]
    ]
    process = subprocess.run(
        argv, env=env, cwd=mounts["/work"], capture_output=True, text=True, timeout=timeout, check=False
    )
    return process, termination


def run_in_image(layout: ImageLayout, argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """A command in the image's environment, the program found on the image's PATH."""
    env = image_env(layout, {TRAINER_VENV: str(layout.venv), "/tmp": str(tmp_path), "/cache": str(tmp_path)})
    program = shutil.which(argv[0], path=env["PATH"])
    assert program, f"{argv[0]} is not on the image's PATH {env['PATH']}"
    return subprocess.run(
        [program, *argv[1:]], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )


def output_of(process: subprocess.CompletedProcess[str]) -> str:
    return f"exit {process.returncode}\n--- stdout\n{process.stdout[-6000:]}\n--- stderr\n{process.stderr[-6000:]}"


def test_python_on_the_image_path_is_the_venvs_with_torch_from_the_base(
    layout: ImageLayout, tmp_path: Path
) -> None:
    assert image_env(layout, {TRAINER_VENV: str(layout.venv)})["PATH"] == layout.path
    probe = "import json, sys, torch, kubetune_trainer; print(json.dumps([sys.prefix, torch.__file__, kubetune_trainer.__file__]))"
    process = run_in_image(layout, ["python", "-c", probe], tmp_path)
    assert process.returncode == 0, output_of(process)
    prefix, torch_file, trainer_file = json.loads(process.stdout)
    assert Path(prefix) == layout.venv
    assert Path(torch_file).is_relative_to(layout.base), "torch must come from the base, as in the image"
    assert Path(trainer_file).is_relative_to(layout.venv)


def test_the_base_images_torchrun_cannot_import_the_trainer(layout: ImageLayout, tmp_path: Path) -> None:
    """The bug `kubetune_trainer launch` fixed: torchrun on the image's PATH is the base's, whose Python
    does not see the venv, so its workers fail to import kubetune_trainer."""
    env = image_env(layout, {TRAINER_VENV: str(layout.venv)})
    assert shutil.which("torchrun", path=env["PATH"]) == str(layout.base / "bin" / "torchrun")
    argv = ["torchrun", "--standalone", "--nproc-per-node=1", "-m", "kubetune_trainer", "validate", "--help"]
    process = run_in_image(layout, argv, tmp_path)
    assert process.returncode != 0, output_of(process)
    assert "No module named kubetune_trainer" in process.stdout + process.stderr, output_of(process)


def test_validate_help_runs_with_the_python_on_the_image_path(layout: ImageLayout, tmp_path: Path) -> None:
    process = run_in_image(layout, ["python", "-m", "kubetune_trainer", "validate", "--help"], tmp_path)
    assert process.returncode == 0, output_of(process)
    assert process.stdout.startswith("usage:") and "--config" in process.stdout, output_of(process)


def test_rendered_two_gpu_training_runs_two_ranks_on_cpu_from_the_image_layout(
    layout: ImageLayout, s3: S3Helper, tiny_model_s3: str, tmp_path: Path
) -> None:
    """The operator's validation and training Jobs of a `resources: {gpus: 2}` FineTuneJob, as rendered:
    the launcher starts two gloo ranks on CPU, both train 2 steps, rank 0 checkpoints step 2 and writes the
    adapter and the termination summary."""
    from kubetune_trainer.tiny import demo_instruction_rows

    s3.put(DATA, "".join(json.dumps(row) + "\n" for row in demo_instruction_rows(64, seed=3)))
    spec = FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": tiny_model_s3},
            "dataset": {"uri": DATA, "evalSplit": 0.1},
            "method": "lora",
            "lora": {"r": 8, "alpha": 16},
            "hyperparameters": {
                "maxSteps": 2,
                "batchSize": 4,
                "maxSeqLength": 64,
                "gradientCheckpointing": False,
            },
            "checkpoint": {"everySteps": 2},
            "resources": {"gpus": 2},
            "output": {"uri": OUTPUT},
            "storageSecretRef": {"name": SECRET},
        }
    )
    defaults = OperatorDefaults(
        trainer_image="ghcr.io/kubetune/trainer:0.1.0", trainer_metrics_port=free_port()
    )
    config = render.config_map(OWNER, spec, defaults)
    digest = config["metadata"]["annotations"][render.CONFIG_HASH_ANNOTATION]
    files = {config["metadata"]["name"]: config["data"]}
    secrets = {
        SECRET: {
            "AWS_ENDPOINT_URL": s3.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
            "AWS_REGION": "us-east-1",
        }
    }
    train_pod = render.training_job(OWNER, spec, defaults, digest)["spec"]["template"]["spec"]
    command = train_pod["containers"][0]["command"]
    assert command[:4] == [f"{TRAINER_VENV}/bin/python", "-m", "kubetune_trainer", "launch"], command
    assert "--nproc-per-node=2" in command
    assert command[-2:] == ["--config", f"{CONFIG_MOUNT}/{CONFIG_FILE_NAME}"], command

    validation_pod = render.validation_job(OWNER, spec, defaults, digest)["spec"]["template"]["spec"]
    validated, _ = run_container(layout, validation_pod, tmp_path / "validate", files=files, secrets=secrets)
    assert validated.returncode == 0, output_of(validated)

    trained, termination = run_container(layout, train_pod, tmp_path / "train", files=files, secrets=secrets)
    assert trained.returncode == 0, output_of(trained)
    checkpoint = "team-a/layout/checkpoints/step-00000002/"
    keys = set(s3.keys("artifacts", "team-a/layout/"))
    # The Trainer saves one RNG state per process of a distributed run (rng_state.pth without one).
    assert {f"{checkpoint}rng_state_0.pth", f"{checkpoint}rng_state_1.pth"} <= keys, sorted(keys)
    assert f"{checkpoint}rng_state.pth" not in keys
    assert {f"{checkpoint}_COMPLETE.json", f"{checkpoint}adapter_model.safetensors"} <= keys, sorted(keys)
    assert "team-a/layout/adapter/adapter_model.safetensors" in keys, sorted(keys)
    # Rank 0's summary: only the global rank 0 publishes outputs and checkpoints.
    summary = json.loads(termination.read_text())
    assert (summary["stage"], summary["ok"], summary["progress"]["step"]) == ("train", True, 2), summary
    assert summary["outputs"] == {"adapterUri": f"{OUTPUT}adapter/"}, summary
    assert [item["step"] for item in summary["checkpoints"]] == [2], summary
