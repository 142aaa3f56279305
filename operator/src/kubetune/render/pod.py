"""Small, composable pieces of pod specs shared by every workload kubetune renders."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kubetune.api.common import API_VERSION, ModelCache, ResourceIdentity, Toleration
from kubetune.api.trainer_contract import DEFAULT_METRICS_PORT

Manifest = dict[str, Any]

MANAGED_BY = "app.kubernetes.io/managed-by"
PART_OF = "app.kubernetes.io/part-of"

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
RUN_AS_USER = 1000
RUN_AS_USER_NAME = "kubetune"
CONFIG_MOUNT = "/etc/kubetune"
CACHE_MOUNT = "/cache"
WORK_MOUNT = "/work"
TERMINATION_LOG = "/dev/termination-log"
PVC_ROOT = "/mnt/pvc"  # the trainer's storage.DEFAULT_PVC_ROOT: where pvc://CLAIM/path is read
# spec.cache: the trainer's model_cache reads KUBETUNE_MODEL_CACHE and keeps models/<key>/ there. In a user's
# claim everything of ours lives under kubetune/ (a subPath), so its other files are never touched.
MODEL_CACHE_ENV = "KUBETUNE_MODEL_CACHE"
MODEL_CACHE_SUBPATH = "kubetune"
CACHE_VOLUME = "cache"


@dataclass(frozen=True)
class OperatorDefaults:
    """What the platform team sets once (Helm values), not each user."""

    trainer_image: str = "ghcr.io/kubetune/trainer:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    gpu_tolerations: tuple[Manifest, ...] = (
        {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},
    )
    service_account_name: str = ""
    # Where trainer pods serve /metrics: rendered into their containerPort and TrainerConfig.metrics_port,
    # and where the operator scrapes them.
    trainer_metrics_port: int = DEFAULT_METRICS_PORT
    validation_cpu: str = "1"
    validation_memory: str = "4Gi"
    # Node disk of a validation pod (dataset, tokenizer, model config): its request and volumes' sizeLimit.
    validation_ephemeral_storage: str = "20Gi"
    shm_size: str = "16Gi"
    # Secrets (in each workload's namespace) to pull private images with, on every pod kubetune renders.
    image_pull_secrets: tuple[str, ...] = ()


def pod_security_context() -> Manifest:
    """Restricted Pod Security at the pod level."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> Manifest:
    """Restricted Pod Security at the container level, plus a read-only root filesystem."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def cache_volume(cache: ModelCache | None, name: str, *, size_limit: str | None = None) -> Manifest:
    """The volume spec.cache asks for: the user's claim, a claim per pod (generic ephemeral volume), or an
    emptyDir on the node's disk (capped at `size_limit`) when there is no spec.cache."""
    if cache is None:
        return {"name": name, "emptyDir": {"sizeLimit": size_limit} if size_limit else {}}
    if cache.pvc is not None:
        return {"name": name, "persistentVolumeClaim": {"claimName": cache.pvc}}
    assert cache.ephemeral is not None  # ModelCache holds exactly one of the two
    claim: Manifest = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": cache.ephemeral.size}},
    }
    if cache.ephemeral.storage_class_name:
        claim["storageClassName"] = cache.ephemeral.storage_class_name
    template = {"metadata": {"labels": {PART_OF: "kubetune"}}, "spec": claim}
    return {"name": name, "ephemeral": {"volumeClaimTemplate": template}}


def cache_mount(cache: ModelCache | None, name: str, path: str, *, read_only: bool = False) -> Manifest:
    """Where a container sees the cache volume; a user's claim only through its kubetune/ folder."""
    mount: Manifest = {"name": name, "mountPath": path}
    if cache is not None and cache.pvc is not None:
        mount["subPath"] = MODEL_CACHE_SUBPATH
    if read_only:
        mount["readOnly"] = True
    return mount


def shared_cache(cache: ModelCache | None) -> ModelCache | None:
    """spec.cache where it outlives the pod (a claim); None for a volume per pod, which a pod that only
    reads metadata (validation) gains nothing from."""
    return cache if cache is not None and cache.pvc is not None else None


def scratch_volumes(
    *, shm_size: str | None, size_limit: str | None = None, cache: ModelCache | None = None
) -> tuple[list[Manifest], list[Manifest]]:
    """Writable volumes for a read-only root filesystem: caches, work space, /tmp and (for NCCL) /dev/shm.

    `size_limit` caps each disk-backed emptyDir (the kubelet evicts a pod that writes more), so a pod never
    fills its node's disk; the pod should request as much `ephemeral-storage` (gpu_resources). `cache`
    (spec.cache) puts /cache, where models and the libraries' caches live, on a claim instead."""
    disk: Manifest = {"sizeLimit": size_limit} if size_limit else {}
    volumes: list[Manifest] = [
        cache_volume(cache, CACHE_VOLUME, size_limit=size_limit),
        {"name": "work", "emptyDir": dict(disk)},
        {"name": "tmp", "emptyDir": dict(disk)},
    ]
    mounts: list[Manifest] = [
        cache_mount(cache, CACHE_VOLUME, CACHE_MOUNT),
        {"name": "work", "mountPath": WORK_MOUNT},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if shm_size:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return volumes, mounts


def user_env() -> list[Manifest]:
    """A name for RUN_AS_USER, which has no passwd entry in the images: getpass.getuser() (torch's compile
    and distributed caches, vLLM) reads USER/LOGNAME first and otherwise fails with "uid not found"."""
    return [{"name": "USER", "value": RUN_AS_USER_NAME}, {"name": "LOGNAME", "value": RUN_AS_USER_NAME}]


def cache_env(cache: ModelCache | None = None) -> list[Manifest]:
    """Point every library's cache at the writable volume and keep the hub offline unless a URI asks for it.
    With spec.cache the trainer also keeps whole models there, content-addressed (MODEL_CACHE_ENV)."""
    model_cache = [{"name": MODEL_CACHE_ENV, "value": f"{CACHE_MOUNT}/models"}] if cache else []
    return [
        {"name": "HOME", "value": "/tmp"},
        *user_env(),
        {"name": "HF_HOME", "value": f"{CACHE_MOUNT}/huggingface"},
        {"name": "TRITON_CACHE_DIR", "value": f"{CACHE_MOUNT}/triton"},
        {"name": "XDG_CACHE_HOME", "value": CACHE_MOUNT},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "KUBETUNE_TERMINATION_LOG", "value": TERMINATION_LOG},
        *model_cache,
    ]


def storage_env_from(secret_name: str | None) -> list[Manifest]:
    """Credentials reach the pod by Secret reference only; the operator never reads the Secret."""
    return [{"secretRef": {"name": secret_name}}] if secret_name else []


def toleration(item: Toleration) -> Manifest:
    return item.model_dump(by_alias=True, exclude_none=True)


def merge_tolerations(defaults: tuple[Manifest, ...], user: list[Toleration] | None) -> list[Manifest]:
    result = [dict(t) for t in defaults]
    for item in user or []:
        rendered = toleration(item)
        if rendered not in result:
            result.append(rendered)
    return result


def gpu_resources(
    gpus: int,
    cpu: str | None,
    memory: str | None,
    *,
    memory_limit: bool = True,
    ephemeral_storage: str | None = None,
) -> Manifest:
    """Requests (and limits for memory and GPUs); `memory_limit=False` requests memory without capping it."""
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if cpu:
        requests["cpu"] = cpu
    if memory:
        requests["memory"] = memory
        if memory_limit:
            limits["memory"] = memory
    if ephemeral_storage:
        requests["ephemeral-storage"] = ephemeral_storage
    if gpus:
        requests[GPU_RESOURCE] = str(gpus)
        limits[GPU_RESOURCE] = str(gpus)
    result: Manifest = {}
    if requests:
        result["requests"] = requests
    if limits:
        result["limits"] = limits
    return result


def pvc_path(uri: str) -> str | None:
    """Where a pvc://CLAIM/path URI is mounted in a pod (pvc_volumes); None for other schemes."""
    if not uri.startswith("pvc://"):
        return None
    claim, _, rest = uri[len("pvc://") :].partition("/")
    return f"{PVC_ROOT}/{claim}/{rest}".rstrip("/")


def pvc_volumes(uris: Iterable[str | None]) -> tuple[list[Manifest], list[Manifest]]:
    """(volumes, volume mounts): each claim the pvc:// URIs among `uris` name, read-only at /mnt/pvc/CLAIM,
    so a pod reads them in place. Other schemes (and None) are skipped."""
    claims = sorted({uri[len("pvc://") :].partition("/")[0] for uri in uris if uri and pvc_path(uri)})
    volumes = [
        {"name": f"pvc-{index}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        for index, claim in enumerate(claims)
    ]
    mounts = [
        {"name": f"pvc-{index}", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True}
        for index, claim in enumerate(claims)
    ]
    return volumes, mounts


def image_pull_secrets(defaults: OperatorDefaults) -> list[Manifest]:
    """The platform's pull secrets, for `imagePullSecrets` on every pod kubetune renders."""
    return [{"name": name} for name in defaults.image_pull_secrets]


def workload_identity(defaults: OperatorDefaults) -> Manifest:
    """What every workload pod gets to reach registries and clouds: the ServiceAccount (IRSA, Workload
    Identity) and the pull secrets. Merge it into a pod spec."""
    identity: Manifest = {}
    if defaults.service_account_name:
        identity["serviceAccountName"] = defaults.service_account_name
    secrets = image_pull_secrets(defaults)
    if secrets:
        identity["imagePullSecrets"] = secrets
    return identity


def owner_reference(owner: ResourceIdentity, kind: str) -> Manifest:
    """The controller reference every child carries, so deleting the owner deletes it."""
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
