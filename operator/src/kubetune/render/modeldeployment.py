"""ModelDeployment children: one Deployment per revision (stable and canary side by side behind one Service),
the Service, a PodDisruptionBudget, an optional HPA or KEDA ScaledObject, and the benchmark Job.

Canary by replica ratio needs no mesh: the Service spreads requests over the ready pods of both revisions,
so the canary's share of traffic is its share of replicas.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Literal

from kubetune.api.common import ResourceIdentity, decimal_text
from kubetune.api.modeldeployment import ModelDeploymentSpec, ServingResources
from kubetune.render.pod import (
    GPU_PRODUCT_LABEL,
    MANAGED_BY,
    PART_OF,
    Manifest,
    OperatorDefaults,
    container_security_context,
    gpu_resources,
    merge_tolerations,
    owner_reference,
    pod_security_context,
    storage_env_from,
)

KIND = "ModelDeployment"
# The serving images when the operator's settings name none (KUBETUNE_VLLM_IMAGE, KUBETUNE_TGI_IMAGE).
VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"
TGI_IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.6"
DEPLOYMENT_LABEL = "kubetune.dev/modeldeployment"
REVISION_LABEL = "kubetune.dev/revision"
ROLE_LABEL = "kubetune.dev/role"
BENCHMARK_LABEL = "kubetune.dev/benchmark-of"
SERVING_PORT = 8000
MODEL_DIR = "/models"
BASE_DIR = f"{MODEL_DIR}/base"
ADAPTER_DIR = f"{MODEL_DIR}/adapters"
LINEAGE_PREFIX = "lineage.kubetune.dev/"

Role = Literal["stable", "canary"]


@dataclass(frozen=True)
class ServingDefaults:
    vllm_image: str = VLLM_IMAGE
    tgi_image: str = TGI_IMAGE
    fetcher_image: str = OperatorDefaults().trainer_image
    image_pull_policy: str = "IfNotPresent"
    gpu_tolerations: tuple[Manifest, ...] = OperatorDefaults().gpu_tolerations
    max_lora_rank: int = 64
    bench_requests: int = 64
    bench_concurrency: int = 8


@dataclass(frozen=True)
class Adapter:
    name: str
    uri: str


@dataclass(frozen=True)
class ResolvedSource:
    """What a revision serves, resolved from the FineTuneJob's outputs or the spec's URIs."""

    model_uri: str
    adapters: tuple[Adapter, ...] = ()
    lineage: dict[str, str] = field(default_factory=dict)  # source job uid, dataset sha256, base model, ...

    def fingerprint(self) -> str:
        return json.dumps(
            {"model": self.model_uri, "adapters": [(a.name, a.uri) for a in self.adapters]}, sort_keys=True
        )


def served_model_name(owner: ResourceIdentity, spec: ModelDeploymentSpec) -> str:
    return spec.served_model_name or owner.name


def revision_name(owner: ResourceIdentity, revision: int) -> str:
    return f"{owner.name}-r{revision}"


def endpoint(owner: ResourceIdentity) -> str:
    return f"http://{owner.name}.{owner.namespace}.svc:{SERVING_PORT}/v1"


def selector_labels(owner: ResourceIdentity) -> dict[str, str]:
    return {MANAGED_BY: "kubetune", DEPLOYMENT_LABEL: owner.name}


def _metadata(owner: ResourceIdentity, name: str, extra_labels: dict[str, str] | None = None) -> Manifest:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": {**selector_labels(owner), PART_OF: "kubetune", **(extra_labels or {})},
        "ownerReferences": [owner_reference(owner, KIND)],
    }


def _fetch_command(source: ResolvedSource, merged: bool) -> list[str]:
    """The init step: copy the model (and adapters) from storage into the shared volume."""
    pairs = [source.model_uri, BASE_DIR]
    if not merged:
        for adapter in source.adapters:
            pairs += [adapter.uri, f"{ADAPTER_DIR}/{adapter.name}"]
    return ["kubetune-trainer", "fetch", *pairs]


def vllm_args(
    spec: ModelDeploymentSpec, name: str, source: ResolvedSource, defaults: ServingDefaults
) -> list[str]:
    resources = spec.resources or ServingResources()
    args = [
        "--model", BASE_DIR,
        "--served-model-name", name,
        "--host", "0.0.0.0",
        "--port", str(SERVING_PORT),
        "--tensor-parallel-size", str(max(resources.gpus, 1)),
    ]  # fmt: skip
    if spec.max_model_len:
        args += ["--max-model-len", str(spec.max_model_len)]
    if spec.serve == "adapter" and source.adapters:
        args += [
            "--enable-lora",
            "--max-lora-rank",
            str(defaults.max_lora_rank),
            "--max-loras",
            str(len(source.adapters)),
        ]
        args += ["--lora-modules", *(f"{a.name}={ADAPTER_DIR}/{a.name}" for a in source.adapters)]
    return args


def _runtime_container(
    spec: ModelDeploymentSpec, name: str, source: ResolvedSource, defaults: ServingDefaults
) -> Manifest:
    resources = spec.resources or ServingResources()
    probe = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10, "timeoutSeconds": 5}
    env = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/cache/huggingface"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "XDG_CACHE_HOME", "value": "/cache"},
    ]
    if spec.runtime == "vllm":
        image = defaults.vllm_image
        command = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
        args = vllm_args(spec, name, source, defaults)
        env.append({"name": "VLLM_CONFIG_ROOT", "value": "/cache/vllm"})
    else:
        image = defaults.tgi_image
        command = ["text-generation-launcher"]
        args = ["--model-id", BASE_DIR, "--port", str(SERVING_PORT), "--hostname", "0.0.0.0"]
        if resources.gpus > 1:
            args += ["--num-shard", str(resources.gpus)]
        if spec.max_model_len:
            args += ["--max-total-tokens", str(spec.max_model_len)]
        if spec.serve == "adapter" and source.adapters:
            adapters = ",".join(f"{a.name}={ADAPTER_DIR}/{a.name}" for a in source.adapters)
            env.append({"name": "LORA_ADAPTERS", "value": adapters})
        env.append({"name": "HUGGINGFACE_HUB_CACHE", "value": "/cache/huggingface"})
    return {
        "name": spec.runtime,
        "image": image,
        "imagePullPolicy": defaults.image_pull_policy,
        "command": command,
        "args": args,
        "env": env,
        "ports": [{"name": "http", "containerPort": SERVING_PORT, "protocol": "TCP"}],
        "readinessProbe": {**probe, "failureThreshold": 3},
        "livenessProbe": {**probe, "failureThreshold": 6, "initialDelaySeconds": 30},
        "startupProbe": {**probe, "failureThreshold": 180},  # model loading can take minutes
        "resources": gpu_resources(resources.gpus, resources.cpu, resources.memory),
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "models", "mountPath": MODEL_DIR, "readOnly": True},
            {"name": "cache", "mountPath": "/cache"},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }


def revision_deployment(
    owner: ResourceIdentity,
    spec: ModelDeploymentSpec,
    source: ResolvedSource,
    *,
    revision: int,
    replicas: int,
    role: Role,
    defaults: ServingDefaults,
) -> Manifest:
    name = served_model_name(owner, spec)
    labels = {**selector_labels(owner), REVISION_LABEL: str(revision)}
    lineage = {f"{LINEAGE_PREFIX}{key}": value for key, value in sorted(source.lineage.items())}
    fetch: Manifest = {
        "name": "fetch-model",
        "image": defaults.fetcher_image,
        "imagePullPolicy": defaults.image_pull_policy,
        "command": _fetch_command(source, spec.serve == "merged"),
        "env": [{"name": "HOME", "value": "/tmp"}],
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "models", "mountPath": MODEL_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    secret = spec.storage_secret_ref.name if spec.storage_secret_ref else None
    if secret:
        fetch["envFrom"] = storage_env_from(secret)
    pod: Manifest = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "initContainers": [fetch],
        "containers": [_runtime_container(spec, name, source, defaults)],
        "volumes": [
            {"name": "models", "emptyDir": {}},
            {"name": "cache", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
        ],
    }
    resources = spec.resources or ServingResources()
    scheduling = spec.scheduling
    node_selector = dict(scheduling.node_selector or {}) if scheduling else {}
    if resources.gpu_product:
        node_selector[GPU_PRODUCT_LABEL] = resources.gpu_product
    if node_selector:
        pod["nodeSelector"] = node_selector
    tolerations = merge_tolerations(
        defaults.gpu_tolerations if resources.gpus else (), scheduling.tolerations if scheduling else None
    )
    if tolerations:
        pod["tolerations"] = tolerations
    if scheduling and scheduling.priority_class_name:
        pod["priorityClassName"] = scheduling.priority_class_name
    metadata = _metadata(
        owner, revision_name(owner, revision), {REVISION_LABEL: str(revision), ROLE_LABEL: role}
    )
    metadata["annotations"] = lineage
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": labels, "annotations": lineage}, "spec": pod},
        },
    }


def service(owner: ResourceIdentity) -> Manifest:
    """One stable address over every revision's ready pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, owner.name),
        "spec": {
            "selector": selector_labels(owner),
            "ports": [{"name": "http", "port": SERVING_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def revision_service(owner: ResourceIdentity, revision: int) -> Manifest:
    """Reaches one revision only: the canary analysis benchmarks it in isolation."""
    selector = {**selector_labels(owner), REVISION_LABEL: str(revision)}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, revision_name(owner, revision), {REVISION_LABEL: str(revision)}),
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": SERVING_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def revision_endpoint(owner: ResourceIdentity, revision: int) -> str:
    return f"http://{revision_name(owner, revision)}.{owner.namespace}.svc:{SERVING_PORT}/v1"


def pod_disruption_budget(owner: ResourceIdentity) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner, owner.name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(owner)}},
    }


def horizontal_pod_autoscaler(
    owner: ResourceIdentity, spec: ModelDeploymentSpec, stable_revision: int
) -> Manifest:
    scaling = spec.autoscaling
    assert scaling is not None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(owner, owner.name),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": revision_name(owner, stable_revision),
            },
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        # Prometheus Adapter exposes vLLM's "vllm:x" series as "vllm_x".
                        "metric": {"name": scaling.metric.replace(":", "_")},
                        "target": {"type": "AverageValue", "averageValue": decimal_text(scaling.target)},
                    },
                }
            ],
        },
    }


def keda_scaled_object(
    owner: ResourceIdentity, spec: ModelDeploymentSpec, stable_revision: int, prometheus_url: str
) -> Manifest:
    scaling = spec.autoscaling
    assert scaling is not None
    query = f'sum({scaling.metric}{{namespace="{owner.namespace}",{DEPLOYMENT_LABEL.replace(".", "_").replace("/", "_")}="{owner.name}"}})'
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _metadata(owner, owner.name),
        "spec": {
            "scaleTargetRef": {"name": revision_name(owner, stable_revision)},
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.max_replicas,
            "triggers": [
                {
                    "type": "prometheus",
                    "metadata": {
                        "serverAddress": prometheus_url,
                        "query": query,
                        "threshold": decimal_text(scaling.target),
                    },
                }
            ],
        },
    }


def canary_replicas(total: int, weight: int) -> tuple[int, int]:
    """(stable, canary) replica counts for a traffic weight; the canary gets at least one pod."""
    if weight >= 100:
        return 0, total
    canary = max(1, math.ceil(total * weight / 100))
    return max(total - canary, 1), canary


def benchmark_job(
    owner: ResourceIdentity,
    spec: ModelDeploymentSpec,
    revision: int,
    defaults: ServingDefaults,
    *,
    job_name: str,
    target: str,
) -> Manifest:
    """The trainer image's `bench` stage: N chat requests at concurrency C against an OpenAI endpoint
    (one revision's Service during canary analysis, the shared Service after promotion)."""
    name = served_model_name(owner, spec)
    command = [
        "kubetune-trainer", "bench",
        "--endpoint", target,
        "--model", name,
        "--requests", str(defaults.bench_requests),
        "--concurrency", str(defaults.bench_concurrency),
    ]  # fmt: skip
    container = {
        "name": "bench",
        "image": defaults.fetcher_image,
        "imagePullPolicy": defaults.image_pull_policy,
        "command": command,
        "env": [
            {"name": "HOME", "value": "/tmp"},
            {"name": "KUBETUNE_TERMINATION_LOG", "value": "/dev/termination-log"},
        ],
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    # Bench pods must not carry the serving selector labels, or the Service would send them traffic.
    pod_labels = {MANAGED_BY: "kubetune", BENCHMARK_LABEL: owner.name, REVISION_LABEL: str(revision)}
    labels = {REVISION_LABEL: str(revision), "kubetune.dev/stage": "bench"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(owner, job_name, labels),
        "spec": {
            "backoffLimit": 1,
            "activeDeadlineSeconds": 900,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security_context(),
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }
