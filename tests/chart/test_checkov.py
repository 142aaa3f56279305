"""checkov (PyPI, its own virtualenv: see tests/toolenvs.py) on the rendered chart: no failed check except the
ones charts/kubetune/.checkov.yaml skips with a written reason, and no skip that has gone stale."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.chartkit import CHART, REPO, VALUE_SETS, manifests
from tests.toolenvs import CHECKOV

CONFIG = CHART / ".checkov.yaml"
# Value sets that turn on what two skipped checks ask for: there, those checks must pass.
HARDENED = {"custom-images": {"CKV_K8S_43", "CKV2_K8S_6"}}


def skips() -> dict[str, str]:
    """Skipped check -> the comment above it in .checkov.yaml."""
    reasons: dict[str, str] = {}
    comment: list[str] = []
    for line in CONFIG.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("# "))
            continue
        match = re.fullmatch(r"- (CKV2?_(?:K8S|DOCKER)_\d+)", stripped)
        if match:
            reasons[match.group(1)] = " ".join(comment)
        comment = []
    assert set(reasons) == set(yaml.safe_load(CONFIG.read_text())["skip-check"])
    return reasons


def test_every_skip_has_a_written_reason() -> None:
    for check, reason in skips().items():
        assert len(reason) >= 80, f"{check} needs a reason in {CONFIG.name}"


@pytest.fixture(scope="module")
def checkov_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    command = [str(CHECKOV.require()), "-m", "checkov.main"]
    root = tmp_path_factory.mktemp("rendered")
    count = 0
    for name, values in VALUE_SETS.items():
        (root / name).mkdir()
        # One release per value set, so that graph checks (a NetworkPolicy selecting pods) stay within a set.
        for index, document in enumerate(manifests(values, name=name)):
            path = root / name / f"{index:03d}-{document['kind'].lower()}.yaml"
            path.write_text(yaml.safe_dump(document, sort_keys=False))
            count += 1
    for image, dockerfile in (
        ("operator", REPO / "Dockerfile"),
        ("trainer", REPO / "trainer-image" / "Dockerfile"),
    ):
        (root / "images" / image).mkdir(parents=True)
        shutil.copy(dockerfile, root / "images" / image / "Dockerfile")
    config = yaml.safe_load(CONFIG.read_text())
    result = subprocess.run(
        [*command, "--directory", str(root), "--framework", *config["framework"], "--skip-download",
         "--compact", "--quiet", "--output", "json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr[-3000:]
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]  # one report per framework
    assert sorted(r["check_type"] for r in reports) == sorted(config["framework"])
    merged: dict[str, Any] = {"summary": {}, "results": {"failed_checks": []}, "document_count": count}
    for report in reports:
        for key in ("passed", "failed", "parsing_errors", "resource_count"):
            merged["summary"][key] = merged["summary"].get(key, 0) + report["summary"][key]
        merged["results"]["failed_checks"] += report["results"]["failed_checks"]
    return merged


def test_checkov_ran_on_every_rendered_manifest(checkov_report: dict[str, Any]) -> None:
    summary = checkov_report["summary"]
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] >= checkov_report["document_count"] + 2  # + the two Dockerfiles
    assert summary["passed"] > 100


def test_no_failed_checks_but_the_written_skips(checkov_report: dict[str, Any]) -> None:
    failed: dict[str, set[str]] = defaultdict(set)
    for check in checkov_report["results"]["failed_checks"]:
        value_set = Path(check["file_path"]).parent.name
        failed[check["check_id"]].add(value_set)
    allowed = skips()
    unexpected = {check: sorted(sets) for check, sets in failed.items() if check not in allowed}
    assert unexpected == {}, [
        (c["check_id"], c["check_name"], c["resource"], c["file_path"])
        for c in checkov_report["results"]["failed_checks"]
        if c["check_id"] in unexpected
    ]
    stale = set(allowed) - set(failed)
    assert stale == set(), f"skipped checks that no longer fail: drop them from {CONFIG.name}"
    for value_set, checks in HARDENED.items():
        for check in checks:
            assert value_set not in failed[check], f"{check} fails even with {value_set}"
