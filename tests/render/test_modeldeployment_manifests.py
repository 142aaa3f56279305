"""ModelDeployment children: golden files, Kubernetes' schemas, restricted Pod Security, runtime flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubetune.api.common import ResourceIdentity
from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.render import modeldeployment as render
from tests.api.conftest import load_example
from tests.pss import pod_spec_of, restricted_violations

GOLDEN = Path(__file__).parent / "golden"
OWNER = ResourceIdentity(name="support-bot", namespace="team-a", uid="7d1c7a3e-aaaa-bbbb-cccc-ddddeeeeffff")
DEFAULTS = render.ServingDefaults()
SOURCES = {
    "vllm-adapter": (
        "05-serve-canary/modeldeployment.yaml",
        render.ResolvedSource(
            "s3://models/llama-3.1-8b/",
            (render.Adapter("adapter", "s3://artifacts/team-a/support-bot/adapter/"),),
            {"source-job": "support-bot", "dataset-sha256": "ab" * 32},
        ),
    ),
    "tgi-multi-adapter": (
        "06-serve-model-uri-tgi/modeldeployment.yaml",
        render.ResolvedSource(
            "s3://models/llama-3.1-8b/",
            (
                render.Adapter("summarizer", "s3://a/summarizer/"),
                render.Adapter("classifier", "s3://a/classifier/"),
            ),
        ),
    ),
}


def _children(case: str) -> list[dict[str, Any]]:
    example, source = SOURCES[case]
    spec = ModelDeploymentSpec.model_validate(load_example(example)["spec"])
    children = [
        render.revision_deployment(
            OWNER, spec, source, revision=2, replicas=2, role="canary", defaults=DEFAULTS
        ),
        render.service(OWNER),
        render.revision_service(OWNER, 2),
        render.pod_disruption_budget(OWNER),
        render.benchmark_job(
            OWNER, spec, 2, DEFAULTS, job_name="support-bot-bench-r2", target=render.endpoint(OWNER)
        ),
    ]
    if spec.autoscaling:
        children.append(render.horizontal_pod_autoscaler(OWNER, spec, 1))
    return children


@pytest.mark.parametrize("case", SOURCES)
def test_children_match_golden_files(case: str) -> None:
    text = yaml.safe_dump_all(_children(case), sort_keys=False, width=120)
    path = GOLDEN / f"modeldeployment-{case}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.read_text() == text, f"{path.name} changed: review the diff, then rerun with UPDATE_GOLDEN=1"


@pytest.mark.parametrize("case", SOURCES)
def test_children_pass_kubernetes_validate_strict_and_restricted_pss(case: str) -> None:
    for child in _children(case):
        kubernetes_validate.validate(child, "1.37.0", strict=True)
        pod = pod_spec_of(child)
        if pod is not None:
            assert restricted_violations(pod) == [], child["metadata"]["name"]


def test_vllm_flags_for_adapters_gpus_and_length() -> None:
    deployment = _children("vllm-adapter")[0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert container["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert args[args.index("--model") + 1] == "/models/base"
    assert args[args.index("--served-model-name") + 1] == "support-bot"
    assert args[args.index("--tensor-parallel-size") + 1] == "1"
    assert args[args.index("--max-model-len") + 1] == "4096"
    assert (
        "--enable-lora" in args
        and args[args.index("--lora-modules") + 1] == "adapter=/models/adapters/adapter"
    )
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_init_container_fetches_model_and_adapters_with_secret_reference() -> None:
    pod = _children("tgi-multi-adapter")[0]["spec"]["template"]["spec"]
    fetch = pod["initContainers"][0]
    assert fetch["command"][:2] == ["kubetune-trainer", "fetch"]
    assert fetch["command"][2:] == [
        "s3://models/llama-3.1-8b/", "/models/base",
        "s3://a/summarizer/", "/models/adapters/summarizer", "s3://a/classifier/", "/models/adapters/classifier",
    ]  # fmt: skip
    assert fetch["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L40S"}


def test_bench_pods_never_receive_serving_traffic() -> None:
    children = _children("vllm-adapter")
    service, bench = children[1], children[4]
    selector = service["spec"]["selector"]
    bench_labels = bench["spec"]["template"]["metadata"]["labels"]
    assert not all(bench_labels.get(k) == v for k, v in selector.items())


def test_lineage_reaches_pod_annotations() -> None:
    template = _children("vllm-adapter")[0]["spec"]["template"]
    assert template["metadata"]["annotations"]["lineage.kubetune.dev/dataset-sha256"] == "ab" * 32


@pytest.mark.parametrize(
    ("total", "weight", "expected"),
    [(2, 10, (1, 1)), (4, 50, (2, 2)), (10, 10, (9, 1)), (3, 100, (0, 3)), (1, 50, (1, 1))],
)
def test_canary_replica_split(total: int, weight: int, expected: tuple[int, int]) -> None:
    assert render.canary_replicas(total, weight) == expected


def test_autoscaling_targets_the_stable_revision_with_hpa_or_keda() -> None:
    spec = ModelDeploymentSpec.model_validate(load_example("05-serve-canary/modeldeployment.yaml")["spec"])
    hpa = render.horizontal_pod_autoscaler(OWNER, spec, 3)
    kubernetes_validate.validate(hpa, "1.37.0", strict=True)
    assert hpa["spec"]["scaleTargetRef"]["name"] == "support-bot-r3"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 8)
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "vllm_num_requests_waiting"
    keda = render.keda_scaled_object(OWNER, spec, 3, "http://prometheus.monitoring.svc:9090")
    assert keda["spec"]["scaleTargetRef"] == {"name": "support-bot-r3"}
    (trigger,) = keda["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metadata"]["threshold"] == "5"
    assert trigger["metadata"]["query"].startswith('sum(vllm:num_requests_waiting{namespace="team-a"')
