"""ModelDeployment children: one Deployment per revision (stable and canary side by side behind one Service),
the Service, a PodDisruptionBudget, an optional HPA or KEDA ScaledObject, and the benchmark Job.

Canary by replica ratio needs no mesh: the Service spreads requests over the ready pods of both revisions,
so the canary's share of traffic is its share of replicas (canary_split).

Names served: with `serve: adapter` the tuned adapter answers to the served model name (spec.servedModelName,
default the resource's name) and the base model to `<name>-base`; further adapters (spec.source.adapterUris)
keep their own names. With `serve: merged` the merged model answers to the served model name.

Where the model comes from: `s3://` and `hf://` are copied into the pod by the fetch init container
(`hf://` needs the Hugging Face Hub reachable from the pod; the runtime itself stays offline);
`pvc://CLAIM/path` is mounted read-only at /mnt/pvc/CLAIM and the runtime reads it in place. With
spec.cache the fetch step keeps each model directory in the cache volume (at /model-cache, read-only for the
runtime) and links it into /models: a replica or revision finding it there downloads nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from kubetune.api.common import ResourceIdentity, decimal_text
from kubetune.api.modeldeployment import ModelDeploymentSpec, Rollout, ServingResources
from kubetune.render.pod import (
    GPU_PRODUCT_LABEL,
    MANAGED_BY,
    MODEL_CACHE_ENV,
    PART_OF,
    Manifest,
    OperatorDefaults,
    cache_mount,
    cache_volume,
    container_security_context,
    gpu_resources,
    image_pull_secrets,
    merge_tolerations,
    owner_reference,
    pod_security_context,
    pvc_path,
    pvc_volumes,
    storage_env_from,
    user_env,
    workload_identity,
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
# spec.cache: the fetch step keeps models here (content-addressed) and links them into MODEL_DIR; the
# runtime mounts it read-only at the same path, so the links resolve.
MODEL_CACHE_DIR = "/model-cache"
MODEL_CACHE_VOLUME = "model-cache"
LINEAGE_PREFIX = "lineage.kubetune.dev/"
PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"
# The PodMonitor (charts/kubetune/templates/podmonitor.yaml) copies the pod label kubetune.dev/modeldeployment
# into this Prometheus label.
PROMETHEUS_DEPLOYMENT_LABEL = "modeldeployment"
# vLLM accepts only these values for --max-lora-rank (vllm.config.LoRAConfig).
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)

Role = Literal["stable", "canary"]


@dataclass(frozen=True)
class ServingDefaults:
    vllm_image: str = VLLM_IMAGE
    tgi_image: str = TGI_IMAGE
    fetcher_image: str = OperatorDefaults().trainer_image
    image_pull_policy: str = "IfNotPresent"
    gpu_tolerations: tuple[Manifest, ...] = OperatorDefaults().gpu_tolerations
    max_lora_rank: int = 64  # when neither the source job nor spec.source.maxLoraRank says
    service_account_name: str = ""  # the trainer pods' ServiceAccount (KUBETUNE_TRAINER_SERVICE_ACCOUNT)
    image_pull_secrets: tuple[str, ...] = ()
    prometheus_url: str = PROMETHEUS_URL
    bench_requests: int = 64
    bench_concurrency: int = 8

    def identity(self) -> OperatorDefaults:
        return OperatorDefaults(
            service_account_name=self.service_account_name, image_pull_secrets=self.image_pull_secrets
        )


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
    max_lora_rank: int | None = None  # the source job's spec.lora.r, or spec.source.maxLoraRank
    storage_secret: str | None = None  # inherited from the source job's spec.storageSecretRef

    def fingerprint(self) -> str:
        return json.dumps(
            {
                "model": self.model_uri,
                "adapters": [(a.name, a.uri) for a in self.adapters],
                "maxLoraRank": self.max_lora_rank,
                "storageSecret": self.storage_secret,
            },
            sort_keys=True,
        )

    def uris(self, merged: bool) -> list[str]:
        return [self.model_uri, *([] if merged else [a.uri for a in self.adapters])]


def served_model_name(owner: ResourceIdentity, spec: ModelDeploymentSpec) -> str:
    return spec.served_model_name or owner.name


def base_model_name(name: str) -> str:
    return f"{name}-base"


def lora_modules(name: str, spec: ModelDeploymentSpec, source: ResolvedSource) -> list[tuple[str, str]]:
    """(served name, path) of every adapter: the first answers to the served model name; adapters named by
    spec.source.adapterUris also answer to their own names (the first one under both)."""
    if not source.adapters:
        return []
    modules = [(name, _adapter_path(source.adapters[0]))]
    if spec.source.model_uri:
        modules += [(adapter.name, _adapter_path(adapter)) for adapter in source.adapters]
    return modules


def vllm_lora_rank(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds an adapter of rank r."""
    return next((allowed for allowed in VLLM_LORA_RANKS if allowed >= rank), VLLM_LORA_RANKS[-1])


def storage_secret(spec: ModelDeploymentSpec, source: ResolvedSource) -> str | None:
    """The deployment's own spec.storageSecretRef, else the source job's."""
    return spec.storage_secret_ref.name if spec.storage_secret_ref else source.storage_secret


def _model_path(source: ResolvedSource) -> str:
    return pvc_path(source.model_uri) or BASE_DIR


def _adapter_path(adapter: Adapter) -> str:
    return pvc_path(adapter.uri) or f"{ADAPTER_DIR}/{adapter.name}"


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


def _fetch_command(source: ResolvedSource, merged: bool) -> list[str] | None:
    """The init step: copy the model (and adapters) from storage into the shared volume; pvc:// stays in place.
    None when there is nothing to copy."""
    pairs = [] if pvc_path(source.model_uri) else [source.model_uri, BASE_DIR]
    if not merged:
        for adapter in source.adapters:
            if not pvc_path(adapter.uri):
                pairs += [adapter.uri, f"{ADAPTER_DIR}/{adapter.name}"]
    return ["kubetune-trainer", "fetch", *pairs] if pairs else None


def vllm_args(
    spec: ModelDeploymentSpec, name: str, source: ResolvedSource, defaults: ServingDefaults
) -> list[str]:
    resources = spec.resources or ServingResources()
    adapters = spec.serve == "adapter" and bool(source.adapters)
    args = [
        "--model", _model_path(source),
        "--served-model-name", base_model_name(name) if adapters else name,
        "--host", "0.0.0.0",
        "--port", str(SERVING_PORT),
        "--tensor-parallel-size", str(max(resources.gpus, 1)),
    ]  # fmt: skip
    if spec.max_model_len:
        args += ["--max-model-len", str(spec.max_model_len)]
    if adapters:
        modules = lora_modules(name, spec, source)
        args += [
            "--enable-lora",
            "--max-lora-rank",
            str(vllm_lora_rank(source.max_lora_rank or defaults.max_lora_rank)),
            "--max-loras",
            str(len(modules)),
        ]
        args += ["--lora-modules", *(f"{served}={path}" for served, path in modules)]
    return args


def _runtime_container(
    spec: ModelDeploymentSpec, name: str, source: ResolvedSource, defaults: ServingDefaults
) -> Manifest:
    resources = spec.resources or ServingResources()
    probe = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10, "timeoutSeconds": 5}
    env = [
        {"name": "HOME", "value": "/tmp"},
        *user_env(),
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
        args = ["--model-id", _model_path(source), "--port", str(SERVING_PORT), "--hostname", "0.0.0.0"]
        if resources.gpus > 1:
            args += ["--num-shard", str(resources.gpus)]
        if spec.max_model_len:
            args += ["--max-total-tokens", str(spec.max_model_len)]
        if spec.serve == "adapter" and source.adapters:
            adapters = ",".join(f"{served}={path}" for served, path in lora_modules(name, spec, source))
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
            *pvc_volumes(source.uris(spec.serve == "merged"))[1],
            *_model_cache_mounts(spec, read_only=True),
        ],
    }


def _model_cache_mounts(spec: ModelDeploymentSpec, *, read_only: bool) -> list[Manifest]:
    if spec.cache is None:
        return []
    return [cache_mount(spec.cache, MODEL_CACHE_VOLUME, MODEL_CACHE_DIR, read_only=read_only)]


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
    merged = spec.serve == "merged"
    pod: Manifest = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
    }
    command = _fetch_command(source, merged)
    if command is not None:
        fetch: Manifest = {
            "name": "fetch-model",
            "image": defaults.fetcher_image,
            "imagePullPolicy": defaults.image_pull_policy,
            "command": command,
            "env": [
                {"name": "HOME", "value": "/tmp"},
                *user_env(),
                {"name": "HF_HOME", "value": "/tmp/huggingface"},
                *([{"name": MODEL_CACHE_ENV, "value": f"{MODEL_CACHE_DIR}/models"}] if spec.cache else []),
            ],
            "securityContext": container_security_context(),
            "volumeMounts": [
                {"name": "models", "mountPath": MODEL_DIR},
                {"name": "tmp", "mountPath": "/tmp"},
                *_model_cache_mounts(spec, read_only=False),
            ],
        }
        secret = storage_secret(spec, source)
        if secret:
            fetch["envFrom"] = storage_env_from(secret)
        pod["initContainers"] = [fetch]
    pod["containers"] = [_runtime_container(spec, name, source, defaults)]
    pod["volumes"] = [
        {"name": "models", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
        *pvc_volumes(source.uris(merged))[0],
        *([cache_volume(spec.cache, MODEL_CACHE_VOLUME)] if spec.cache else []),
    ]
    # The training pods' identity: their ServiceAccount (IRSA, Workload Identity) and image pull secrets.
    pod.update(workload_identity(defaults.identity()))
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
            "progressDeadlineSeconds": (spec.rollout or Rollout()).progress_deadline_seconds,
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
    # Only the stable revision's pods: a canary's queue must not scale the stable Deployment.
    labels = f'namespace="{owner.namespace}",{PROMETHEUS_DEPLOYMENT_LABEL}="{owner.name}",revision="{stable_revision}"'
    query = f"sum({scaling.metric}{{{labels}}})"
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


def canary_split(total: int, weight: int) -> tuple[int, int]:
    """(stable, canary) replica counts for a canary step of `weight` percent, once the canary is ready.

    The canary gets at least one pod and at most `total`; the stable keeps `total - canary` pods, or all
    `total` (a surge of `canary` pods) when that brings the canary's share closer to the weight: with 2
    replicas the 10% step is 1 canary beside 2 stable pods (33%), not 1 beside 1 (50%). Ties go to fewer pods.
    """
    if weight >= 100:
        return 0, total
    total = max(total, 1)
    candidates = [
        (stable, canary)
        for canary in range(1, total + 1)
        for stable in {total - canary, total}
        if stable >= 1
    ]
    return min(candidates, key=lambda pair: (abs(pair[1] / sum(pair) - weight / 100), sum(pair), -pair[0]))


def effective_weight(stable: int, canary: int) -> int:
    """The canary's share of traffic, in percent, when traffic follows the replica ratio."""
    return round(100 * canary / (stable + canary)) if stable + canary else 0


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
            *user_env(),
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
    pod: Manifest = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    # The trainer image may be private too; the bench needs no cloud identity, so no ServiceAccount.
    secrets = image_pull_secrets(defaults.identity())
    if secrets:
        pod["imagePullSecrets"] = secrets
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(owner, job_name, labels),
        "spec": {
            "backoffLimit": 1,
            "activeDeadlineSeconds": 900,
            "ttlSecondsAfterFinished": 86400,
            "template": {"metadata": {"labels": pod_labels}, "spec": pod},
        },
    }
