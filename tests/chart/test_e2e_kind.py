"""e2e/kind/run.sh --dry-run: the kind e2e's manifests, written and checked without Docker or a cluster.

CI cannot run the real e2e (no Docker engine); these run the same script in its dry-run mode, which writes
every manifest the real run applies and validates each one, and check that a broken one stops it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.manifests import load_yaml

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "e2e" / "kind" / "run.sh"
BASH = shutil.which("bash") or "/bin/bash"
EXAMPLE = REPO / "examples" / "02-qlora-kueue" / "finetunejob.yaml"
MANIFESTS = [
    "00-kind-cluster.yaml",
    "10-kwok-nodes.yaml",
    "20-queues.yaml",
    "30-s3.yaml",
    "40-seed-data.yaml",
    "50-chart.yaml",
    "60-example.yaml",
]


DryRun = tuple[subprocess.CompletedProcess[str], Path]


def run(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [BASH, str(RUN), *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def objects(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> DryRun:
    out = tmp_path_factory.mktemp("e2e-kind")
    return run("--dry-run", "--out", str(out)), out


def test_the_dry_run_passes_and_writes_every_manifest_it_would_apply(dry_run: DryRun) -> None:
    result, out = dry_run
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == MANIFESTS
    assert "valid: " in result.stdout
    assert (out / "60-example.yaml").read_text() == EXAMPLE.read_text()  # the example as shipped
    assert "kueue/releases/download/v" in result.stdout  # what it could not check, said


def test_the_chart_is_rendered_with_the_kind_images_and_its_crds(dry_run: DryRun) -> None:
    _, out = dry_run
    chart = objects(out / "50-chart.yaml")
    kinds = {doc["kind"] for doc in chart}
    assert {"Deployment", "ClusterRole", "CustomResourceDefinition", "Role"} <= kinds
    (deployment,) = [doc for doc in chart if doc["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "kubetune/operator:e2e"
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["KUBETUNE_TRAINER_IMAGE"] == "kubetune/trainer:e2e"


def test_the_cluster_has_gpu_capacity_a_queue_and_s3_for_the_example(dry_run: DryRun) -> None:
    _, out = dry_run
    job = load_yaml(EXAMPLE.read_text())
    nodes = objects(out / "10-kwok-nodes.yaml")
    assert nodes and all(
        int(node["status"]["allocatable"]["nvidia.com/gpu"]) >= job["spec"]["resources"]["gpus"]
        and node["metadata"]["labels"]["nvidia.com/gpu.product"] == job["spec"]["resources"]["gpuProduct"]
        for node in nodes
    )
    queues = {(doc["kind"], doc["metadata"]["name"]) for doc in objects(out / "20-queues.yaml")}
    assert ("LocalQueue", job["spec"]["scheduling"]["queueName"]) in queues
    secret, *_ = objects(out / "30-s3.yaml")
    assert secret["metadata"]["name"] == job["spec"]["storageSecretRef"]["name"]
    config_map, seed_job = objects(out / "40-seed-data.yaml")
    rows = config_map["data"]["dataset.jsonl"].splitlines()
    assert len(rows) == len(set(rows)) >= 100
    assert job["spec"]["dataset"]["uri"] in seed_job["spec"]["template"]["spec"]["containers"][0]["command"]


def test_a_broken_extra_manifest_stops_the_run_naming_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken-configmap.yaml"
    broken.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: team-a}\ndta: {a: b}\n"
    )
    result = run("--dry-run", "--out", str(tmp_path / "out"), "--extra", str(broken))
    assert result.returncode == 1
    assert "INVALID 90-extra-0-broken-configmap.yaml" in result.stderr
    assert "'dta' was unexpected" in result.stderr


def test_a_broken_example_is_refused_by_the_crd_admission(tmp_path: Path) -> None:
    example = tmp_path / "finetunejob.yaml"
    example.write_text(EXAMPLE.read_text().replace("method: qlora", "method: qlorax"))
    result = run("--dry-run", "--out", str(tmp_path / "out"), "--example", str(example))
    assert result.returncode == 1
    assert "INVALID 60-example.yaml" in result.stderr
    assert 'spec.method: Unsupported value: "qlorax"' in result.stderr


def test_an_example_naming_a_queue_that_no_manifest_defines_is_refused(tmp_path: Path) -> None:
    example = tmp_path / "finetunejob.yaml"
    example.write_text(EXAMPLE.read_text().replace("queueName: gpu-team-a", "queueName: gpu-team-z"))
    result = run("--dry-run", "--out", str(tmp_path / "out"), "--example", str(example))
    assert result.returncode == 1
    assert "refers to LocalQueue gpu-team-z in namespace team-a" in result.stderr


def test_a_kueue_kind_outside_the_pinned_release_is_refused(tmp_path: Path) -> None:
    old_api = tmp_path / "old-queue.yaml"
    old_api.write_text("apiVersion: kueue.x-k8s.io/v1alpha1\nkind: ClusterQueue\nmetadata: {name: q}\n")
    result = run("--dry-run", "--out", str(tmp_path / "out"), "--extra", str(old_api))
    assert result.returncode == 1
    assert "INVALID 90-extra-0-old-queue.yaml" in result.stderr
    assert "not a kind of the pinned release" in result.stderr


def test_without_docker_the_real_run_stops_at_preflight_saying_what_to_install(tmp_path: Path) -> None:
    tools = tmp_path / "bin"  # only what the script needs before its preflight: no docker, kind, kubectl
    tools.mkdir()
    for tool in ("dirname", "cut"):
        (tools / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    result = run("--out", str(tmp_path / "out"), path=str(tools))
    assert result.returncode == 1
    assert "run.sh: docker not found: install Docker Engine" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing written, no cluster created
