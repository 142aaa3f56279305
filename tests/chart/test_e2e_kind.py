"""e2e/kind/run.sh --dry-run: the kind e2e's manifests, written and checked without Docker or a cluster.

CI cannot run the real e2e (no Docker engine); these run the same script in its dry-run mode, which writes
every manifest the real run applies and validates each one, and check that a broken one stops it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.manifests import load_yaml
from tests.chart.chartkit import env_of

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


def test_the_seeded_dataset_passes_the_trainer_validate_stage_with_the_examples_spec(
    dry_run: DryRun, tmp_path: Path
) -> None:
    """The validation leg of the kind run, here: the seed Job's own command fills an S3 (moto, as in-cluster)
    with the Secret's settings, then the trainer's validate stage runs on the config the operator renders
    for the example. KWOK cannot fake this pod: it runs the trainer image on the kind worker."""
    from moto.server import ThreadedMotoServer

    from kubetune.api.common import ResourceIdentity
    from kubetune.api.finetunejob import FineTuneJobSpec
    from kubetune.render.finetunejob import config_json, trainer_config
    from kubetune.render.pod import OperatorDefaults

    _, out = dry_run
    secret = objects(out / "30-s3.yaml")[0]
    config_map, seed_job = objects(out / "40-seed-data.yaml")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {
            **os.environ,
            **secret["stringData"],
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",  # the Service's address, as seen from here
            "AWS_MAX_ATTEMPTS": "1",
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "KUBETUNE_TERMINATION_LOG": str(tmp_path / "termination-log"),
            "PYTHONPATH": os.pathsep.join([str(REPO / "trainer-image/src"), str(REPO / "operator/src")]),
        }
        (tmp_path / "dataset.jsonl").write_text(config_map["data"]["dataset.jsonl"])
        container = seed_job["spec"]["template"]["spec"]["containers"][0]
        python, flag, script, mounted, *rest = container["command"]
        assert (python, flag, mounted) == ("python", "-c", "/seed/dataset.jsonl")
        seeded = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "dataset.jsonl"), *rest],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert seeded.returncode == 0, seeded.stderr

        job = load_yaml((out / "60-example.yaml").read_text())
        owner = ResourceIdentity(name=job["metadata"]["name"], namespace=job["metadata"]["namespace"])
        config = trainer_config(owner, FineTuneJobSpec.model_validate(job["spec"]), OperatorDefaults())
        (tmp_path / "config.json").write_text(config_json(config))
        validated = subprocess.run(
            [sys.executable, "-m", "kubetune_trainer", "validate", "--config", str(tmp_path / "config.json")],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        server.stop()
    assert validated.returncode == 0, validated.stderr
    summary = json.loads((tmp_path / "termination-log").read_text())
    assert (summary["ok"], summary["reason"]) == (True, "DatasetValid")
    rows = len(config_map["data"]["dataset.jsonl"].splitlines())
    assert summary["dataset"]["rows"] + summary["dataset"]["evalRows"] == rows
    assert summary["dataset"]["evalRows"] > 0
    # The gated base model is skipped offline, said as a warning, not a failure.
    assert any("HF_HUB_OFFLINE" in warning for warning in summary["warnings"])


_SUFFIXES = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
             "Ti": 2**40}  # fmt: skip


def quantity(text: str) -> float:
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * _SUFFIXES[suffix]
    return float(text)


def tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    """The scheduler's rule: key (empty with Exists: any), value unless Exists, effect unless empty."""
    for toleration in tolerations:
        if toleration.get("effect") and toleration["effect"] != taint["effect"]:
            continue
        if toleration.get("operator") == "Exists":
            if not toleration.get("key") or toleration["key"] == taint["key"]:
                return True
        elif toleration.get("key") == taint["key"] and toleration.get("value", "") == taint.get("value", ""):
            return True
    return False


def test_the_pods_the_operator_renders_fit_the_queue_and_only_the_training_pod_the_gpu_nodes(
    dry_run: DryRun,
) -> None:
    """What Kueue and the scheduler will decide on kind, decided here from the same objects: the operator's
    settings from the rendered chart, its Jobs for the example, the ClusterQueue and the KWOK nodes."""
    import kubernetes_validate

    from kubetune.api.common import ResourceIdentity
    from kubetune.api.finetunejob import FineTuneJobSpec
    from kubetune.handlers.settings import OperatorConfig
    from kubetune.render import finetunejob as render

    _, out = dry_run
    (deployment,) = [doc for doc in objects(out / "50-chart.yaml") if doc["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    defaults = OperatorConfig.from_env(env_of(container)).defaults  # downward API filled as the kubelet does
    job = load_yaml((out / "60-example.yaml").read_text())
    owner = ResourceIdentity(name=job["metadata"]["name"], namespace=job["metadata"]["namespace"])
    spec = FineTuneJobSpec.model_validate(job["spec"])
    training = render.training_job(owner, spec, defaults, "0123456789abcdef")
    validation = render.validation_job(owner, spec, defaults, "0123456789abcdef")
    for rendered in (training, validation):  # what the operator creates must pass the real apiserver too
        kubernetes_validate.validate(rendered, "1.35.0", strict=True)

    queues = {(doc["kind"], doc["metadata"]["name"]): doc for doc in objects(out / "20-queues.yaml")}
    assert training["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] in {
        name for kind, name in queues if kind == "LocalQueue"
    }
    assert training["spec"]["suspend"] is True  # Kueue admits it by unsuspending it
    (group,) = queues["ClusterQueue", "gpu-cluster-queue"]["spec"]["resourceGroups"]
    quota = {r["name"]: quantity(r["nominalQuota"]) for r in group["flavors"][0]["resources"]}
    pod = training["spec"]["template"]["spec"]
    assert ("PriorityClass", pod["priorityClassName"]) in queues
    requests: dict[str, float] = {}
    for each in pod["containers"]:
        for resource, amount in each["resources"].get("requests", {}).items():
            requests[resource] = requests.get(resource, 0.0) + quantity(amount)
    assert set(requests) <= set(group["coveredResources"]), "Kueue refuses an uncovered resource"
    assert all(amount <= quota[resource] for resource, amount in requests.items())
    assert {container["image"] for container in pod["containers"]} == {"kubetune/trainer:e2e"}

    for node in objects(out / "10-kwok-nodes.yaml"):
        labels, taints = node["metadata"]["labels"], node["spec"]["taints"]
        allocatable = {name: quantity(value) for name, value in node["status"]["allocatable"].items()}
        assert pod["nodeSelector"].items() <= labels.items()
        assert all(tolerates(pod.get("tolerations", []), taint) for taint in taints)
        assert all(amount <= allocatable[resource] for resource, amount in requests.items())
        # The CPU-only validation pod must run for real on the kind worker, never on a KWOK node.
        validation_pod = validation["spec"]["template"]["spec"]
        assert not all(tolerates(validation_pod.get("tolerations", []), taint) for taint in taints)
