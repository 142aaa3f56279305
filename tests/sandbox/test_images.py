"""The sandbox's images: a map of directories, PATH and ENV, never a rewrite of the pod's command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.api.trainer_config import TRAINER_PYTHON, TRAINER_VENV
from kubetune_sandbox.cluster import decisions
from kubetune_sandbox.cluster.images import ImageMap, ImageNotMappedError, LocalImage

IMAGES = ImageMap()


@pytest.mark.parametrize(
    "image", [IMAGES.trainer_image, IMAGES.vllm_image, IMAGES.tgi_image, "other/image:1"]
)
def test_a_command_runs_as_the_pod_wrote_it(image: str) -> None:
    command = ["torchrun", "--nproc-per-node=2"] if image == IMAGES.trainer_image else ["python3", "-m", "x"]
    assert IMAGES.argv(image, command, ["--a", "b"]) == [*command, "--a", "b"]


def test_without_a_command_the_images_entrypoint_runs_or_nothing_can() -> None:
    assert IMAGES.argv(IMAGES.trainer_image, [], ["train"]) == ["kubetune-trainer", "train"]
    with pytest.raises(ImageNotMappedError):
        IMAGES.argv("other/image:1", [], ["x"])


def test_the_trainer_images_venv_is_this_venv_first_on_path() -> None:
    image = IMAGES.image(IMAGES.trainer_image)
    assert image.paths == {TRAINER_VENV: sys.prefix}
    assert image.path == (f"{TRAINER_VENV}/bin",)
    local_python = Path(decisions.rewrite_paths(TRAINER_PYTHON, image.paths))
    assert local_python.exists() and (local_python.parent / "kubetune-trainer").exists()


def _run_in(image: LocalImage, argv: list[str]) -> subprocess.CompletedProcess[str]:
    path = [decisions.rewrite_paths(entry, image.paths) for entry in image.path]
    env = {"PATH": os.pathsep.join([*path, os.environ["PATH"]]), **image.env}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_serving_images_run_their_own_launchers_which_are_the_stand_in() -> None:
    vllm = _run_in(
        IMAGES.image(IMAGES.vllm_image), ["python3", "-m", "vllm.entrypoints.openai.api_server", "-h"]
    )
    assert vllm.returncode == 0 and "--served-model-name" in vllm.stdout, vllm.stderr
    tgi = _run_in(IMAGES.image(IMAGES.tgi_image), ["text-generation-launcher", "-h"])
    assert tgi.returncode == 0 and "--model-id" in tgi.stdout, tgi.stderr


def test_real_vllm_is_the_python3_of_its_venv(tmp_path: Path) -> None:
    python = tmp_path / "vllm-venv" / "bin" / "python"
    image = ImageMap(vllm_python=str(python)).image(IMAGES.vllm_image)
    assert image.path[0] == str(python.parent) and not image.env
