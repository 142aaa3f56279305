"""The install, GitOps, security and dataset docs stay true: examples parse with the trainer's own code, and
every chart value, alert and file the docs name exists."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.chart.chartkit import CHART, REPO
from tests.chart.test_monitoring import ALERTS

DOCS = REPO / "docs"
CHART_DOCS = ["install.md", "gitops.md", "security.md", "kueue.md", "gpu-nodes.md", "operations.md"]
TOP_LEVEL = json.loads((CHART / "values.schema.json").read_text())["properties"]


def _sections(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^## (\S+)\n(.*?)(?=^## |\Z)", text, re.S | re.M)}


def dataset_examples() -> dict[str, dict[str, Any]]:
    examples = {}
    for name, body in _sections((DOCS / "dataset-formats.md").read_text()).items():
        blocks = re.findall(r"```json\n(.*?)\n```", body, re.S)
        if blocks:
            assert len(blocks) == 1 and "\n" not in blocks[0], f"{name}: one example line"
            examples[name] = json.loads(blocks[0])
    return examples


def test_every_dataset_format_has_one_example_line() -> None:
    from kubetune_trainer.formats import FORMATS

    assert set(dataset_examples()) == set(FORMATS)


@pytest.mark.parametrize("fmt", sorted(dataset_examples()))
def test_dataset_example_is_read_and_detected_by_the_trainer(fmt: str) -> None:
    from kubetune_trainer.formats import Normaliser, detect_row_format

    row = dataset_examples()[fmt]
    example = Normaliser(fmt).normalise(row)
    assert example.kind == {"text": "text", "preference": "preference"}.get(fmt, "chat")
    assert detect_row_format(row) == fmt


def _schema_has(path: list[str]) -> bool:
    node: dict[str, Any] = {"properties": TOP_LEVEL}
    for key in path:
        properties = node.get("properties") or {}
        if key not in properties:
            return False
        node = properties[key]
    return True


def chart_value_mentions(text: str) -> set[str]:
    roots = "|".join(sorted(TOP_LEVEL))
    found = set()
    for quoted in re.findall(r"`([^`\s]+)`", text):
        token = quoted.split("=", 1)[0].split(":", 1)[0]
        if re.fullmatch(rf"(?:{roots})(?:\.[A-Za-z][A-Za-z0-9]*)*", token) and "." in token:
            found.add(token)
    return found


@pytest.mark.parametrize("doc", CHART_DOCS)
def test_chart_values_named_in_docs_exist(doc: str) -> None:
    mentioned = chart_value_mentions((DOCS / doc).read_text())
    missing = sorted(m for m in mentioned if not _schema_has(m.split(".")))
    assert missing == []


def test_the_value_check_can_fail() -> None:
    assert not _schema_has(["metrics", "serviceMonitor", "enable"])
    assert chart_value_mentions("set `metrics.serviceMonitor.enable`") == {"metrics.serviceMonitor.enable"}


def test_install_doc_lists_every_alert() -> None:
    text = (DOCS / "install.md").read_text()
    assert set(re.findall(r"^\| (Kubetune\w+) \|", text, re.M)) == ALERTS


@pytest.mark.parametrize("doc", CHART_DOCS)
def test_repository_files_named_in_docs_exist(doc: str) -> None:
    text = (DOCS / doc).read_text()
    paths = set(re.findall(r"`((?:docs|charts|crds|examples|trainer-image|tests)/[A-Za-z0-9_./-]+)`", text))
    paths |= {f"docs/{p}" for p in re.findall(r"\]\(((?:argocd/)?[a-z-]+\.(?:md|lua))\)", text)}
    missing = sorted(p for p in paths if not (REPO / p.rstrip("/")).exists())
    assert missing == []


def test_argocd_config_keys_name_the_kinds() -> None:
    text = (DOCS / "gitops.md").read_text()
    for kind, script in (
        ("FineTuneJob", "health-finetunejob.lua"),
        ("ModelDeployment", "health-modeldeployment.lua"),
    ):
        assert f"resource.customizations.health.kubetune.dev_{kind}" in text
        assert f"docs/argocd/{script}" in text
        assert Path(DOCS / "argocd" / script).exists()
