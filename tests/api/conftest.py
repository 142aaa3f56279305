"""Shared helpers for API tests: the committed CRDs, valid example objects, and field surgery."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.manifests import load_yaml

REPO = Path(__file__).resolve().parents[2]
DELETE = object()


def load_crd(plural: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "crds" / f"{plural}.kubetune.dev.yaml").read_text())


def load_example(relative: str) -> dict[str, Any]:
    return load_yaml((REPO / "examples" / relative).read_text())


def _split(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for token in path.split("."):
        name, *indices = re.split(r"\[(\d+)\]", token)
        parts.append(name)
        parts.extend(int(i) for i in indices if i)
    return parts


def with_changes(obj: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of obj with dotted paths set (or removed with DELETE); missing parents are created."""
    result = copy.deepcopy(obj)
    for path, value in changes.items():
        *parents, leaf = _split(path)
        node: Any = result
        for part in parents:
            if isinstance(part, str) and part not in node:
                node[part] = {}
            node = node[part]
        if value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = copy.deepcopy(value)
    return result


@pytest.fixture(scope="session")
def admission():
    """CRDAdmission per kind, built from the committed CRDs exactly as the emulator builds them."""
    from kubetune_sandbox.emulator.admission import CRDAdmission

    return {
        "FineTuneJob": CRDAdmission(load_crd("finetunejobs")),
        "ModelDeployment": CRDAdmission(load_crd("modeldeployments")),
    }
