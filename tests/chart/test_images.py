"""The operator and trainer Dockerfiles: multi-stage, pinned, numeric non-root user, no build tools or
installers at run time, caches on writable volumes; and their pins equal what .venv (the tests) runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.chart import locks
from tests.chart.chartkit import CHART, REPO

OPERATOR = REPO / "Dockerfile"
TRAINER = REPO / "trainer-image" / "Dockerfile"
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|make|cmake|build-essential|python3-dev|git|rustc|cargo|nvcc)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    lines: list[str]


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages (instructions with continuation lines joined)."""
    text = path.read_text()
    text = re.sub(r"<<'?EOF'?\n.*?\nEOF\n", "<<EOF\n", text, flags=re.S)  # heredoc bodies are data
    instructions = [
        line for line in re.sub(r"\\\n", " ", text).splitlines() if line.strip() and not line.startswith("#")
    ]
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in instructions:
        keyword, _, rest = line.strip().partition(" ")
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest.strip(), re.I)
            assert match, line
            stages.append(Stage(match.group(1), match.group(2), []))
        elif stages:
            stages[-1].lines.append(line.strip())
        elif keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
    return args, stages


def _resolve(reference: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], reference)


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=["operator", "trainer"])
def test_image_is_multi_stage_pinned_and_non_root(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("# syntax=docker/dockerfile:1"), "the syntax directive must be the very first line"
    args, stages = parse(path)
    assert len(stages) >= 2, "build in one stage, run from another"
    for stage in stages:
        base = _resolve(stage.base, args)
        assert re.search(r":\d+\.\d+\.\d+", base) and "latest" not in base, f"unpinned base {base}"
    final = stages[-1]
    assert any(line.startswith("COPY --from=build") for line in final.lines)
    users = [line.split()[1] for line in final.lines if line.startswith("USER ")]
    assert users and re.fullmatch(r"[1-9]\d*:\d+", users[-1]), (
        "the final stage must end as a numeric non-root user"
    )


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=["operator", "trainer"])
def test_final_stage_installs_no_build_tools_and_runs_no_installer(path: Path) -> None:
    _, stages = parse(path)
    for line in stages[-1].lines:
        if line.startswith("RUN "):
            assert (
                "pip install" not in line and "apt-get install" not in line and "conda install" not in line
            ), line
            assert not BUILD_TOOLS.search(line), line


def test_operator_image_matches_the_chart() -> None:
    _, stages = parse(OPERATOR)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    user = next(line.split()[1] for line in reversed(stages[-1].lines) if line.startswith("USER "))
    assert user == f"{values['podSecurityContext']['runAsUser']}:{values['podSecurityContext']['runAsGroup']}"
    env = " ".join(line for line in stages[-1].lines if line.startswith("ENV "))
    assert "HOME=/tmp" in env  # the chart's only writable mount
    assert 'ENTRYPOINT ["kubetune"]' in stages[-1].lines
    # pip leaves the runtime: the build stage removes it from the venv, the final stage from the base.
    assert any("pip uninstall" in line for line in stages[0].lines)
    assert any("pip uninstall" in line for line in stages[-1].lines)


def test_trainer_image_matches_the_pods_the_operator_renders() -> None:
    from kubetune.render.pod import CACHE_MOUNT, RUN_AS_USER, cache_env

    _, stages = parse(TRAINER)
    final = stages[-1]
    user = next(line.split()[1] for line in reversed(final.lines) if line.startswith("USER "))
    assert user == f"{RUN_AS_USER}:{RUN_AS_USER}"
    env = " ".join(line for line in final.lines if line.startswith("ENV "))
    for item in cache_env():
        if item["name"] in ("HOME", "HF_HOME", "TRITON_CACHE_DIR", "XDG_CACHE_HOME"):
            assert f"{item['name']}={item['value']}" in env, item
    assert f"XDG_CACHE_HOME={CACHE_MOUNT}" in env
    assert 'ENTRYPOINT ["kubetune-trainer"]' in final.lines


def test_trainer_image_venv_is_where_the_operator_starts_its_python() -> None:
    # Multi-GPU pods run TRAINER_PYTHON by absolute path (kubetune.render.finetunejob): the Dockerfile must
    # build the venv that holds kubetune_trainer there, copy it to the same place and put it first on PATH.
    from kubetune.api.trainer_config import TRAINER_PYTHON, TRAINER_VENV

    assert f"{TRAINER_VENV}/bin/python" == TRAINER_PYTHON
    _, stages = parse(TRAINER)
    build, final = " ".join(stages[0].lines), stages[-1]
    assert f"python -m venv --system-site-packages {TRAINER_VENV} " in build
    assert f'{TRAINER_PYTHON} -c "import torch, transformers, peft, kubetune_trainer' in build
    assert f"COPY --from=build {TRAINER_VENV} {TRAINER_VENV}" in final.lines
    env = next(line for line in final.lines if line.startswith("ENV "))
    assert f"PATH={TRAINER_VENV}/bin:$PATH" in env.split()


def test_trainer_base_image_and_constraints_agree_on_torch() -> None:
    args, stages = parse(TRAINER)
    pins = locks.parse_pins(locks.TRAINER_CONSTRAINTS.read_text())
    assert args["TORCH_VERSION"] == pins["torch"]
    assert _resolve(stages[0].base, args).split(":")[1].startswith(pins["torch"] + "-cuda")
    assert stages[0].base == stages[-1].base == "${PYTORCH_IMAGE}"
    build = " ".join(stages[0].lines)
    assert "-c locks/trainer-image.txt" in build


@pytest.mark.parametrize(
    ("label", "path"),
    [
        ("locks/trainer-image.txt", locks.TRAINER_CONSTRAINTS),
        ("locks/operator-image.txt", locks.OPERATOR_LOCK),
    ],
    ids=["trainer", "operator"],
)
def test_image_pins_equal_the_versions_the_tests_run(label: str, path: Path) -> None:
    dev = {
        name: Version(version).public
        for name, version in locks.parse_pins(locks.DEV_LOCK.read_text()).items()
    }
    mismatched = {
        name: (version, dev.get(name))
        for name, version in locks.parse_pins(path.read_text()).items()
        if dev.get(name) != version
    }
    assert mismatched == {}, f"{label} pins other versions than locks/dev.txt (regenerate: scripts/lock.sh)"


def test_images_pin_their_whole_dependency_closure() -> None:
    trainer = locks.parse_pins(locks.TRAINER_CONSTRAINTS.read_text())
    assert set(locks.trainer_pins()) - set(trainer) == set(), "regenerate the locks: scripts/lock.sh"
    operator = locks.parse_pins(locks.OPERATOR_LOCK.read_text())
    assert set(locks.operator_pins()) - set(operator) == set(), "regenerate the locks: scripts/lock.sh"


def test_image_pins_satisfy_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for extra, pins in (
        ("trainer", locks.parse_pins(locks.TRAINER_CONSTRAINTS.read_text())),
        ("operator", locks.parse_pins(locks.OPERATOR_LOCK.read_text())),
    ):
        for text in [*project["dependencies"], *extras[extra]]:
            requirement = Requirement(text)
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{extra}: {name} is not pinned"
            assert requirement.specifier.contains(pins[name], prereleases=True), (extra, text, pins[name])


def test_the_pin_check_can_fail() -> None:
    with pytest.raises(ValueError, match="exact pin"):
        locks.parse_pins("torch>=2\n")
    assert locks.parse_pins("torch==2.13.0+cpu  # CPU build\n") == {"torch": "2.13.0+cpu"}


def _context_files(path: Path) -> list[str]:
    """The repository paths the image's build stage copies from the build context (COPY without --from)."""
    _, stages = parse(path)
    sources: list[str] = []
    for line in stages[0].lines:
        keyword, _, rest = line.partition(" ")
        if keyword != "COPY" or "--from=" in rest:
            continue
        *paths, _destination = [word for word in rest.split() if not word.startswith("--")]
        sources += paths
    return sources


def _image_wheel_files(path: Path, tmp_path: Path) -> list[str]:
    """Builds the wheel the image installs from exactly what its COPY lines bring in, and lists its files."""
    context = tmp_path / "context"
    for source in _context_files(path):
        origin = REPO / source
        target = context / source
        if origin.is_dir():
            shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(context),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=240,
    )
    (wheel,) = (tmp_path / "dist").glob("kubetune-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "packages"),
    [(OPERATOR, {"kubetune"}), (TRAINER, {"kubetune", "kubetune_trainer"})],
    ids=["operator", "trainer"],
)
def test_image_carries_only_its_own_packages(path: Path, packages: set[str], tmp_path: Path) -> None:
    files = _image_wheel_files(path, tmp_path)
    top_level = {name.split("/", 1)[0] for name in files if not name.split("/", 1)[0].endswith(".dist-info")}
    assert top_level == packages, f"{path.name} installs {sorted(top_level)}"
    assert not [name for name in files if "emulator" in name or "sandbox" in name], (
        "the API emulator and the local cluster must stay out of the images"
    )
    assert "kubetune/api/trainer_contract.py" in files, (
        "both images carry the typed operator/trainer contract"
    )
    if path == OPERATOR:
        assert not [name for name in files if name.startswith("kubetune_trainer/")]
