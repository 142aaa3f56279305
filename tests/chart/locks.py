"""The images' pins, derived from the environment the tests run (so the images run the versions tested).

scripts/lock.sh calls this in its fresh dev environment:
    python -m tests.chart.locks trainer > locks/trainer-image.txt
    python -m tests.chart.locks operator > locks/operator-image.txt
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
LOCKS = REPO / "locks"
DEV_LOCK = LOCKS / "dev.txt"
TRAINER_CONSTRAINTS = LOCKS / "trainer-image.txt"
OPERATOR_LOCK = LOCKS / "operator-image.txt"
# Imported by the trainer at run time but not (yet) declared by the trainer extra.
TRAINER_EXTRAS = ("prometheus-client",)
TRAINER_HEADER = """\
# Pins of the trainer image (trainer-image/Dockerfile): the whole closure of `kubetune[trainer]` plus what the
# stages import at run time (prometheus-client). torch is the base image's CUDA build: pinning its public
# version here stops pip from replacing it. tests/chart/test_images.py checks these equal locks/dev.txt.
# Regenerate: scripts/lock.sh"""
OPERATOR_HEADER = """\
# Pins of the operator image (Dockerfile): the whole closure of `kubetune[operator]`.
# tests/chart/test_images.py checks these equal locks/dev.txt. Regenerate: scripts/lock.sh"""


def closure(root: str) -> dict[str, str]:
    """Canonical name -> installed public version, for `root` and everything it needs here (Linux)."""
    found: dict[str, str] = {}
    visited: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(root)]
    environment = default_environment()
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in visited:
            continue
        visited.add(key)
        distribution = metadata.distribution(requirement.name)
        found[name] = Version(distribution.version).public
        for text in distribution.requires or []:
            dependency = Requirement(text)
            extras = requirement.extras or {""}
            if dependency.marker and not any(
                dependency.marker.evaluate({**environment, "extra": e}) for e in extras
            ):
                continue
            todo.append(dependency)
    found.pop("kubetune", None)
    return found


def trainer_pins() -> dict[str, str]:
    pins = closure("kubetune[trainer]")
    for name in TRAINER_EXTRAS:
        pins[canonicalize_name(name)] = Version(metadata.version(name)).public
    return dict(sorted(pins.items()))


def operator_pins() -> dict[str, str]:
    return dict(sorted(closure("kubetune[operator]").items()))


def parse_pins(text: str) -> dict[str, str]:
    """`name==version` lines (comments and blanks ignored); anything looser is an error."""
    pins: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+!-]+)", line)
        if not match:
            raise ValueError(f"not an exact pin: {line!r}")
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def main(argv: list[str]) -> int:
    if argv == ["trainer"]:
        print(TRAINER_HEADER)
        pins = trainer_pins()
    elif argv == ["operator"]:
        print(OPERATOR_HEADER)
        pins = operator_pins()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for name, version in pins.items():
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
