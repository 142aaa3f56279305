"""ModelDeployment children: golden files, Kubernetes' schemas, restricted Pod Security, runtime flags."""

from __future__ import annotations

import os
import subprocess
import sys
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
            max_lora_rank=16,
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
    assert args[args.index("--tensor-parallel-size") + 1] == "1"
    assert args[args.index("--max-model-len") + 1] == "4096"
    assert "--enable-lora" in args
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_the_tuned_adapter_answers_to_the_served_model_name_and_the_base_to_name_base() -> None:
    children = _children("vllm-adapter")
    args = children[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--served-model-name") + 1] == "support-bot-base"
    assert args[args.index("--lora-modules") + 1] == "support-bot=/models/adapters/adapter"
    assert args[args.index("--max-loras") + 1] == "1"
    bench = children[4]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert (
        bench[bench.index("--model") + 1] == "support-bot"
    )  # the benchmark and canary analysis hit the adapter


def test_merged_serving_names_the_model_itself() -> None:
    spec = ModelDeploymentSpec.model_validate(
        {**load_example("05-serve-canary/modeldeployment.yaml")["spec"], "serve": "merged"}
    )
    source = render.ResolvedSource("s3://artifacts/team-a/support-bot/merged/")
    args = render.vllm_args(spec, "support-bot", source, DEFAULTS)
    assert args[args.index("--served-model-name") + 1] == "support-bot" and "--enable-lora" not in args


def test_model_uri_adapters_keep_their_names_and_the_first_answers_to_the_served_name() -> None:
    env = _children("tgi-multi-adapter")[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    adapters = next(e["value"] for e in env if e["name"] == "LORA_ADAPTERS")
    assert adapters == (
        "support-bot=/models/adapters/summarizer,"
        "summarizer=/models/adapters/summarizer,classifier=/models/adapters/classifier"
    )


@pytest.mark.parametrize(
    ("rank", "flag"), [(None, "64"), (8, "8"), (16, "16"), (100, "128"), (256, "256"), (400, "512")]
)
def test_max_lora_rank_comes_from_the_adapter_rank_rounded_up_to_what_vllm_accepts(
    rank: int | None, flag: str
) -> None:
    spec = ModelDeploymentSpec.model_validate(load_example("05-serve-canary/modeldeployment.yaml")["spec"])
    source = render.ResolvedSource("s3://m/", (render.Adapter("adapter", "s3://a/"),), max_lora_rank=rank)
    args = render.vllm_args(spec, "support-bot", source, DEFAULTS)
    assert args[args.index("--max-lora-rank") + 1] == flag


def test_pvc_sources_are_mounted_read_only_and_read_in_place() -> None:
    spec = ModelDeploymentSpec.model_validate(load_example("05-serve-canary/modeldeployment.yaml")["spec"])
    source = render.ResolvedSource(
        "pvc://models/llama-3.1-8b/",
        (render.Adapter("adapter", "s3://artifacts/team-a/support-bot/adapter/"),),
    )
    deployment = render.revision_deployment(
        OWNER, spec, source, revision=1, replicas=1, role="stable", defaults=DEFAULTS
    )
    kubernetes_validate.validate(deployment, "1.37.0", strict=True)
    pod = deployment["spec"]["template"]["spec"]
    assert {"name": "pvc-0", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod[
        "volumes"
    ]
    container = pod["containers"][0]
    assert {"name": "pvc-0", "mountPath": "/mnt/pvc/models", "readOnly": True} in container["volumeMounts"]
    assert container["args"][container["args"].index("--model") + 1] == "/mnt/pvc/models/llama-3.1-8b"
    # Only the adapter is fetched; the base model stays on its claim.
    assert pod["initContainers"][0]["command"] == [
        "kubetune-trainer", "fetch", "s3://artifacts/team-a/support-bot/adapter/", "/models/adapters/adapter"
    ]  # fmt: skip
    everything_on_pvc = render.ResolvedSource(
        "pvc://models/llama/", (render.Adapter("a", "pvc://adapters/a/"),)
    )
    pod = render.revision_deployment(
        OWNER, spec, everything_on_pvc, revision=1, replicas=1, role="stable", defaults=DEFAULTS
    )["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v] == [
        "adapters", "models"
    ]  # fmt: skip
    args = pod["containers"][0]["args"]
    assert args[args.index("--lora-modules") + 1] == "support-bot=/mnt/pvc/adapters/a"


def test_hf_sources_are_fetched_by_the_init_container_with_the_hub_reachable_there_only() -> None:
    spec = ModelDeploymentSpec.model_validate(load_example("05-serve-canary/modeldeployment.yaml")["spec"])
    source = render.ResolvedSource(
        "hf://meta-llama/Llama-3.1-8B-Instruct@main", (render.Adapter("adapter", "s3://a/"),)
    )
    pod = render.revision_deployment(
        OWNER, spec, source, revision=1, replicas=1, role="stable", defaults=DEFAULTS
    )["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["command"][2:4] == [
        "hf://meta-llama/Llama-3.1-8B-Instruct@main",
        "/models/base",
    ]
    runtime_env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert runtime_env["HF_HUB_OFFLINE"] == "1"


def test_job_credentials_and_service_account_are_inherited() -> None:
    spec = ModelDeploymentSpec.model_validate(
        {
            k: v
            for k, v in load_example("05-serve-canary/modeldeployment.yaml")["spec"].items()
            if k != "storageSecretRef"
        }
    )
    source = render.ResolvedSource(
        "s3://m/", (render.Adapter("adapter", "s3://a/"),), storage_secret="job-secret"
    )
    defaults = render.ServingDefaults(service_account_name="kubetune-trainer")
    pod = render.revision_deployment(
        OWNER, spec, source, revision=1, replicas=1, role="stable", defaults=defaults
    )["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["envFrom"] == [{"secretRef": {"name": "job-secret"}}]
    assert pod["serviceAccountName"] == "kubetune-trainer"
    own = spec.model_copy(
        update={
            "storage_secret_ref": ModelDeploymentSpec.model_validate(
                load_example("05-serve-canary/modeldeployment.yaml")["spec"]
            ).storage_secret_ref
        }
    )
    pod = render.revision_deployment(
        OWNER, own, source, revision=1, replicas=1, role="stable", defaults=defaults
    )["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["envFrom"] == [
        {"secretRef": {"name": "s3-credentials"}}
    ]  # the deployment's own wins


def test_every_serving_pod_gets_the_pull_secrets() -> None:
    defaults = render.ServingDefaults(image_pull_secrets=("registry", "mirror"))
    for case, (example, source) in SOURCES.items():
        spec = ModelDeploymentSpec.model_validate(load_example(example)["spec"])
        pods = [
            pod_spec_of(render.revision_deployment(
                OWNER, spec, source, revision=1, replicas=1, role=role, defaults=defaults
            ))
            for role in ("stable", "canary")
        ]  # fmt: skip
        pods.append(
            pod_spec_of(
                render.benchmark_job(OWNER, spec, 1, defaults, job_name="b", target=render.endpoint(OWNER))
            )
        )
        for pod in pods:
            assert pod is not None
            assert pod["imagePullSecrets"] == [{"name": "registry"}, {"name": "mirror"}], case
    # None by default: the goldens carry no imagePullSecrets.
    assert all("imagePullSecrets" not in (pod_spec_of(c) or {}) for c in _children("vllm-adapter"))


def test_progress_deadline_is_a_spec_field() -> None:
    example = load_example("05-serve-canary/modeldeployment.yaml")["spec"]
    spec = ModelDeploymentSpec.model_validate(
        {**example, "rollout": {**example["rollout"], "progressDeadlineSeconds": 7200}}
    )
    source = render.ResolvedSource("s3://m/")
    deployment = render.revision_deployment(
        OWNER, spec, source, revision=1, replicas=1, role="stable", defaults=DEFAULTS
    )
    assert deployment["spec"]["progressDeadlineSeconds"] == 7200


def test_init_container_fetches_model_and_adapters_with_secret_reference() -> None:
    pod = _children("tgi-multi-adapter")[0]["spec"]["template"]["spec"]
    fetch = pod["initContainers"][0]
    assert "serviceAccountName" not in pod  # the operator names none by default
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
    ("total", "weight", "expected", "effective"),
    [
        (2, 10, (2, 1), 33),  # not 1 + 1 (50%): the stable keeps both pods beside one canary
        (2, 50, (1, 1), 50),
        (4, 10, (4, 1), 20),
        (4, 50, (2, 2), 50),
        (10, 10, (9, 1), 10),
        (10, 15, (10, 2), 17),  # 2 of 12 is nearer 15% than 1 of 10 or 2 of 10
        (8, 25, (6, 2), 25),
        (3, 100, (0, 3), 100),
        (1, 10, (1, 1), 50),  # one canary pod is the minimum
    ],
)
def test_canary_split_overshoots_no_more_than_one_pod_must(
    total: int, weight: int, expected: tuple[int, int], effective: int
) -> None:
    assert render.canary_split(total, weight) == expected
    assert render.effective_weight(*expected) == effective


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
    # The PodMonitor's label (charts/kubetune/templates/podmonitor.yaml), the stable revision's pods only.
    assert trigger["metadata"]["query"] == (
        'sum(vllm:num_requests_waiting{namespace="team-a",modeldeployment="support-bot",revision="3"})'
    )
    assert trigger["metadata"]["serverAddress"] == "http://prometheus.monitoring.svc:9090"


@pytest.mark.parametrize("case", SOURCES)
def test_every_container_names_its_user_for_a_uid_without_a_passwd_entry(case: str) -> None:
    for child in _children(case):
        pod = pod_spec_of(child)
        for container in (pod or {}).get("containers", []) + (pod or {}).get("initContainers", []):
            env = {item["name"]: item.get("value") for item in container.get("env", [])}
            assert env.get("USER") and env.get("LOGNAME") == env["USER"], container["name"]


# What torch and vLLM call for cache paths, in a process whose uid has no passwd entry (as in the images).
GETUSER_WITHOUT_PASSWD = """
import getpass, pwd
def missing(uid):
    raise KeyError(f"getpwuid(): uid not found: {uid}")
pwd.getpwuid = missing
print(getpass.getuser())
"""


def test_the_rendered_environment_lets_getuser_work_without_a_passwd_entry() -> None:
    container = _children("vllm-adapter")[0]["spec"]["template"]["spec"]["containers"][0]
    rendered = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    bare = {"PATH": os.environ["PATH"]}
    without = subprocess.run(
        [sys.executable, "-c", GETUSER_WITHOUT_PASSWD], check=False, env=bare, capture_output=True, text=True
    )
    assert without.returncode != 0 and "uid not found" in without.stderr
    with_env = subprocess.run(
        [sys.executable, "-c", GETUSER_WITHOUT_PASSWD],
        check=False,
        env={**bare, **rendered},
        capture_output=True,
        text=True,
    )
    assert with_env.returncode == 0, with_env.stderr
    assert with_env.stdout.strip() == rendered["USER"]
