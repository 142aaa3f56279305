"""The committed CRDs are exactly what the models generate, and Kubernetes' own schemas accept them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from kubetune.api.crd import FINE_TUNE_JOB, KINDS, MODEL_DEPLOYMENT
from kubetune.api.manifests import crd_files

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"


def test_committed_crds_match_the_models() -> None:
    generated = crd_files()
    committed = {path.name: path.read_text() for path in CRD_DIR.glob("*.yaml")}
    assert committed.keys() == generated.keys()
    for name, text in generated.items():
        assert committed[name] == text, f"crds/{name} drifted: run `kubetune crds -o crds`"


def test_cli_prints_the_same_crds() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kubetune.cli.main", "crds"], check=True, capture_output=True, text=True
    ).stdout
    printed = [doc for doc in yaml.safe_load_all(out) if doc]
    assert [doc["metadata"]["name"] for doc in printed] == [info.crd_name for info in KINDS]


@pytest.mark.parametrize("kube_version", ["1.30.0", "1.37.0"])
@pytest.mark.parametrize("path", sorted(CRD_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_crd_passes_kubernetes_validate_strict(path: Path, kube_version: str) -> None:
    document = yaml.safe_load(path.read_text())
    kubernetes_validate.validate(document, kube_version, strict=True)


def _walk(schema: dict, path: str = ""):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("info", KINDS, ids=lambda i: i.kind)
def test_every_string_and_list_is_bounded_and_every_node_typed(info) -> None:
    document = yaml.safe_load((CRD_DIR / f"{info.crd_name}.yaml").read_text())
    root = document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    unbounded = []
    text = yaml.safe_dump(root)
    for forbidden in (
        "patternProperties",
        "propertyNames",
        "additionalProperties: false",
        "$ref",
        "anyOf",
        "title:",
    ):
        assert forbidden not in text, f"{forbidden} is not allowed in a structural schema"
    for path, node in _walk(root):
        if path in ("", ".metadata", ".metadata.name", ".apiVersion", ".kind"):
            continue
        assert "type" in node, f"{path} has no type (schemas must be structural)"
        if node["type"] == "string" and "maxLength" not in node and "enum" not in node:
            unbounded.append(path)
        if node["type"] == "array" and "maxItems" not in node:
            unbounded.append(path)
        if node["type"] == "object" and "additionalProperties" in node and "maxProperties" not in node:
            unbounded.append(path)
    assert unbounded == []


@pytest.mark.parametrize(
    ("info", "short_name", "columns"),
    [
        (FINE_TUNE_JOB, "ftj", {"Phase", "Model", "Method", "Progress", "Passed", "Age"}),
        (MODEL_DEPLOYMENT, "mdep", {"Phase", "Runtime", "Revision", "Canary", "Age"}),
    ],
    ids=["FineTuneJob", "ModelDeployment"],
)
def test_names_categories_columns_and_status_subresource(info, short_name, columns) -> None:
    crd = yaml.safe_load((CRD_DIR / f"{info.crd_name}.yaml").read_text())
    names = crd["spec"]["names"]
    assert names["shortNames"] == [short_name]
    assert names["categories"] == ["kubetune"]
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    assert columns <= {c["name"] for c in version["additionalPrinterColumns"]}
    conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_api_reference_matches_the_models() -> None:
    from kubetune.api.reference import api_reference

    committed = (REPO / "docs" / "api.md").read_text()
    assert committed == api_reference(), "docs/api.md drifted: run `kubetune api-reference > docs/api.md`"
